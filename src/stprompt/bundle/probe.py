"""The accuracy-gate probe: a deterministic, procedurally drawn scene cut into real encoder batches.

The gates compare embeddings after subtracting their mean, so the probe must make the crops differ: colour
gradients, noise texture, a checkerboard, filled shapes, and a bar and a line that move from frame to frame.
Every pixel comes from a seeded generator and OpenCV drawing calls, so no data file ships and every export
gates on the same input. The crops go through `windows.encoder_batch`, the runtime's own preprocessing.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..windows import encoder_batch, pixel_batch
from .preprocess import DEFAULT, Preprocess

PROBE_SEED = 1234
PROBE_SIZE = (320, 240)  # width, height: not square, so the whole-frame resize changes the aspect like a camera


def probe_frame(k: int, size: tuple[int, int] = PROBE_SIZE, seed: int = PROBE_SEED) -> np.ndarray:
    """Frame `k` of the probe scene, H x W x 3 uint8 BGR."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([255 * xx / w, 255 * yy / h, 255 * (1 - xx / w) * (yy / h)], axis=-1)
    img = np.clip(img + rng.normal(0.0, 12.0, img.shape), 0, 255).astype(np.uint8)
    side = min(80, w // 4, h // 3)
    checker = (((xx[:side, :side] // 10 + yy[:side, :side] // 10) % 2) * 255).astype(np.uint8)
    img[h - side :, w - side :] = checker[..., None]
    for i in range(8):
        x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if i % 2:
            x1, y1 = x0 + int(rng.integers(15, 60)), y0 + int(rng.integers(15, 60))
            cv2.rectangle(img, (x0, y0), (x1, y1), colour, -1)
        else:
            cv2.circle(img, (x0 + 30, y0 + 30), int(rng.integers(8, 30)), colour, -1)
    x = 20 + (37 * k) % (w - 80)
    cv2.rectangle(img, (x, h // 2 - 20), (x + 50, h // 2 + 30), (20, 230, 250), -1)
    cv2.line(img, (0, 30 + 7 * k), (w - 1, h - 40 - 5 * k), (255, 255, 255), 3)
    return img


def probe_batch(n_frames: int = 2, pre: Preprocess = DEFAULT) -> np.ndarray:
    """[n_frames * 50, 3, 224, 224] float32: full frame + 49 scale-A windows of each probe frame, made as `pre`
    (the bundle's preprocessing) prescribes."""
    if n_frames < 1:
        raise ValueError("the probe needs at least one frame")
    return np.concatenate([encoder_batch(probe_frame(k), pre=pre) for k in range(n_frames)], axis=0)


def probe_pixels(n_frames: int = 2, pre: Preprocess = DEFAULT) -> np.ndarray:
    """The probe's crops as uint8 BGR [n_frames * 50, S, S, 3], before normalisation: what an engine that
    normalises on its device (`model.pre.onnx`) is fed; normalised they are exactly `probe_batch`'s."""
    if n_frames < 1:
        raise ValueError("the probe needs at least one frame")
    return np.concatenate([pixel_batch(probe_frame(k), pre=pre) for k in range(n_frames)], axis=0)
