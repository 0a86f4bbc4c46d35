"""Eq. 11 heat maps per window scale, placement on the frame, fusion (numpy only: used by the runtime).

For a window feature x (L2-normalised): p = softmax(x q^T / tau_loc) over all queries; heat = sum of p over
the abnormal queries. Each scale's map is placed on the 224x224 frame by window geometry (overlapping
windows averaged), the scales fused as lambda * A + (1 - lambda) * B, and the result resized to the
source frame. (Resizing is linear, so fusing before the single resize equals resizing each map first.)
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..windows import IMAGE_SIZE, SCALE_A, SCALE_B, WindowScale

TAU_LOC = 0.01
FUSION_LAMBDA = 0.5


def window_heat(features: np.ndarray, queries: np.ndarray, abnormal: np.ndarray, tau: float = TAU_LOC) -> np.ndarray:
    """[..., D] window features -> [...] abnormal probability mass (Eq. 11)."""
    x = np.asarray(features, np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    logits = (x @ queries.T) / tau
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=-1, keepdims=True)
    return p[..., abnormal].sum(axis=-1)


def place_on_grid(heat: np.ndarray, scale: WindowScale) -> np.ndarray:
    """[grid, grid] window heats -> 224x224 map, each pixel the mean over the windows covering it."""
    boxes = scale.boxes().astype(np.intp)
    values = np.asarray(heat, np.float64).ravel()
    acc = np.zeros((IMAGE_SIZE + 1, IMAGE_SIZE + 1))
    cnt = np.zeros_like(acc)
    x1, y1, x2, y2 = boxes.T
    for grid, v in ((acc, values), (cnt, np.ones_like(values))):  # 2-D difference arrays, no per-window loop
        np.add.at(grid, (y1, x1), v)
        np.add.at(grid, (y1, x2), -v)
        np.add.at(grid, (y2, x1), -v)
        np.add.at(grid, (y2, x2), v)
    acc = acc.cumsum(0).cumsum(1)[:IMAGE_SIZE, :IMAGE_SIZE]
    cnt = cnt.cumsum(0).cumsum(1)[:IMAGE_SIZE, :IMAGE_SIZE]
    return (acc / np.maximum(cnt, 1e-9)).astype(np.float32)


def fuse(map_a: np.ndarray, map_b: np.ndarray | None, lam: float = FUSION_LAMBDA) -> np.ndarray:
    """lambda * A + (1 - lambda) * B on the 224 grid; A alone when scale B is absent."""
    return map_a if map_b is None else (lam * map_a + (1.0 - lam) * map_b).astype(np.float32)


def to_frame(map224: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(map224, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)


def flagged(scores, threshold: float) -> np.ndarray:
    """Which snippets get a heat map and boxes: those scoring at or above the alarm threshold.

    SPEC.md localizes flagged frames only; stp-eval (`--alarm-threshold`) and stp-run (`--alarm-on`) both ask
    this function, so the boxes an appliance sends are the boxes stp-eval's TIoU measures. The hysteresis tail
    of a runtime alarm (still on, score between alarm-off and alarm-on) is not flagged: it keeps its events but
    gets no boxes, since the model no longer calls that snippet abnormal and 16 more encoder passes per tail
    snippet would buy boxes no offline metric vouches for. stp-run boxes only inside an alarm, so with
    `--alarm-min N` the N-1 flagged snippets before a start, which raise no event, have no boxes there.
    """
    return np.asarray(scores) >= threshold


@dataclass
class LocalizeSettings:
    tau_loc: float = TAU_LOC
    fusion_lambda: float = FUSION_LAMBDA
    heat_threshold: float = 0.5
    min_box_area: float = 0.001  # fraction of the frame area

    @classmethod
    def from_thresholds(
        cls, thresholds, heat_threshold: float | None = None, min_box_area: float | None = None
    ) -> LocalizeSettings:
        """Settings from a bundle's `Thresholds` (stprompt.bundle.manifest), with optional overrides."""
        return cls(
            tau_loc=thresholds.tau_loc,
            fusion_lambda=thresholds.fusion_lambda,
            heat_threshold=thresholds.heat if heat_threshold is None else heat_threshold,
            min_box_area=thresholds.min_box_area if min_box_area is None else min_box_area,
        )


def frame_heat(
    x_patch: np.ndarray,
    x_patch_b: np.ndarray | None,
    queries: np.ndarray,
    abnormal: np.ndarray,
    width: int,
    height: int,
    settings: LocalizeSettings,
    scales: tuple[WindowScale, WindowScale] = (SCALE_A, SCALE_B),
) -> np.ndarray:
    """Fused frame-sized heat map from a snippet's scale-A [7, 7, D] and scale-B [4, 4, D] features."""
    map_a = place_on_grid(window_heat(x_patch, queries, abnormal, settings.tau_loc), scales[0])
    map_b = None
    if x_patch_b is not None:
        map_b = place_on_grid(window_heat(x_patch_b, queries, abnormal, settings.tau_loc), scales[1])
    return to_frame(fuse(map_a, map_b, settings.fusion_lambda), width, height)
