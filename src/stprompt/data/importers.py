"""Dataset importers: public benchmark layouts -> `Annotations` (annotations.json).

Each importer reads only list and annotation files (it never decodes a video), so importing a
full benchmark takes seconds; the exceptions are the mask files boxes come from (ShanghaiTech's
pixel masks, UBnormal's one PNG per abnormal test frame: minutes on a few cores). A pickled
annotation file is read without running code (`_DataUnpickler`). Video paths come out relative to the dataset root, so
`ann.save(root / "annotations.json")` gives a self-contained dataset folder. Frame ranges are
native, 0-based, end exclusive (DESIGN.md), whatever convention the source uses.

A user mistake (missing list file, missing video, unparsable line) raises `UserError` naming the
file (and line); warnings (skipped videos, unused box files) go to stderr as one line each.
"""

from __future__ import annotations

import codecs
import collections
import os
import pickle
import re
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError
from .annotations import NORMAL, Annotations, Video

UCF_CRIME_CLASSES = (
    "Abuse",
    "Arrest",
    "Arson",
    "Assault",
    "Burglary",
    "Explosion",
    "Fighting",
    "RoadAccidents",
    "Robbery",
    "Shooting",
    "Shoplifting",
    "Stealing",
    "Vandalism",
)
ANOMALY = "anomaly"
BINARY_CLASSES = (NORMAL, ANOMALY)

UCF_TRAIN_LIST = "Anomaly_Train.txt"
UCF_TEST_LIST = "Anomaly_Test.txt"
UCF_TEMPORAL = "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"
SH_TRAIN_LIST = "SH_Train.txt"
SH_TEST_LIST = "SH_Test.txt"
SH_ANOMALOUS_TRAIN = "anomalous_train.txt"
SH_FRAME_MASKS = "test_frame_mask"
SH_PIXEL_MASKS = "test_pixel_mask"
SH_VIDEO_SUFFIXES = (".avi", ".mp4")
LIU_MA_TEST = "Test_annotation.pkl"  # github.com/xuzero/UCFCrime_BoundingBox_Annotation
LIU_MA_REPO = "xuzero/UCFCrime_BoundingBox_Annotation"
# UBnormal's split lists (github.com/lilygeorgescu/UBnormal, scripts/): the training lists say "training";
# "train" is accepted as well for lists renamed by hand
UB_PART_NAMES = {"train": ("training", "train"), "validation": ("validation",), "test": ("test",)}

_SEARCH_DEPTH = 4  # how deep list files are searched for below the root
_MAX_NAMED = 5  # names quoted in one warning line


# ----------------------------------------------------------------------------- shared helpers


def _warn(msg: str) -> None:
    print(f"stprompt: warning: {msg}", file=sys.stderr)


def _names(items: list[str]) -> str:
    more = f" (+{len(items) - _MAX_NAMED} more)" if len(items) > _MAX_NAMED else ""
    return ", ".join(items[:_MAX_NAMED]) + more


def _dataset_root(root: str | os.PathLike) -> Path:
    p = Path(root).expanduser()
    if not p.is_dir():
        raise UserError(f"dataset root {p} is not a folder")
    return p


def _find(root: Path, name: str, *, want_dir: bool = False, max_depth: int = _SEARCH_DEPTH) -> Path | None:
    """Shallowest entry called `name` (case-insensitive) below root, breadth first.

    Breadth first so that the usual layouts (file in root or one folder down) are found without
    listing the thousands of frame files deeper in the tree.
    """
    wanted = name.casefold()
    level = [root]
    for _ in range(max_depth + 1):
        hits: list[Path] = []
        deeper: list[str] = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    continue
                if entry.name.casefold() == wanted and is_dir == want_dir:
                    hits.append(Path(entry.path))
                if is_dir:
                    deeper.append(entry.path)
        if hits:
            return hits[0]
        if not deeper:
            break
        level = deeper
    return None


def _require(root: Path, name: str, what: str) -> Path:
    found = _find(root, name)
    if found is None:
        raise UserError(f"cannot find {name} ({what}) under {root} (searched {_SEARCH_DEPTH} folders deep)")
    return found


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank, non-# lines of a text file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if s and not s.startswith("#"):
            out.append((n, s))
    return out


def _index_files(root: Path, suffixes: tuple[str, ...]) -> dict[str, list[str]]:
    """File name -> root-relative posix paths of every file with one of `suffixes` below root.

    Follows symlinked folders because datasets are often assembled from links to other disks.
    """
    index: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for fn in sorted(filenames):
            if fn.lower().endswith(suffixes):
                rel = Path(dirpath, fn).relative_to(root).as_posix()
                index.setdefault(fn, []).append(rel)
    return index


