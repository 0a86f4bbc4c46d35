"""Host CPU time per pipeline stage, summed over the threads each stage ran on (stp-bench's host measurement).

With a fast encoder (a GPU) the host decides the throughput, and wall-clock time hides which part of the host does:
stages overlap on threads, and a core shared with other work stretches everything. The CPU time each thread spends
inside a stage (`time.thread_time`) does not: it is what the stage costs, wherever and beside whatever it ran.
CPU that no stage claims (the run loop, event building, libraries' own threads such as FFmpeg's) is what the
process total (`time.process_time`) has beyond the stages' sum.

The runtime carries `NO_CLOCK` unless stp-bench hands it a `StageClock`: then each stage is one context manager.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

STAGES = ("decode", "windows", "gating", "sa2_head", "localization", "sinks")


class StageClock:
    """Thread CPU seconds per stage (`cpu_s`), added from any thread."""

    def __init__(self) -> None:
        self.cpu_s: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.thread_time()
        try:
            yield
        finally:
            self.add(stage, time.thread_time() - t0)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.cpu_s[stage] = self.cpu_s.get(stage, 0.0) + seconds


class _NoClock:
    """Measures nothing; one shared null context (no allocation per stage)."""

    _null = contextlib.nullcontext()

    def __call__(self, stage: str) -> contextlib.nullcontext[Any]:
        return self._null

    def add(self, stage: str, seconds: float) -> None:
        return None


NO_CLOCK = _NoClock()
