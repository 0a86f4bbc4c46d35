"""Drawing for people: heat overlay, boxes, a score bar and legible text on BGR frames (cv2 only: the runtime's
annotated video and window use it, and stp-eval's frame pictures start from it).

The heat map is a colour map whose opacity follows the heat (cold pixels stay the frame's own, hot ones take the
colour), so a map that is low everywhere leaves the picture clear instead of tinting it. Text sits on a dark
plate, readable on any background.
"""

from __future__ import annotations

import cv2
import numpy as np

RED = (0, 0, 255)
GREEN = (0, 200, 0)
WHITE = (255, 255, 255)
PLATE = (24, 24, 24)  # the dark plate behind text
HEAT_COLORMAP = cv2.COLORMAP_TURBO  # matplotlib's "turbo": stp-eval's colour key shows the same colours
HEAT_COLORMAP_NAME = "turbo"  # HEAT_COLORMAP's name in matplotlib (stp-eval's colour key)
HEAT_ALPHA = 0.65  # opacity of the hottest pixels (heat 1); heat h is drawn at HEAT_ALPHA * h


def overlay_heat(frame_bgr: np.ndarray, heat: np.ndarray, alpha: float = HEAT_ALPHA) -> np.ndarray:
    """A [0, 1] frame-sized heat map over the frame: HEAT_COLORMAP colours at opacity `alpha` x heat."""
    h = np.clip(np.nan_to_num(np.asarray(heat, np.float32)), 0.0, 1.0)
    colour = cv2.applyColorMap((h * 255).astype(np.uint8), HEAT_COLORMAP)
    weight = h * np.float32(alpha)
    # one OpenCV pass in uint8 (per-pixel weights): 4x faster than float32 NumPy on 1080p, within one level of it
    return cv2.blendLinear(colour, np.ascontiguousarray(frame_bgr), weight, 1.0 - weight)


def font_scale(img: np.ndarray) -> float:
    """Text size for this frame: 0.45 on 320x240, growing with the frame so text stays readable on 1080p."""
    return max(0.4, min(img.shape[0], img.shape[1]) / 540)


def put_label(img: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, int, int] = WHITE,
              scale: float | None = None, plate: tuple[int, int, int] = PLATE) -> tuple[int, int]:  # fmt: skip
    """`text` with its top-left corner at `origin` on a plate (dark by default: legible on any background), kept
    inside the frame; returns the plate's (width, height)."""
    scale = font_scale(img) if scale is None else scale
    thick = max(1, round(scale * 2))
    pad = max(2, thick + 1)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    if tw > img.shape[1] - 2 * pad:  # too wide for the frame: smaller, never cut
        scale *= max(0.2, (img.shape[1] - 2 * pad) / tw)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    w, h = tw + 2 * pad, th + base + 2 * pad
    x = int(np.clip(origin[0], 0, max(0, img.shape[1] - w)))
    y = int(np.clip(origin[1], 0, max(0, img.shape[0] - h)))
    cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), plate, -1)
    cv2.putText(img, text, (x + pad, y + pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)
    return w, h


def draw_boxes(img: np.ndarray, boxes, colour: tuple[int, int, int], label_scores: bool = True) -> np.ndarray:
    """Rectangles for [x1, y1, x2, y2(, score)] boxes, the score in white on a plate of the box's colour above each
    when present."""
    thick = max(2, round(font_scale(img) * 3))
    for b in boxes:
        x1, y1, x2, y2 = (int(round(v)) for v in b[:4])
        cv2.rectangle(img, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, thick)
        if label_scores and len(b) > 4:
            scale = font_scale(img) * 0.8
            _, h = cv2.getTextSize("0", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0]
            put_label(img, f"{b[4]:.2f}", (x1 - thick // 2, y1 - h - 8), WHITE, scale, plate=colour)
    return img


def draw_score_bar(img: np.ndarray, score: float, threshold: float, text: str = "") -> np.ndarray:
    """A bar along the top edge whose length is the anomaly score (red at or above the threshold, green below),
    a white mark at the threshold, and `text` under it, a plate per line."""
    h, w = img.shape[:2]
    bar_h = max(6, h // 40)
    cv2.rectangle(img, (0, 0), (w - 1, bar_h), (40, 40, 40), -1)
    colour = RED if score >= threshold else GREEN
    cv2.rectangle(img, (0, 0), (int(round(np.clip(score, 0, 1) * (w - 1))), bar_h), colour, -1)
    tx = int(round(threshold * (w - 1)))
    cv2.line(img, (tx, 0), (tx, bar_h + 2), WHITE, max(1, bar_h // 6))
    y = bar_h + 1
    for line in text.splitlines():
        y += put_label(img, line, (0, y))[1]
    return img
