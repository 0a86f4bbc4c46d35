"""Streaming head: a per-stream ring buffer of snippet features, scored over a sliding window.

The head's output at snippet t depends only on snippets within `context` = layers x R (+1 for SA2) of t
(SPEC.md: the distance attention is a band of radius R). Scoring snippet t over the window
[t - context, t + lookahead] therefore reproduces the offline score exactly once lookahead >= context;
a smaller lookahead emits earlier, treating the newest snippet as the end of the video (an approximation).
At the end of a stream the remaining snippets are scored with the true end, exactly as offline.
"""

from __future__ import annotations

import functools
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
    def __init__(
        self,
        head: HeadFn | None,
        dim: int,
        context: int,
        lookahead: int,
        capacity: int | None = None,
        second_shape: tuple[int, ...] | None = None,
    ):
        if lookahead < 0 or context < 0:
            raise ValueError("lookahead and context must be >= 0")
        self.head = head
        self.context = context
        self.lookahead = lookahead
        self.capacity = capacity or (context + lookahead + 1)
        self.x_clip = np.zeros((self.capacity, dim), np.float32)
        # the head's second input per snippet: x_patch [49, D] (or x_as [D] for the head after SA2)
        self.second = np.zeros((self.capacity, *(second_shape or (49, dim))), np.float32)
        self.received = 0  # snippets pushed so far
        self.emitted = 0  # snippets scored so far

    @property
    def exact(self) -> bool:
        return self.lookahead >= self.context

    def _window(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        idx = np.arange(first, last + 1) % self.capacity
        return self.x_clip[idx], self.second[idx]

    def _score(self, t_from: int, t_to: int, newest: int) -> list[SnippetResult]:
        """Score snippets t_from..t_to (inclusive) with the window ending at `newest`."""
        first = max(0, t_from - self.context)
        x_clip, second = self._window(first, newest)
        out = self.head(x_clip, second)
        results = []
        for t in range(t_from, t_to + 1):
            i = t - first
            results.append(SnippetResult(t, float(out["score"][i]), float(out["score_c"][i]), out["probs"][i].copy()))
        return results

    def push(self, x_clip: np.ndarray, second: np.ndarray) -> list[SnippetResult]:
        """Add the next snippet ([D] and x_patch [49, D]); return the snippets that now have `lookahead` successors."""
        slot = self.received % self.capacity
        self.x_clip[slot] = x_clip
        self.second[slot] = second.reshape(self.second.shape[1:])
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


class StreamingFeatureHead(StreamingHead):
    """The same stream over the head after SA2: x_AS is computed once per snippet by the SA2 kernel.

    Snippet i's x_AS needs snippet i + 1 (its motion uses both neighbours): it is first computed with the
    replicate rule (i is the newest, as at the end of a video) and made final when i + 1 arrives. The head's
    receptive field is then layers x R snippets of x_AS, so `context` here is exact_lookahead - 1, and a
    stream with lookahead >= exact_lookahead still reproduces the offline scores exactly.

    `spatial` picks a Table 5 variant of the kernel (`sa2_step(..., spatial=)`); "none" and "average" use no
    motion, so their x_AS is final at once and `context` is the whole exact_lookahead
    (HeadConfig.exact_lookahead - HeadConfig.motion_lookahead in every case).
    """

    def __init__(self, head: HeadFn | None, dim: int, context: int, lookahead: int, sa2_step, k: int,
                 spatial: str = "sa2", capacity: int | None = None):  # fmt: skip
        super().__init__(head, dim, context, lookahead, capacity=capacity, second_shape=(dim,))
        self.sa2_step = sa2_step if spatial == "sa2" else functools.partial(sa2_step, spatial=spatial)
        self.k = k
        self.prev_patch: np.ndarray | None = None  # x_patch of the snippet before the newest
        self.last_patch: np.ndarray | None = None  # x_patch of the newest snippet

    def push(self, x_clip: np.ndarray, x_patch: np.ndarray) -> list[SnippetResult]:
        x_patch = np.ascontiguousarray(x_patch.reshape(49, -1), np.float32)
        if self.last_patch is not None:  # the newest so far gets its true next neighbour: final x_AS
            before = self.last_patch if self.prev_patch is None else self.prev_patch
            self.second[(self.received - 1) % self.capacity] = self.sa2_step(before, self.last_patch, x_patch, self.k)
        before = x_patch if self.last_patch is None else self.last_patch
        provisional = self.sa2_step(before, x_patch, x_patch, self.k)
        self.prev_patch, self.last_patch = self.last_patch, x_patch
        return super().push(x_clip, provisional)
