"""Streaming head: a per-stream ring buffer of snippet features, scored over a sliding window.

The head's output at snippet t depends only on snippets within `context` = layers x R (+1 for SA2) of t
(SPEC.md: the distance attention is a band of radius R). Scoring snippet t over the window
[t - context, t + lookahead] therefore reproduces the offline score exactly once lookahead >= context;
a smaller lookahead emits earlier, treating the newest snippet as the end of the video (an approximation).
At the end of a stream the remaining snippets are scored with the true end, exactly as offline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

HeadFn = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]


@dataclass
class SnippetResult:
    index: int  # snippet index in the stream (0-based)
    score: float
    score_c: float
    probs: np.ndarray  # [1 + C]


class StreamingHead:
    def __init__(self, head: HeadFn, dim: int, context: int, lookahead: int, capacity: int | None = None):
        if lookahead < 0 or context < 0:
            raise ValueError("lookahead and context must be >= 0")
        self.head = head
        self.context = context
        self.lookahead = lookahead
        self.capacity = capacity or (context + lookahead + 1)
        self.x_clip = np.zeros((self.capacity, dim), np.float32)
        self.x_patch = np.zeros((self.capacity, 49, dim), np.float32)
        self.received = 0  # snippets pushed so far
        self.emitted = 0  # snippets scored so far

    @property
    def exact(self) -> bool:
        return self.lookahead >= self.context

    def _window(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        idx = np.arange(first, last + 1) % self.capacity
        return self.x_clip[idx], self.x_patch[idx]

    def _score(self, t_from: int, t_to: int, newest: int) -> list[SnippetResult]:
        """Score snippets t_from..t_to (inclusive) with the window ending at `newest`."""
        first = max(0, t_from - self.context)
        x_clip, x_patch = self._window(first, newest)
        out = self.head(x_clip, x_patch)
        results = []
        for t in range(t_from, t_to + 1):
            i = t - first
            results.append(SnippetResult(t, float(out["score"][i]), float(out["score_c"][i]), out["probs"][i].copy()))
        return results

    def push(self, x_clip: np.ndarray, x_patch: np.ndarray) -> list[SnippetResult]:
        """Add the next snippet ([D], [49, D]); return the snippets that now have `lookahead` successors."""
        slot = self.received % self.capacity
        self.x_clip[slot] = x_clip
        self.x_patch[slot] = x_patch.reshape(49, -1)
        self.received += 1
        newest = self.received - 1
        ready = newest - self.lookahead
        if ready < self.emitted:
            return []
        results = self._score(self.emitted, ready, newest)
        self.emitted = ready + 1
        return results

    def flush(self) -> list[SnippetResult]:
        """End of stream: score every remaining snippet with the true end (exact)."""
        if self.emitted >= self.received:
            return []
        results = self._score(self.emitted, self.received - 1, self.received - 1)
        self.emitted = self.received
        return results
