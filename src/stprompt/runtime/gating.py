"""Motion-gated crop encoding: scale-A windows whose pixels did not change reuse their last embedding.

Per stream, the gate keeps the 224x224 pixels each window had when it was last encoded and that embedding. For a new
sampled frame, :meth:`WindowGate.select` returns which windows to encode (change >= threshold, or never encoded) and
moves the reference pixels of those windows to the new frame; after the encoder ran, :meth:`WindowGate.merge` puts
the fresh embeddings into the cache and returns the full ``[49, D]`` x_patch. The full-frame crop is never gated
(the caller always encodes it). Select and merge must be called in the same order per stream -- the Detector does.

Threshold 0 means "encode every window" (gating off): with it the output is the ungated pipeline's exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import windows
from ..errors import UserError


@dataclass
class _StreamCache:
    ref: np.ndarray  # [224, 224, 3] uint8: per window, the pixels at its last encoding
    embeddings: np.ndarray | None = None  # [49, D] float32
    pending: list[np.ndarray] = field(default_factory=list)  # masks selected, not merged yet


# `stp-run --gate auto` (the default): live sources skip windows that changed by less than this many grey levels
# (mean absolute difference); files and folders are encoded whole, so their scores equal stp-eval's. Chosen from
# README's gating table (benchmarks/measure_gating.py): it sits above the noise + compression floor of static
# footage (1-2 grey levels) and skipped about half of the windows there with frame AUC within 0.005 of ungated.
LIVE_DEFAULT = 4.0


def _checked(threshold: float) -> float:
    if not threshold >= 0:  # also refuses NaN
        raise UserError(f"--gate must be >= 0 grey levels, got {threshold}")
    return float(threshold)


class WindowGate:
    """Decide per window whether to re-encode; keep per-stream reference pixels and embeddings."""

    def __init__(self, threshold: float, scale: windows.WindowScale = windows.SCALE_A,
                 per_source: dict[str, float] | None = None):  # fmt: skip
        self.threshold = _checked(threshold)
        self.per_source = {sid: _checked(t) for sid, t in (per_source or {}).items()}
        self.scale = scale
        self.streams: dict[str, _StreamCache] = {}
        self.stats = {"windows": 0, "skipped": 0}

    def threshold_for(self, source: str) -> float:
        """The source's own threshold (e.g. live cameras vs files), else the default."""
        return self.per_source.get(source, self.threshold)

    def _tiles(self, image: np.ndarray) -> np.ndarray:
        """[grid, grid, size, size, 3] view of the window tiles (scale A tiles the frame without overlap)."""
        g, s = self.scale.grid, self.scale.size
        return image.reshape(g, s, g, s, 3).swapaxes(1, 2)

    def select(self, source: str, small: np.ndarray) -> np.ndarray:
        """Bool [count]: windows of this 224x224 frame to encode; updates their reference pixels."""
        count = self.scale.count
        cache = self.streams.get(source)
        threshold = self.threshold_for(source)
        if cache is None or threshold <= 0:
            mask = np.ones(count, bool)
            if threshold > 0:
                self.streams[source] = _StreamCache(ref=small.copy(), pending=[mask])
        else:
            from ..kernels.motion import window_change  # Numba: imported on first use, not by `stp-run --help`

            change = window_change(small, cache.ref, self.scale.size, self.scale.stride)
            mask = change >= threshold
            grid_mask = mask.reshape(self.scale.grid, self.scale.grid)
            self._tiles(cache.ref)[grid_mask] = self._tiles(small)[grid_mask]
            cache.pending.append(mask)
        self.stats["windows"] += count
        self.stats["skipped"] += int(count - mask.sum())
        return mask

    def merge(self, source: str, mask: np.ndarray, encoded: np.ndarray) -> np.ndarray:
        """x_patch [count, D] from the encoded windows (rows of `encoded`, in window order) and the cache."""
        cache = self.streams.get(source)
        if cache is None:  # this stream is not gated
            return encoded
        expected = cache.pending.pop(0)
        if expected is not mask:
            raise RuntimeError("WindowGate.merge called out of order with select")
        if cache.embeddings is None:
            cache.embeddings = np.empty((self.scale.count, encoded.shape[1]), np.float32)
        cache.embeddings[mask] = encoded
        return cache.embeddings.copy()

    def drop(self, source: str) -> None:
        """Forget a finished stream."""
        self.streams.pop(source, None)
