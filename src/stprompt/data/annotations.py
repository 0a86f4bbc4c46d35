"""The annotations.json format (DESIGN.md): one file describes a dataset's videos, labels and boxes.

Every importer writes it, `stp-synth` writes it, `stp-extract` / `stp-eval` read it. The validator
names the exact field that is wrong so a user can fix a hand-edited file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..fileio import atomic_write_json, read_json

FORMAT = "stprompt-annotations/1"
NORMAL = "normal"
SPLITS = ("train", "test")


@dataclass
class Video:
    """One video of a dataset. Frame indices are native (0-based), `end` is exclusive."""

    path: str
    split: str
    labels: list[str]  # [] or ["normal"] means normal; several entries = multi-label
    anomalies: list[tuple[int, int]] = field(default_factory=list)
    boxes: dict[int, list[list[float]]] = field(default_factory=dict)

    @property
    def is_anomalous(self) -> bool:
        return any(lab != NORMAL for lab in self.labels)

    @property
    def id(self) -> str:
        return video_id(self.path)

    def frame_labels(self, n_frames: int) -> np.ndarray:
        """Per-frame 0/1 ground truth for the first `n_frames` frames (intervals clipped to them)."""
        gt = np.zeros(n_frames, dtype=np.int8)
        for start, end in self.anomalies:
            gt[max(0, start) : min(n_frames, end)] = 1
        return gt

    def intervals_past_end(self, n_frames: int) -> list[tuple[int, int]]:
        """Anomaly intervals that end after the video's last frame (`end` is exclusive) when it has `n_frames`."""
        return [(start, end) for start, end in self.anomalies if end > n_frames]

    def interval_warning(self, n_frames: int) -> str | None:
        """One line naming the anomaly intervals that run past the video's `n_frames` decoded frames (they count
        clipped to the video), or None when every interval fits."""
        late = self.intervals_past_end(n_frames)
        if not late:
            return None
        spans = ", ".join(f"[{start}, {end})" for start, end in late)
        which = "anomaly intervals" if len(late) > 1 else "anomaly interval"
        return (f"{self.path}: {which} {spans} in the annotations run past the video's end ({n_frames} frames "
                f"decoded); clipped to the video")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        label: str | list[str] = self.labels[0] if len(self.labels) == 1 else list(self.labels)
        return {
            "path": self.path,
            "split": self.split,
            "label": label,
            "anomalies": [{"start": int(s), "end": int(e)} for s, e in self.anomalies],
            "boxes": {str(f): [[float(v) for v in b] for b in bs] for f, bs in sorted(self.boxes.items())},
        }


@dataclass
class Annotations:
    classes: list[str]  # normal first
    fps: float
    videos: list[Video]
    root: Path | None = None  # folder the video paths are relative to

    def split(self, name: str) -> list[Video]:
        if name == "all":
            return list(self.videos)
        return [v for v in self.videos if v.split == name]

    @property
    def anomaly_classes(self) -> list[str]:
        return self.classes[1:]

    def video_path(self, video: Video) -> Path:
        p = Path(video.path)
        return p if p.is_absolute() or self.root is None else self.root / p

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "classes": list(self.classes),
            "fps": self.fps,
            "videos": [v.to_json() for v in self.videos],
        }

    def save(self, path: str | os.PathLike) -> None:
        validate(self.to_json())
        atomic_write_json(path, self.to_json())


def video_id(path: str) -> str:
    """File-system safe, unique id of a video from its dataset-relative path."""
    stem = os.path.splitext(path.replace("\\", "/"))[0].strip("/")
    return re.sub(r"[^A-Za-z0-9._-]+", "__", stem)


def class_phrase(name: str) -> str:
    """The natural phrase fed to the text encoder for a class identifier.

    "RoadAccidents" -> "road accidents", "Normal_Videos" -> "normal videos". The same function is used in
    training, evaluation and export (VadCLIP lower-cased in training but not at test time).
    """
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name.replace("_", " ").replace("-", " "))
    return " ".join(spaced.lower().split())


def _fail(where: str, msg: str) -> None:
    raise UserError(f"annotations: {where}: {msg}")


