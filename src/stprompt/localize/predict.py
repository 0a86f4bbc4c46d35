"""Boxes for every flagged snippet of a feature-store video, and the dataset TIoU (stp-eval --localize)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..kernels.boxes import extract_boxes
from ..metrics import snippet_to_frames, tiou_terms
from .heat import LocalizeSettings, flagged, frame_heat
from .queries import EncodedQueries


@dataclass
class VideoBoxes:
    size: tuple[int, int]  # (width, height) of the source frames
    boxes: dict[int, np.ndarray]  # snippet index -> [N, 5] boxes (x1, y1, x2, y2, score) in source pixels


def min_area_pixels(settings: LocalizeSettings, width: int, height: int) -> int:
    return max(1, math.ceil(settings.min_box_area * width * height))


def localize_snippets(
    arrays: dict[str, np.ndarray],
    scores: np.ndarray,
    size: tuple[int, int],
    queries: EncodedQueries,
    settings: LocalizeSettings,
    alarm_threshold: float,
) -> VideoBoxes:
    """Boxes for the flagged snippets (`heat.flagged`: score >= the alarm threshold, the rule stp-run uses)."""
    if "x_patch_b" not in arrays:
        raise UserError("features have no scale-B windows; extract them with stp-extract --scale-b")
    width, height = size
    min_area = min_area_pixels(settings, width, height)
    out: dict[int, np.ndarray] = {}
    for k in np.flatnonzero(flagged(scores, alarm_threshold)):
        heat = frame_heat(
            arrays["x_patch"][k], arrays["x_patch_b"][k], queries.embeddings, queries.abnormal, width, height, settings
        )
        out[int(k)] = extract_boxes(heat, settings.heat_threshold, min_area)
    return VideoBoxes(size=size, boxes=out)


def video_tiou_terms(
    gt_boxes: dict[int, list[list[float]]],
    video_boxes: VideoBoxes,
    scores: np.ndarray,
    stride: int,
    theta: float,
    best: str = "iou",
) -> list[float]:
    """TIoU terms: a ground-truth frame between snippets takes the boxes of the snippet that covers it."""
    frame_scores = snippet_to_frames(scores, stride)
    predicted = {
        f: video_boxes.boxes[f // stride]
        for f in gt_boxes
        if f // stride in video_boxes.boxes and f < len(frame_scores)
    }
    return tiou_terms(gt_boxes, predicted, frame_scores, theta, best)
