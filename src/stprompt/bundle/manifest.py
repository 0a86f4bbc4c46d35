"""The bundle manifest `model.json`: what every bundle file is, how inputs are made, and that files are intact.

Torch-free (json, hashlib, numpy only): the runtime reads bundles on appliances without torch. Every bundle
file is listed under `files` with its sha256; `load_manifest` refuses a bundle whose files were modified,
truncated or are missing, naming the file, because a silently swapped graph gives plausible wrong scores.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fileio import atomic_write_json, read_json
from ..model.config import BANDED_TEMPORAL  # torch-free: the head's settings, not the head
from .graphs import head_layer_role
from .hashing import sha256_file
from .preprocess import Preprocess

FORMAT = "stprompt-bundle/1"
SUFFIX = ".json"

# file roles and the file name suffix each gets after the bundle stem (out/model -> out/model.onnx, ...)
ROLE_SUFFIXES = {
    "encoder": ".onnx",  # fp32 image encoder: the reference graph and the TensorRT build input
    "encoder_fp16": ".fp16.onnx",  # --precision fp16: fp16 weights/matmuls, normalisations and softmax in fp32
    "encoder_int8": ".int8.onnx",  # --int8-cpu: dynamic int8 MatMul/Gemm weights for ONNX Runtime on CPU
    "encoder_pre": ".pre.onnx",  # uint8 BGR crops -> the encoder's normalised input, run on the device (GPU engines)
    "head": ".head.onnx",  # temporal head, T dynamic, prompts baked in
    "head_features": ".head_as.onnx",  # the same head after SA2: x_clip, x_as (the runtime's streaming path)
    "head_scores": ".head_scores.onnx",  # both branches after the adapter, snippet-wise (runtime.incremental)
    "queries": ".queries.npz",  # localization query embeddings
}
# adapter layer i's snippet-wise graph (role head_layer{i}, bundle.graphs.head_layer_role): model.head_l{i}.onnx
HEAD_LAYER_SUFFIX = ".head_l{}.onnx"


def role_suffix(role: str) -> str:
    """The file name suffix of a bundle file role (the numbered head_layer{i} roles included)."""
    if role.startswith("head_layer") and role[len("head_layer"):].isdigit():
        return HEAD_LAYER_SUFFIX.format(int(role[len("head_layer"):]))
    return ROLE_SUFFIXES[role]

REQUIRED_ROLES = ("encoder", "head", "queries")
# engines built on the target: TensorRT plans, OpenVINO IR (each .xml with its .bin; see bundle.openvino_keys)
ENGINE_SUFFIXES = {"encoder": ".plan", "encoder_pre": ".pre.plan", "head": ".head.plan",
                   "head_features": ".head_as.plan", "encoder_openvino": ".xml",
                   "encoder_openvino_int8": ".int8.xml"}  # fmt: skip

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "clip": str,
    "clip_sha256": str,
    "dim": int,
    "preprocess": dict,
    "sampling": dict,
    "windows": dict,
    "classes": list,
    "class_phrases": list,
    "queries": dict,
    "head": dict,
    "thresholds": dict,
    "files": dict,
    "precision": dict,
    "gates": dict,
    "versions": dict,
    "created": str,
}


def manifest_path(stem_or_path: str | os.PathLike) -> Path:
    """`out/model`, `out/model.json` -> `out/model.json`."""
    p = Path(stem_or_path)
    return p if p.suffix == SUFFIX else p.with_name(p.name + SUFFIX)


def bundle_stem(path: str | os.PathLike) -> Path:
    """`out/model.json` or `out/model` -> `out/model` (the prefix every bundle file name starts with)."""
    p = Path(path)
    return p.with_name(p.name[: -len(SUFFIX)]) if p.name.endswith(SUFFIX) else p


@dataclass(frozen=True)
class Thresholds:
    """The manifest's `thresholds`: the alarm score and the localization settings chosen at export."""

    alarm: float  # snippet score that raises an alarm
    heat: float  # heat above which pixels form boxes
    min_box_area: float  # smallest box, fraction of the frame
    tau_loc: float  # softmax temperature over the localization queries
    fusion_lambda: float  # weight of scale A in the fused heat map

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Thresholds:
        return cls(**{name: float(doc[name]) for name in THRESHOLD_FIELDS})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


THRESHOLD_FIELDS = ("alarm", "heat", "min_box_area", "tau_loc", "fusion_lambda")


