"""Timing with warm-up and percentiles: the one way stp-bench measures a stage.

A stage is a callable doing one unit of work (one sampled frame's encoding, one snippet's head, ...). It is first
called `warmup` times untimed (JIT compilation, ONNX Runtime arena growth, cuDNN autotuning, CUDA graph capture),
then timed until both `repeats` calls and `min_seconds` have passed, capped at `max_repeats`. Backends that run on
a GPU return host arrays, which synchronises the device, so no timed call ends before its work does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Timing:
    """Wall-clock samples of one stage, in seconds, with the unit of work they measure."""

    stage: str
    backend: str
    per: str
    samples: list[float]
    note: str = ""

    def percentile(self, q: float) -> float:
        """Linear-interpolated percentile in milliseconds (with few samples p99 is close to the maximum)."""
        return float(np.percentile(np.asarray(self.samples) * 1e3, q))

    @property
    def mean_s(self) -> float:
        return float(np.mean(self.samples))

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage, "backend": self.backend, "per": self.per, "n": len(self.samples),
            "p50_ms": self.percentile(50), "p90_ms": self.percentile(90), "p99_ms": self.percentile(99),
            "mean_ms": self.mean_s * 1e3, "note": self.note,
        }  # fmt: skip


def measure(fn: Callable[[], Any], stage: str, backend: str, per: str, *, warmup: int = 1, repeats: int = 5,
            min_seconds: float = 0.5, max_repeats: int = 1000, note: str = "") -> Timing:  # fmt: skip
    """Time `fn` after `warmup` untimed calls; at least `repeats` samples and `min_seconds` of samples."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    total = 0.0
    while len(samples) < max_repeats and (len(samples) < repeats or total < min_seconds):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        samples.append(dt)
        total += dt
    return Timing(stage, backend, per, samples, note)
