"""The interface every inference backend implements, and the input checks and batch split they share.

The Detector calls only what `Backend` declares: `encode` (CLIP-normalised crops), `encode_frames` (uint8 frames
and window masks, for backends that cut windows where the encoder runs: `gpu_preprocessing`), `head`,
`head_features` and `close`. `BackendBase` gives every backend the same checks, the one place an encoder batch is
split at the backend's largest call (`max_batch`: a TensorRT profile's max, or the user's --max-batch), and a
host-side `encode_frames` built from the bundle's preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ... import windows
from ...bundle.graphs import HEAD_OUTPUTS
from ...bundle.preprocess import DEFAULT, Preprocess
from ...errors import UserError


class EncoderUnavailable(UserError):
    """A remote encoder (a Triton server) stayed unreachable: the reconnect policy gave up (`gave_up`), or the run
    was stopped while waiting for it. The pipeline scores what was already encoded, then raises it."""

    def __init__(self, message: str, gave_up: bool):
        super().__init__(message)
        self.gave_up = gave_up


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs from an inference library: encode crops, run the head, name itself."""

    name: str  # e.g. "onnxruntime[CPUExecutionProvider]", "tensorrt", "torch-cpu-fp32", "torch-cuda-fp16"
    dim: int
    max_batch: int | None  # encoder calls larger than this are split inside encode(); None = unlimited
    max_window: int | None  # largest T head() takes (TensorRT profile max); None = unlimited
    gpu_preprocessing: bool  # True: the Detector hands over uint8 frames (encode_frames), not float crops
    input_format: str  # "float32": normalised crops (encode); "uint8": raw BGR crops, normalised on the device
    host_encoder: bool  # the encoder runs on this machine's CPU (larger calls only cost memory there)
    preprocess: Preprocess  # the bundle's preprocessing (size, mean / std, windows)
    head_stages: Any  # runtime.incremental.HeadStages: the head snippet by snippet on the host, or None

    def encode(self, images: np.ndarray) -> np.ndarray:
        """[N, 3, 224, 224] float32 (CLIP-normalised) -> [N, D] float32."""
        ...

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """[N, 224, 224, 3] uint8 BGR crops (not normalised) -> [N, D] float32; what the Detector calls when
        `input_format` is "uint8"."""
        ...

    def encode_frames(self, smalls: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
        """224x224 uint8 BGR frames + scale-A window masks -> embeddings in Detector order: per frame the full
        frame, then its kept windows."""
        ...

    def head(self, x_clip: np.ndarray, x_patch: np.ndarray) -> dict[str, np.ndarray]:
        """x_clip [T, D], x_patch [T, 49, D] (or [T, 7, 7, D]) -> {"score", "score_c", "probs"} float32."""
        ...

    def head_features(self, x_clip: np.ndarray, x_as: np.ndarray) -> dict[str, np.ndarray] | None:
        """The head after SA2: x_clip, x_as [T, D] -> the same outputs; None when the bundle has no such graph."""
        ...

    def close(self) -> None:
        """Free sessions / device memory (the backend is unusable afterwards)."""
        ...


class BackendBase:
    """Shared behaviour: subclasses implement `_encode_batch` (one call within max_batch) and the heads."""

    name: str = "backend"
    dim: int = 0
    max_batch: int | None = None
    max_window: int | None = None
    gpu_preprocessing: bool = False
    input_format: str = "float32"
    host_encoder: bool = False
    preprocess: Preprocess = DEFAULT
    head_stages: Any = None  # the bundle's snippet-wise head graphs, where the backend runs heads on the host

    def _encode_batch(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _encode_pixel_batch(self, pixels: np.ndarray) -> np.ndarray:
        """One call within max_batch on uint8 crops: backends whose `input_format` is "uint8" implement it; the
        others normalise here and encode (through `encode`: some backends override it, not `_encode_batch`)."""
        return self.encode(windows.normalize(pixels, pre=self.preprocess))

    def encode(self, images: np.ndarray) -> np.ndarray:
        return split_batches(self._encode_batch, check_images(images, self.preprocess.size), self.max_batch,
                             self.dim)  # fmt: skip

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 BGR crops: normalised on the device by a "uint8" backend, else here on the host (same numbers)."""
        return split_batches(self._encode_pixel_batch, check_pixels(pixels, self.preprocess.size), self.max_batch,
                             self.dim)  # fmt: skip

    def encode_frames(self, smalls: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
        """Host-side crops (the bundle's preprocessing) of the frames, then `encode`."""
        total = sum(1 + int(m.sum()) for m in masks)
        size = self.preprocess.size
        batch = np.empty((total, 3, size, size), np.float32)
        start = 0
        for small, mask in zip(smalls, masks, strict=True):
            start += windows.fill_encoder_batch(small, batch[start:], mask, pre=self.preprocess)
        return self.encode(batch)

    def head_features(self, x_clip: np.ndarray, x_as: np.ndarray) -> dict[str, np.ndarray] | None:
        return None

    def close(self) -> None:
        return None


def check_images(images: np.ndarray, size: int = 224) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (3, size, size):
        raise ValueError(f"encoder input must be [N, 3, {size}, {size}], got {list(images.shape)}")
    return np.ascontiguousarray(images, dtype=np.float32)


def check_pixels(pixels: np.ndarray, size: int = 224) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3) or pixels.dtype != np.uint8:
        raise ValueError(f"pixel crops must be [N, {size}, {size}, 3] uint8, got {list(pixels.shape)} {pixels.dtype}")
    return np.ascontiguousarray(pixels)


def check_head_inputs(x_clip: np.ndarray, x_patch: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    x_clip = np.ascontiguousarray(x_clip, dtype=np.float32)
    x_patch = np.asarray(x_patch, dtype=np.float32)
    t = len(x_clip)
    if x_clip.shape != (t, dim) or t < 1 or x_patch.shape[0] != t or x_patch.size != t * 49 * dim:
        raise ValueError(
            f"head inputs must be x_clip [T, {dim}] and x_patch [T, 49, {dim}] with T >= 1, "
            f"got {list(x_clip.shape)} and {list(x_patch.shape)}"
        )
    return x_clip, np.ascontiguousarray(x_patch.reshape(t, 49, dim))


def check_features_inputs(x_clip: np.ndarray, x_as: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    x_clip = np.ascontiguousarray(x_clip, dtype=np.float32)
    x_as = np.ascontiguousarray(x_as, dtype=np.float32)
    if x_clip.ndim != 2 or x_clip.shape != x_as.shape or x_clip.shape[1] != dim or len(x_clip) < 1:
        raise ValueError(f"head_features inputs must be x_clip and x_as [T, {dim}], got {x_clip.shape}, {x_as.shape}")
    return x_clip, x_as


def split_batches(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, max_batch: int | None,
                  dim: int) -> np.ndarray:  # fmt: skip
    """The one place an encoder batch is split: `run` on chunks of at most `max_batch` crops."""
    if len(images) == 0:
        return np.zeros((0, dim), np.float32)
    step = max_batch or len(images)
    outs = [run(images[i : i + step]) for i in range(0, len(images), step)]
    out = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)
    return np.asarray(out, dtype=np.float32)


def as_float32(out: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(out[k], dtype=np.float32) for k in HEAD_OUTPUTS}