def _pick(candidates: list[str], listed: str) -> str:
    """Choose among same-named files the one that best matches the listed relative path."""
    if len(candidates) == 1:
        return candidates[0]
    for c in candidates:
        if c == listed or c.endswith("/" + listed):
            return c
    folder = listed.rsplit("/", 1)[0] if "/" in listed else ""
    for c in candidates:
        if folder and c.rsplit("/", 2)[-2:-1] == [folder]:
            return c
    return sorted(candidates, key=lambda c: (c.count("/"), c))[0]


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of half-open frame ranges, sorted, touching ranges joined."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ranges of the non-zero runs of a 1-D mask."""
    m = np.concatenate([[0], (np.asarray(mask) != 0).astype(np.int8), [0]])
    d = np.diff(m)
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def _int(text: str) -> int:
    """An integer frame number; accepts integer-valued floats ("230.0") as numpy.savetxt writes them."""
    try:
        return int(text)
    except ValueError:
        f = float(text)
        if not f.is_integer():
            raise ValueError(f"{text!r} is not a whole frame number") from None
        return int(f)


def _check_unique(videos: list[Video]) -> list[Video]:
    """Drop repeated list entries of one split; a video listed in two splits is a user error."""
    seen: dict[str, Video] = {}
    out = []
    for v in videos:
        prev = seen.get(v.id)
        if prev is None:
            seen[v.id] = v
            out.append(v)
        elif prev.split != v.split:
            raise UserError(f"video {v.path} is listed in both the {prev.split} and the {v.split} split")
    return out


def _report_missing(missing: list[str], missing_ok: bool, where: str, root: Path) -> None:
    if not missing:
        return
    if not missing_ok:
        raise UserError(
            f"{len(missing)} video(s) listed in {where} not found under {root}: {_names(missing)} "
            "(pass missing_ok / --missing-ok to skip them)"
        )
    _warn(f"skipped {len(missing)} listed video(s) not found under {root}: {_names(missing)}")


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """`_codecs.encode` as pickles of numpy arrays use it (their raw bytes as a latin-1 string), and nothing else."""
    if encoding.replace("_", "-").lower() not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(f"refused _codecs.encode(..., {encoding!r}, {errors!r})")
    return codecs.encode(text, "latin1")


def _pickle_globals() -> dict[tuple[str, str], object]:
    """The only callables a data pickle may name: numpy's array / dtype / scalar rebuilders and plain containers.

    Both spellings of numpy's private modules (`numpy.core` before 2.0, `numpy._core` after) and of the Python 2
    builtins are listed because annotation pickles come from either era.
    """
    array = np.arange(2)
    allowed: dict[str, object] = {
        "multiarray._reconstruct": array.__reduce__()[0],
        "multiarray.scalar": np.float64(0).__reduce__()[0],
        "numeric._frombuffer": array.__reduce_ex__(5)[0],
    }
    table: dict[tuple[str, str], object] = {}
    for key, obj in allowed.items():
        module, name = key.split(".")
        for package in ("numpy.core", "numpy._core"):
            table[(f"{package}.{module}", name)] = obj
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    table[("_codecs", "encode")] = _latin1_encode
    table[("collections", "OrderedDict")] = collections.OrderedDict
    for builtins in ("builtins", "__builtin__"):
        for name, obj in (("set", set), ("frozenset", frozenset), ("complex", complex)):
            table[(builtins, name)] = obj
    return table


class _DataUnpickler(pickle.Unpickler):
    """Unpickler that builds only containers, numbers, strings and numpy arrays.

    A pickle can call any importable function while it loads, and annotation files come from the internet, so
    every global outside `_pickle_globals` is refused instead of imported.
    """

    _allowed: dict[tuple[str, str], object] | None = None

    def find_class(self, module: str, name: str) -> object:
        if _DataUnpickler._allowed is None:
            _DataUnpickler._allowed = _pickle_globals()
        obj = _DataUnpickler._allowed.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        return obj


def _read_data_pickle(path: Path) -> object:
    """The data in a pickle file, through `_DataUnpickler`; anything else in it is a UserError naming the file."""
    try:
        with open(path, "rb") as fh:
            return _DataUnpickler(fh, encoding="latin1").load()  # latin1: Python 2 pickles' byte strings
    except OSError as err:
        raise UserError(f"cannot read {path}: {err}") from None
    except pickle.UnpicklingError as err:
        if str(err).startswith("refused"):
            raise UserError(
                f"{path}: {err}: only containers, numbers, strings and numpy arrays are read from a pickle"
            ) from None
        raise UserError(f"{path} is not a readable pickle: {err}") from None
    except Exception as err:  # a damaged stream raises anything from EOFError to TypeError
        raise UserError(f"{path} is not a readable pickle: {type(err).__name__}: {err}") from None


# ----------------------------------------------------------------------------- UCF-Crime


