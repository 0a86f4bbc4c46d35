"""Frame-level detection metrics (SPEC.md, Metrics): micro frame AUC over all test frames."""

from __future__ import annotations

import numpy as np


def snippet_to_frames(scores: np.ndarray, stride: int) -> np.ndarray:
    """Repeat each snippet score `stride` times: snippet k covers frames [k*stride, (k+1)*stride)."""
    return np.repeat(np.asarray(scores, np.float64), stride)


def frame_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None when the frames hold only one class (AUC undefined)."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, scores))


def frame_ap(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Average precision (the XD-Violence metric), None when there is no positive frame."""
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels)
    if labels.size == 0 or labels.max() == 0:
        return None
    return float(average_precision_score(labels, scores))