def validate(doc: Any) -> None:
    """Raise UserError naming the first bad field of an annotations document."""
    if not isinstance(doc, dict):
        _fail("top level", "must be a JSON object")
    if doc.get("format") != FORMAT:
        _fail("format", f"must be {FORMAT!r}, got {doc.get('format')!r}")
    classes = doc.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        _fail("classes", "must be a non-empty list of class names")
    if classes[0] != NORMAL:
        _fail("classes[0]", f"must be {NORMAL!r} (normal first), got {classes[0]!r}")
    if len(set(classes)) != len(classes):
        _fail("classes", "names must be unique")
    fps = doc.get("fps")
    if not isinstance(fps, int | float) or isinstance(fps, bool) or fps <= 0:
        _fail("fps", f"must be a positive number, got {fps!r}")
    videos = doc.get("videos")
    if not isinstance(videos, list):
        _fail("videos", "must be a list")
    seen: set[str] = set()
    for i, v in enumerate(videos):
        where = f"videos[{i}]"
        if not isinstance(v, dict):
            _fail(where, "must be an object")
        path = v.get("path")
        if not isinstance(path, str) or not path:
            _fail(f"{where}.path", "must be a non-empty string")
        vid = video_id(path)
        if vid in seen:
            _fail(f"{where}.path", f"duplicate video {path!r}")
        seen.add(vid)
        if v.get("split") not in SPLITS:
            _fail(f"{where}.split", f"must be one of {SPLITS}, got {v.get('split')!r}")
        label = v.get("label")
        labels = label if isinstance(label, list) else [label]
        if not labels or not all(isinstance(lab, str) for lab in labels):
            _fail(f"{where}.label", "must be a class name or a list of class names")
        for lab in labels:
            if lab not in classes:
                _fail(f"{where}.label", f"unknown class {lab!r} (classes: {', '.join(classes)})")
        anomalies = v.get("anomalies", [])
        if not isinstance(anomalies, list):
            _fail(f"{where}.anomalies", "must be a list")
        for j, a in enumerate(anomalies):
            aw = f"{where}.anomalies[{j}]"
            if not isinstance(a, dict) or not all(isinstance(a.get(k), int) for k in ("start", "end")):
                _fail(aw, "must be {'start': int, 'end': int}")
            if not 0 <= a["start"] < a["end"]:
                _fail(aw, f"needs 0 <= start < end, got start={a['start']} end={a['end']}")
        is_normal = all(lab == NORMAL for lab in labels)
        if is_normal and anomalies:
            _fail(f"{where}.anomalies", "a normal video cannot have anomalous frames")
        boxes = v.get("boxes", {})
        if not isinstance(boxes, dict):
            _fail(f"{where}.boxes", "must be an object {frame: [[x1, y1, x2, y2], ...]}")
        for f, bs in boxes.items():
            bw = f"{where}.boxes[{f!r}]"
            if not str(f).isdigit():
                _fail(bw, "frame keys must be non-negative integers")
            if not isinstance(bs, list):
                _fail(bw, "must be a list of [x1, y1, x2, y2]")
            for b in bs:
                if (
                    not isinstance(b, list)
                    or len(b) != 4
                    or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in b)
                ):
                    _fail(bw, f"each box must be [x1, y1, x2, y2] numbers, got {b!r}")
                if not (b[0] < b[2] and b[1] < b[3]):
                    _fail(bw, f"box needs x1 < x2 and y1 < y2, got {b!r}")


def from_json(doc: dict[str, Any], root: Path | None = None) -> Annotations:
    validate(doc)
    videos = []
    for v in doc["videos"]:
        label = v["label"]
        labels = [lab for lab in (label if isinstance(label, list) else [label])]
        videos.append(
            Video(
                path=v["path"],
                split=v["split"],
                labels=labels,
                anomalies=[(a["start"], a["end"]) for a in v.get("anomalies", [])],
                boxes={int(f): [list(map(float, b)) for b in bs] for f, bs in v.get("boxes", {}).items()},
            )
        )
    return Annotations(classes=list(doc["classes"]), fps=float(doc["fps"]), videos=videos, root=root)


def load(path: str | os.PathLike) -> Annotations:
    """Load DATASET/annotations.json (or the file itself); video paths are relative to its folder."""
    p = Path(path)
    if p.is_dir():
        p = p / "annotations.json"
    if not p.is_file():
        raise UserError(f"no annotations file at {p}")
    return from_json(read_json(p, "annotations file"), root=p.parent)
