"""Pixel change per window, for motion-gated crop encoding (DESIGN.md runtime pipeline, "optional motion gating").

Each scale-A window is a ``size x size`` tile of the 224x224 resized frame, and its encoder crop depends on that tile
alone (the window is resized on its own, OpenCV's replicated border). A window whose tile is unchanged therefore has
an unchanged embedding, and a window whose tile changed a little has an embedding that changed a little. The gate
compares each tile with the pixels it had when it was last encoded and re-encodes only the tiles that changed.

Change measure: the mean absolute difference over the tile's pixels and its three channels, in grey levels (0-255).
A mean, not a maximum, so sensor noise averages out and one hot pixel does not wake a window; measured against the
pixels at the last *encoding* (not the previous frame), so slow drift accumulates until it crosses the threshold.

:func:`window_change` is a Numba kernel (integer sums, releases the GIL); :func:`window_change_reference` is the NumPy
definition it must equal exactly.
"""

from __future__ import annotations

import numpy as np

from stprompt.kernels.boxes import _jit

__all__ = ["window_change", "window_change_reference", "warmup"]


@_jit
def _window_change(cur, ref, size, stride, grid, channels, out):
    """cur, ref: [H, W * C] uint8 rows (channels interleaved), so a window row is one contiguous run of bytes."""
    n = size * size * channels
    run = size * channels
    for gy in range(grid):
        for gx in range(grid):
            total = 0
            x0 = gx * stride * channels
            for y in range(gy * stride, gy * stride + size):
                rc = cur[y, x0 : x0 + run]
                rr = ref[y, x0 : x0 + run]
                acc = 0
                for i in range(run):  # a branch-free |a - b| over bytes: vectorises
                    d = np.int32(rc[i]) - np.int32(rr[i])
                    acc += abs(d)
                total += acc
            out[gy * grid + gx] = total / n


def _check(cur: np.ndarray, ref: np.ndarray) -> None:
    if cur.shape != ref.shape or cur.dtype != np.uint8 or ref.dtype != np.uint8 or cur.ndim != 3:
        raise ValueError(f"expected two equal H x W x C uint8 images, got {cur.dtype} {cur.shape} / {ref.dtype} "
                         f"{ref.shape}")  # fmt: skip


def window_change(
    cur: np.ndarray, ref: np.ndarray, size: int, stride: int, out: np.ndarray | None = None
) -> np.ndarray:
    """[grid * grid] float32 mean |cur - ref| per window (row-major), windows of `size` every `stride` pixels."""
    _check(cur, ref)
    grid = (cur.shape[0] - size) // stride + 1
    if out is None:
        out = np.empty(grid * grid, np.float32)
    h, w, c = cur.shape
    rows_cur = np.ascontiguousarray(cur).reshape(h, w * c)
    rows_ref = np.ascontiguousarray(ref).reshape(h, w * c)
    _window_change(rows_cur, rows_ref, size, stride, grid, c, out)
    return out


def window_change_reference(cur: np.ndarray, ref: np.ndarray, size: int, stride: int) -> np.ndarray:
    """The definition: mean absolute difference of every window's pixels, float64 then rounded once to float32."""
    _check(cur, ref)
    diff = np.abs(cur.astype(np.int32) - ref.astype(np.int32))
    grid = (cur.shape[0] - size) // stride + 1
    out = [diff[y : y + size, x : x + size].sum() / (size * size * cur.shape[2])
           for y in range(0, grid * stride, stride) for x in range(0, grid * stride, stride)]  # fmt: skip
    return np.asarray(out, np.float64).astype(np.float32)


def warmup() -> None:
    """Compile (or load from the disk cache) the kernel; call once at start-up."""
    tiny = np.zeros((4, 4, 3), np.uint8)
    window_change(tiny, tiny, 2, 2)
