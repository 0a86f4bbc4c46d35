"""Encoder timings taken in turns: every backend's encode call timed round by round, all backends open at once.

On a shared or throttling machine the speed drifts by tens of percent within minutes; measured one after the other,
whichever backend ran during a busy minute looks slow. In turns (round 1: A, B, C; round 2: A, B, C; ...) the drift
falls on every backend alike, so their ratios hold even when the absolute numbers move (the load average is
recorded beside them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .machine import load_average
from .timing import Timing

BASELINE_NOTE = "naive loop: each crop resized and encoded alone, open_clip fp32"


def encode_in_turns(calls: dict[str, Callable[[], Any]], notes: dict[str, str], rounds: int, warmup: int,
                    repeats: int) -> tuple[dict[str, Timing], list[list[float] | None]]:  # fmt: skip
    """{backend: Timing of its encode calls} after `warmup` untimed calls each, `rounds` rounds of `repeats` timed
    calls per backend; and the load average after each round."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    loads = []
    for _ in range(rounds):
        for name, fn in calls.items():
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
        loads.append(load_average())
    turns = f"in turns: {rounds} rounds x {repeats} over {', '.join(calls)}"
    timings = {name: Timing("encode", name, "sampled frame", s, note=f"{notes[name]}; {turns}")
               for name, s in samples.items()}  # fmt: skip
    return timings, loads


def measure_in_turns(names: list[str], open_backend: Callable[[str], Any], baseline: Callable[[], Callable],
                     crops: np.ndarray, frame: np.ndarray, rounds: int, warmup: int,
                     repeats: int) -> tuple[dict[str, Timing], list[list[float] | None]]:  # fmt: skip
    """Every named backend opened at once (`baseline`: the naive loop's factory), its encode stage timed in turns on
    one sampled frame (`crops`, or `frame` for the baseline), then closed."""
    opened: dict[str, Any] = {}
    calls: dict[str, Callable[[], Any]] = {}
    notes: dict[str, str] = {}
    try:
        for name in names:
            if name == "baseline":
                one = baseline()
                calls[name], notes[name] = (lambda one=one: one(frame)), BASELINE_NOTE
            else:
                backend = opened[name] = open_backend(name)
                calls[name], notes[name] = (lambda b=backend: b.encode(crops)), f"{len(crops)} crops, one call"
        return encode_in_turns(calls, notes, rounds, warmup, repeats)
    finally:
        for backend in opened.values():
            backend.close()
