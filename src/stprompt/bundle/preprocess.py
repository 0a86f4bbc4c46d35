"""`Preprocess`: how a frame becomes encoder input, as the bundle prescribes it (never assumed by the runtime).

The CLIP model's own preprocessing configuration gives the input size and the mean / std (open_clip exposes
them per model: OpenAI's weights use (0.481, 0.458, 0.408) / (0.269, 0.261, 0.276), SigLIP uses 0.5 / 0.5);
SPEC.md fixes the rest: the whole frame resized to size x size with OpenCV's bicubic (aspect not kept),
BGR -> RGB, /255, then mean / std; windows of size P every S pixels cut from that frame and resized the same
way. stp-extract, stp-export and the runtime all build crops from one such value, so features, gates and the
appliance agree. `check_supported` refuses, naming the manifest field, what this runtime cannot honour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UserError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PIXEL_SCALE = 1.0 / 255.0  # uint8 pixel -> [0, 1] before mean / std
RESAMPLER = "cv2.INTER_CUBIC"
COLOUR_ORDER = "BGR->RGB"  # decoded frames are BGR (OpenCV); the encoder takes RGB planes
SIZE = 224
SCALE_A = (32, 32)  # (window size, stride) -> 7 x 7 windows: x_patch, the head's 49 windows
SCALE_B = (80, 48)  # -> 4 x 4 windows: localization only
HEAD_WINDOWS = 49  # the head (SA2) takes exactly 7 x 7 scale-A windows

# what the runtime can honour besides any mean / std (anything else is refused, naming the field)
SUPPORTED_SIZES = (SIZE,)
SUPPORTED_RESAMPLERS = (RESAMPLER,)
SUPPORTED_COLOUR_ORDERS = (COLOUR_ORDER,)


def _grid(size: int, window: tuple[int, int]) -> int:
    return (size - window[0]) // window[1] + 1


@dataclass(frozen=True)
class Preprocess:
    """Input size, per-channel RGB mean / std, resampler, colour order and the two window scales."""

    size: int = SIZE
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    resampler: str = RESAMPLER
    colour_order: str = COLOUR_ORDER
    scale_a: tuple[int, int] = SCALE_A
    scale_b: tuple[int, int] = SCALE_B
    _affine: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "scale_a", tuple(int(v) for v in self.scale_a))
        object.__setattr__(self, "scale_b", tuple(int(v) for v in self.scale_b))

    # -- the per-channel affine map the kernels apply: x_rgb = pixel * gain + bias ---------------------------------
    @property
    def gain(self) -> np.ndarray:
        """float32 [3]: 1 / (255 std) per RGB channel."""
        if "gain" not in self._affine:
            self._affine["gain"] = (1.0 / (255.0 * np.asarray(self.std, np.float64))).astype(np.float32)
        return self._affine["gain"]

    @property
    def bias(self) -> np.ndarray:
        """float32 [3]: -mean / std per RGB channel."""
        if "bias" not in self._affine:
            mean, std = np.asarray(self.mean, np.float64), np.asarray(self.std, np.float64)
            self._affine["bias"] = (-mean / std).astype(np.float32)
        return self._affine["bias"]

    @property
    def grid_a(self) -> int:
        return _grid(self.size, self.scale_a)

    @property
    def grid_b(self) -> int:
        return _grid(self.size, self.scale_b)

    # -- validation -------------------------------------------------------------------------------------------------
    def check_supported(self, where: str = "bundle") -> Preprocess:
        """Raise one UserError naming the first field this runtime cannot honour; returns self."""

        def refuse(name: str, value: Any, honoured: str) -> None:
            raise UserError(f"{where}: {name} = {value!r} cannot be honoured by this runtime ({honoured})")

        if len(self.mean) != 3 or len(self.std) != 3 or not all(np.isfinite(self.mean + self.std)):
            refuse("preprocess.mean/std", [self.mean, self.std], "three finite numbers each")
        if min(self.std) <= 0:
            refuse("preprocess.std", list(self.std), "every std must be > 0")
        if self.size not in SUPPORTED_SIZES:
            refuse("preprocess.size", self.size, f"it cuts windows on {SIZE} x {SIZE} frames")
        if self.resampler not in SUPPORTED_RESAMPLERS:
            refuse("preprocess.resampler", self.resampler, f"supported: {', '.join(SUPPORTED_RESAMPLERS)}")
        if self.colour_order not in SUPPORTED_COLOUR_ORDERS:
            refuse("preprocess.colour_order", self.colour_order, f"supported: {', '.join(SUPPORTED_COLOUR_ORDERS)}")
        for name, (size, stride) in (("windows.A", self.scale_a), ("windows.B", self.scale_b)):
            if not 0 < size <= self.size or stride <= 0 or (self.size - size) % stride:
                refuse(name, {"size": size, "stride": stride}, f"windows must tile the {self.size}-pixel frame")
        if self.grid_a**2 != HEAD_WINDOWS:
            refuse("windows.A", {"size": self.scale_a[0], "stride": self.scale_a[1]},
                   f"the head takes {HEAD_WINDOWS} scale-A windows (a 7 x 7 grid)")  # fmt: skip
        if self.scale_a[0] != self.scale_a[1]:
            refuse("windows.A", {"size": self.scale_a[0], "stride": self.scale_a[1]},
                   "motion gating compares scale-A windows as tiles of the frame: size must equal stride")  # fmt: skip
        return self

    # -- manifest sections ------------------------------------------------------------------------------------------
    def manifest_sections(self) -> dict[str, dict[str, Any]]:
        """The manifest's `preprocess` and `windows` sections."""
        s = self.size
        return {
            "preprocess": {
                "size": s,
                "mean": list(self.mean),
                "std": list(self.std),
                "resampler": self.resampler,
                "colour_order": self.colour_order,
                "scale": PIXEL_SCALE,
                "resize": f"whole frame to {s}x{s}, aspect not kept",
                "layout": "NCHW float32: (pixel / 255 - mean) / std per RGB channel",
            },
            "windows": {
                "A": {"size": self.scale_a[0], "stride": self.scale_a[1], "grid": self.grid_a},
                "B": {"size": self.scale_b[0], "stride": self.scale_b[1], "grid": self.grid_b},
                "order": "row-major",
                "crops_per_frame": 1 + self.grid_a**2,
                "batch_order": "full frame, scale-A windows, then scale-B windows on flagged frames",
                "window_resize": f"each window of the {s}x{s} uint8 frame to {s}x{s}, {self.resampler}",
            },
        }

    @classmethod
    def from_manifest(cls, doc: dict[str, Any], where: str = "bundle") -> Preprocess:
        """The value a manifest's `preprocess` and `windows` sections describe, checked to be honourable."""
        pre, win = doc.get("preprocess") or {}, doc.get("windows") or {}

        def get(section: dict, key: str, name: str, default: Any = None) -> Any:
            if key not in section:
                if default is not None:
                    return default
                raise UserError(f"{where}: manifest field {name} is missing")
            return section[key]

        def scale(key: str) -> tuple[int, int]:
            entry = get(win, key, f"windows.{key}")
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), int) for k in ("size", "stride")):
                raise UserError(f"{where}: manifest field windows.{key} needs integer 'size' and 'stride'")
            return entry["size"], entry["stride"]

        scale_px = pre.get("scale", PIXEL_SCALE)
        if not isinstance(scale_px, (int, float)) or not math.isclose(scale_px, PIXEL_SCALE, rel_tol=1e-9):
            raise UserError(f"{where}: preprocess.scale = {scale_px!r} cannot be honoured by this runtime "
                            "(pixels are scaled by 1/255)")  # fmt: skip
        try:
            value = cls(
                size=int(get(pre, "size", "preprocess.size")),
                mean=tuple(get(pre, "mean", "preprocess.mean")),
                std=tuple(get(pre, "std", "preprocess.std")),
                resampler=str(get(pre, "resampler", "preprocess.resampler")),
                colour_order=str(get(pre, "colour_order", "preprocess.colour_order")),
                scale_a=scale("A"),
                scale_b=scale("B"),
            )
        except (TypeError, ValueError):
            raise UserError(f"{where}: manifest fields preprocess.size / mean / std must be numbers") from None
        return value.check_supported(where)

    @classmethod
    def from_clip_config(cls, image_size: Any, mean: Any, std: Any) -> Preprocess:
        """From a CLIP model's own preprocessing configuration (open_clip: `model.visual.preprocess_cfg`)."""
        size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
        if isinstance(image_size, (tuple, list)) and len(set(image_size)) != 1:
            raise UserError(f"CLIP input {list(image_size)} is not square; stprompt needs square crops")
        mean = OPENAI_MEAN if mean is None else mean
        std = OPENAI_STD if std is None else std
        return cls(size=int(size), mean=tuple(mean), std=tuple(std))


DEFAULT = Preprocess()
