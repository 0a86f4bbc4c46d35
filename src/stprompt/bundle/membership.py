"""Which bundle a file belongs to, and under which role: an engine is never paired with another export's head.

Every file of a bundle shares the manifest's stem (`out/model.json`, `out/model.onnx`, `out/model.int8.onnx`,
`out/model.plan`, ...). A file is accepted as part of a bundle only when the manifest lists it (by path, the
files having been hash-verified on load) or when its sha256 equals a recorded one; anything else is refused.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import UserError
from .hashing import sha256_file
from .manifest import ENGINE_SUFFIXES, HEAD_LAYER_SUFFIX, ROLE_SUFFIXES, Manifest, manifest_path

ONNX_SUFFIXES = (".onnx",)
TRT_SUFFIXES = (".plan", ".engine")
OPENVINO_SUFFIXES = (".xml",)  # OpenVINO IR (model.xml, model.int8.xml), built on the target by stp-build
TORCH_SUFFIXES = (".pt", ".pth")
# every name ending a bundle file that is not the manifest, longest first (out/model.fp16.onnx -> out/model)
_STEM_SUFFIXES = tuple(
    sorted(
        {*ROLE_SUFFIXES.values(), *ENGINE_SUFFIXES.values(), ".head.engine", *TRT_SUFFIXES, *TORCH_SUFFIXES},
        key=len,
        reverse=True,
    )
)
_HEAD_LAYER_NAME = re.compile(r"(.+)" + re.escape(HEAD_LAYER_SUFFIX).replace(r"\{\}", r"\d+") + "$")


def bundle_manifest_for(engine: str | os.PathLike) -> Path:
    """The manifest of an engine's bundle: `out/model.onnx`, `out/model.int8.onnx`, `out/model.plan`,
    `out/model.int8.xml`, `out/model.head.onnx`, `out/model.pt`, `out/model.json` all -> `out/model.json`."""
    p = Path(engine)
    if p.suffix == ".json":
        return p
    layer = _HEAD_LAYER_NAME.fullmatch(p.name)  # out/model.head_l0.onnx (numbered: one per adapter layer)
    if layer:
        return manifest_path(p.with_name(layer.group(1)))
    for suffix in _STEM_SUFFIXES:
        if p.name.endswith(suffix) and len(p.name) > len(suffix):
            return manifest_path(p.with_name(p.name[: -len(suffix)]))
    return manifest_path(p.with_suffix(""))


def bundle_role(path: Path, manifest: Manifest, section: str) -> str:
    """The role (encoder, encoder_fp16, head, ...) under which `path` is recorded in the manifest's `section`
    (`files` or `engines`).

    Files listed in `files` were hash-verified by `load_manifest`, so a path match suffices there; anything
    else is hashed and compared, so a stale plan or a graph from another export is refused, never run.
    """
    entries = manifest.raw.get(section) or {}
    resolved = path.resolve()
    for role, entry in entries.items():
        if section == "files" and (manifest.root / entry["path"]).resolve() == resolved:
            return role
    digest = sha256_file(path)
    for role, entry in entries.items():
        if entry.get("sha256") == digest:
            return role
    raise UserError(
        f"{path} is not part of bundle {manifest.path} (engine from another export?); "
        f"use the files that stp-export / stp-build wrote beside {manifest.path.name}"
    )


def require_encoder_role(path: Path, role: str, manifest: Manifest) -> None:
    """Refuse a bundle file that is not an image encoder where an engine is expected, saying what to pass."""
    if role == "head":
        raise UserError(
            f"{path.name} is the bundle's temporal head; pass the image encoder engine instead "
            f"(e.g. {manifest.stem.name}.onnx or {manifest.stem.name}.plan): the head is found through the manifest"
        )
    if role == "encoder_pre":
        raise UserError(
            f"{path.name} is the bundle's preprocessing (uint8 crops -> the encoder's input), which a TensorRT "
            f"engine runs before the encoder by itself; pass the image encoder instead (e.g. {manifest.stem.name}.onnx "
            f"or {manifest.stem.name}.plan)"
        )
    if not role.startswith("encoder"):
        raise UserError(f"{path.name} is the bundle's {role!r} file, not an image encoder engine")
