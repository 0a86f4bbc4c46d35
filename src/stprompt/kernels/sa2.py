"""SA2 (motion-prior spatial aggregation, SPEC.md "Temporal detection head" step 1) without torch.

The deployed runtime streams snippets through a ring buffer and must not import the training stack, yet it needs
SA2's output ``x_AS[i]`` as soon as snippet ``i + 1`` has arrived (or at the end of the stream). The PyTorch version
(:func:`stprompt.model.sa2.sa2`) works on whole padded batches; this module gives the same computation for one
snippet from its two neighbours (:func:`sa2_step`) and for a whole ``[T, W, D]`` sequence (:func:`sa2_sequence`),
both as Numba kernels that release the GIL, plus :func:`sa2_reference`, a vectorised NumPy version that defines the
expected output and that the tests compare everything against.

Definition, for snippet ``i`` of ``x_patch [T, W, D]``:

* ``Mo[i, w] = || 2 x[i, w] - x[i-1, w] - x[i+1, w] ||_2`` over ``D``, with replicate padding at the ends
  (``x[-1] := x[0]``, ``x[T] := x[T-1]``; a single snippet therefore has zero motion everywhere);
* keep the ``k`` windows with the largest ``Mo``; ties go to the LOWEST window index first (the rule of ONNX TopK,
  i.e. a stable descending sort -- static scenes give exact ties, and then windows ``0 .. k-1`` are kept);
* ``att = softmax(Mo_top)`` (no temperature; the maximum is subtracted first);
* ``x_AS[i] = sum_k att[k] x[i, idx_k]``.

The paper's Table 5 ablations are the same kernel with another ``spatial`` mode (SPEC.md "Ablation switches"):
``"none"`` (zeros), ``"average"`` (mean of all ``W`` windows; no motion, so no neighbours needed),
``"attention"`` (softmax over all ``W`` motions), ``"selection-average"`` (mean of the top ``k``), ``"sa2"`` (the
default above). Each is a function of snippets ``i - 1 .. i + 1`` only, so each streams exactly.

Precision: inputs are float32 (other dtypes and non-contiguous arrays are converted to C-contiguous float32 by the
thin Python wrappers). Every implementation here computes in float64 -- the differences ``2 x - prev - next`` (exact
for float32 inputs of similar magnitude), the sums of squares, the softmax and the weighted sum -- and rounds the
result once to float32. The kernels and the reference therefore agree to a few float32 ulps; against the float32
PyTorch / ONNX graph they agree to about 1e-6 relative, except where two motion values are so close that float32
rounding reorders them (a near-tie at the top-``k`` boundary), where any two float32 implementations can also differ.
NaN inputs give unspecified results.

Compilation: ``cache=True`` keeps the machine code on disk (next to this file, or in ``NUMBA_CACHE_DIR`` / the user
cache directory); where no cache location is writable the kernels compile per process, so call :func:`warmup` at
start-up rather than paying the compile on the first snippet.
"""

from __future__ import annotations

import numpy as np

# The package's one ``njit(nogil=True, cache=True)`` helper (falls back to no disk cache, warning once per process,
# where Numba finds no writable cache location).
from stprompt.kernels.boxes import _jit

__all__ = ["SPATIAL", "sa2_reference", "sa2_sequence", "sa2_step", "warmup"]

# The paper's Table 5 variants (stprompt.model.config.SPATIAL; this module must not import the model package).
SPATIAL = ("none", "average", "attention", "selection-average", "sa2")
_NONE, _AVERAGE, _ATTENTION, _SELECTION_AVERAGE, _SA2 = range(len(SPATIAL))

# --- Numba kernels ------------------------------------------------------------------------------------------------


