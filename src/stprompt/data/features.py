"""The feature store: FEATURES/index.json plus one compressed `<video-id>.npz` per video.

Each npz holds `x_clip` [T, D] float32, `x_patch` [T, 7, 7, D] float32, `frames` [T] int64 (native frame
index of each snippet) and, when extracted with scale B, `x_patch_b` [T, 4, 4, D]. The index carries the
ClipSpec, the sha256 of the weights that made the features and the activation and architecture the CLIP ran with
(`clip_activation`, `clip_arch`: absent in stores written before they were recorded), the sampling stride, the
classes and a copy of every video's annotation, so training and evaluation need nothing but this folder.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..fileio import atomic_write_bytes, atomic_write_json, read_json
from .annotations import Annotations, Video, from_json

FORMAT = "stprompt-features/1"
REQUIRED_ARRAYS = ("x_clip", "x_patch", "frames")


class FeatureStore:
    """A folder of per-video feature files with an index; safe to resume and to read while written."""

    def __init__(self, root: str | os.PathLike, index: dict[str, Any]):
        self.root = Path(root)
        self.index = index

    # -- creation / opening -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        *,
        clip: str,
        clip_sha256: str,
        dim: int,
        stride: int,
        scale_b: bool,
        classes: list[str],
        fps: float,
        dataset: str | None = None,
        preprocess: dict[str, Any] | None = None,
        clip_arch: str | None = None,
        clip_activation: str | None = None,
    ) -> FeatureStore:
        """Open FEATURES for writing; an existing store must have been made the same way (resume), with the same CLIP
        activation too (`clip_activation`, see stprompt.clip.loader; None: the caller does not know it)."""
        root = Path(root)
        meta = {
            "format": FORMAT,
            "clip": clip,
            "clip_sha256": clip_sha256,
            **({"clip_arch": clip_arch} if clip_arch is not None else {}),
            **({"clip_activation": clip_activation} if clip_activation is not None else {}),
            "dim": int(dim),
            "stride": int(stride),
            "scale_b": bool(scale_b),
            "classes": list(classes),
            "fps": float(fps),
            "dataset": dataset,  # folder the video paths are relative to (for plots over frames)
            "preprocess": preprocess,  # the manifest sections (Preprocess.manifest_sections) the crops were made by
        }
        if (root / "index.json").exists():
            store = cls.open(root)
            for key in ("clip_sha256", "dim", "stride", "classes", "preprocess"):
                if key == "preprocess" and store.index.get(key) is None:
                    continue  # a store written before preprocessing was recorded: made with the defaults
                if store.index.get(key) != meta[key]:
                    raise UserError(
                        f"{root} holds features made with {key}={store.index.get(key)!r}, "
                        f"not {meta[key]!r}; use another --out folder"
                    )
            if clip_activation is not None and store.clip_activation != clip_activation:
                from ..clip.loader import activation_name

                raise UserError(
                    f"{root} holds features made with CLIP running {activation_name(store.clip_activation)}, "
                    f"not {activation_name(clip_activation)}; use another --out folder"
                )
            if scale_b and not store.index.get("scale_b"):
                raise UserError(f"{root} was extracted without --scale-b; use another --out folder")
            for key in ("clip_arch", "clip_activation"):  # a store from before they were recorded: now it is known
                if meta.get(key) is not None:
                    store.index.setdefault(key, meta[key])
            return store
        root.mkdir(parents=True, exist_ok=True)
        store = cls(root, {**meta, "videos": {}})
        store._save_index()
        return store

    @classmethod
    def open(cls, root: str | os.PathLike) -> FeatureStore:
        root = Path(root)
        path = root / "index.json"
        if not path.is_file():
            raise UserError(f"{root} is not a feature folder (no index.json); run stp-extract first")
        index = read_json(path, "feature index")
        if index.get("format") != FORMAT:
            raise UserError(f"{path}: unknown format {index.get('format')!r}, expected {FORMAT!r}")
        return cls(root, index)

    # -- metadata -----------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.index["classes"])

    @property
    def clip_activation(self) -> str | None:
        """The activation the CLIP ran with: as recorded, or for a store from before it was recorded what the loader
        then built (stprompt.clip.loader.legacy_activation; None where that is unknown, e.g. `ARCH:openai`)."""
        if self.index.get("clip_activation") is not None:
            return self.index["clip_activation"]
        from ..clip.loader import legacy_activation

        return legacy_activation(self.index["clip"])

    @property
    def stride(self) -> int:
        return int(self.index["stride"])

    @property
    def dim(self) -> int:
        return int(self.index["dim"])

    def annotations(self) -> Annotations:
        """The annotations of every video in the store (copied at extraction time)."""
        doc = {
            "format": "stprompt-annotations/1",
            "classes": self.classes,
            "fps": self.index["fps"],
            "videos": [e["video"] for e in self.index["videos"].values()],
        }
        return from_json(doc)

    def videos(self, split: str = "all") -> list[Video]:
        return self.annotations().split(split)

    def frame_size(self, video_id: str) -> tuple[int, int] | None:
        """(width, height) of the video's frames as decoded at extraction."""
        size = self.index["videos"][video_id].get("size")
        return (int(size[0]), int(size[1])) if size else None

    def n_snippets(self, video_id: str) -> int:
        return int(self.index["videos"][video_id]["n_snippets"])

    def n_frames(self, video_id: str) -> int | None:
        """Frames decoded from the video at extraction (None in a store that did not record them)."""
        n = self.index["videos"][video_id].get("n_frames")
        return None if n is None else int(n)

    # -- per video ----------------------------------------------------------------------------------
    def has(self, video_id: str) -> bool:
        entry = self.index["videos"].get(video_id)
        return entry is not None and (self.root / entry["file"]).is_file()

    def refresh_annotations(self, videos: list[Video]) -> int:
        """Record the current annotations (labels, anomalies, boxes) of videos already extracted; their features do
        not depend on them, so boxes imported after a first stp-extract reach stp-eval without extracting again.
        Returns how many entries changed."""
        changed = 0
        for video in videos:
            entry = self.index["videos"].get(video.id)
            if entry is not None and self.has(video.id) and entry.get("video") != video.to_json():
                entry["video"] = video.to_json()
                changed += 1
        if changed:
            self._save_index()
        return changed

    def write(
        self, video: Video, arrays: dict[str, np.ndarray], n_frames: int, size: tuple[int, int] | None = None
    ) -> None:
        """Write one video's features atomically, then record it in the index."""
        for name in REQUIRED_ARRAYS:
            if name not in arrays:
                raise ValueError(f"feature arrays need {name!r}")
        t = len(arrays["frames"])
        if arrays["x_clip"].shape != (t, self.dim) or arrays["x_patch"].shape != (t, 7, 7, self.dim):
            raise ValueError(f"bad feature shapes x_clip {arrays['x_clip'].shape}, x_patch {arrays['x_patch'].shape}")
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
        file = f"{video.id}.npz"
        atomic_write_bytes(self.root / file, buf.getvalue())
        self.index["videos"][video.id] = {
            "file": file,
            "n_snippets": t,
            "n_frames": int(n_frames),
            "size": list(size) if size else None,
            "video": video.to_json(),
        }
        self._save_index()

    def load(self, video_id: str) -> dict[str, np.ndarray]:
        entry = self.index["videos"].get(video_id)
        if entry is None:
            raise UserError(f"video {video_id!r} is not in {self.root}")
        path = self.root / entry["file"]
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as err:
            raise UserError(f"{path} is unreadable ({err}); delete it and rerun stp-extract") from None
        for name in ("x_clip", "x_patch"):
            if not np.isfinite(arrays[name]).all():
                raise UserError(f"{path}: {name} contains NaN or inf; re-extract this video")
        return arrays

    def _save_index(self) -> None:
        atomic_write_json(self.root / "index.json", self.index)
