"""A simulated GPU encoder, for pipeline measurements only (`stp-bench --backends sim:MS`).

No GPU has been lent to this project, yet the question a GPU appliance asks of the host (can decode, windows,
gating, SA2, the head and the sinks keep the encoder busy?) needs one. `SimBackend` answers it without: each
encoder call holds for MS milliseconds per 50 crops (one sampled frame's), scaled linearly with the batch, and
then returns fixed embeddings of the bundle's dimension. The hold is a sleep, so, like a thread waiting on a GPU
kernel, it uses no CPU and releases the GIL: host work running beside it shows up exactly as it would beside a real
device. Not modelled: the host-to-device copy of the crops (pinned, asynchronous memory makes it cheap on a real
appliance; pageable memory would add a memcpy per call) and any GPU-side contention.

The heads are the bundle's real ONNX Runtime graphs on the CPU, so SA2 + head cost what they cost. The scores mean
nothing (every crop gets one of 50 fixed vectors): never use it to judge a model.

`sim:MS:device` stands for a backend that cuts the windows on the device (the PyTorch CUDA one): the host then only
resizes each sampled frame to 224x224 uint8 (150 KB) instead of writing 50 float32 crops (30 MB). `sim:MS:u8`
stands for TensorRT with the bundle's preprocessing plan (model.pre.plan): the host cuts the 50 crops as uint8
(7.5 MB) and the device normalises them.
"""

from __future__ import annotations

import os
import re
import time
from typing import NamedTuple

import numpy as np

from ...bundle.manifest import Manifest, load_manifest
from ...bundle.ort import CPU
from ...errors import UserError
from .ort import HostHeadsBackend

CROPS_PER_HOLD = 50  # `sim:MS` holds MS milliseconds per this many crops (1 + 49: one sampled frame's encoder input)
PREFIX = "sim:"


class SimSpec(NamedTuple):
    """A `sim:MS[:device|:u8]` name: MS per 50 crops; `device`: the windows are cut on the simulated device;
    `pixels`: the host cuts uint8 crops and the device normalises them (TensorRT with model.pre.plan)."""

    ms: float
    device: bool = False
    pixels: bool = False


def parse_sim(name: str) -> SimSpec | None:
    """`sim:125` -> SimSpec(125.0), `sim:16:device` -> SimSpec(16.0, True), `sim:16:u8` -> SimSpec(16.0, False,
    True); None when `name` is not a `sim:` name; a malformed one is a UserError."""
    if not name.lower().startswith(PREFIX):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(:device|:u8)?", name[len(PREFIX) :].strip().lower())
    if m is None:
        raise UserError(f"{name}: a simulated encoder is sim:MS[:device|:u8], MS = milliseconds per 50 crops (e.g. "
                        "sim:16, sim:125:device, sim:16:u8)")  # fmt: skip
    return SimSpec(float(m.group(1)), m.group(2) == ":device", m.group(2) == ":u8")


class SimBackend(HostHeadsBackend):
    """Encoder calls that sleep `ms_per_50` ms per 50 crops and return fixed embeddings; real heads (ONNX Runtime)."""

    def __init__(self, manifest: Manifest, ms_per_50: float, max_batch: int | None = None, device: bool = False,
                 pixels: bool = False):  # fmt: skip
        """`device`: the Detector hands over 224x224 uint8 frames and window masks (`encode_frames`) and the
        windows are cut on the simulated device, as the PyTorch CUDA backend does; otherwise the host builds the
        float32 crops, as TensorRT and ONNX Runtime take them; `pixels`: the host cuts uint8 crops and the device
        normalises them, as TensorRT does with a bundle's model.pre.plan."""
        if device and pixels:
            raise UserError("sim: windows cut on the device (:device) or uint8 crops (:u8), not both")
        if not ms_per_50 >= 0:
            raise UserError(f"sim:{ms_per_50}: the simulated latency must be >= 0 ms")
        self.manifest = manifest
        self.ms_per_50 = float(ms_per_50)
        self.dim, self.max_batch = manifest.dim, max_batch
        self.preprocess = manifest.preprocess
        self.gpu_preprocessing = bool(device)
        self.input_format = "uint8" if pixels else "float32"
        self.name = f"sim:{self.ms_per_50:g}" + (":device" if device else ":u8" if pixels else "")
        rng = np.random.default_rng(0)
        bank = rng.standard_normal((CROPS_PER_HOLD, self.dim)).astype(np.float32)
        self._bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
        self._open_heads(manifest, [CPU])

    def hold_s(self, crops: int) -> float:
        """Seconds one call over `crops` crops holds."""
        return self.ms_per_50 * crops / CROPS_PER_HOLD / 1e3

    def _encode_batch(self, images: np.ndarray) -> np.ndarray:
        return self._hold(len(images))

    def _encode_pixel_batch(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 crops, normalised on the simulated device: the same hold per crop."""
        return self._hold(len(pixels))

    def encode_frames(self, smalls: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
        """Windows cut on the simulated device: only the uint8 frames cross; the same hold per crop."""
        return self._hold(sum(1 + int(m.sum()) for m in masks))

    def _hold(self, crops: int) -> np.ndarray:
        hold = self.hold_s(crops)
        if hold > 0:
            time.sleep(hold)  # releases the GIL, burns no CPU: what a thread waiting on a GPU does
        return self._bank[np.arange(crops) % CROPS_PER_HOLD]


def open_simulated(bundle: str | os.PathLike, ms_per_50: float, max_batch: int | None = None,
                   device: bool = False, pixels: bool = False) -> SimBackend:  # fmt: skip
    """A SimBackend over a bundle (its model.json, or any file of it: the manifest beside it), verified by sha256."""
    from ...bundle.membership import bundle_manifest_for

    mpath = bundle_manifest_for(bundle)
    if not mpath.is_file():
        raise UserError(f"{bundle}: bundle manifest {mpath} not found (the simulated encoder needs the bundle's heads)")
    return SimBackend(load_manifest(mpath, verify=True), ms_per_50, max_batch, device, pixels)
