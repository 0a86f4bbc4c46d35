"""The one frame type every source hands out and the Detector takes (kept apart so neither imports the other)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Frame:
    """One decoded frame: H x W x 3 uint8 BGR, its native index in the source and its stream time in seconds.

    `image` is None for a frame a video file was asked to skip without its pixels (`VideoFileSource.read(retrieve=
    False)`): the Pipeline does so for the frames it does not sample, unless `decode_all` asks for every frame's.
    """

    image: np.ndarray | None
    index: int
    time: float
