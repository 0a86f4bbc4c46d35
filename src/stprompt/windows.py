"""The one definition of frame resize, window geometry and encoder-batch construction.

Extraction, training data, the runtime and export all call these functions, so offline features and
runtime features agree to float tolerance (preprocessing drift is the classic deployment bug).

SPEC.md: the whole uint8 BGR frame is resized to 224x224 with OpenCV INTER_CUBIC (aspect not kept);
windows of size P and stride S are cut from that uint8 image and each resized to 224x224 the same way;
then BGR -> RGB, /255 and the CLIP model's mean/std. Scale A (32/32) gives a 7x7 grid, scale B (80/48) a 4x4
grid. The mean/std and the geometry come from a `stprompt.bundle.preprocess.Preprocess` value (the bundle's
manifest at run time, the CLIP model's configuration at extraction); the default is OpenAI CLIP's.

Vectorisation: instead of one cv2.resize per window, the windows of a scale are laid out as a mosaic in
which every tile carries a replicated border (OpenCV's own border rule) and starts at a pixel that maps
to a whole output pixel; one cv2.resize of the mosaic then yields every window bit-identical to resizing
it alone (tested against the per-window reference). The encoder batch is then written in place by Numba
kernels (`stprompt.kernels.normalize`) that read the tiles straight out of the resized mosaic;
:func:`normalize` is the NumPy definition they match bit for bit.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from fractions import Fraction

import cv2
import numpy as np

from .bundle.preprocess import DEFAULT, SIZE, Preprocess
from .kernels.normalize import copy_tiles, normalize_frames, normalize_tiles

IMAGE_SIZE = SIZE  # the only size the runtime honours (Preprocess.check_supported refuses others)
_INTERP = cv2.INTER_CUBIC  # preprocess.RESAMPLER, the only resampler a bundle may name (check_supported)
_CUBIC_SUPPORT = 2  # source pixels a bicubic tap reaches beyond the sampled position


@dataclass(frozen=True)
class WindowScale:
    """Square windows of `size` pixels every `stride` pixels on the 224x224 frame."""

    size: int
    stride: int
    _plan: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        if not 0 < self.size <= IMAGE_SIZE or self.stride <= 0 or (IMAGE_SIZE - self.size) % self.stride:
            raise ValueError(f"window size {self.size} / stride {self.stride} do not tile {IMAGE_SIZE} pixels")

    @property
    def grid(self) -> int:
        return (IMAGE_SIZE - self.size) // self.stride + 1

    @property
    def count(self) -> int:
        return self.grid * self.grid

    def boxes(self) -> np.ndarray:
        """[count, 4] window boxes (x1, y1, x2, y2) on the 224x224 frame, row-major."""
        starts = np.arange(self.grid) * self.stride
        ys, xs = np.meshgrid(starts, starts, indexing="ij")
        x1, y1 = xs.ravel(), ys.ravel()
        return np.stack([x1, y1, x1 + self.size, y1 + self.size], axis=1).astype(np.float32)

    def frame_boxes(self, width: int, height: int) -> np.ndarray:
        """Window boxes in the pixels of a width x height source frame."""
        b = self.boxes()
        return b * np.array([width, height, width, height], np.float32) / IMAGE_SIZE

    def mosaic_plan(self) -> tuple[np.ndarray, int, int]:
        """(source index per mosaic row/column, output pitch, output offset) for the one-resize trick."""
        if not self._plan:
            scale = Fraction(IMAGE_SIZE, self.size)
            step = scale.denominator  # tile starts must be multiples of this to land on whole pixels
            pad = math.ceil(_CUBIC_SUPPORT / step) * step
            pitch = self.size + 2 * pad
            rel = np.clip(np.arange(pitch) - pad, 0, self.size - 1)
            index = np.concatenate([k * self.stride + rel for k in range(self.grid)]).astype(np.intp)
            self._plan.update(index=index, pitch=int(pitch * scale), offset=int(pad * scale))
        return self._plan["index"], self._plan["pitch"], self._plan["offset"]


@functools.lru_cache(maxsize=16)
def window_scale(size: int, stride: int) -> WindowScale:
    """The one WindowScale per geometry (its mosaic plan is computed once)."""
    return WindowScale(size, stride)


def scales(pre: Preprocess = DEFAULT) -> tuple[WindowScale, WindowScale]:
    """(scale A, scale B) of a Preprocess value."""
    return window_scale(*pre.scale_a), window_scale(*pre.scale_b)


SCALE_A, SCALE_B = scales(DEFAULT)  # 7x7 -> x_patch; 4x4 -> localization only


def resize_frame(frame_bgr: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 BGR frame -> 224 x 224 x 3 uint8 BGR (bicubic, aspect not kept)."""
    if frame_bgr.dtype != np.uint8 or frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 frame, got {frame_bgr.dtype} {frame_bgr.shape}")
    if frame_bgr.shape[:2] == (IMAGE_SIZE, IMAGE_SIZE):
        return np.ascontiguousarray(frame_bgr)
    return cv2.resize(frame_bgr, (IMAGE_SIZE, IMAGE_SIZE), interpolation=_INTERP)


def window_tiles(frame224: np.ndarray, scale: WindowScale) -> np.ndarray:
    """[grid, 224, grid, 224, 3] uint8 view of the resized mosaic: window (gy, gx) is tiles[gy, :, gx] (no copy)."""
    index, pitch, offset = scale.mosaic_plan()
    mosaic = frame224[index][:, index]
    side = pitch * scale.grid
    out = cv2.resize(mosaic, (side, side), interpolation=_INTERP)
    return out.reshape(scale.grid, pitch, scale.grid, pitch, 3)[
        :, offset : offset + IMAGE_SIZE, :, offset : offset + IMAGE_SIZE
    ]


