"""The threads the runtime's host work runs on beside the main loop: a shared pool for cutting windows of several
frames at once, and the one thread that makes a run's encoder calls.

Python threads run in parallel here because the heavy calls release the GIL: OpenCV's resize and decode, the Numba
kernels (`nogil=True`), ONNX Runtime, and a thread waiting on a GPU. The pool is shared by every Detector in the
process and sized to the cores this process may use; a frame is never split across tasks, so every batch holds the
same bytes whether one thread or many wrote it.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def usable_cores() -> int:
    """Cores this process may run on (affinity / cgroup CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def window_pool() -> ThreadPoolExecutor:
    """The process's pool for window cutting, one thread per usable core, made on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(2, usable_cores()), thread_name_prefix="stp-windows")
        return _pool


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None) -> list[R]:
    """[fn(x) for x in items], on the window pool when there are several items and `workers` allows (None: the
    pool's size; 1: on this thread). Results in order; the first exception raised by a task is raised here."""
    if len(items) < 2 or workers == 1 or (workers is None and usable_cores() < 2):
        return [fn(x) for x in items]
    if workers is None or workers >= len(items):
        return list(window_pool().map(fn, items))
    # at most `workers` tasks at once: each task takes a strided share of the items
    shares = [list(range(i, len(items), workers)) for i in range(workers)]
    out: list[Any] = [None] * len(items)

    def run(share: list[int]) -> None:
        for i in share:
            out[i] = fn(items[i])

    list(window_pool().map(run, shares))  # waits for every share; raises the first task's exception
    return out


class EncoderThread:
    """One thread making every encoder call of a run, in the order submitted: the host prepares the next batch and
    scores the last one while the device works on this one. Backends see all their encoder calls on one thread
    (TensorRT and CUDA keep per-thread state); `call` from any other thread queues behind the batches in flight."""

    def __init__(self, name: str = "stp-encoder"):
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue())  # fmt: skip
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        """Run fn(*args) on the encoder thread after everything submitted before; its Future."""
        future: Future[R] = Future()
        self._jobs.put((future, fn, args))
        return future

    def call(self, fn: Callable[..., R], *args: Any) -> R:
        """fn(*args) on the encoder thread (directly when already on it), waiting for the result."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        return self.submit(fn, *args).result()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(err)

    def close(self, timeout: float | None = 60.0) -> None:
        """Finish the calls already submitted, then end the thread (waits at most `timeout` s: a remote encoder's
        call ends at its own deadline; the thread is a daemon and cannot keep the process alive)."""
        self._jobs.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