def _ucf_class(listed: str, path: Path, lineno: int) -> str:
    """Class of a listed UCF-Crime video: its folder, else its file-name prefix ("Arrest039_x264")."""
    by_lower = {c.lower(): c for c in UCF_CRIME_CLASSES}
    parts = listed.split("/")
    name = parts[-1]
    if "normal" in listed.lower():
        return NORMAL
    if len(parts) > 1 and parts[-2].lower() in by_lower:
        return by_lower[parts[-2].lower()]
    m = re.match(r"[A-Za-z]+", name)
    if m and m.group(0).lower() in by_lower:
        return by_lower[m.group(0).lower()]
    raise UserError(
        f"{path}:{lineno}: cannot tell the class of {listed!r}: its folder is not one of "
        f"normal, {', '.join(UCF_CRIME_CLASSES)}"
    )


def _read_ucf_temporal(path: Path) -> dict[str, tuple[list[tuple[int, int]], int]]:
    """Video file name -> (merged end-exclusive ranges, line number) from the temporal annotation."""
    out: dict[str, tuple[list[tuple[int, int]], int]] = {}
    for n, line in _read_lines(path):
        fields = line.split()
        where = f"{path}:{n}"
        if len(fields) < 4 or (len(fields) - 2) % 2:
            raise UserError(f"{where}: expected 'Video.mp4 Class start1 end1 start2 end2', got {line!r}")
        try:
            nums = [int(x) for x in fields[2:]]
        except ValueError:
            raise UserError(f"{where}: frame numbers must be integers, got {line!r}") from None
        ranges = []
        for s, e in zip(nums[0::2], nums[1::2], strict=True):
            if s == -1 and e == -1:
                continue
            if s < 0 or e < s:
                raise UserError(f"{where}: bad frame range {s} {e} (needs 0 <= start <= end, or -1 -1)")
            ranges.append((s, e + 1))  # the file's ranges are inclusive
        if ranges and fields[1].lower().startswith("normal"):
            raise UserError(f"{where}: a Normal video cannot have anomalous frames: {line!r}")
        name = fields[0].replace("\\", "/").rsplit("/", 1)[-1]
        if name in out:
            raise UserError(f"{where}: {name} is annotated twice (also on line {out[name][1]})")
        out[name] = (_merge(ranges), n)
    return out


def _read_box_file(path: Path) -> dict[int, list[list[float]]]:
    """`frame x1 y1 x2 y2` lines -> {frame: [[x1, y1, x2, y2], ...]}."""
    boxes: dict[int, list[list[float]]] = {}
    for n, line in _read_lines(path):
        fields = line.replace(",", " ").split()
        where = f"{path}:{n}"
        if len(fields) != 5:
            raise UserError(f"{where}: expected 'frame x1 y1 x2 y2', got {line!r}")
        try:
            frame = _int(fields[0])
            x1, y1, x2, y2 = (float(v) for v in fields[1:])
        except ValueError:
            raise UserError(f"{where}: expected 'frame x1 y1 x2 y2' numbers, got {line!r}") from None
        if frame < 0:
            raise UserError(f"{where}: frame must be >= 0, got {frame}")
        if not (x1 < x2 and y1 < y2):
            raise UserError(f"{where}: box needs x1 < x2 and y1 < y2, got {line!r}")
        boxes.setdefault(frame, []).append([x1, y1, x2, y2])
    return boxes