def window_crops(frame224: np.ndarray, scale: WindowScale) -> np.ndarray:
    """[count, 224, 224, 3] uint8 windows of a 224x224 frame, each resized to 224."""
    tiles = window_tiles(frame224, scale)
    return tiles.transpose(0, 2, 1, 3, 4).reshape(scale.count, IMAGE_SIZE, IMAGE_SIZE, 3)


def window_crops_reference(frame224: np.ndarray, scale: WindowScale) -> np.ndarray:
    """Per-window cv2.resize: the definition `window_crops` must reproduce exactly (tests only)."""
    out = []
    for x1, y1, x2, y2 in scale.boxes().astype(int):
        out.append(cv2.resize(frame224[y1:y2, x1:x2], (IMAGE_SIZE, IMAGE_SIZE), interpolation=_INTERP))
    return np.stack(out)


def normalize(crops_bgr: np.ndarray, out: np.ndarray | None = None, pre: Preprocess = DEFAULT) -> np.ndarray:
    """[N, 224, 224, 3] uint8 BGR -> [N, 3, 224, 224] float32 RGB with `pre`'s mean/std (into `out` if given)."""
    n = crops_bgr.shape[0]
    if out is None:
        out = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    gain, bias = pre.gain, pre.bias
    for c in range(3):  # RGB channel c is BGR channel 2 - c
        np.multiply(crops_bgr[..., 2 - c], gain[c], out=out[:, c], dtype=np.float32)
        out[:, c] += bias[c]
    return out


def fill_windows(frame224: np.ndarray, scale: WindowScale, out: np.ndarray, mask: np.ndarray | None = None,
                 pre: Preprocess = DEFAULT) -> int:  # fmt: skip
    """Write the windows of `scale` that `mask` keeps (all by default) into `out`, normalised; return the count.

    Numba kernels read the tiles straight out of the resized mosaic and write the normalised planes in place:
    bit-identical to :func:`normalize` of :func:`window_crops`, without the intermediate crop arrays.
    """
    keep = np.ones(scale.count, bool) if mask is None else mask
    rows = int(keep.sum())
    if out.shape[0] < rows:
        raise ValueError(f"out has {out.shape[0]} rows, the windows need {rows}")
    if rows:
        normalize_tiles(window_tiles(frame224, scale), keep, out[:rows], pre.gain, pre.bias)
    return rows


def fill_encoder_batch(frame224: np.ndarray, out: np.ndarray, mask: np.ndarray | None = None,
                       scale: WindowScale | None = None, pre: Preprocess = DEFAULT) -> int:  # fmt: skip
    """One sampled frame's encoder input written into `out` (a slice of a preallocated batch): the full frame,
    then the windows of `scale` (default: `pre`'s scale A) that `mask` keeps; returns the row count."""
    if out.shape[0] < 1:
        raise ValueError("out has no row for the full frame")
    normalize_frames(frame224[None], out[:1], pre.gain, pre.bias)
    return 1 + fill_windows(frame224, scale or scales(pre)[0], out[1:], mask, pre)


def fill_pixel_windows(frame224: np.ndarray, scale: WindowScale, out: np.ndarray,
                       mask: np.ndarray | None = None) -> int:  # fmt: skip
    """`fill_windows` for engines that normalise on their device: the kept windows as uint8 BGR [kept, S, S, 3],
    copied out of the resized mosaic, not normalised; returns the count."""
    keep = np.ones(scale.count, bool) if mask is None else mask
    rows = int(keep.sum())
    if out.shape[0] < rows:
        raise ValueError(f"out has {out.shape[0]} rows, the windows need {rows}")
    if rows:
        copy_tiles(window_tiles(frame224, scale), keep, out[:rows])
    return rows


def fill_pixel_batch(frame224: np.ndarray, out: np.ndarray, mask: np.ndarray | None = None,
                     scale: WindowScale | None = None, pre: Preprocess = DEFAULT) -> int:  # fmt: skip
    """`fill_encoder_batch` for engines that normalise on their device: the same rows as uint8 BGR [rows, S, S, 3]
    (the full frame, then the kept windows), not normalised; returns the row count."""
    if out.shape[0] < 1:
        raise ValueError("out has no row for the full frame")
    out[0] = frame224
    return 1 + fill_pixel_windows(frame224, scale or scales(pre)[0], out[1:], mask)


def crops_per_frame(scale_b: bool = False, pre: Preprocess = DEFAULT) -> int:
    scale_a, scale_b_ = scales(pre)
    return 1 + scale_a.count + (scale_b_.count if scale_b else 0)


def encoder_batch(frame_bgr: np.ndarray, scale_b: bool = False, out: np.ndarray | None = None,
                  pre: Preprocess = DEFAULT) -> np.ndarray:  # fmt: skip
    """[1 + 49 (+16), 3, 224, 224] float32 encoder input for one sampled frame: full frame, scale-A (, scale-B)."""
    small = resize_frame(frame_bgr)
    if out is None:
        out = np.empty((crops_per_frame(scale_b, pre), 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    rows = fill_encoder_batch(small, out, pre=pre)
    if scale_b:
        fill_windows(small, scales(pre)[1], out[rows:], pre=pre)
    return out


def pixel_batch(frame_bgr: np.ndarray, pre: Preprocess = DEFAULT) -> np.ndarray:
    """[1 + 49, S, S, 3] uint8 BGR crops of one sampled frame: `encoder_batch`'s rows before normalisation (what
    the Detector cuts for a backend that normalises on its device, and any backend's `encode_pixels` takes)."""
    out = np.empty((crops_per_frame(pre=pre), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    fill_pixel_batch(resize_frame(frame_bgr), out, pre=pre)
    return out
