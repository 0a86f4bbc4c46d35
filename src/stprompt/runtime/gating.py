"""Motion-gated crop encoding: scale-A windows whose pixels did not change reuse their last embedding.

Per stream, the gate keeps the 224x224 pixels each window had when it was last encoded and that embedding. For a new
sampled frame, :meth:`WindowGate.select` returns which windows to encode (change >= threshold, or never encoded) and
moves the reference pixels of those windows to the new frame; after the encoder ran, :meth:`WindowGate.merge` puts
the fresh embeddings into the cache and returns the full ``[49, D]`` x_patch. The full-frame crop is never gated
(the caller always encodes it). Select and merge must be called in the same order per stream -- the Detector does.

Bounded staleness (`refresh` N > 0): each window also counts the sampled frames of its stream since it was last
encoded and is re-encoded once that age reaches N, changed or not, so no cached embedding is older than N sampled
frames. The counters start staggered (window i at age i mod N), so a static scene refreshes about 49 / N windows
per sampled frame instead of all 49 on every N-th one; a window encoded because it changed starts again at 0.

Threshold 0 means "encode every window" (gating off): with it the output is the ungated pipeline's exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import windows
from ..errors import UserError
from .defaults import LIVE_DEFAULT, REFRESH_DEFAULT  # noqa: F401 - gating.LIVE_DEFAULT as before


@dataclass
class _StreamCache:
    ref: np.ndarray  # [224, 224, 3] uint8: per window, the pixels at its last encoding
    age: np.ndarray  # [count] int: sampled frames since each window was last encoded (staggered at the start)
    embeddings: np.ndarray | None = None  # [49, D] float32
    pending: list[np.ndarray] = field(default_factory=list)  # masks selected, not merged yet


_SOURCE_KEYS = ("frames", "windows", "skipped")  # WindowGate.source_stats per source


def _checked(threshold: float) -> float:
    if not threshold >= 0:  # also refuses NaN
        raise UserError(f"--gate must be >= 0 grey levels, got {threshold}")
    return float(threshold)


def _checked_refresh(refresh: int) -> int:
    if isinstance(refresh, bool) or int(refresh) != refresh or refresh < 0:
        raise UserError(f"--gate-refresh must be a whole number of sampled frames >= 0, got {refresh}")
    return int(refresh)


class WindowGate:
    """Decide per window whether to re-encode; keep per-stream reference pixels and embeddings."""

    def __init__(self, threshold: float, scale: windows.WindowScale = windows.SCALE_A,
                 per_source: dict[str, float] | None = None, refresh: int = 0, stagger: bool = True):  # fmt: skip
        """`refresh`: re-encode every window at least every N sampled frames of its stream (0 = only on change);
        `stagger`: spread those forced refreshes over the N frames (False: all windows of a static scene at once)."""
        self.threshold = _checked(threshold)
        self.per_source = {sid: _checked(t) for sid, t in (per_source or {}).items()}
        self.refresh = _checked_refresh(refresh)
        self.stagger = bool(stagger)
        self.scale = scale
        self.streams: dict[str, _StreamCache] = {}
        self.stats = {"windows": 0, "skipped": 0, "refreshed": 0}
        # per source, kept after its stream ends: `frames` (select() runs once per sampled frame, so these are the
        # source's sampled frames), `windows` and `skipped` as in `stats` (stp-run --metrics labels them by source)
        self.source_stats: dict[str, dict[str, int]] = {}

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
                age = np.arange(count) % self.refresh if self.refresh and self.stagger else np.zeros(count, int)
                self.streams[source] = _StreamCache(ref=small.copy(), age=age, pending=[mask])
        else:
            from ..kernels.motion import window_change  # Numba: imported on first use, not by `stp-run --help`

            change = window_change(small, cache.ref, self.scale.size, self.scale.stride)
            mask = change >= threshold
            if self.refresh:
                cache.age += 1
                stale = cache.age >= self.refresh
                self.stats["refreshed"] += int((stale & ~mask).sum())
                mask |= stale
                cache.age[mask] = 0
            grid_mask = mask.reshape(self.scale.grid, self.scale.grid)
            self._tiles(cache.ref)[grid_mask] = self._tiles(small)[grid_mask]
            cache.pending.append(mask)
        skipped = int(count - mask.sum())
        self.stats["windows"] += count
        self.stats["skipped"] += skipped
        own = self.source_stats.get(source)
        if own is None:
            own = self.source_stats[source] = dict.fromkeys(_SOURCE_KEYS, 0)
        own["frames"] += 1
        own["windows"] += count
        own["skipped"] += skipped
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
