"""Opening a backend from an engine file (its suffix picks the library) and comparing two backends.

Every backend is opened together with the bundle manifest beside it (same stem), verified by sha256, so an
engine can never be paired with another export's head, prompts or thresholds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...bundle.compare import centered_cosine, max_diff
from ...bundle.graphs import HEAD_OUTPUTS
from ...bundle.manifest import Manifest, load_manifest, manifest_path
from ...bundle.membership import (
    ONNX_SUFFIXES,
    OPENVINO_SUFFIXES,
    TORCH_SUFFIXES,
    TRT_SUFFIXES,
    bundle_manifest_for,
    bundle_role,
    require_encoder_role,
)
from ...errors import UserError
from .base import Backend


def open_backend(engine: str | os.PathLike, *, providers: list[str] | None = None, max_batch: int | None = None,
                 manifest: str | os.PathLike | None = None, device: str | None = None,
                 precision: str | None = None, triton: str | None = None,
                 triton_options: dict[str, Any] | None = None) -> tuple[Backend, Manifest]:  # fmt: skip
    """Open the backend the engine file's suffix names, with its verified bundle manifest.

    `providers`: ONNX Runtime execution providers in priority order (default CPU; aliases cpu, cuda, tensorrt).
    `max_batch`: largest encoder call; larger calls are split (TensorRT: capped at, and by default, the plan's
    profile max).
    `manifest`: the bundle's model.json when the engine (typically a `.pt` checkpoint) is not beside it.
    `device` / `precision`: the PyTorch backend's (cpu fp32 / bf16, cuda fp16 / bf16 / fp32); other engines carry
    their precision in the file.
    `triton`: grpc://HOST:PORT[/MODEL]: the encoder runs on that Triton server (checked against this bundle), the
    heads here on ONNX Runtime; the engine is then an ONNX file naming the bundle. `triton_options`: TritonBackend's
    keywords (timeout_s, in_flight, reconnect).
    """
    path = Path(engine)
    suffix = path.suffix.lower()
    if suffix not in (*ONNX_SUFFIXES, *TRT_SUFFIXES, *OPENVINO_SUFFIXES, *TORCH_SUFFIXES):
        raise UserError(
            f"{path.name}: unknown engine type {suffix or '(no suffix)'!r}; use model.onnx (ONNX Runtime), "
            "model.plan (TensorRT), model.xml (OpenVINO) or model.pt (PyTorch reference)"
        )
    if not path.is_file():
        if suffix in (*TRT_SUFFIXES, *OPENVINO_SUFFIXES):
            raise UserError(missing_plan(path, manifest))
        raise UserError(f"engine file not found: {path}")
    if max_batch is not None and max_batch < 1:
        raise UserError(f"--max-batch must be at least 1, got {max_batch}")
    mpath = manifest_path(manifest) if manifest is not None else bundle_manifest_for(path)
    if not mpath.is_file():
        raise UserError(
            f"{path.name}: bundle manifest {mpath} not found; an engine is used with the model.json stp-export "
            "wrote beside it (copy the whole bundle, same stem)"
        )
    m = load_manifest(mpath, verify=True)
    if (device or precision) and suffix not in TORCH_SUFFIXES:
        raise UserError(f"--device / --precision choose how a .pt checkpoint runs; {path.name} carries its own "
                        "(use model.fp16.onnx / model.int8.onnx, or a TensorRT plan)")  # fmt: skip
    m.preprocess  # noqa: B018 - a bundle whose preprocessing this runtime cannot honour is refused here, by field
    backend: Backend
    if triton is not None:
        from .triton import TritonBackend

        if suffix not in ONNX_SUFFIXES:
            raise UserError(f"--triton runs the encoder on the server and the head with ONNX Runtime here: name the "
                            f"bundle by its model.onnx, not {path.name}")  # fmt: skip
        bundle_role(path, m, "files")
        backend = TritonBackend(triton, m, providers=providers, max_batch=max_batch, **(triton_options or {}))
    elif suffix in TORCH_SUFFIXES:
        from .torch_ref import TorchBackend

        backend = TorchBackend(path, m, max_batch, device or "cpu", precision)
    elif suffix in ONNX_SUFFIXES:
        from .ort import OrtBackend

        role = bundle_role(path, m, "files")
        require_encoder_role(path, role, m)
        backend = OrtBackend(path, m, role, providers, max_batch)
    elif suffix in OPENVINO_SUFFIXES:
        from .openvino import open_openvino

        backend = open_openvino(path, m, max_batch)
    else:
        from .trt import TrtBackend

        role = bundle_role(path, m, "engines")
        require_encoder_role(path, role, m)
        backend = TrtBackend(path, m, max_batch)
    return backend, m


def missing_plan(path: Path, manifest: str | os.PathLike | None = None) -> str:
    """Why a TensorRT plan named on the command line is absent: stp-export writes none (plans are specific to the
    GPU and TensorRT version), so say how to build it, naming the bundle's model.json when it is there."""
    mpath = manifest_path(manifest) if manifest is not None else bundle_manifest_for(path)
    bundle = mpath if mpath.is_file() else "BUNDLE/model.json"
    if path.suffix.lower() in OPENVINO_SUFFIXES:
        from .openvino import missing_ir

        return missing_ir(path, bundle)
    return (f"TensorRT plan not found: {path}; plans are built on the target GPU, not by stp-export: "
            f"stp-build {bundle} (or let the container / stp-appliance build them on its first start)")  # fmt: skip


def parity(a: Backend, b: Backend, images: np.ndarray, x_clip: np.ndarray, x_patch: np.ndarray) -> dict[str, Any]:
    """Differences of backend `a` against reference `b` on the same inputs (for `stp-run --check`): `images` are
    CLIP-normalised float32 crops, or uint8 BGR crops as the Detector cuts them for every backend that takes them.

    `max_rel` is the largest absolute error over the reference's largest magnitude (element-wise relative
    error explodes near zero); embeddings also get the gates' metric, the minimum centred cosine.
    """
    if images.dtype == np.uint8:  # uint8 BGR crops: each backend normalises them its own way (device or host)
        ea, eb = a.encode_pixels(images), b.encode_pixels(images)
    else:
        ea, eb = a.encode(images), b.encode(images)
    ha, hb = a.head(x_clip, x_patch), b.head(x_clip, x_patch)
    report: dict[str, Any] = {"a": a.name, "b": b.name, "crops": int(len(images)), "snippets": int(len(x_clip))}
    report["embeddings"] = max_diff(ea, eb)
    if len(eb) > 1:
        report["embeddings"]["centered_cosine_min"] = float(centered_cosine(ea, eb).min())
    for key in HEAD_OUTPUTS:
        report[key] = max_diff(ha[key], hb[key])
    return report