def threshold_problem(key: str, value: float) -> str | None:
    """Why a `thresholds` value cannot be used (None when it can): scores, heat and the fusion weight are in
    [0, 1], a box area a fraction of the frame in [0, 1), the softmax temperature > 0 (NaN fails every test)."""
    if key == "tau_loc":
        return None if 0 < value < float("inf") else "must be > 0"
    if key == "min_box_area":
        return None if 0 <= value < 1 else "must be in [0, 1)"
    return None if 0 <= value <= 1 else "must be in [0, 1]"


@dataclass(frozen=True)
class HeadSettings:
    """What the runtime needs to know of the exported head (the full HeadConfig stays in `raw["head"]`)."""

    dim: int
    n_classes: int
    exact_lookahead: int  # future snippets a stream waits for to reproduce offline scores (SPEC.md)
    radius: int  # the distance attention's band radius R
    topk_windows: int  # SA2's K
    use_sa2: bool
    sigma: float = 1.0  # the distance attention's temperature
    adapter_layers: int = 2  # distance-adapter layers (0: temporal "none"; self-attention variants: not banded)
    banded: bool = True  # every layer is the distance band (or there is none): the head streams layer by layer

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> HeadSettings:
        return cls(
            dim=int(doc["dim"]),
            n_classes=int(doc["n_classes"]),
            exact_lookahead=int(doc.get("exact_lookahead", 0)),
            radius=int(doc.get("radius", 0)),
            topk_windows=int(doc.get("topk_windows", 12)),
            use_sa2=bool(doc.get("use_sa2", True)),
            sigma=float(doc.get("sigma", 1.0)),
            adapter_layers=0 if doc.get("temporal") == "none" else int(doc.get("layers", 2)),
            banded=doc.get("temporal", "distance") in BANDED_TEMPORAL,
        )


@dataclass(frozen=True)
class Manifest:
    """A validated bundle manifest. `raw` is the JSON document; the common fields are typed attributes."""

    path: Path
    raw: dict[str, Any] = field(repr=False)

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def stem(self) -> Path:
        return bundle_stem(self.path)

    @property
    def clip(self) -> str:
        return self.raw["clip"]

    @property
    def clip_sha256(self) -> str:
        return self.raw["clip_sha256"]

    @property
    def clip_activation(self) -> str | None:
        """The MLP activation the encoder runs ("quick_gelu", "gelu"); None in bundles exported before it was
        recorded (stprompt.clip.loader.legacy_activation infers it from `clip` and versions.open_clip)."""
        return self.raw.get("clip_activation")

    @property
    def dim(self) -> int:
        return int(self.raw["dim"])

    @property
    def classes(self) -> list[str]:
        return list(self.raw["classes"])

    @property
    def stride(self) -> int:
        return int(self.raw["sampling"]["stride"])

    @property
    def offset(self) -> int:
        return int(self.raw["sampling"]["offset"])

    @property
    def preprocess(self) -> Preprocess:
        """How frames become encoder input for this bundle (checked: a field the runtime cannot honour is refused)."""
        return Preprocess.from_manifest(self.raw, self.path.name)

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds.from_dict(self.raw["thresholds"])

    @property
    def head(self) -> dict[str, Any]:
        """The exported head's full settings (HeadConfig fields, radius, exact_lookahead, graph I/O)."""
        return dict(self.raw["head"])

    @property
    def head_settings(self) -> HeadSettings:
        return HeadSettings.from_dict(self.raw["head"])

    @property
    def streams_sa2_kernel(self) -> bool:
        """True when the runtime runs SA2 as a kernel and feeds the head after SA2 (x_clip, x_as)."""
        return self.has("head_features") and self.head_settings.use_sa2

    @property
    def has_head_stages(self) -> bool:
        """True when the bundle has the head's snippet-wise graphs (every adapter layer and the scores) and the
        head is banded after SA2: the runtime then computes each snippet's layer outputs once
        (runtime.incremental) instead of re-running the head over a window for every snippet."""
        settings = self.head_settings
        roles = ["head_scores", *(head_layer_role(i) for i in range(settings.adapter_layers))]
        return self.streams_sa2_kernel and settings.banded and all(self.has(r) for r in roles)

    @property
    def precision(self) -> dict[str, Any]:
        return dict(self.raw["precision"])

    @property
    def gates(self) -> dict[str, Any]:
        return dict(self.raw["gates"])

    @property
    def engines(self) -> dict[str, Any]:
        return dict(self.raw.get("engines") or {})

    @property
    def build(self) -> dict[str, Any]:
        return dict(self.raw.get("build") or {})

    def has(self, role: str) -> bool:
        return role in self.raw["files"]

    def file(self, role: str) -> Path:
        """Absolute path of a bundle file by role (encoder, encoder_fp16, encoder_int8, head, queries)."""
        if role not in self.raw["files"]:
            have = ", ".join(sorted(self.raw["files"]))
            raise UserError(f"{self.path.name}: bundle has no {role!r} file (it has: {have})")
        return self.root / self.raw["files"][role]["path"]

    def engine(self, role: str) -> Path | None:
        """Path of the engine built for `role` (TensorRT: encoder, head; OpenVINO: encoder_openvino, ...), or None
        before `stp-build` ran."""
        record = self.engines.get(role)
        return self.root / record["path"] if record else None

    def load_queries(self) -> tuple[Any, Any, list[str]]:
        """(embeddings [Q, D] float32, abnormal [Q] bool, texts) of the localization queries."""
        import numpy as np

        with np.load(self.file("queries"), allow_pickle=False) as z:
            return z["embeddings"].astype(np.float32), z["abnormal"].astype(bool), list(self.raw["queries"]["texts"])