def import_ucf_crime(
    root: str | os.PathLike,
    *,
    boxes_dir: str | os.PathLike | None = None,
    fps: float = 30.0,
    missing_ok: bool = False,
) -> Annotations:
    """UCF-Crime (Sultani et al., CVPR 2018) with its official train/test split.

    Reads `Anomaly_Train.txt`, `Anomaly_Test.txt` and
    `Temporal_Anomaly_Annotation_for_Testing_Videos.txt`, found anywhere below `root` (directly, or
    in `UCF_Crimes-Train-Test-Split/Anomaly_Detection_splits/`). Videos are matched by file name
    against every `*.mp4` below root, so `Videos/<Class>/`, `<Class>/` and `Anomaly-Videos-Part-*/`
    layouts all work; a listed video that is not found is an error (or, with `missing_ok`, skipped
    with a warning).

    Labels: the list's folder class (13 classes, canonical order, "normal" first); the
    `*Normal*` folders are normal. Temporal annotation lines are
    `Name.mp4 Class start1 end1 start2 end2` with -1 for absent; the original ranges are inclusive
    frame numbers, so they become `(start, end + 1)`. Every anomalous test video must have a line.

    `boxes_dir` (optional) gives the spatial boxes of the anomalous test videos:

    - Liu & Ma, "Exploring Background-bias for Anomaly Detection in Surveillance Videos" (ACM MM
      2019): their `Test_annotation.pkl` (github.com/xuzero/UCFCrime_BoundingBox_Annotation), or a
      folder holding it (a clone of that repository). See `_read_liu_ma` for its layout.
    - a folder of text files, one per video, `<VideoStem>.txt` (e.g. `Arrest039_x264.txt`, the
      `_x264` suffix optional), one box per line `frame x1 y1 x2 y2` (whitespace or commas, pixels,
      0-based native frame): boxes drawn by hand or converted from elsewhere.

    A malformed entry is an error naming file and entry (or line); entries that match no anomalous
    test video are reported in one warning, and a file that matches none of them is an error; boxes
    on frames outside their video's temporal annotation are reported in one warning.
    """
    base = _dataset_root(root)
    train_list = _require(base, UCF_TRAIN_LIST, "UCF-Crime training list")
    test_list = _require(base, UCF_TEST_LIST, "UCF-Crime test list")
    temporal_path = _require(base, UCF_TEMPORAL, "UCF-Crime temporal annotation")
    temporal = _read_ucf_temporal(temporal_path)
    index = _index_files(base, (".mp4",))

    videos: list[Video] = []
    missing: list[str] = []
    for split, list_path in (("train", train_list), ("test", test_list)):
        for n, line in _read_lines(list_path):
            listed = line.split()[0].replace("\\", "/").strip("/")
            label = _ucf_class(listed, list_path, n)
            name = listed.rsplit("/", 1)[-1]
            candidates = index.get(name)
            if not candidates:
                missing.append(listed)
                continue
            video = Video(path=_pick(candidates, listed), split=split, labels=[label])
            if split == "test":
                entry = temporal.get(name)
                if label != NORMAL and entry is None:
                    raise UserError(f"anomalous test video {name} has no line in {temporal_path}")
                if entry is not None and entry[0]:
                    if label == NORMAL:
                        raise UserError(
                            f"{temporal_path}:{entry[1]}: {name} is a normal video in {list_path} "
                            "but has anomalous frames"
                        )
                    video.anomalies = list(entry[0])
            videos.append(video)
    _report_missing(missing, missing_ok, f"{train_list.name}/{test_list.name}", base)
    videos = _check_unique(videos)

    if boxes_dir is not None:
        _attach_ucf_boxes(videos, Path(boxes_dir).expanduser())
    return Annotations(classes=[NORMAL, *UCF_CRIME_CLASSES], fps=float(fps), videos=videos, root=base)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def _image_frame(image: str) -> int | None:
    """Frame number of an extracted frame image, the digits that end its stem (`.../image_0861.jpg` -> 861)."""
    stem = image.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    m = re.search(r"(\d+)$", stem)
    return int(m.group(1)) if m else None


def _read_liu_ma(path: Path) -> dict[str, dict[int, list[list[float]]]]:
    """Video stem -> {frame: boxes} from Liu & Ma's `Test_annotation.pkl` (or `Train_annotation.pkl`).

    The real file (xuzero/UCFCrime_BoundingBox_Annotation, a Python 2 protocol-0 pickle, read here without
    running code) is a dict `{"Arrest001_x264": [[image, x1, y1, x2, y2], ...], ...}`: one key per anomalous
    test video (140), one entry per annotated frame, `image` the path of the frame image they extracted
    (`/home3/lk/surveillance_images/Anomaly_Test/Arrest/Arrest001_x264/image_1200.jpg`), integer corners in
    the 320 x 240 pixels of the UCF-Crime videos. The image number is in the numbering of the temporal
    annotation file (every box of the real file lies inside its video's inclusive temporal range, most at
    start + 15 + 16k, i.e. the last frame of each 16-frame clip), so it is used as the frame as-is, like the
    temporal annotation's numbers. Only the file name's digits are read: the folders are the authors' disk.
    """
    doc = _read_data_pickle(path)
    layout = "{video: [[image path, x1, y1, x2, y2], ...]}"
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected Liu & Ma's box layout {layout}, got a {type(doc).__name__}")
    out: dict[str, dict[int, list[list[float]]]] = {}
    for key, entries in doc.items():
        if not isinstance(key, str) or not isinstance(entries, list | tuple):
            raise UserError(f"{path}: expected Liu & Ma's box layout {layout}, got the entry {key!r:.60}")
        boxes: dict[int, list[list[float]]] = {}
        for i, entry in enumerate(entries):
            where = f"{path}: {key}[{i}]"
            if (
                not isinstance(entry, list | tuple | np.ndarray)
                or len(entry) != 5
                or not isinstance(entry[0], str)
                or not all(_is_number(v) for v in entry[1:])
            ):
                raise UserError(f"{where}: expected [image path, x1, y1, x2, y2], got {entry!r:.120}")
            frame = _image_frame(entry[0])
            if frame is None:
                raise UserError(f"{where}: no frame number at the end of the image name {entry[0]!r}")
            x1, y1, x2, y2 = (float(v) for v in entry[1:])
            if not (x1 < x2 and y1 < y2):
                raise UserError(f"{where}: box needs x1 < x2 and y1 < y2, got {[x1, y1, x2, y2]}")
            boxes.setdefault(frame, []).append([x1, y1, x2, y2])
        name = key.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".mp4")
        out[name] = boxes
    return out


