"""Drawing for people: heat overlay, boxes and a score bar on BGR frames (cv2 only; runtime and plots)."""

from __future__ import annotations

import cv2
import numpy as np

RED = (0, 0, 255)
GREEN = (0, 200, 0)


def overlay_heat(frame_bgr: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] frame-sized heat map (JET colours) over the frame."""
    colour = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(frame_bgr, 1 - alpha, colour, alpha, 0)


def draw_boxes(img: np.ndarray, boxes, colour: tuple[int, int, int], label_scores: bool = True) -> np.ndarray:
    """Rectangles for [x1, y1, x2, y2(, score)] boxes, the score written above each when present."""
    for b in boxes:
        x1, y1, x2, y2 = (int(round(v)) for v in b[:4])
        cv2.rectangle(img, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, 2)
        if label_scores and len(b) > 4:
            cv2.putText(img, f"{b[4]:.2f}", (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1)
    return img


def draw_score_bar(img: np.ndarray, score: float, threshold: float, text: str = "") -> np.ndarray:
    """A bar along the top edge: its length is the anomaly score, red above the threshold."""
    h, w = img.shape[:2]
    bar_h = max(6, h // 40)
    cv2.rectangle(img, (0, 0), (w - 1, bar_h), (40, 40, 40), -1)
    colour = RED if score >= threshold else GREEN
    cv2.rectangle(img, (0, 0), (int(round(np.clip(score, 0, 1) * (w - 1))), bar_h), colour, -1)
    tx = int(round(threshold * (w - 1)))
    cv2.line(img, (tx, 0), (tx, bar_h), (255, 255, 255), 1)
    if text:
        cv2.putText(img, text, (4, bar_h + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return img
