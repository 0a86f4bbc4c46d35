"""Encoder-batch construction as Numba kernels: uint8 BGR crops -> CLIP-normalised float32 RGB planes, in one pass.

With a fast encoder (a GPU, or a small model) building the 50 crops of a sampled frame costs as much as encoding
them: NumPy's per-channel normalisation reads the interleaved BGR bytes three times and the window crops are first
copied out of the resized mosaic. These kernels read the mosaic's tiles in place (a strided view, no copy), keep only
the windows motion gating asks for, and write straight into a preallocated encoder batch.

Exactness: every value is ``float32(u8) * gain[c] + bias[c]`` in float32 with the multiply and the add rounded
separately (no fastmath, so no fused multiply-add), which is what :func:`stprompt.windows.normalize` computes; the
tests require bit-identical batches.
"""

from __future__ import annotations

import numpy as np

from stprompt.kernels.boxes import _jit

__all__ = ["copy_tiles", "normalize_frames", "normalize_tiles", "warmup"]


@_jit
def _normalize_frames(src, out, gain, bias):
    n, h, w, _ = src.shape
    for i in range(n):
        for c in range(3):
            g = gain[c]
            b = bias[c]
            for y in range(h):
                row = src[i, y]
                for x in range(w):
                    out[i, c, y, x] = np.float32(row[x, 2 - c]) * g + b


@_jit
def _normalize_tiles(tiles, mask, out, gain, bias):
    grid = tiles.shape[0]
    size = tiles.shape[1]
    k = 0
    for gy in range(grid):
        for gx in range(grid):
            if not mask[gy * grid + gx]:
                continue
            for c in range(3):
                g = gain[c]
                b = bias[c]
                for y in range(size):
                    row = tiles[gy, y, gx]
                    for x in range(size):
                        out[k, c, y, x] = np.float32(row[x, 2 - c]) * g + b
            k += 1


def copy_tiles(tiles: np.ndarray, mask: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Kept tiles of a [grid, S, grid, S, 3] uint8 view -> `out` [kept, S, S, 3] uint8 as they are (BGR): the
    crops of an engine that normalises on its device (`model.pre.onnx`), a quarter of the float32 bytes."""
    grid, size = tiles.shape[0], tiles.shape[1]
    if tiles.dtype != np.uint8 or tiles.shape != (grid, size, grid, size, 3) or mask.shape != (grid * grid,):
        raise ValueError(f"expected [g, S, g, S, 3] uint8 tiles and a [g*g] mask, got {tiles.shape} / {mask.shape}")
    if out.shape != (int(mask.sum()), size, size, 3) or out.dtype != np.uint8:
        raise ValueError(f"out must be [{int(mask.sum())}, {size}, {size}, 3] uint8, got {out.shape} {out.dtype}")
    keep = np.flatnonzero(mask)
    if len(keep) == grid * grid:  # every window: one strided copy (NumPy's copy loop; Numba's was 10x slower here)
        out.reshape(grid, grid, size, size, 3)[:] = tiles.transpose(0, 2, 1, 3, 4)
    else:
        for k, w in enumerate(keep):
            out[k] = tiles[w // grid, :, w % grid]
    return out


def normalize_frames(src: np.ndarray, out: np.ndarray, gain: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] uint8 BGR (any strides) -> `out` [N, 3, H, W] float32 RGB, normalised per channel."""
    if src.dtype != np.uint8 or src.ndim != 4 or out.shape != (src.shape[0], 3, *src.shape[1:3]):
        raise ValueError(f"expected [N, H, W, 3] uint8 and [N, 3, H, W] out, got {src.shape} / {out.shape}")
    _normalize_frames(src, out, gain, bias)
    return out


def normalize_tiles(tiles: np.ndarray, mask: np.ndarray, out: np.ndarray, gain: np.ndarray,
                    bias: np.ndarray) -> np.ndarray:  # fmt: skip
    """Kept tiles of a [grid, S, grid, S, 3] uint8 view (row-major windows) -> `out` [kept, 3, S, S] float32."""
    grid, size = tiles.shape[0], tiles.shape[1]
    if tiles.dtype != np.uint8 or tiles.shape != (grid, size, grid, size, 3) or mask.shape != (grid * grid,):
        raise ValueError(f"expected [g, S, g, S, 3] uint8 tiles and a [g*g] mask, got {tiles.shape} / {mask.shape}")
    if out.shape != (int(mask.sum()), 3, size, size):
        raise ValueError(f"out must be [{int(mask.sum())}, 3, {size}, {size}], got {out.shape}")
    _normalize_tiles(tiles, mask.astype(np.bool_), out, gain, bias)
    return out


def warmup() -> None:
    """Compile (or load from the disk cache) both kernels for the layouts the runtime passes."""
    gain, bias = np.ones(3, np.float32), np.zeros(3, np.float32)
    frames = np.zeros((1, 2, 2, 3), np.uint8)
    normalize_frames(frames, np.empty((1, 3, 2, 2), np.float32), gain, bias)
    mosaic = np.zeros((4, 4, 3), np.uint8)
    tiles = mosaic.reshape(2, 2, 2, 2, 3)[:, :, :, :]  # contiguous 5-D
    normalize_tiles(tiles, np.ones(4, bool), np.empty((4, 3, 2, 2), np.float32), gain, bias)
    strided = np.zeros((2, 4, 2, 4, 3), np.uint8)[:, 1:3, :, 1:3]  # the runtime's strided view
    normalize_tiles(strided, np.ones(4, bool), np.empty((4, 3, 2, 2), np.float32), gain, bias)