def _ucf_box_source(path: Path) -> tuple[Path, list[str], Callable[[str], dict[int, list[list[float]]]]]:
    """(the file or folder read, its video keys, key -> boxes) for `--boxes PATH`."""
    if path.is_file():
        table = _read_liu_ma(path)
        return path, list(table), table.__getitem__
    if not path.is_dir():
        raise UserError(f"boxes {path} is neither Liu & Ma's {LIU_MA_TEST} nor a folder of box files")
    pkl = _find(path, LIU_MA_TEST, max_depth=1)
    if pkl is not None:
        table = _read_liu_ma(pkl)
        return pkl, list(table), table.__getitem__
    files = {Path(rel).stem: path / rel for rel in _flatten(_index_files(path, (".txt",)))}
    if not files:
        raise UserError(
            f"boxes folder {path} holds neither {LIU_MA_TEST} (github.com/{LIU_MA_REPO}) nor <VideoStem>.txt box files"
        )
    return path, list(files), lambda key: _read_box_file(files[key])


def _attach_ucf_boxes(videos: list[Video], boxes_path: Path) -> None:
    """Give each anomalous test video its boxes from `boxes_path` (see `import_ucf_crime`)."""
    source, keys, read = _ucf_box_source(boxes_path)
    available = set(keys)
    used: set[str] = set()
    outside: list[str] = []
    wanted = [v for v in videos if v.split == "test" and v.is_anomalous]
    for v in wanted:
        stem = Path(v.path).stem
        for key in (stem, stem.removesuffix("_x264")):
            if key in available:
                v.boxes = read(key)
                used.add(key)
                if v.anomalies and any(not any(s <= f < e for s, e in v.anomalies) for f in v.boxes):
                    outside.append(stem)
                break
    if keys and not used and wanted:
        hint = f" (Liu & Ma's test boxes are {LIU_MA_TEST})" if source.suffix == ".pkl" else ""
        raise UserError(
            f"none of the {len(keys)} videos in {source} is one of the {len(wanted)} anomalous test videos{hint}"
        )
    unused = sorted(available - used)
    if unused:
        _warn(f"{len(unused)} box entries in {source} match no anomalous test video: {_names(unused)}")
    if outside:
        _warn(
            f"{len(outside)} video(s) have boxes on frames outside their temporal annotation (frame numbering?): "
            f"{_names(outside)}"
        )


def _flatten(index: dict[str, list[str]]) -> list[str]:
    return [rel for rels in index.values() for rel in rels]


# ----------------------------------------------------------------------------- ShanghaiTech


def _sh_locate(
    base: Path, name: str, fallback: dict[str, str] | None
) -> tuple[str | None, dict[str, str] | None]:
    """Root-relative path of a ShanghaiTech video: a video file, else a folder of frames.

    The usual places are checked directly; only when they miss is the tree indexed (once).
    """
    for folder in ("videos", "training/videos", "testing/videos", ""):
        for suffix in SH_VIDEO_SUFFIXES:
            p = base / folder / f"{name}{suffix}"
            if p.is_file():
                return p.relative_to(base).as_posix(), fallback
    for folder in ("frames", "training/frames", "testing/frames"):
        p = base / folder / name
        if p.is_dir():
            return p.relative_to(base).as_posix(), fallback
    if fallback is None:
        fallback = {}
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(base)
            for fn in sorted(filenames):
                stem, ext = os.path.splitext(fn)
                if ext.lower() in SH_VIDEO_SUFFIXES:
                    fallback.setdefault(stem, (rel_dir / fn).as_posix())
            if Path(dirpath).name.lower() == "frames":
                for d in dirnames:
                    fallback.setdefault(d, (rel_dir / d).as_posix())
    return fallback.get(name), fallback


def _sh_list(path: Path) -> list[tuple[int, str, int | None]]:
    """(line, video name, label or None) of a weak-split list; accepts `name` or `name label`."""
    out = []
    for n, line in _read_lines(path):
        fields = line.replace(",", " ").split()
        if len(fields) > 2:
            raise UserError(f"{path}:{n}: expected 'video_name' or 'video_name 0|1', got {line!r}")
        name = fields[0].replace("\\", "/").rsplit("/", 1)[-1]
        for ext in (*SH_VIDEO_SUFFIXES, ".npy"):
            if name.lower().endswith(ext):
                name = name[: -len(ext)]
        label = None
        if len(fields) == 2:
            if fields[1] not in ("0", "1"):
                raise UserError(f"{path}:{n}: label must be 0 (normal) or 1 (anomalous), got {fields[1]!r}")
            label = int(fields[1])
        out.append((n, name, label))
    return out


