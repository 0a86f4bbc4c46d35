"""Anomaly heat map -> scored boxes: threshold, 8-connected components, one box per large-enough component.

This runs on every flagged frame (maps up to 1920x1080), so :func:`extract_boxes` is a Numba kernel: a run-length
union-find over a single raster scan (foreground runs of a row are merged with the 8-adjacent runs of the row above),
then one pass over the runs that gathers bounding box, pixel count and max heat per component. It never allocates a
label image and it releases the GIL, so the runtime can call it from worker threads in parallel.

:func:`boxes_reference` is the straightforward OpenCV version (``cv2.connectedComponentsWithStats``) that defines the
expected output; the tests require the two to agree exactly.

Output of both: float32 ``[N, 5]`` rows ``[x1, y1, x2, y2, score]`` in pixels, x2/y2 exclusive, score = max heat in
the component (as float32). Rows are sorted by score descending, then by ``(y1, x1)`` ascending, then ``(y2, x2)``
ascending (two distinct 8-connected components can share a top-left corner but never a whole box, so the order is
total and the two implementations can be compared element for element). A pixel is foreground iff
``heat >= threshold`` compared in float64; NaN heat is background.

Compilation: the first call of each input dtype JIT-compiles the kernel (about a second). ``cache=True`` stores the
machine code on disk next to this file, or in ``NUMBA_CACHE_DIR`` / the user cache directory when the package
directory is read-only, so later processes load it in milliseconds. On an appliance with no writable cache location
at all, every process compiles again; call :func:`warmup` at start-up so that cost is not paid on the first flagged
frame.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
from numba import njit

__all__ = ["boxes_reference", "extract_boxes", "warmup"]


_cache_warned = False


def _jit(fn):
    """``njit(nogil=True, cache=True)``, falling back to no disk cache where Numba finds no writable cache dir.

    Numba raises at decoration time when neither the package directory nor the user cache dir is writable; a
    read-only appliance image must still import, just paying the compile at :func:`warmup`.
    """
    global _cache_warned
    try:
        return njit(nogil=True, cache=True)(fn)
    except RuntimeError as exc:  # "cannot cache function ...: no locator available"
        if not _cache_warned:
            _cache_warned = True
            warnings.warn(
                f"numba disk cache unavailable (set NUMBA_CACHE_DIR), compiling per process: {exc}", stacklevel=2
            )
        return njit(nogil=True, cache=False)(fn)


@_jit
def _find(parent: np.ndarray, i: int) -> int:
    """Root of run ``i`` with path halving; roots are always the smallest index of their set."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@_jit
def _union(parent: np.ndarray, a: int, b: int) -> None:
    """Merge the sets of runs ``a`` and ``b``, keeping the smaller root so ``parent[i] <= i`` always holds."""
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


