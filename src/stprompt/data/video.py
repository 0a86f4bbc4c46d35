"""Video decoding for the offline verbs: sequential decode, sampled frames, clear errors."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from ..errors import UserError
from ..sampling import is_sampled

T = TypeVar("T")
FRAME_COUNT_TOLERANCE = 1  # frames a video may fall short of its container's count without a warning


def open_capture(path: str | Path) -> cv2.VideoCapture:
    p = Path(path)
    if not p.exists():
        raise UserError(f"video not found: {p}")
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise UserError(f"cannot open video {p} (not a video, or a codec OpenCV lacks)")
    return cap


class SampledFrames:
    """Iterate (native frame index, BGR frame) for frames k*stride + offset (default stride//2) of a video.

    After iteration `n_frames` holds the number of decoded frames and `declared_frames` the count the container
    declares (None when it declares none); snippets whose `stride` frames are not all present (the tail) are the
    caller's to drop: see `stprompt.sampling.snippet_frame_indices`.
    """

    def __init__(self, path: str | Path, stride: int, offset: int | None = None):
        self.path = Path(path)
        self.stride = stride
        self.offset = offset  # None: stride // 2, the sampling every export records
        self.n_frames = 0
        self.declared_frames: int | None = None
        self.size: tuple[int, int] | None = None  # (width, height) of the decoded frames

    @property
    def truncated(self) -> bool:
        """True when fewer frames decoded than the container declares (beyond OpenCV's rounding of estimated
        counts): a truncated or damaged file."""
        return self.declared_frames is not None and self.n_frames < self.declared_frames - FRAME_COUNT_TOLERANCE

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        cap = open_capture(self.path)
        declared = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.declared_frames = int(declared) if math.isfinite(declared) and declared > 0 else None
        try:
            index = 0
            while True:
                if is_sampled(index, self.stride, self.offset):
                    ok, frame = cap.read()
                    if not ok:
                        break
                    self.size = (frame.shape[1], frame.shape[0])
                    yield index, frame
                elif not cap.grab():
                    break
                index += 1
            self.n_frames = index
        finally:
            cap.release()


def prefetch(items: Iterable[T], fn: Callable[[T], object], depth: int = 4) -> Iterator[object]:
    """Yield fn(item) computed in a background thread, `depth` items ahead (decode/preprocess overlap)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((True, fn(item)))
            q.put((True, done))
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer thread
            q.put((False, err))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            ok, value = q.get()
            if not ok:
                raise value
            if value is done:
                return
            yield value
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
