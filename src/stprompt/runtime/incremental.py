"""The incremental streaming head: each snippet's adapter-layer outputs are computed once, not once per window.

The banded head (SPEC.md) alternates a parameter-free band attention (W x over the valid snippets within R)
with snippet-wise networks (LN, FFN, LN per layer; then both branches). `StreamingFeatureHead` re-runs the whole
head over its [t - context, t + lookahead] window for every new snippet: with the defaults (2 layers, R = 20)
2 x 82 rows of FFN to score one snippet. Here layer l's output at snippet s is final once every input it
depends on is (s + l R <= newest - motion, or the stream ended), so it is computed once and kept; a new snippet
costs one row per layer and one row of scores. Rows that are not final yet (a lookahead below the exact one
scores before them) are recomputed provisionally on each push, treating the newest snippet as the end of the
video exactly as the window head does, so both give the same scores at every lookahead.

The snippet-wise graphs come from the bundle (model.head_l{i}.onnx, model.head_scores.onnx); the band
attention is computed here with the kernel the adapter uses (exp(-|i-j| / sigma), |i-j| <= R).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .stream import SnippetResult, StreamingFeatureHead


class HeadStages(Protocol):
    """The head's snippet-wise graphs: `layer(i, attended)` for each adapter layer, then `scores`."""

    layers: int

    def layer(self, index: int, attended: np.ndarray) -> np.ndarray:
        """[N, D] band-attended rows of layer `index`'s input -> [N, D] the layer's output rows."""
        ...

    def scores(self, x_clip: np.ndarray, x_adapted: np.ndarray) -> dict[str, np.ndarray]:
        """[N, D] x_clip and last-layer rows -> {"score" [N], "score_c" [N], "probs" [N, 1 + C]}."""
        ...


def band_kernel(sigma: float, radius: int) -> np.ndarray:
    """exp(-|d| / sigma) for d in [-R, R], float32: the adapter's `distance_kernel`."""
    d = np.arange(-radius, radius + 1, dtype=np.float32)
    return np.exp(-np.abs(d) / np.float32(sigma)).astype(np.float32)


def band_attend(rows: np.ndarray, first: int, positions: np.ndarray, last: int, kernel: np.ndarray) -> np.ndarray:
    """W x at `positions` over the sequence whose rows first..first+len(rows)-1 are given, valid up to `last`
    (the newest snippet, or the video's end): sum_j k[j-p] x_j / sum_j k[j-p] over 0 <= j <= last, |j-p| <= R.

    `rows` must cover every valid j within R of every position."""
    radius = (len(kernel) - 1) // 2
    j = np.arange(first, first + len(rows))
    offset = j[None, :] - positions[:, None]
    inside = (np.abs(offset) <= radius) & (j[None, :] >= 0) & (j[None, :] <= last)
    weights = np.where(inside, kernel[np.clip(offset + radius, 0, 2 * radius)], np.float32(0))
    return (weights @ rows) / weights.sum(axis=1, keepdims=True)


def score_by_stages(stages: HeadStages, x_clip: np.ndarray, x_as: np.ndarray,
                    kernel: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    """A whole video through the stages, layer by layer (what a stream computes row by row): the export gate
    holds these graphs, with this band attention, to the PyTorch head."""
    x = np.asarray(x_clip, np.float32) + np.asarray(x_as, np.float32)
    positions = np.arange(len(x))
    for index in range(stages.layers):
        x = stages.layer(index, band_attend(x, 0, positions, len(x) - 1, kernel).astype(np.float32))
    return stages.scores(x_clip, x)


class IncrementalFeatureHead(StreamingFeatureHead):
    """`StreamingFeatureHead`'s stream (SA2 kernel, provisional x_AS of the newest snippet, lookahead, flush) with
    the head computed layer by layer from kept rows instead of over a window per snippet."""

    def __init__(self, stages: HeadStages, dim: int, context: int, lookahead: int, sa2_step, k: int,
                 sigma: float, radius: int, motion: int = 1, spatial: str = "sa2"):  # fmt: skip
        levels = stages.layers
        # every kept row a push can read: the last layer's row at its new frontier (or at the end) reads rows
        # motion + (levels + 1) R back, a score at newest - lookahead reads lookahead + levels R back
        capacity = max(lookahead + levels * radius, motion + (levels + 1) * radius) + 2
        super().__init__(None, dim, context, lookahead, sa2_step, k, spatial, capacity=capacity)
        self.stages = stages
        self.kernel = band_kernel(sigma, radius)
        self.radius = radius
        self.motion = motion  # 1: the newest snippet's x_AS is provisional until the next arrives
        self.rows = [np.zeros((capacity, dim), np.float32) for _ in range(levels)]  # layer i's output, by snippet
        self.final_upto = [-1] * levels  # highest snippet whose layer-i row is final and kept
        self.ended = False

    # -- the rows ---------------------------------------------------------------------------------------
    def _level(self, level: int, first: int, last: int) -> np.ndarray:
        """Rows first..last of level `level` (0: the adapter's input x_clip + x_AS; l >= 1: layer l's output)."""
        idx = np.arange(first, last + 1) % self.capacity
        if level == 0:
            return self.x_clip[idx] + self.second[idx]
        return self.rows[level - 1][idx]

    def _compute(self, level: int, first: int, last: int, newest: int) -> None:
        """Layer `level`'s rows first..last from level - 1's kept rows (valid up to `newest`), into the ring."""
        if last < first:
            return
        lo, hi = max(0, first - self.radius), min(newest, last + self.radius)
        positions = np.arange(first, last + 1)
        attended = band_attend(self._level(level - 1, lo, hi), lo, positions, newest, self.kernel)
        out = self.stages.layer(level - 1, np.ascontiguousarray(attended, np.float32))
        self.rows[level - 1][positions % self.capacity] = out

    def _frontier(self, level: int, newest: int) -> int:
        """The highest snippet whose layer-`level` row no longer changes: its inputs within level x R are final."""
        return newest if self.ended else newest - self.motion - level * self.radius

    def _score(self, t_from: int, t_to: int, newest: int) -> list[SnippetResult]:
        levels = len(self.rows)
        for level in range(1, levels + 1):  # final rows: computed once, kept
            frontier = self._frontier(level, newest)
            self._compute(level, self.final_upto[level - 1] + 1, frontier, newest)
            self.final_upto[level - 1] = max(self.final_upto[level - 1], frontier)
        for level in range(1, levels + 1):  # rows the scores need that are not final yet: this push only
            reach = (levels - level) * self.radius  # layer `level` rows within reach of a scored snippet
            first = max(self.final_upto[level - 1] + 1, t_from - reach)
            self._compute(level, first, min(newest, t_to + reach), newest)
        idx = np.arange(t_from, t_to + 1) % self.capacity
        out = self.stages.scores(self.x_clip[idx], self._level(levels, t_from, t_to))
        return [SnippetResult(t, float(out["score"][i]), float(out["score_c"][i]), out["probs"][i].copy())
                for i, t in enumerate(range(t_from, t_to + 1))]  # fmt: skip

    def flush(self) -> list[SnippetResult]:
        """End of stream: the newest x_AS and every row are final (the true end, as offline)."""
        self.ended = True
        return super().flush()
