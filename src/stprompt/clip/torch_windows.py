"""Scale windows and CLIP normalisation in PyTorch, so a GPU builds the encoder batch where the encoder runs.

The CPU definition (:mod:`stprompt.windows`) turns one 224x224 uint8 frame into 1 + 49 float32 crops: 30 MB per
sampled frame to build and to copy to the device. Here the 150 KB uint8 frame goes to the device and the windows are
cut, upscaled (bicubic, each window on its own with a replicated border -- torch's rule, and OpenCV's), rounded to
uint8 like OpenCV's output, and normalised there. Against the CPU definition the crops differ by at most one grey
level on a few pixels in ten thousand (OpenCV's fixed-point bicubic rounds differently); tests bound it.

The frame -> 224x224 resize stays on the CPU (OpenCV, cheap, the exact definition the features were trained on).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import windows
from ..bundle.preprocess import DEFAULT, Preprocess
from ..windows import IMAGE_SIZE


def _normalize(rgb_uint8_valued: torch.Tensor, pre: Preprocess = DEFAULT) -> torch.Tensor:
    """[N, 3, 224, 224] float32 holding 0..255 integers -> normalised with `pre`'s mean/std, as windows.normalize."""
    device = rgb_uint8_valued.device
    gain = torch.from_numpy(pre.gain).view(1, 3, 1, 1).to(device)
    bias = torch.from_numpy(pre.bias).view(1, 3, 1, 1).to(device)
    return rgb_uint8_valued * gain + bias


def window_tiles(frames: torch.Tensor, scale: windows.WindowScale) -> torch.Tensor:
    """[N, 224, 224, 3] uint8 BGR -> [N, count, 3, size, size] float32 RGB window tiles (row-major windows)."""
    x = frames.permute(0, 3, 1, 2).flip(1).float()  # BGR -> RGB channels first
    tiles = x.unfold(2, scale.size, scale.stride).unfold(3, scale.size, scale.stride)  # [N, 3, g, g, s, s]
    n = frames.shape[0]
    return tiles.permute(0, 2, 3, 1, 4, 5).reshape(n, scale.count, 3, scale.size, scale.size)


def upscale(tiles: torch.Tensor) -> torch.Tensor:
    """[M, 3, s, s] -> [M, 3, 224, 224] bicubic, rounded and clipped to uint8 values (OpenCV returns uint8)."""
    if tiles.shape[0] == 0:
        return tiles.new_zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE))
    up = F.interpolate(tiles, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", align_corners=False)
    return up.round_().clamp_(0, 255)


def encoder_batch(frames: torch.Tensor, masks: torch.Tensor | None = None, pre: Preprocess = DEFAULT,
                  scale: windows.WindowScale | None = None) -> torch.Tensor:  # fmt: skip
    """Encoder input for N 224x224 uint8 BGR frames: per frame the full frame, then its windows kept by `masks`.

    `masks`: bool [N, count] (None = every window). Same order as the CPU Detector builds: frame 0's full crop and
    kept windows, then frame 1's, ... Returns float32 [sum(1 + kept), 3, 224, 224] on the frames' device.
    """
    n = frames.shape[0]
    scale = scale or windows.scales(pre)[0]
    full = frames.permute(0, 3, 1, 2).flip(1).float()
    tiles = window_tiles(frames, scale)
    keep = torch.ones((n, scale.count), dtype=torch.bool, device=frames.device) if masks is None else masks
    up = upscale(tiles[keep])  # all kept windows of all frames in one interpolate call
    counts = keep.sum(dim=1).tolist()
    parts, start = [], 0
    for i, c in enumerate(counts):
        parts += [full[i : i + 1], up[start : start + c]]
        start += c
    return _normalize(torch.cat(parts, dim=0), pre)
