"""ONNX Runtime: the chosen encoder graph (fp32, fp16 or int8) and the bundle's fp32 head graphs (`OrtHeads`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...bundle.graphs import X_AS, X_PATCH
from ...bundle.manifest import Manifest
from ...bundle.ort import CPU, OrtHeadStages, ort_session, require_ort, resolve_providers, run_encoder, run_head
from ...errors import UserError
from .base import BackendBase, as_float32, check_features_inputs, check_head_inputs

# The heads are small (T x D inputs): one intra-op thread each. ONNX Runtime's default pool (one thread per core,
# spinning between calls) doubled their CPU time and slowed them on two shared cores (5.9 vs 11.1 ms CPU, 12.5 vs
# 22.2 ms wall per ViT-B-16 head call over 49 snippets), taking cores from decode and windows.
HEAD_THREADS = 1


class OrtHeads:
    """The bundle's fp32 head graphs on ONNX Runtime: for OrtBackend, and for clients whose encoder runs
    elsewhere (a Triton server). Never on TensorRT's EP: T changes every call and it would rebuild an engine per
    new length."""

    def __init__(self, manifest: Manifest, providers: Sequence[str], threads: int = HEAD_THREADS):
        """`threads`: ONNX Runtime intra-op threads per head session on the CPU (0: its default, one per core)."""
        self.dim = manifest.dim
        head_providers = [p for p in providers if p != "TensorrtExecutionProvider"] or [CPU]
        self._head = ort_session(manifest.file("head"), head_providers, threads=threads)
        self._head_features = (
            ort_session(manifest.file("head_features"), head_providers, threads=threads)
            if manifest.has("head_features") else None
        )  # fmt: skip
        self.stages = OrtHeadStages.of(manifest, head_providers, threads) if manifest.has_head_stages else None

    def head(self, x_clip: np.ndarray, x_patch: np.ndarray) -> dict[str, np.ndarray]:
        x_clip, x_patch = check_head_inputs(x_clip, x_patch, self.dim)
        return as_float32(run_head(self._head, x_clip, x_patch, X_PATCH))

    def head_features(self, x_clip: np.ndarray, x_as: np.ndarray) -> dict[str, np.ndarray] | None:
        if self._head_features is None:
            return None
        x_clip, x_as = check_features_inputs(x_clip, x_as, self.dim)
        return as_float32(run_head(self._head_features, x_clip, x_as, X_AS))

    def close(self) -> None:
        self._head = self._head_features = self.stages = None


class HostHeadsBackend(BackendBase):
    """A backend whose heads run here on ONNX Runtime (`OrtHeads`), wherever its encoder runs: ONNX Runtime,
    OpenVINO, a Triton server, the simulated GPU. Subclasses call `_open_heads` and, closing, `super().close()`."""

    _heads: OrtHeads

    def _open_heads(self, manifest: Manifest, providers: Sequence[str]) -> None:
        self._heads = OrtHeads(manifest, providers)
        self.head_stages = self._heads.stages  # the incremental head's graphs, when the bundle has them

    def head(self, x_clip: np.ndarray, x_patch: np.ndarray) -> dict[str, np.ndarray]:
        return self._heads.head(x_clip, x_patch)

    def head_features(self, x_clip: np.ndarray, x_as: np.ndarray) -> dict[str, np.ndarray] | None:
        return self._heads.head_features(x_clip, x_as)

    def close(self) -> None:
        self._heads.close()


class OrtBackend(HostHeadsBackend):
    """Sessions on the requested execution providers (the heads: `OrtHeads`)."""

    def __init__(self, encoder: Path, manifest: Manifest, role: str, providers: Sequence[str] | None,
                 max_batch: int | None):  # fmt: skip
        ort = require_ort()
        self.manifest, self.path = manifest, encoder
        self.dim, self.max_batch = manifest.dim, max_batch
        self.preprocess = manifest.preprocess
        self.providers = resolve_providers(providers, ort.get_available_providers())
        self._encoder = ort_session(encoder, self.providers, fp16=role == "encoder_fp16")
        active = self._encoder.get_providers()
        if self.providers[0] not in active:
            raise UserError(
                f"ONNX Runtime could not start {self.providers[0]} for {encoder.name} and fell back to "
                f"{', '.join(active)} (missing CUDA / cuDNN / TensorRT libraries?)"
            )
        self._open_heads(manifest, self.providers)
        self.name = f"onnxruntime[{','.join(active)}]"
        self.host_encoder = active[0] == CPU

    def _encode_batch(self, images: np.ndarray) -> np.ndarray:
        return run_encoder(self._encoder, images, batch=len(images))

    def close(self) -> None:
        self._encoder = None
        super().close()
