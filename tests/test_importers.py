"""Importers on tiny fixtures in each benchmark's documented layout (empty files stand in for videos)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stprompt.data.annotations import load, validate
from stprompt.data.import_cli import main
from stprompt.data.importers import (
    UCF_CRIME_CLASSES,
    import_shanghaitech,
    import_ubnormal,
    import_ucf_crime,
)
from stprompt.errors import UserError


def _write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _by_name(ann) -> dict:
    return {Path(v.path).stem: v for v in ann.videos}


# ----------------------------------------------------------------------------- UCF-Crime

UCF_SPLITS = "UCF_Crimes-Train-Test-Split/Anomaly_Detection_splits"
UCF_TEMPORAL = "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"


def _ucf(root: Path) -> Path:
    _write(
        root / UCF_SPLITS / "Anomaly_Train.txt",
        "Abuse/Abuse001_x264.mp4\nTraining_Normal_Videos_Anomaly/Normal_Videos001_x264.mp4\n",
    )
    _write(
        root / UCF_SPLITS / "Anomaly_Test.txt",
        "Abuse/Abuse028_x264.mp4\r\nArrest/Arrest039_x264.mp4\r\n"
        "Testing_Normal_Videos_Anomaly/Normal_Videos_003_x264.mp4\r\n\r\n",
    )
    _write(
        root / UCF_TEMPORAL,
        "Abuse028_x264.mp4  Abuse  165  240  -1  -1\n"
        "Arrest039_x264.mp4  Arrest  7215  19648  20000  20100\n"
        "Normal_Videos_003_x264.mp4  Normal  -1  -1  -1  -1\n",
    )
    for rel in (
        "Anomaly-Videos-Part-1/Abuse/Abuse001_x264.mp4",
        "Anomaly-Videos-Part-1/Abuse/Abuse028_x264.mp4",
        "Anomaly-Videos-Part-1/Arrest/Arrest039_x264.mp4",
        "Training-Normal-Videos-Part-1/Normal_Videos001_x264.mp4",
        # the same normal file name in two folders: the one matching the listed folder wins
        "Normal_Videos_for_Event_Recognition/Normal_Videos_003_x264.mp4",
        "Testing_Normal_Videos_Anomaly/Normal_Videos_003_x264.mp4",
    ):
        _write(root / rel)
    return root


def test_ucf_crime_layout(tmp_path):
    root = _ucf(tmp_path / "ucf")
    ann = import_ucf_crime(root)
    assert ann.classes == ["normal", *UCF_CRIME_CLASSES]
    assert ann.classes[1:4] == ["Abuse", "Arrest", "Arson"] and len(ann.classes) == 14
    assert ann.fps == 30.0 and ann.root == root
    v = _by_name(ann)
    assert [(x.path, x.split, x.labels) for x in ann.videos] == [
        ("Anomaly-Videos-Part-1/Abuse/Abuse001_x264.mp4", "train", ["Abuse"]),
        ("Training-Normal-Videos-Part-1/Normal_Videos001_x264.mp4", "train", ["normal"]),
        ("Anomaly-Videos-Part-1/Abuse/Abuse028_x264.mp4", "test", ["Abuse"]),
        ("Anomaly-Videos-Part-1/Arrest/Arrest039_x264.mp4", "test", ["Arrest"]),
        ("Testing_Normal_Videos_Anomaly/Normal_Videos_003_x264.mp4", "test", ["normal"]),
    ]
    # inclusive ranges in the file -> end exclusive
    assert v["Abuse028_x264"].anomalies == [(165, 241)]
    assert v["Arrest039_x264"].anomalies == [(7215, 19649), (20000, 20101)]
    assert v["Abuse001_x264"].anomalies == [] and v["Normal_Videos_003_x264"].anomalies == []
    assert all(not x.boxes for x in ann.videos)
    validate(ann.to_json())
    ann.save(root / "annotations.json")
    again = load(root)
    assert again.video_path(again.videos[0]).is_file()


def test_ucf_crime_lists_in_root_and_fps(tmp_path):
    root = _ucf(tmp_path / "ucf")
    for name in ("Anomaly_Train.txt", "Anomaly_Test.txt"):
        (root / UCF_SPLITS / name).rename(root / name)
    ann = import_ucf_crime(root, fps=25.0)
    assert ann.fps == 25.0 and len(ann.videos) == 5


def test_ucf_crime_boxes(tmp_path, capsys):
    root = _ucf(tmp_path / "ucf")
    boxes = tmp_path / "boxes"
    _write(boxes / "Arrest039_x264.txt", "7300 10 20 50 80\n7300 60 20 90 70\n\n7301 11.5 20 51 80\n")
    _write(boxes / "Abuse028.txt", "170, 1, 2, 3, 4\n")  # the _x264 suffix is optional
    _write(boxes / "Stealing999_x264.txt", "1 1 2 3 4\n")  # matches no video -> warning
    ann = import_ucf_crime(root, boxes_dir=boxes)
    v = _by_name(ann)
    assert v["Arrest039_x264"].boxes == {
        7300: [[10.0, 20.0, 50.0, 80.0], [60.0, 20.0, 90.0, 70.0]],
        7301: [[11.5, 20.0, 51.0, 80.0]],
    }
    assert v["Abuse028_x264"].boxes == {170: [[1.0, 2.0, 3.0, 4.0]]}
    assert not v["Normal_Videos_003_x264"].boxes
    doc = ann.to_json()
    validate(doc)
    assert doc["videos"][3]["boxes"]["7300"][1] == [60.0, 20.0, 90.0, 70.0]
    err = capsys.readouterr().err
    assert "Stealing999_x264" in err and err.count("\n") == 1


@pytest.mark.parametrize("line", ["7300 10 20 50", "7300 a 20 50 80", "7300 50 20 10 80"])
def test_ucf_crime_bad_box_line(tmp_path, line):
    root = _ucf(tmp_path / "ucf")
    bad = _write(tmp_path / "boxes" / "Arrest039_x264.txt", f"7299 1 1 2 2\n{line}\n")
    with pytest.raises(UserError, match=rf"{bad.name}:2\b"):
        import_ucf_crime(root, boxes_dir=tmp_path / "boxes")


def test_ucf_crime_boxes_dir_missing(tmp_path):
    with pytest.raises(UserError, match="nowhere"):
        import_ucf_crime(_ucf(tmp_path / "ucf"), boxes_dir=tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["Anomaly_Train.txt", "Anomaly_Test.txt", UCF_TEMPORAL])
def test_ucf_crime_missing_list_file(tmp_path, name):
    root = _ucf(tmp_path / "ucf")
    next(root.rglob(name)).unlink()
    with pytest.raises(UserError, match=name):
        import_ucf_crime(root)


def test_ucf_crime_missing_video(tmp_path, capsys):
    root = _ucf(tmp_path / "ucf")
    (root / "Anomaly-Videos-Part-1/Abuse/Abuse001_x264.mp4").unlink()
    with pytest.raises(UserError, match="Abuse/Abuse001_x264.mp4"):
        import_ucf_crime(root)
    ann = import_ucf_crime(root, missing_ok=True)
    assert len(ann.videos) == 4 and "Abuse001_x264" not in _by_name(ann)
    err = capsys.readouterr().err
    assert "Abuse001_x264.mp4" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "line",
    [
        "Arrest039_x264.mp4  Arrest  7215",
        "Arrest039_x264.mp4  Arrest  7215  x  -1  -1",
        "Arrest039_x264.mp4  Arrest  7215  7000  -1  -1",
        "Normal_Videos_003_x264.mp4  Normal  5  9  -1  -1",
    ],
)
def test_ucf_crime_bad_temporal_line(tmp_path, line):
    root = _ucf(tmp_path / "ucf")
    _write(root / UCF_TEMPORAL, f"Abuse028_x264.mp4  Abuse  165  240  -1  -1\n{line}\n")
    with pytest.raises(UserError, match=rf"{UCF_TEMPORAL}:2\b"):
        import_ucf_crime(root)


def test_ucf_crime_test_video_without_annotation(tmp_path):
    root = _ucf(tmp_path / "ucf")
    _write(root / UCF_TEMPORAL, "Abuse028_x264.mp4  Abuse  165  240  -1  -1\n")
    with pytest.raises(UserError, match="Arrest039_x264.mp4"):
        import_ucf_crime(root)


def test_ucf_crime_unknown_class_folder(tmp_path):
    root = _ucf(tmp_path / "ucf")
    _write(root / UCF_SPLITS / "Anomaly_Train.txt", "Juggling/Juggling001_x264.mp4\n")
    with pytest.raises(UserError, match=r"Anomaly_Train.txt:1\b.*Juggling"):
        import_ucf_crime(root)


# ----------------------------------------------------------------------------- ShanghaiTech


def _shanghaitech(root: Path, train: str = "01_001\n01_0014\n02_0001\n") -> Path:
    _write(root / "SH_Train.txt", train)
    _write(root / "SH_Test.txt", "01_0015\n01_0016\n03_001\n")
    _write(root / "videos/01_001.avi")
    (root / "frames/01_0014").mkdir(parents=True)  # a folder of frames stands for the video
    _write(root / "frames/01_0014/000.jpg")
    _write(root / "videos/02_0001.avi")
    _write(root / "videos/01_0015.mp4")
    (root / "testing/frames/01_0016").mkdir(parents=True)
    _write(root / "training/videos/03_001.avi")
    masks = root / "test_frame_mask"
    masks.mkdir()
    np.save(masks / "01_0014.npy", np.array([0, 1, 1, 1, 0, 0, 0, 1], dtype=np.int8))
    np.save(masks / "01_0015.npy", np.array([0, 0, 1, 1, 0, 1], dtype=np.int64))
    np.save(masks / "01_0016.npy", np.zeros(5, dtype=np.int64))
    pixel = np.zeros((6, 8, 10), dtype=np.uint8)
    pixel[2, 1:3, 3:5] = 1  # 2x2 blob -> [3, 1, 5, 3]
    pixel[2, 6, 8] = 1  # one pixel -> [8, 6, 9, 7]
    pixel[3, 0:8, 0:1] = 1  # left column -> [0, 0, 1, 8]
    (root / "test_pixel_mask").mkdir()
    np.save(root / "test_pixel_mask/01_0015.npy", pixel)
    _write(root / "anomalous_train.txt", "02_0001\n")
    return root


def test_shanghaitech_layout(tmp_path):
    root = _shanghaitech(tmp_path / "sh")
    ann = import_shanghaitech(root)
    assert ann.classes == ["normal", "anomaly"] and ann.fps == 24.0
    assert [(x.path, x.split, x.labels) for x in ann.videos] == [
        ("videos/01_001.avi", "train", ["normal"]),
        ("frames/01_0014", "train", ["anomaly"]),
        ("videos/02_0001.avi", "train", ["anomaly"]),  # from anomalous_train.txt
        ("videos/01_0015.mp4", "test", ["anomaly"]),
        ("testing/frames/01_0016", "test", ["normal"]),
        ("training/videos/03_001.avi", "test", ["normal"]),
    ]
    v = _by_name(ann)
    assert v["01_0014"].anomalies == [(1, 4), (7, 8)]
    assert v["02_0001"].anomalies == []
    assert v["01_0015"].anomalies == [(2, 4), (5, 6)]
    assert v["01_0016"].anomalies == [] and v["03_001"].anomalies == []
    b = v["01_0015"].boxes
    assert set(b) == {2, 3}
    assert sorted(b[2]) == [[3.0, 1.0, 5.0, 3.0], [8.0, 6.0, 9.0, 7.0]]
    assert b[3] == [[0.0, 0.0, 1.0, 8.0]]
    assert not v["01_0014"].boxes
    validate(ann.to_json())


def test_shanghaitech_label_column(tmp_path):
    root = _shanghaitech(tmp_path / "sh", train="01_001 0\n01_0014.avi 1\n02_0001 0\n")
    v = _by_name(import_shanghaitech(root, fps=30))
    assert v["01_001"].labels == ["normal"] and v["02_0001"].labels == ["normal"]  # label beats the list
    assert v["01_0014"].labels == ["anomaly"] and v["01_0014"].anomalies == [(1, 4), (7, 8)]


def test_shanghaitech_label_contradicts_mask(tmp_path):
    root = _shanghaitech(tmp_path / "sh", train="01_001 0\n01_0014 0\n")
    with pytest.raises(UserError, match=r"SH_Train.txt:2\b.*01_0014"):
        import_shanghaitech(root)


def test_shanghaitech_anomalous_test_video_without_mask(tmp_path):
    root = _shanghaitech(tmp_path / "sh")
    _write(root / "SH_Test.txt", "03_001 1\n")
    with pytest.raises(UserError, match=r"SH_Test.txt:1\b.*03_001 has no frame mask"):
        import_shanghaitech(root)


@pytest.mark.parametrize("line", ["01_001 2", "01_001 0 extra"])
def test_shanghaitech_bad_list_line(tmp_path, line):
    root = _shanghaitech(tmp_path / "sh", train=f"01_0014\n{line}\n")
    with pytest.raises(UserError, match=r"SH_Train.txt:2\b"):
        import_shanghaitech(root)


def test_shanghaitech_bad_mask(tmp_path):
    root = _shanghaitech(tmp_path / "sh")
    np.save(root / "test_frame_mask/01_0015.npy", np.zeros((2, 3)))
    with pytest.raises(UserError, match="01_0015.npy"):
        import_shanghaitech(root)


def test_shanghaitech_missing_list_and_video(tmp_path):
    root = _shanghaitech(tmp_path / "sh")
    (root / "videos/01_0015.mp4").unlink()
    with pytest.raises(UserError, match="01_0015"):
        import_shanghaitech(root)
    assert len(import_shanghaitech(root, missing_ok=True).videos) == 5
    (root / "SH_Test.txt").unlink()
    with pytest.raises(UserError, match="SH_Test.txt"):
        import_shanghaitech(root)


def test_shanghaitech_video_found_anywhere(tmp_path):
    root = _shanghaitech(tmp_path / "sh")
    (root / "videos/01_0015.mp4").rename(root / "01_0015.mp4")
    (root / "videos/01_001.avi").unlink()
    _write(root / "elsewhere/deep/01_001.avi")
    v = _by_name(import_shanghaitech(root))
    assert v["01_0015"].path == "01_0015.mp4"
    assert v["01_001"].path == "elsewhere/deep/01_001.avi"


# ----------------------------------------------------------------------------- UBnormal

UB_LISTS = {
    "abnormal_train": "abnormal_scene_1_scenario_1\n",
    "normal_train": "normal_scene_1_scenario_1\n",
    "abnormal_validation": "abnormal_scene_2_scenario_1\n",
    "normal_validation": "normal_scene_2_scenario_2\n",
    "abnormal_test": "abnormal_scene_3_scenario_1\n",
    "normal_test": "normal_scene_3_scenario_1\n",
}


def _ubnormal(root: Path) -> Path:
    for name, text in UB_LISTS.items():
        _write(root / "scripts" / f"{name}_video_names.txt", text)
    tracks = {
        "abnormal_scene_1_scenario_1": "0,10,20\n1,15,30\n2,50,50\n",
        "abnormal_scene_2_scenario_1": "0, 5, 6\n",
        "abnormal_scene_3_scenario_1": "0.000000e+00,1.000000e+02,1.200000e+02\n",
    }
    for text in UB_LISTS.values():
        stem = text.strip()
        scene = stem.split("_")[2]
        _write(root / f"Scene{scene}" / f"{stem}.mp4")
        if stem in tracks:
            folder = root / f"Scene{scene}" / f"{stem}_annotations"
            _write(folder / f"{stem}_tracks.txt", tracks[stem])
            _write(folder / f"{stem}_0000_gt.png")  # masks are ignored
    return root


def test_ubnormal_layout(tmp_path):
    root = _ubnormal(tmp_path / "ub")
    ann = import_ubnormal(root)
    assert ann.classes == ["normal", "anomaly"] and ann.fps == 30.0
    assert [(x.path, x.split, x.labels) for x in ann.videos] == [
        ("Scene1/abnormal_scene_1_scenario_1.mp4", "train", ["anomaly"]),
        ("Scene1/normal_scene_1_scenario_1.mp4", "train", ["normal"]),
        ("Scene3/abnormal_scene_3_scenario_1.mp4", "test", ["anomaly"]),
        ("Scene3/normal_scene_3_scenario_1.mp4", "test", ["normal"]),
    ]
    v = _by_name(ann)
    assert v["abnormal_scene_1_scenario_1"].anomalies == [(10, 31), (50, 51)]
    assert v["abnormal_scene_3_scenario_1"].anomalies == [(100, 121)]
    assert all(not x.boxes for x in ann.videos)
    validate(ann.to_json())


def test_ubnormal_validation_and_fallback_location(tmp_path):
    root = _ubnormal(tmp_path / "ub")
    (root / "Scene2/normal_scene_2_scenario_2.mp4").rename(root / "normal_scene_2_scenario_2.mp4")
    for name in UB_LISTS:  # lists directly in root work as well
        (root / "scripts" / f"{name}_video_names.txt").rename(root / f"{name}_video_names.txt")
    ann = import_ubnormal(root, include_validation=True, fps=15)
    assert ann.fps == 15.0
    assert [x.id for x in ann.split("train")] == [
        "Scene1__abnormal_scene_1_scenario_1",
        "Scene1__normal_scene_1_scenario_1",
        "Scene2__abnormal_scene_2_scenario_1",
        "normal_scene_2_scenario_2",
    ]
    assert _by_name(ann)["abnormal_scene_2_scenario_1"].anomalies == [(5, 7)]
    assert len(ann.split("test")) == 2
    validate(ann.to_json())


def test_ubnormal_missing_list(tmp_path):
    root = _ubnormal(tmp_path / "ub")
    (root / "scripts/normal_test_video_names.txt").unlink()
    with pytest.raises(UserError, match="normal_test_video_names.txt"):
        import_ubnormal(root)
    # validation lists are only needed when asked for
    root2 = _ubnormal(tmp_path / "ub2")
    (root2 / "scripts/abnormal_validation_video_names.txt").unlink()
    assert len(import_ubnormal(root2).videos) == 4
    with pytest.raises(UserError, match="abnormal_validation_video_names.txt"):
        import_ubnormal(root2, include_validation=True)


def test_ubnormal_missing_video_and_tracks(tmp_path):
    root = _ubnormal(tmp_path / "ub")
    (root / "Scene3/normal_scene_3_scenario_1.mp4").unlink()
    with pytest.raises(UserError, match=r"not found under .*: normal_scene_3_scenario_1"):
        import_ubnormal(root)
    (root / "Scene3/abnormal_scene_3_scenario_1_annotations/abnormal_scene_3_scenario_1_tracks.txt").unlink()
    with pytest.raises(UserError, match="abnormal_scene_3_scenario_1_tracks.txt"):
        import_ubnormal(root, missing_ok=True)


@pytest.mark.parametrize("line", ["0,10", "0,abc,20", "0,20,10", "0,10.5,20"])
def test_ubnormal_bad_tracks_line(tmp_path, line):
    root = _ubnormal(tmp_path / "ub")
    tracks = _write(
        root / "Scene1/abnormal_scene_1_scenario_1_annotations/abnormal_scene_1_scenario_1_tracks.txt",
        f"0,1,2\n{line}\n",
    )
    with pytest.raises(UserError, match=rf"{tracks.name}:2\b"):
        import_ubnormal(root)


def test_video_in_two_splits_is_an_error(tmp_path):
    root = _ubnormal(tmp_path / "ub")
    _write(root / "scripts/normal_test_video_names.txt", "normal_scene_1_scenario_1\n")
    with pytest.raises(UserError, match="both the train and the test split"):
        import_ubnormal(root)


def test_missing_root(tmp_path):
    for fn in (import_ucf_crime, import_shanghaitech, import_ubnormal):
        with pytest.raises(UserError, match="not a folder"):
            fn(tmp_path / "absent")


# ----------------------------------------------------------------------------- CLI


def test_cli_writes_annotations(tmp_path, capsys):
    root = _ubnormal(tmp_path / "ub")
    assert main(["ubnormal", str(root)]) == 0
    ann = load(root / "annotations.json")
    assert len(ann.videos) == 4 and ann.fps == 30.0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "train 2 videos (1 anomalous)" in err[0] and "test 2 videos (1 anomalous)" in err[0]


def test_cli_out_elsewhere_and_boxes(tmp_path, capsys):
    root = _ucf(tmp_path / "ucf")
    _write(tmp_path / "boxes/Arrest039_x264.txt", "7300 10 20 50 80\n")
    out = tmp_path / "out" / "ann.json"
    out.parent.mkdir()
    assert main(["ucf-crime", str(root), "--out", str(out), "--boxes", str(tmp_path / "boxes"), "--fps", "25"]) == 0
    ann = load(out)
    assert ann.fps == 25.0 and len(ann.videos) == 5
    assert all(ann.video_path(v).is_file() for v in ann.videos)  # paths rebased onto out's folder
    assert "1 with boxes" in capsys.readouterr().err


def test_cli_missing_root(tmp_path, capsys):
    assert main(["shanghaitech", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stp-import: error:") and "absent" in err


def test_cli_boxes_only_for_ucf(tmp_path, capsys):
    root = _shanghaitech(tmp_path / "sh")
    assert main(["shanghaitech", str(root), "--boxes", str(tmp_path)]) == 2
    assert "--boxes" in capsys.readouterr().err
    assert not (root / "annotations.json").exists()


def test_cli_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "{ucf-crime,shanghaitech,ubnormal}" in out
    # options whose default depends on the dataset say so instead of printing "(default: None)"
    flat = " ".join(out.split())  # argparse wraps at the terminal width
    assert "(default: ROOT/annotations.json" in flat and "(default: the dataset's own, shanghaitech 24" in flat
    assert "None" not in flat
