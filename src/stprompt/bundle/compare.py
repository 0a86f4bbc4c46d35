"""How two sets of graph outputs are compared: the export gates and `stp-run --check` use the same metrics.

Embeddings: cosine similarity after subtracting the mean reference embedding. Plain cosine is near 1 even for a
broken graph, because CLIP embeddings of any two crops share a large common component; centring measures what
tells crops apart. Scores and probabilities: max absolute difference, and that over the reference's largest
magnitude (element-wise relative error explodes near zero).
"""

from __future__ import annotations

import numpy as np


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def centered_cosine(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-row cosine of (candidate - mu) and (reference - mu), mu = mean reference row."""
    ref = np.asarray(reference, np.float64)
    mu = ref.mean(axis=0, keepdims=True)
    return row_cosine(np.asarray(candidate, np.float64) - mu, ref - mu)


def max_diff(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """{"max_abs", "max_rel"} of `a` against reference `b` (max_rel = max_abs / max |b|)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        raise ValueError(f"shapes differ: {list(a64.shape)} vs {list(b64.shape)}")
    err = float(np.abs(a64 - b64).max()) if a64.size else 0.0
    scale = float(np.abs(b64).max()) if b64.size else 0.0
    return {"max_abs": err, "max_rel": err / max(scale, 1e-12)}