def _check_fields(doc: Any, name: str) -> None:
    if not isinstance(doc, dict):
        raise UserError(f"{name}: not a JSON object")
    if doc.get("format") != FORMAT:
        raise UserError(f"{name}: 'format' must be {FORMAT!r}, got {doc.get('format')!r}")
    for key, kind in _REQUIRED.items():
        if key not in doc:
            raise UserError(f"{name}: missing field {key!r}")
        if not isinstance(doc[key], kind) or (kind is int and isinstance(doc[key], bool)):
            raise UserError(f"{name}: field {key!r} must be {getattr(kind, '__name__', kind)}")
    if doc["dim"] < 1 or len(doc["clip_sha256"]) != 64:
        raise UserError(f"{name}: invalid 'dim' or 'clip_sha256'")
    classes, phrases = doc["classes"], doc["class_phrases"]
    if len(classes) < 2 or len(phrases) != len(classes) or not all(isinstance(c, str) for c in classes + phrases):
        raise UserError(f"{name}: 'classes' and 'class_phrases' must be equal-length lists of >= 2 names")
    sampling = doc["sampling"]
    if (
        not isinstance(sampling.get("stride"), int)
        or sampling["stride"] < 1
        or not isinstance(sampling.get("offset"), int)
    ):
        raise UserError(f"{name}: 'sampling' needs integer 'stride' >= 1 and 'offset'")
    texts, n_normal = doc["queries"].get("texts"), doc["queries"].get("n_normal")
    if not isinstance(texts, list) or not isinstance(n_normal, int) or not 0 < n_normal < len(texts):
        raise UserError(f"{name}: 'queries' needs 'texts' and 0 < 'n_normal' < len(texts)")
    if doc["head"].get("dim") != doc["dim"] or doc["head"].get("n_classes") != len(classes):
        raise UserError(f"{name}: 'head' settings do not match 'dim' / 'classes'")
    for key in THRESHOLD_FIELDS:
        value = doc["thresholds"].get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise UserError(f"{name}: 'thresholds' needs a number {key!r}")
        if problem := threshold_problem(key, float(value)):
            raise UserError(f"{name}: thresholds.{key} = {value} {problem}")
    for role in REQUIRED_ROLES:
        if role not in doc["files"]:
            raise UserError(f"{name}: 'files' lacks the {role!r} file")
    for role, entry in doc["files"].items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("path"), str)
            or not isinstance(entry.get("sha256"), str)
        ):
            raise UserError(f"{name}: files[{role!r}] needs 'path' and 'sha256'")
        rel = entry["path"]
        if not rel or Path(rel).name != rel or rel in (".", ".."):
            raise UserError(f"{name}: files[{role!r}] path {rel!r} must be a plain file name beside the manifest")


def verify_files(doc: dict[str, Any], root: Path) -> None:
    """Refuse missing files and files whose sha256 differs from the manifest's, naming the file."""
    for entry in doc["files"].values():
        p = root / entry["path"]
        if not p.is_file():
            raise UserError(f"{entry['path']}: missing from the bundle in {root} (copy every file the manifest lists)")
        if sha256_file(p) != entry["sha256"]:
            raise UserError(f"{entry['path']}: sha256 mismatch (bundle modified or corrupt)")


def load_manifest(path: str | os.PathLike, verify: bool = True) -> Manifest:
    """Read and validate `model.json` (or the stem `model`); with `verify`, check every file's sha256."""
    p = manifest_path(path)
    doc = read_json(p, "bundle manifest")
    _check_fields(doc, p.name)
    if verify:
        verify_files(doc, p.parent)
    return Manifest(path=p.resolve(), raw=doc)


def write_manifest(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """Validate (without hashing again) and write atomically; returns the manifest path."""
    p = manifest_path(path)
    _check_fields(doc, p.name)
    atomic_write_json(p, doc)
    return p