def _load_npy(path: Path, *, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} as a .npy array: {err}") from None


def _blob_boxes(mask: np.ndarray) -> list[list[float]]:
    """[x, y, x + w, y + h] of each 8-connected blob of a 2-D boolean mask, in pixel edges.

    The labelling runs on the crop around the mask's pixels: on a full 720p frame it costs about 17 ms, on the
    crop around a person well under one, and the datasets have tens of thousands of annotated frames.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return []
    cols = np.flatnonzero(mask.any(axis=0))
    y0, x0 = int(rows[0]), int(cols[0])
    crop = mask[y0 : int(rows[-1]) + 1, x0 : int(cols[-1]) + 1].astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(crop, connectivity=8)
    blobs = stats[1:count, :4].tolist()
    return [[float(x0 + x), float(y0 + y), float(x0 + x + w), float(y0 + y + h)] for x, y, w, h in blobs]


def _mask_boxes(path: Path, n_frames: int | None = None) -> dict[int, list[list[float]]]:
    """Per-frame boxes of the connected components (8-connected) of a T x H x W pixel mask.

    The real `testing/test_pixel_mask/<video>.npy` of ShanghaiTech Campus is one 0/1 array per test video,
    frames first (T x 480 x 856, T = the video's frame count, as its `test_frame_mask/<video>.npy`; e.g. anomalib's
    ShanghaiTech loader indexes it along axis 0 by frame). `n_frames` is the frame mask's length: an array whose
    first axis differs is in another layout (H x W x T, a crop) and is refused rather than read as boxes on the
    wrong frames. Boxes are pixel edges [x, y, x + w, y + h], so a one-pixel blob has a non-empty box.
    """
    masks = _load_npy(path, mmap=True)
    if masks.ndim != 3:
        raise UserError(f"{path}: pixel mask must be T x H x W, got shape {tuple(masks.shape)}")
    if n_frames is not None and masks.shape[0] != n_frames:
        raise UserError(
            f"{path}: pixel mask has shape {tuple(masks.shape)} but the frame mask has {n_frames} frames "
            "(expected T x H x W with T the video's frame count)"
        )
    boxes: dict[int, list[list[float]]] = {}
    for t in range(masks.shape[0]):
        found = _blob_boxes(np.asarray(masks[t]) != 0)
        if found:
            boxes[t] = found
    return boxes


def import_shanghaitech(
    root: str | os.PathLike,
    *,
    fps: float = 24.0,
    missing_ok: bool = False,
) -> Annotations:
    """ShanghaiTech Campus in the weakly supervised split of Zhong et al. (CVPR 2019).

    `SH_Train.txt` / `SH_Test.txt` (found below root) list one video per line, `name` or
    `name label` (label 0 normal, 1 anomalous; a directory or `.avi`/`.mp4`/`.npy` suffix on the
    name is dropped). A video is `videos/<name>.avi|.mp4` (also under `training/` or `testing/`),
    else a folder of frames `frames/<name>/`, whose folder path is then the video's path.

    Frame ground truth comes from `test_frame_mask/<name>.npy` (1-D, one 0/1 per frame; its runs of
    ones become the anomalies). A video is anomalous if its label is 1; without a label column,
    if its frame mask has a one, or (for training videos) its name is in an optional
    `anomalous_train.txt`. A label that contradicts the mask, or an anomalous test video without
    frame ground truth, is an error. Classes are ["normal", "anomaly"] (the dataset names none).
    Where `test_pixel_mask/<name>.npy` (T x H x W, the dataset's `testing/test_pixel_mask/`) exists,
    the boxes of its connected components become the per-frame boxes of anomalous videos: that is
    the ground truth of TIoU, so the import summary says how many anomalous test videos have boxes.
    """
    base = _dataset_root(root)
    train_list = _require(base, SH_TRAIN_LIST, "ShanghaiTech weak-split training list")
    test_list = _require(base, SH_TEST_LIST, "ShanghaiTech weak-split test list")
    # optional entries: searched shallowly so that their absence does not list every frame file
    frame_dir = _find(base, SH_FRAME_MASKS, want_dir=True, max_depth=2)
    pixel_dir = _find(base, SH_PIXEL_MASKS, want_dir=True, max_depth=2)
    extra_path = _find(base, SH_ANOMALOUS_TRAIN, max_depth=2)
    extra = {name for _, name, _ in _sh_list(extra_path)} if extra_path is not None else set()

    videos: list[Video] = []
    missing: list[str] = []
    fallback: dict[str, str] | None = None
    for split, list_path in (("train", train_list), ("test", test_list)):
        for n, name, label in _sh_list(list_path):
            path, fallback = _sh_locate(base, name, fallback)
            if path is None:
                missing.append(name)
                continue
            mask_path = frame_dir / f"{name}.npy" if frame_dir is not None else None
            ranges: list[tuple[int, int]] = []
            n_frames: int | None = None
            if mask_path is not None and mask_path.is_file():
                mask = _load_npy(mask_path)
                if mask.ndim != 1:
                    raise UserError(f"{mask_path}: frame mask must be 1-D, got shape {tuple(mask.shape)}")
                ranges = _runs(mask)
                n_frames = len(mask)
            where = f"{list_path}:{n}"
            if label is None:
                anomalous = bool(ranges) or (split == "train" and name in extra)
            else:
                anomalous = label == 1
                if not anomalous and ranges:
                    raise UserError(
                        f"{where}: {name} is labelled normal but {mask_path} marks anomalous frames"
                    )
            if split == "test" and anomalous and not ranges:
                if mask_path is None or not mask_path.is_file():
                    problem = f"has no frame mask {SH_FRAME_MASKS}/{name}.npy under {base}"
                else:
                    problem = f"has no anomalous frames in {mask_path}"
                raise UserError(f"{where}: anomalous test video {name} {problem}")
            video = Video(path=path, split=split, labels=[ANOMALY if anomalous else NORMAL])
            if anomalous:
                video.anomalies = ranges
                pix = pixel_dir / f"{name}.npy" if pixel_dir is not None else None
                if pix is not None and pix.is_file():
                    video.boxes = _mask_boxes(pix, n_frames)
            videos.append(video)
    _report_missing(missing, missing_ok, f"{train_list.name}/{test_list.name}", base)
    videos = _check_unique(videos)
    return Annotations(classes=list(BINARY_CLASSES), fps=float(fps), videos=videos, root=base)


# ----------------------------------------------------------------------------- UBnormal


def _ub_tracks(path: Path) -> list[tuple[int, int, int]]:
    """`object_id, start_frame, end_frame` lines -> (object id, start, end exclusive); the file's ends are inclusive.

    This is the layout UBnormal's own scripts read (`np.loadtxt(..., delimiter=",")`, so the numbers may be
    written as floats, `1.000000e+02`).
    """
    tracks = []
    for n, line in _read_lines(path):
        fields = [f.strip() for f in line.split(",")]
        where = f"{path}:{n}"
        if len(fields) != 3:
            raise UserError(f"{where}: expected 'object_id, start_frame, end_frame', got {line!r}")
        try:
            object_id, start, end = (_int(f) for f in fields)
        except ValueError:
            raise UserError(f"{where}: object id, start and end frames must be whole numbers, got {line!r}") from None
        if start < 0 or end < start:
            raise UserError(f"{where}: bad frame range {start}..{end} (needs 0 <= start <= end)")
        tracks.append((object_id, start, end + 1))
    return tracks


def _ub_list(base: Path, kind: str, part: str) -> Path:
    """The split list of `kind` (abnormal / normal) and `part`, under its real name or the accepted variant."""
    names = [f"{kind}_{word}_video_names.txt" for word in UB_PART_NAMES[part]]
    for name in names:
        found = _find(base, name)
        if found is not None:
            return found
    also = f" or {', '.join(names[1:])}" if len(names) > 1 else ""
    raise UserError(
        f"cannot find {names[0]}{also} (UBnormal split list) under {base} (searched {_SEARCH_DEPTH} folders deep)"
    )


def _ub_frame_boxes(png: Path, ids: list[int]) -> tuple[dict[int, list[float]], bool]:
    """({object id: box}, whether the mask file exists) for one `<stem>_<frame:04d>_gt.png`.

    Each object's box is the bounding box of its largest 8-connected region (largest by box area), as
    UBnormal's `scripts/create_tracks_for_tbdc_rbdc.py` takes `cv.boundingRect` of the largest contour;
    an object with no pixel on that frame has no box.
    """
    if not png.is_file():
        return {}, False
    img = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)  # the official scripts read the ids as grey levels too
    if img is None:
        raise UserError(f"cannot read the object mask {png} as an image")
    out: dict[int, list[float]] = {}
    for object_id in ids:
        blobs = _blob_boxes(img == object_id)
        if blobs:
            out[object_id] = max(blobs, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    return out, True


def _ub_mask_boxes(folder: Path, stem: str, tracks: list[tuple[int, int, int]]) -> tuple[dict, int, int]:
    """(per-frame boxes, frames whose mask file is missing, frames looked at) of an abnormal video's tracks.

    UBnormal's `<stem>_annotations/` folder holds one `<stem>_<frame:04d>_gt.png` per frame whose grey level is
    the object id (0 background); the tracks name the abnormal objects and the frames they are abnormal in, so
    the boxes are those objects on those frames. Each mask is decoded once, in threads (the decoder releases the
    GIL), whatever the number of tracks on its frame.
    """
    by_frame: dict[int, list[int]] = {}
    for object_id, start, end in tracks:
        if object_id <= 0:  # 0 is the background of the masks: no object to box
            continue
        for frame in range(start, end):
            by_frame.setdefault(frame, []).append(object_id)
    frames = sorted(by_frame)
    pngs = [folder / f"{stem}_{frame:04d}_gt.png" for frame in frames]
    boxes: dict[int, list[list[float]]] = {}
    missing = 0
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(_ub_frame_boxes, pngs, [by_frame[f] for f in frames])
        for frame, (found, exists) in zip(frames, results, strict=True):
            missing += not exists
            if found:
                boxes[frame] = [found[i] for i in sorted(found)]
    return boxes, missing, len(frames)


def import_ubnormal(
    root: str | os.PathLike,
    *,
    fps: float = 30.0,
    include_validation: bool = False,
    missing_ok: bool = False,
) -> Annotations:
    """UBnormal (Acsintoae et al., CVPR 2022) with its official video-level split.

    The layout is that of the dataset and of github.com/lilygeorgescu/UBnormal (`scripts/`): split lists
    `{abnormal,normal}_{training,validation,test}_video_names.txt` (one video stem per line; found below root;
    `_train_` is accepted for `_training_`). Train = the training lists, plus the validation lists with
    `include_validation`; test = the test lists. Videos are `Scene<N>/<stem>.mp4`, N the stem's third field (any
    `.mp4` of that stem below root is accepted). An abnormal video's anomalies are the union of the object tracks in
    `<stem>_annotations/<stem>_tracks.txt` beside the video, lines `object_id, start_frame, end_frame` with
    inclusive ranges (-> `(start, end + 1)`), as the dataset's `write_frame_level_ground_truth.py` reads them.

    Boxes (the ground truth of TIoU) are read for the abnormal test videos: on each frame of each track, the box
    of that object in the frame's `<stem>_<frame:04d>_gt.png` object mask (see `_ub_frame_boxes`). A video
    whose annotation folder has no mask for any of its track frames gets no boxes (the import summary counts the
    anomalous test videos with boxes); one missing only some masks is named in one warning. Training videos'
    masks are not read (training is weakly supervised), which keeps the import fast. Classes are
    ["normal", "anomaly"].
    """
    base = _dataset_root(root)
    parts = ["train", "validation", "test"] if include_validation else ["train", "test"]
    lists = {(kind, part): _ub_list(base, kind, part) for part in parts for kind in ("abnormal", "normal")}
    index: dict[str, list[str]] | None = None
    videos: list[Video] = []
    missing: list[str] = []
    partial: list[str] = []
    for part in parts:
        split = "test" if part == "test" else "train"
        for kind in ("abnormal", "normal"):
            for _, line in _read_lines(lists[(kind, part)]):
                stem = line.split()[0].replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".mp4")
                m = re.search(r"scene_(\d+)", stem)
                direct = base / f"Scene{m.group(1)}" / f"{stem}.mp4" if m else None
                if direct is not None and direct.is_file():
                    rel = direct.relative_to(base).as_posix()
                else:
                    if index is None:
                        index = _index_files(base, (".mp4",))
                    candidates = index.get(f"{stem}.mp4")
                    if not candidates:
                        missing.append(stem)
                        continue
                    rel = _pick(candidates, f"{stem}.mp4")
                video = Video(path=rel, split=split, labels=[ANOMALY if kind == "abnormal" else NORMAL])
                if kind == "abnormal":
                    folder = (base / rel).parent / f"{stem}_annotations"
                    tracks_path = folder / f"{stem}_tracks.txt"
                    if not tracks_path.is_file():
                        raise UserError(f"abnormal video {rel} has no tracks file {tracks_path}")
                    tracks = _ub_tracks(tracks_path)
                    video.anomalies = _merge((start, end) for _, start, end in tracks)
                    if split == "test":
                        video.boxes, n_missing, n_frames = _ub_mask_boxes(folder, stem, tracks)
                        if 0 < n_missing < n_frames:
                            partial.append(f"{stem} ({n_missing} of {n_frames})")
                videos.append(video)
    _report_missing(missing, missing_ok, "the UBnormal split lists", base)
    if partial:
        _warn(
            f"{len(partial)} abnormal test video(s) lack some *_gt.png object masks (no boxes there): {_names(partial)}"
        )
    videos = _check_unique(videos)
    return Annotations(classes=list(BINARY_CLASSES), fps=float(fps), videos=videos, root=base)


IMPORTERS = {
    "ucf-crime": import_ucf_crime,
    "shanghaitech": import_shanghaitech,
    "ubnormal": import_ubnormal,
}
DEFAULT_FPS = {"ucf-crime": 30.0, "shanghaitech": 24.0, "ubnormal": 30.0}

__all__ = [
    "ANOMALY",
    "DEFAULT_FPS",
    "IMPORTERS",
    "UCF_CRIME_CLASSES",
    "import_shanghaitech",
    "import_ubnormal",
    "import_ucf_crime",
]