@_jit
def _boxes_kernel(heat: np.ndarray, threshold: float, min_area: int) -> np.ndarray:
    h, w = heat.shape
    max_runs = h * ((w + 1) // 2)  # a row holds at most ceil(w / 2) separate runs
    run_y = np.empty(max_runs, np.int32)
    run_x0 = np.empty(max_runs, np.int32)
    run_x1 = np.empty(max_runs, np.int32)  # inclusive
    run_max = np.empty(max_runs, np.float64)
    parent = np.empty(max_runs, np.int64)

    # Pass 1: raster scan for foreground runs, union each with the runs of the row above that touch it
    # (8-connectivity: previous-row run [a, b] touches [s, e] iff a <= e + 1 and b >= s - 1).
    n = 0
    prev_lo = 0
    prev_hi = 0
    for y in range(h):
        row_lo = n
        j = prev_lo
        x = 0
        while x < w:
            v = heat[y, x]
            if not v >= threshold:  # also true for NaN
                x += 1
                continue
            s = x
            m = v
            x += 1
            while x < w:
                v = heat[y, x]
                if not v >= threshold:
                    break
                if v > m:
                    m = v
                x += 1
            e = x - 1
            run_y[n] = y
            run_x0[n] = s
            run_x1[n] = e
            run_max[n] = m
            parent[n] = n
            while j < prev_hi and run_x1[j] < s - 1:  # ends left of this run, hence of all later runs too
                j += 1
            k = j
            while k < prev_hi and run_x0[k] <= e + 1:
                _union(parent, n, k)
                k += 1
            n += 1
        prev_lo = row_lo
        prev_hi = n

    # Pass 2: flatten (parent[i] <= i, so parents are final before their children) and number the components.
    comp = np.empty(n, np.int64)
    nc = 0
    for i in range(n):
        r = parent[parent[i]]
        parent[i] = r
        if r == i:
            comp[i] = nc
            nc += 1
        else:
            comp[i] = comp[r]

    bx0 = np.full(nc, w, np.int64)
    by0 = np.full(nc, h, np.int64)
    bx1 = np.full(nc, -1, np.int64)
    by1 = np.full(nc, -1, np.int64)
    area = np.zeros(nc, np.int64)
    score = np.full(nc, -np.inf, np.float64)
    for i in range(n):
        c = comp[i]
        if run_x0[i] < bx0[c]:
            bx0[c] = run_x0[i]
        if run_x1[i] > bx1[c]:
            bx1[c] = run_x1[i]
        if run_y[i] < by0[c]:
            by0[c] = run_y[i]
        if run_y[i] > by1[c]:
            by1[c] = run_y[i]
        area[c] += run_x1[i] - run_x0[i] + 1
        if run_max[i] > score[c]:
            score[c] = run_max[i]

    keep = np.flatnonzero(area >= min_area)
    out = np.empty((keep.size, 5), np.float32)
    for r in range(keep.size):
        c = keep[r]
        out[r, 0] = bx0[c]
        out[r, 1] = by0[c]
        out[r, 2] = bx1[c] + 1
        out[r, 3] = by1[c] + 1
        out[r, 4] = score[c]  # rounded to float32 here, before sorting, as in the reference

    # Stable sorts from least to most significant key: (y2, x2), then (y1, x1), then score descending.
    x1 = out[:, 0].astype(np.int64)
    y1 = out[:, 1].astype(np.int64)
    x2 = out[:, 2].astype(np.int64)
    y2 = out[:, 3].astype(np.int64)
    order = np.argsort(y2 * (w + 1) + x2, kind="mergesort")
    key = (y1 * w + x1)[order]
    order = order[np.argsort(key, kind="mergesort")]
    neg = -out[:, 4][order]
    order = order[np.argsort(neg, kind="mergesort")]
    return out[order]


def _prepare(heat: np.ndarray) -> np.ndarray:
    """C-contiguous float32/float64 2-D view of ``heat``; other dtypes go to float64, which holds them exactly."""
    arr = np.asarray(heat)
    if arr.ndim != 2:
        raise ValueError(f"heat map must be 2-D (H, W), got shape {arr.shape}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    return np.ascontiguousarray(arr)


def _empty() -> np.ndarray:
    return np.zeros((0, 5), np.float32)


def extract_boxes(heat: np.ndarray, threshold: float, min_area: int = 1) -> np.ndarray:
    """Boxes of the 8-connected regions with ``heat >= threshold`` and at least ``min_area`` pixels (Numba, nogil).

    Returns float32 ``[N, 5]`` rows ``[x1, y1, x2, y2, score]`` (x2/y2 exclusive), ordered as described in the module
    docstring; identical to :func:`boxes_reference`.
    """
    arr = _prepare(heat)
    if arr.size == 0:
        return _empty()
    return _boxes_kernel(arr, float(threshold), int(min_area))


def boxes_reference(heat: np.ndarray, threshold: float, min_area: int = 1) -> np.ndarray:
    """OpenCV/NumPy reference for :func:`extract_boxes`: same contract, defines the expected output exactly."""
    arr = _prepare(heat)
    if arr.size == 0:
        return _empty()
    # Compare in float64 so the result does not depend on NumPy's scalar promotion rules (threshold is a float64).
    mask = arr.astype(np.float64, copy=False) >= float(threshold)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    score = np.full(n, -np.inf, np.float64)
    np.maximum.at(score, labels[mask], arr[mask])
    keep = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= min_area)
    keep = keep[keep != 0]  # label 0 is the background
    if keep.size == 0:
        return _empty()
    x, y = stats[keep, cv2.CC_STAT_LEFT], stats[keep, cv2.CC_STAT_TOP]
    out = np.stack(
        [x, y, x + stats[keep, cv2.CC_STAT_WIDTH], y + stats[keep, cv2.CC_STAT_HEIGHT], np.zeros_like(x)], axis=1
    ).astype(np.float32)
    out[:, 4] = score[keep]
    order = np.lexsort((out[:, 2], out[:, 3], out[:, 0], out[:, 1], -out[:, 4]))
    return out[order]


def warmup() -> None:
    """Compile (or load from the disk cache) the kernel for float32 and float64 maps; call once at start-up."""
    tiny = np.array([[0.0, 0.9, 0.0], [0.8, 0.0, 0.2]])
    for dtype in (np.float32, np.float64):
        extract_boxes(tiny.astype(dtype), 0.5, 1)
