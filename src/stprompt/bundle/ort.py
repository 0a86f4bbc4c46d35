"""ONNX Runtime sessions for bundle graphs: one factory for the export gates, `stp-run` and `stp-run --check`.

onnxruntime is imported when a session is opened, never at import: the module stays importable on appliances that
run TensorRT only. Execution providers may be named by alias (cpu, cuda, tensorrt, openvino).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import UserError, first_line
from .graphs import (
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    HEAD_OUTPUTS,
    LAYER_INPUT,
    LAYER_OUTPUT,
    X_ADAPTED,
    X_CLIP,
    X_PATCH,
    head_layer_role,
)

CPU = "CPUExecutionProvider"
PROVIDER_ALIASES = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
# ONNX Runtime 1.32's NchwcTransformer (CPU, ORT_ENABLE_ALL) segfaults on the fp16 ViT graph; skip it there.
FP16_DISABLED_OPTIMIZERS = ("NchwcTransformer",)
ORT_MISSING = 'ONNX Runtime is not installed: pip install "stprompt[ort]" (or onnxruntime-gpu for CUDA)'


def require_ort():
    """The onnxruntime module, or one UserError naming the extra to install."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError(ORT_MISSING) from None
    return ort


def resolve_providers(providers: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Full provider names (aliases expanded); an unavailable one is a UserError listing the available ones."""
    wanted = [PROVIDER_ALIASES.get(p.lower(), p) for p in (providers or [CPU])]
    missing = [p for p in wanted if p not in available]
    if missing:
        hint = ""
        if any(p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in missing):
            hint = " (CUDA and TensorRT providers need the onnxruntime-gpu package and matching CUDA libraries)"
        raise UserError(
            f"ONNX Runtime execution provider {', '.join(missing)} is not available here{hint}; "
            f"available: {', '.join(available)}"
        )
    return wanted


def ort_session(path: str | os.PathLike, providers: Sequence[str] | None = None, fp16: bool = False,
                threads: int = 0):  # fmt: skip
    """An InferenceSession for a bundle graph on `providers` (default CPU). fp16 graphs skip the CPU layout pass
    that crashes on them. A graph ONNX Runtime cannot load is one UserError naming the file."""
    ort = require_ort()
    wanted = resolve_providers(providers, ort.get_available_providers())
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    kwargs: dict[str, Any] = {"disabled_optimizers": list(FP16_DISABLED_OPTIMIZERS)} if fp16 else {}
    try:
        return ort.InferenceSession(os.fspath(path), opts, providers=wanted, **kwargs)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        name = os.path.basename(os.fspath(path))
        raise UserError(f"{name}: ONNX Runtime ({', '.join(wanted)}) cannot load it: {first_line(err)}") from None


def run_encoder(session, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """[N, 3, S, S] -> [N, D] float32 through an encoder session, `batch` crops per call."""
    outs = [
        session.run([ENCODER_OUTPUT], {ENCODER_INPUT: np.ascontiguousarray(images[i : i + batch], np.float32)})[0]
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(outs, axis=0).astype(np.float32)


def run_head(session, x_clip: np.ndarray, second: np.ndarray, second_name: str = X_PATCH) -> dict[str, np.ndarray]:
    """x_clip [T, D] and x_patch [T, 49, D] (second_name "x_patch") or x_as [T, D] ("x_as") -> the head outputs."""
    feeds = {X_CLIP: np.ascontiguousarray(x_clip, np.float32), second_name: np.ascontiguousarray(second, np.float32)}
    outs = session.run(list(HEAD_OUTPUTS), feeds)
    return dict(zip(HEAD_OUTPUTS, outs, strict=True))


class OrtHeadStages:
    """The head's snippet-wise graphs (runtime.incremental.HeadStages) on ONNX Runtime: one session per adapter
    layer (`layer_paths`, in order) and one for the scores."""

    def __init__(self, layer_paths: Sequence[str | os.PathLike], scores_path: str | os.PathLike,
                 providers: Sequence[str] | None = None, threads: int = 1):  # fmt: skip
        self.layers = len(layer_paths)
        self._layers = [ort_session(p, providers, threads=threads) for p in layer_paths]
        self._scores = ort_session(scores_path, providers, threads=threads)

    @classmethod
    def of(cls, manifest, providers: Sequence[str] | None = None, threads: int = 1) -> OrtHeadStages:
        """The stages of a bundle whose manifest lists them (`Manifest.has_head_stages`)."""
        layers = [manifest.file(head_layer_role(i)) for i in range(manifest.head_settings.adapter_layers)]
        return cls(layers, manifest.file("head_scores"), providers, threads)

    def layer(self, index: int, attended: np.ndarray) -> np.ndarray:
        return self._layers[index].run([LAYER_OUTPUT], {LAYER_INPUT: np.ascontiguousarray(attended, np.float32)})[0]

    def scores(self, x_clip: np.ndarray, x_adapted: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {X_CLIP: np.ascontiguousarray(x_clip, np.float32),
                 X_ADAPTED: np.ascontiguousarray(x_adapted, np.float32)}  # fmt: skip
        outs = self._scores.run(list(HEAD_OUTPUTS), feeds)
        return {name: np.asarray(out, np.float32) for name, out in zip(HEAD_OUTPUTS, outs, strict=True)}
