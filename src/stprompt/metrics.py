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


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of [x1, y1, x2, y2] boxes (extra columns such as scores are ignored)."""
    a = np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1] if np.size(a) else 4)[:, :4]
    b = np.asarray(b, np.float64).reshape(-1, np.shape(b)[-1] if np.size(b) else 4)[:, :4]
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def tiou_terms(
    gt_boxes: dict[int, list[list[float]]],
    predicted: dict[int, np.ndarray],
    frame_scores: np.ndarray,
    theta: float = 0.5,
    best: str = "iou",
) -> list[float]:
    """TIoU terms of one video: for every ground-truth box on frame j (j < len(frame_scores)),
    IoU(best predicted box, GT box) x [frame_scores[j] >= theta]; best = the box with the largest IoU
    (`best="iou"`, SPEC.md) or the highest-scoring box (`best="score"`, column 4).

    `predicted[j]` holds the boxes for frame j (frames without an entry have none). Frames beyond the
    scored range (the tail shorter than a snippet) are not counted, as in the frame AUC.
    """
    terms = []
    for frame, boxes in gt_boxes.items():
        if frame >= len(frame_scores):
            continue
        pred = predicted.get(frame)
        for gt in boxes:
            if pred is None or len(pred) == 0 or frame_scores[frame] < theta:
                terms.append(0.0)
            elif best == "score":
                top = pred[int(np.argmax(np.asarray(pred)[:, 4]))]
                terms.append(float(box_iou(np.asarray([gt]), np.asarray([top]))[0, 0]))
            else:
                terms.append(float(box_iou(np.asarray([gt]), pred).max()))
    return terms