@_jit
def _step_into(prev, cur, nxt, k, mode, mo, top, idx, acc, out):
    """x_AS of one snippet into ``out`` [D] float32 by variant ``mode``; scratch: ``mo``, ``top`` [W], ``acc`` [D]
    float64, ``idx`` [W] int64."""
    w_count, d_count = cur.shape
    if mode == _NONE:
        for d in range(d_count):
            out[d] = 0.0
        return
    n = w_count  # windows entering the weighted sum
    if mode == _AVERAGE:  # no motion: every window, uniform weights
        for w in range(w_count):
            idx[w] = w
            top[w] = 0.0
    else:
        # Motion magnitude of every window in float64: an elementwise pass (vectorised) writes the squared
        # differences of a window into ``acc``, then 4 interleaved partial sums reduce it (independent chains; one
        # running sum would be latency-bound). The summation order is fixed -- no fastmath -- so equal inputs
        # always give equal norms.
        d4 = d_count - d_count % 4
        for w in range(w_count):
            cw = cur[w]
            pw = prev[w]
            nw = nxt[w]
            for d in range(d_count):
                s = 2.0 * np.float64(cw[d]) - np.float64(pw[d]) - np.float64(nw[d])
                acc[d] = s * s
            a0 = a1 = a2 = a3 = 0.0
            for d in range(0, d4, 4):
                a0 += acc[d]
                a1 += acc[d + 1]
                a2 += acc[d + 2]
                a3 += acc[d + 3]
            for d in range(d4, d_count):
                a0 += acc[d]
            mo[w] = np.sqrt((a0 + a1) + (a2 + a3))
    if mode == _ATTENTION:  # every window, in index order
        for w in range(w_count):
            idx[w] = w
            top[w] = mo[w]
    elif mode in (_SELECTION_AVERAGE, _SA2):
        # Partial selection of the k largest, kept sorted by (value descending, index ascending). Windows are
        # scanned in index order and an entry is only displaced by a strictly greater value, so equal values keep
        # the lowest index first -- exactly a stable descending sort truncated to k.
        n = 0
        for w in range(w_count):
            v = mo[w]
            if n == k and not v > top[k - 1]:
                continue
            p = n if n < k else k - 1  # the slot that frees up: append, or overwrite the current last
            while p > 0 and top[p - 1] < v:
                top[p] = top[p - 1]
                idx[p] = idx[p - 1]
                p -= 1
            top[p] = v
            idx[p] = w
            if n < k:
                n += 1
    # Weights in float64, stored over ``top``: softmax (maximum subtracted first) or uniform 1 / n.
    if mode in (_ATTENTION, _SA2):
        m = top[0]
        for j in range(1, n):
            m = max(m, top[j])
        denom = 0.0
        for j in range(n):
            top[j] = np.exp(top[j] - m)
            denom += top[j]
        for j in range(n):
            top[j] = top[j] / denom
    else:
        for j in range(n):
            top[j] = 1.0 / n
    # Weighted sum with the window loop outside, so the inner loop over channels is independent per element.
    for d in range(d_count):
        acc[d] = 0.0
    for j in range(n):
        a = top[j]
        row = cur[idx[j]]
        for d in range(d_count):
            acc[d] += a * np.float64(row[d])
    for d in range(d_count):
        out[d] = np.float32(acc[d])


@_jit
def _sa2_step_kernel(prev, cur, nxt, k, mode):
    w_count, d_count = cur.shape
    out = np.empty(d_count, np.float32)
    _step_into(prev, cur, nxt, k, mode, np.empty(w_count), np.empty(w_count), np.empty(w_count, np.int64),
               np.empty(d_count), out)  # fmt: skip
    return out


@_jit
def _sa2_sequence_kernel(x, k, mode):
    t_count, w_count, d_count = x.shape
    out = np.empty((t_count, d_count), np.float32)
    mo = np.empty(w_count)
    top = np.empty(w_count)
    idx = np.empty(w_count, np.int64)
    acc = np.empty(d_count)
    for i in range(t_count):
        prev = x[max(i - 1, 0)]
        nxt = x[min(i + 1, t_count - 1)]
        _step_into(prev, x[i], nxt, k, mode, mo, top, idx, acc, out[i])
    return out


# --- Python wrappers ----------------------------------------------------------------------------------------------


