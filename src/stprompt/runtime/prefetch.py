"""Video files and image folders decoded ahead, each on its own thread.

Read on the pipeline's own thread, a file's decode took turns with the windows, the encoder and the head. A reader
thread per file decodes ahead into a bounded queue instead (OpenCV decodes and imread without the GIL), so decode
runs beside everything else and several streams decode in parallel. The frames do not change: the same frames in
the same order, none dropped (the reader waits while the queue is full), and pixels only for the frames `needed`
names (the others come from OpenCV's grab without retrieve, `Frame.image` None).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from .frames import Frame
from .sources import ImageFolderSource, Source, VideoFileSource
from .stageclock import NO_CLOCK

AHEAD = 64  # frames a reader may decode ahead of the pipeline (4 sampled frames at stride 16)
_POLL_S = 0.1  # how often a waiting reader or consumer looks whether the source was closed


def can_prefetch(src: Source) -> bool:
    """Files and folders are read ahead; live sources have their own reader, other Source objects are the
    caller's and are read where the caller expects."""
    from .nvdec import NvdecFileSource

    return isinstance(src, (VideoFileSource, ImageFolderSource, NvdecFileSource))


class PrefetchSource(Source):
    """`inner` (a video file or image folder) read on its own thread, at most `ahead` frames ahead.

    `needed(index)`: whether the frame at that index needs its pixels (sources that can skip them, video files;
    None: every frame's).
    `limit`: frames to read at most (the pipeline's max_frames). The reader owns `inner` from the start and closes
    it when it ends or is closed; `stats` are the inner source's (frames decoded, images skipped). An error raised
    while reading is raised by the read() that reaches it.
    """

    def __init__(self, inner: Source, needed: Callable[[int], bool] | None = None, limit: int | None = None,
                 ahead: int = AHEAD, clock: Any = NO_CLOCK):  # fmt: skip
        super().__init__(inner.uri, inner.id, False, inner.fps, inner.size)
        self.inner = inner
        self.stats = inner.stats
        self._needed = needed if getattr(inner, "skips_pixels", False) else None
        self._limit = limit
        self._clock = clock
        self._queue: queue.Queue[Frame | None] = queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"stp-reader-{inner.id}", daemon=True)
        self._thread.start()

    def _read_inner(self) -> Frame | None:
        if self._needed is None:
            return self.inner.read()
        return self.inner.read(retrieve=self._needed(self.inner.next_index))  # type: ignore[attr-defined]

    def _run(self) -> None:
        read = 0
        try:
            while not self._stop.is_set() and (self._limit is None or read < self._limit):
                with self._clock("decode"):
                    frame = self._read_inner()
                if frame is None or not self._put(frame):
                    break
                read += 1
        except BaseException as err:  # noqa: BLE001 - handed to the consumer's read()
            self._error = err
        finally:
            self.inner.close()
            self._put(None)

    def _put(self, item: Frame | None) -> bool:
        """Queue `item`, waiting while the queue is full; False when the source was closed meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame, waiting for the reader; None at the end (or once closed)."""
        while not self._done and not self._stop.is_set():
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is not None:
                return item
            self._done = True
            if self._error is not None:
                err, self._error = self._error, None
                raise err
        return None

    @property
    def error(self) -> str | None:  # type: ignore[override]
        return getattr(self.inner, "error", None)

    def close(self) -> None:
        """Stop the reader (it closes the inner source) and wait for it."""
        self._stop.set()
        self._done = True
        while True:  # a reader waiting on a full queue sees the stop at its next poll; emptying it is quicker
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)
