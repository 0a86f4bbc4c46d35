"""Fixture builders that reproduce the structure of the real box annotation files (no downloads).

- UCF-Crime, Liu & Ma (github.com/xuzero/UCFCrime_BoundingBox_Annotation, `Test_annotation.pkl`): a Python 2
  protocol-0 pickle of `{video stem: [[frame image path, x1, y1, x2, y2], ...]}` with integer corners in the
  320 x 240 frames. `liu_ma_pickle` writes the same opcodes in the same order as that file (STRING keys and
  paths, INT corners, PUT after every object), so the importer is tested on the bytes it will meet.
- ShanghaiTech Campus: `testing/test_frame_mask/<video>.npy` (1-D, 0/1 per frame) and
  `testing/test_pixel_mask/<video>.npy` (T x 480 x 856, 0/1), test videos as folders of frames.
- UBnormal (github.com/lilygeorgescu/UBnormal): `scripts/{abnormal,normal}_{training,validation,test}_video_names.txt`,
  `Scene<N>/<video>.mp4`, `Scene<N>/<video>_annotations/<video>_tracks.txt` (`id,start,end`, inclusive) and one
  `<video>_<frame:04d>_gt.png` per frame whose grey level is the object id (0 background).
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

# real entries of Test_annotation.pkl (first entries of three videos, in the file's order) and the lines of
# Temporal_Anomaly_Annotation_for_Testing_Videos.txt for the same videos
LIU_MA_IMAGES = "/home3/lk/surveillance_images/Anomaly_Test"
LIU_MA_REAL = {
    "Abuse028_x264": [(212, 1, 84, 86, 156), (196, 1, 83, 83, 137), (180, 3, 83, 82, 150), (228, 1, 81, 95, 163)],
    "Arrest001_x264": [(1472, 166, 45, 256, 119), (1408, 153, 45, 251, 125), (1216, 65, 40, 169, 123)],
    "Shoplifting010_x264": [(861, 77, 104, 141, 200), (1874, 72, 79, 121, 167), (1570, 81, 85, 129, 175)],
}
UCF_TEMPORAL_REAL = {
    "Abuse028_x264": "Abuse  165  240  -1  -1",
    "Arrest001_x264": "Arrest  1185  1485  -1  -1",
    "Shoplifting010_x264": "Shoplifting  750  920  1550  1970",
}


def liu_ma_entry(video: str, frame: int, box: tuple[int, int, int, int]) -> list:
    """One entry as the real file has it: the authors' frame image path (1-based numbering), then the corners."""
    cls = re.match(r"[A-Za-z]+", video).group(0)
    return [f"{LIU_MA_IMAGES}/{cls}/{video}/image_{frame:04d}.jpg", *box]


def liu_ma_table(boxes: dict[str, list[tuple[int, int, int, int, int]]]) -> dict[str, list[list]]:
    """{video: [(frame, x1, y1, x2, y2), ...]} -> the pickle's own structure."""
    return {video: [liu_ma_entry(video, f, tuple(b)) for f, *b in rows] for video, rows in boxes.items()}


def liu_ma_pickle(table: dict[str, list[list]]) -> bytes:
    """`table` pickled as Python 2's cPickle.dump(protocol 0) wrote Test_annotation.pkl.

    Python 3's protocol 0 writes text as UNICODE ('V'); the real file has Python 2 byte strings ('S'), which is
    what a loader of the real file has to decode, so the stream is written opcode by opcode.
    """
    out = [b"(dp0\n"]
    memo = 1

    def put() -> bytes:
        nonlocal memo
        memo += 1
        return b"p%d\n" % (memo - 1)

    def string(text: str) -> bytes:
        return b"S'" + text.encode("ascii") + b"'\n" + put()

    for key, entries in table.items():
        out += [string(key), b"(l", put()]
        for entry in entries:
            out += [b"(l", put(), string(entry[0])]
            out += [b"a" + b"I%d\n" % int(v) for v in entry[1:]]
            out += [b"aa"]  # the last corner into the entry, the entry into the video's list
        out.append(b"s")
    out.append(b".")
    return b"".join(out)