def _as_f32(a: np.ndarray, ndim: int, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_k(k: int, w_count: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise ValueError(f"k must be an integer, got {k!r}")
    if not 1 <= k <= w_count:
        raise ValueError(f"k must be in 1..W = 1..{w_count}, got {k}")
    return int(k)


def _mode(spatial: str) -> int:
    if spatial not in SPATIAL:
        raise ValueError(f"spatial must be one of {', '.join(SPATIAL)}, got {spatial!r}")
    return SPATIAL.index(spatial)


def sa2_step(prev: np.ndarray, cur: np.ndarray, nxt: np.ndarray, k: int = 12, spatial: str = "sa2") -> np.ndarray:
    """x_AS [D] float32 of one snippet ``cur`` [W, D] from its neighbours ``prev`` and ``nxt`` (Numba, nogil).

    At the ends of a stream pass the snippet itself as the missing neighbour (replicate padding): ``prev = cur`` for
    the first snippet, ``nxt = cur`` for the last. Equal to ``sa2_sequence(x)[i]`` for ``(x[i-1], x[i], x[i+1])``.
    ``spatial`` picks a Table 5 variant (``"none"`` and ``"average"`` ignore the neighbours).
    """
    c = _as_f32(cur, 2, "cur")
    p = _as_f32(prev, 2, "prev")
    n = _as_f32(nxt, 2, "nxt")
    if p.shape != c.shape or n.shape != c.shape:
        raise ValueError(f"prev/cur/nxt shapes differ: {p.shape}, {c.shape}, {n.shape}")
    return _sa2_step_kernel(p, c, n, _check_k(k, c.shape[0]), _mode(spatial))


def sa2_sequence(x_patch: np.ndarray, k: int = 12, spatial: str = "sa2") -> np.ndarray:
    """x_AS [T, D] float32 of every snippet of ``x_patch`` [T, W, D], replicate padding at both ends (Numba, nogil)."""
    x = _as_f32(x_patch, 3, "x_patch")
    return _sa2_sequence_kernel(x, _check_k(k, x.shape[1]), _mode(spatial))


def sa2_reference(x_patch: np.ndarray, k: int = 12, spatial: str = "sa2") -> np.ndarray:
    """Vectorised NumPy reference for :func:`sa2_sequence`: [T, W, D] -> [T, D] float32, computed in float64."""
    x32 = _as_f32(x_patch, 3, "x_patch")
    k = _check_k(k, x32.shape[1])
    mode = _mode(spatial)
    x = x32.astype(np.float64)
    if mode == _NONE:
        return np.zeros((x.shape[0], x.shape[2]), np.float32)
    if mode == _AVERAGE:
        return x.mean(axis=1).astype(np.float32)
    prev = np.concatenate([x[:1], x[:-1]])
    nxt = np.concatenate([x[1:], x[-1:]])
    mo = np.sqrt(np.square(2.0 * x - prev - nxt).sum(axis=-1))  # [T, W]
    if mode == _ATTENTION:
        order = np.broadcast_to(np.arange(x.shape[1]), mo.shape)
    else:
        order = np.argsort(-mo, axis=-1, kind="stable")[:, :k]  # stable: ties keep the lowest window index first
    top = np.take_along_axis(mo, order, axis=-1)
    if mode in (_ATTENTION, _SA2):
        att = np.exp(top - top.max(axis=-1, keepdims=True))
        att /= att.sum(axis=-1, keepdims=True)
    else:
        att = np.full(top.shape, 1.0 / top.shape[-1])
    sel = np.take_along_axis(x, order[:, :, None], axis=1)  # [T, n, D]
    return (att[:, :, None] * sel).sum(axis=1).astype(np.float32)


def warmup() -> None:
    """Compile (or load from the disk cache) both kernels on tiny inputs; call once at start-up."""
    tiny = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    sa2_sequence(tiny, 2)
    sa2_step(tiny[0], tiny[1], tiny[1], 2)  # one compilation serves every variant (the mode is an argument)
