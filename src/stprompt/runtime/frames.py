"""The one frame type every source hands out and the Detector takes (kept apart so neither imports the other)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Frame:
    """One decoded frame: H x W x 3 uint8 BGR, its native index in the source and its stream time in seconds."""

    image: np.ndarray
    index: int
    time: float