def write_liu_ma(path: Path, boxes: dict[str, list[tuple[int, int, int, int, int]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(liu_ma_pickle(liu_ma_table(boxes)))
    return path


def write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def ucf_tree(root: Path, temporal: dict[str, str] | None = None, videos: dict[str, Path] | None = None) -> Path:
    """UCF-Crime's official layout: split lists, temporal annotation, `Anomaly-Videos-Part-*/<Class>/*.mp4`.

    `temporal` maps the anomalous test videos to their annotation line (default: the real lines of three
    videos); `videos` gives real video files to link in (default: empty files, the importer reads no video).
    """
    temporal = dict(UCF_TEMPORAL_REAL if temporal is None else temporal)
    splits = root / "UCF_Crimes-Train-Test-Split/Anomaly_Detection_splits"
    tests = [f"{line.split()[0]}/{v}.mp4" for v, line in temporal.items()]
    train = ["Abuse/Abuse001_x264.mp4", "Training_Normal_Videos_Anomaly/Normal_Videos001_x264.mp4"]
    write(splits / "Anomaly_Train.txt", "\n".join(train) + "\n")
    write(splits / "Anomaly_Test.txt", "\n".join([*tests, "Testing_Normal_Videos_Anomaly/Normal_Videos_003_x264.mp4"]))
    lines = [f"{v}.mp4  {line}" for v, line in temporal.items()]
    lines.append("Normal_Videos_003_x264.mp4  Normal  -1  -1  -1  -1")
    write(root / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt", "\n".join(lines) + "\n")
    names = [
        "Anomaly-Videos-Part-1/Abuse/Abuse001_x264.mp4",
        *[f"Anomaly-Videos-Part-1/{t}" for t in tests],
        "Training-Normal-Videos-Part-1/Normal_Videos001_x264.mp4",
        "Testing_Normal_Videos_Anomaly/Normal_Videos_003_x264.mp4",
    ]
    for rel in names:
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        src = (videos or {}).get(Path(rel).stem)
        if src is not None:
            dest.symlink_to(src)
        else:
            dest.write_bytes(b"")
    return root


SH_SIZE = (480, 856)  # ShanghaiTech Campus frames, H x W


def shanghaitech_tree(root: Path, pixel: np.ndarray, frame_mask: np.ndarray) -> Path:
    """ShanghaiTech Campus as downloaded (`training/videos`, `testing/frames`, `testing/test_*_mask`) plus the weak
    split lists; `01_0014` is the anomalous test video with `frame_mask` and `pixel`, `01_0015` a normal one."""
    write(root / "SH_Train.txt", "01_001\n")
    write(root / "SH_Test.txt", "01_0014\n01_0015\n")
    write(root / "training/videos/01_001.avi")
    for video in ("01_0014", "01_0015"):
        write(root / f"testing/frames/{video}/000.jpg")
    frame_dir, pixel_dir = root / "testing/test_frame_mask", root / "testing/test_pixel_mask"
    frame_dir.mkdir(parents=True)
    pixel_dir.mkdir(parents=True)
    np.save(frame_dir / "01_0014.npy", frame_mask)
    np.save(frame_dir / "01_0015.npy", np.zeros(len(frame_mask), dtype=np.int64))
    np.save(pixel_dir / "01_0014.npy", pixel)
    np.save(pixel_dir / "01_0015.npy", np.zeros((len(frame_mask), 4, 4), dtype=np.uint8))
    return root


UB_SIZE = (72, 128)  # H x W of the fixture's object masks (the real ones are 720 x 1280)


def ubnormal_tree(root: Path, masks: dict[str, dict[int, np.ndarray]], tracks: dict[str, str]) -> Path:
    """UBnormal as downloaded, lists under `scripts/` with their real names; `masks[video][frame]` is written as
    `<video>_<frame:04d>_gt.png` (grey level = object id), `tracks[video]` as `<video>_tracks.txt`."""
    lists = {
        "abnormal_training": "abnormal_scene_1_scenario_1",
        "normal_training": "normal_scene_1_scenario_2",
        "abnormal_validation": "abnormal_scene_2_scenario_1",
        "normal_validation": "normal_scene_2_scenario_2",
        "abnormal_test": "abnormal_scene_3_scenario_1\nabnormal_scene_3_scenario_2_fog",
        "normal_test": "normal_scene_3_scenario_3",
    }
    for name, text in lists.items():
        write(root / "scripts" / f"{name}_video_names.txt", text + "\n")
        for stem in text.split():
            scene = root / f"Scene{stem.split('_')[2]}"
            write(scene / f"{stem}.mp4")
            folder = scene / f"{stem}_annotations"
            if stem in tracks:
                write(folder / f"{stem}_tracks.txt", tracks[stem])
            for frame, img in masks.get(stem, {}).items():
                folder.mkdir(parents=True, exist_ok=True)
                assert cv2.imwrite(str(folder / f"{stem}_{frame:04d}_gt.png"), img.astype(np.uint8))
    return root
