"""Crops to calibrate INT8 on: a site's own footage (`stp-build --calibrate VIDEO`) with the procedural probe scene.

INT8 ranges are set by what NNCF sees, so the crops should look like what the cameras see: frames of the site's own
video are the right choice for a real deployment. But a site's everyday footage lacks what the detector exists for
(fire, explosions, saturated colours), and ranges fitted to it alone clip those crops: calibrated on one synthetic
street alone, stp-tiny's INT8 engine scored 0.995 on held-out street frames and 0.91 on the probe scene. So the probe
scene, drawn with other seeds than the gate's (the gate never scores the crops the ranges were fitted to), is always
part of the calibration set: alone without footage, as many frames again beside it. Video frames are the bundle's
sampled frames (stride, offset), spread evenly over the videos and cut into crops by the runtime's own preprocessing;
every other chosen frame is held out and only gates ("footage" gate), never calibrates.
Torch-free: numpy, the offline verbs' video reader (`data.video`) and the runtime's window code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import windows
from ..bundle.hashing import sha256_file
from ..bundle.preprocess import Preprocess
from ..bundle.probe import PROBE_SEED, probe_frame
from ..data.video import SampledFrames
from ..errors import UserError
from .openvino import DEFAULT_FRAMES

BLANK_STD = 2.0  # grey levels: a sampled frame flatter than this shows nothing (lens cap, dead feed)
KEEP_PER_VIDEO = 512  # sampled frames kept in memory per video (224x224 uint8 each) before thinning out


@dataclass(frozen=True)
class Calibration:
    """Crops NNCF calibrates on, crops of held-out frames of the same footage (None for the probe), and what the
    engine's key and record say about them."""

    crops: np.ndarray  # [N, 3, S, S] float32
    holdout: np.ndarray | None  # [M, 3, S, S] float32
    identity: dict[str, Any]


def probe_identity(frames: int) -> dict[str, Any]:
    return {"source": "probe", "frames": frames, "seeds": [PROBE_SEED + 1, PROBE_SEED + frames]}


def video_identity(videos: Sequence[str | os.PathLike], frames: int) -> dict[str, Any]:
    """Name, size and sha256 of each video (the key changes when the footage does), and the frames asked for."""
    entries = []
    for v in videos:
        p = Path(v)
        if not p.is_file():
            raise UserError(f"--calibrate {v}: video file not found")
        entries.append({"name": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)})
    return {"source": "video", "frames": frames, "videos": entries, "probe": probe_identity(frames)}


def probe_calibration(pre: Preprocess, frames: int = DEFAULT_FRAMES) -> Calibration:
    """`frames` probe scenes drawn with seeds the gate does not use, 50 crops each."""
    crops = [windows.encoder_batch(probe_frame(i, seed=PROBE_SEED + 1 + i), pre=pre) for i in range(frames)]
    return Calibration(np.concatenate(crops), None, probe_identity(frames))


def sampled_smalls(video: Path, stride: int, offset: int, keep: int = KEEP_PER_VIDEO) -> list[np.ndarray]:
    """The bundle's sampled frames of `video`, resized to 224x224 (the runtime's first step), evenly thinned to at
    most `keep` so an hour of footage costs a bounded amount of memory."""
    smalls: list[np.ndarray] = []
    step = 1
    try:
        for seen, (_, image) in enumerate(SampledFrames(video, stride, offset)):
            if seen % step == 0:
                smalls.append(windows.resize_frame(image))
                if len(smalls) > keep:
                    smalls, step = smalls[::2], step * 2
    except UserError as err:  # SampledFrames' "cannot open video ...", said of the flag that named it
        raise UserError(f"--calibrate {video}: {err}") from None
    return smalls


def video_calibration(videos: Sequence[str | os.PathLike], stride: int, offset: int, pre: Preprocess,
                      frames: int = DEFAULT_FRAMES, identity: dict[str, Any] | None = None) -> Calibration:  # fmt: skip
    """2 x `frames` sampled frames spread evenly over the videos, alternately calibration and held-out gate frames;
    `frames` probe scenes join the calibration crops. `identity`: `video_identity` of the same videos when the
    caller already hashed them."""
    identity = identity or video_identity(videos, frames)
    smalls: list[np.ndarray] = []
    for v in videos:
        found = sampled_smalls(Path(v), stride, offset)
        if not found:
            raise UserError(f"--calibrate {v}: no sampled frame decoded (shorter than one stride of {stride} frames, "
                            "or not a video)")  # fmt: skip
        smalls += found
    if len(smalls) < 2:
        raise UserError(f"--calibrate: the footage has {len(smalls)} sampled frame; calibration and its held-out gate "
                        f"need at least 2 (give a longer video: one frame in {stride} is sampled)")  # fmt: skip
    if max(float(small.std()) for small in smalls) < BLANK_STD:
        raise UserError(f"--calibrate {', '.join(map(str, videos))}: every sampled frame is blank (one flat colour); "
                        "calibrate on footage the cameras really see")  # fmt: skip
    n = min(2 * frames, len(smalls))
    chosen = np.unique(np.linspace(0, len(smalls) - 1, n).round().astype(int))
    calib = [_crops(smalls[i], pre) for i in chosen[0::2]]
    held = [_crops(smalls[i], pre) for i in chosen[1::2]]
    probe = probe_calibration(pre, frames).crops
    return Calibration(np.concatenate([*calib, probe]), np.concatenate(held), identity)


def _crops(small: np.ndarray, pre: Preprocess) -> np.ndarray:
    out = np.empty((windows.crops_per_frame(pre=pre), 3, pre.size, pre.size), np.float32)
    windows.fill_encoder_batch(small, out, pre=pre)
    return out
