"""Frame sources named by URIs users know from jetson-inference and DeepStream.

- `camera0`, `0`, `/dev/video0`, `v4l2:///dev/video0`: a V4L2 camera (live)
- `csi://0[?width=1280&height=720&fps=30&flip=0]`: a Jetson CSI camera through nvarguscamerasrc (live, GStreamer)
- `gst:<pipeline>`: any GStreamer pipeline ending in appsink (live, GStreamer)
- `rtsp://`, `rtsps://`, `rtmp://`, `http(s)://`: a network stream through FFmpeg (live, reconnects)
- a video file path or `file://path`: every frame at full speed, none dropped; one that ends before the frame
  count its container declares (truncated, damaged) gets a warning line
- `nvdec:PATH`: a video file decoded on an NVIDIA GPU through PyNvVideoCodec (`runtime.nvdec`; GPU appliances)
- a directory of jpg/jpeg/png/bmp images (sorted by name), optional `?fps=N` (default 25); an unreadable image
  is skipped with a warning line and counted in `stats["skipped"]`, its index left unused (as a dropped frame
  leaves it, so the times of the others stay right)

Live sources decode on a reader thread that keeps only the newest frame: a pipeline slower than the camera
skips frames (counted in `stats["dropped"]`) instead of building latency. They reconnect with capped exponential
backoff (0.5 s doubling to 8 s), forever by default and also when not up yet at start-up, and report each state
change as a `source` event (LiveSource). Files and image folders never drop a frame, so a file gives exactly the
frames `stp-extract` sees; the Pipeline reads each on a thread of its own (`runtime.prefetch`).
"""

from __future__ import annotations

import abc
import contextlib
import math
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import cv2
import numpy as np

from ..errors import UserError, first_line, warn
from .events import source_event
from .frames import Frame  # the one Frame type; `from stprompt.runtime.sources import Frame` keeps working

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https")
DEFAULT_FILE_FPS = 25.0  # video files without a usable fps, and image folders without ?fps=
DEFAULT_LIVE_FPS = 30.0  # nominal only: live frame times are wall-clock
STREAM_TIMEOUT_MS = 10_000  # FFmpeg open / read timeout of network streams
FRAME_COUNT_TOLERANCE = 1  # frames a video may fall short of its container's count without a warning


def backoff_delays(first: float = 0.5, cap: float = 8.0, attempts: int | None = None) -> list[float]:
    """Reconnect waits: `first` doubling up to `cap` (0.5, 1, 2, 4, 8 s); a live source repeats the last one for
    every later attempt. `attempts`: exactly that many waits (the cap repeated)."""
    if attempts is None:
        attempts = 1 + max(0, math.ceil(math.log2(cap / first))) if 0 < first < cap else 1
    return [min(cap, first * 2**i) for i in range(attempts)]


DEFAULT_BACKOFF = tuple(backoff_delays())
BACKOFF_JITTER = 0.1  # each wait is stretched or shrunk by up to 10 %, so cameras that fell together do not retry
# in lockstep


def reconnect_attempts(reconnect: bool | int | None) -> int | None:
    """A reconnect policy as attempts after each outage: None = forever (None or True), 0 = never (False or 0),
    N = give up after N failed attempts in a row."""
    if reconnect is None or reconnect is True:
        return None
    if reconnect is False:
        return 0
    if isinstance(reconnect, int) and reconnect >= 0:
        return reconnect
    raise ValueError(f"reconnect must be None (forever), True, False or a whole number >= 0, not {reconnect!r}")


class Capture(Protocol):
    """The part of cv2.VideoCapture a live source uses (tests inject fakes)."""

    def isOpened(self) -> bool: ...  # noqa: N802 - OpenCV's name
    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def release(self) -> None: ...
    def get(self, prop: int) -> float: ...


def redact(uri: str) -> str:
    """`rtsp://user:secret@host/x` -> `rtsp://***@host/x`: credentials never reach logs or error messages."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1***@", uri)


def _fps(value: float, default: float) -> float:
    return float(value) if math.isfinite(value) and 0 < value <= 1000 else default


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "source"


class Source(abc.ABC):
    """A stream of frames. `read()` returns the next Frame, or None at the end of the stream (or after close).

    `size` is (width, height) of the first frame; `stats` counts frames returned, frames dropped (live sources
    only) and successful reconnects; an image folder's also counts the unreadable images it skipped (`skipped`).
    """

    def __init__(self, uri: str, source_id: str, live: bool, fps: float, size: tuple[int, int] | None):
        self.id = source_id
        self.uri = uri
        self.live = live
        self.fps = fps
        self.size = size
        self.stats: dict[str, int] = {"frames": 0, "dropped": 0, "reconnects": 0}
        self._done = False

    @abc.abstractmethod
    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or None at the end. `timeout` (live sources only): None also when no new frame came
        within `timeout` seconds; `ended` tells the two apart."""

    @property
    def ended(self) -> bool:
        """True once the stream has ended or was closed (read() returns None from now on)."""
        return self._done

    error: str | None = None  # why the stream ended, when it ended in failure (a live source that gave up)

    def take_events(self) -> list[dict[str, Any]]:
        """State changes since the last call, as `source` events (live sources: down / up); none for files."""
        return []

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device or file; later reads return None."""

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, uri={redact(self.uri)!r}, live={self.live}, fps={self.fps:g})"


class VideoFileSource(Source):
    """Every frame of a video file in order, index = decode position, time = index / fps.

    `read(retrieve=False)` advances past a frame without its pixels (OpenCV's grab without retrieve: the frame is
    decoded, but neither converted to BGR nor copied out); the Frame then has `image` None. The pipeline asks for
    pixels only for the frames it samples: one frame in 16 at stride 16.
    """

    skips_pixels = True  # read(retrieve=False) is supported

    def __init__(self, path: Path, source_id: str | None = None, uri: str | None = None, threads: int | None = 1):
        """`threads`: the decoder's own threads (None: OpenCV's default, one per core). One by default: the
        pipeline reads each file on a thread of its own, and several streams then use the cores better than a
        decoder that splits every stream's frames over all of them (FFmpeg's output is the same either way)."""
        if not path.is_file():
            raise UserError(f"video file not found: {path}")
        cap = _open_file(path, threads)
        if not cap.isOpened():
            cap.release()
            raise UserError(f"{path}: OpenCV cannot open it as a video (not a video, corrupt, or an unsupported codec)")
        ok, image = cap.read()
        if not ok or image is None:
            cap.release()
            raise UserError(f"{path}: no frame could be decoded (empty or corrupt video)")
        fps = _fps(cap.get(cv2.CAP_PROP_FPS), DEFAULT_FILE_FPS)
        size = (image.shape[1], image.shape[0])
        super().__init__(uri or str(path), source_id or _safe_id(path.stem), False, fps, size)
        self.path = path
        declared = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.declared_frames = int(declared) if math.isfinite(declared) and declared > 0 else None  # container's
        self._cap: Any = cap
        self._pending: np.ndarray | None = image
        self._next = 0

    @property
    def next_index(self) -> int:
        """The index of the frame the next read() returns."""
        return self._next

    def read(self, timeout: float | None = None, retrieve: bool = True) -> Frame | None:
        if self._cap is None:
            return None
        image, self._pending = self._pending, None
        if image is None:
            if retrieve:
                ok, image = self._cap.read()
                ok = ok and image is not None
            else:
                ok = self._cap.grab()
            if not ok:
                self.close()
                self._check_length()
                return None
        frame = Frame(image, self._next, self._next / self.fps)
        self._next += 1
        self.stats["frames"] += 1
        return frame

    def _check_length(self) -> None:
        """At the end of the file: warn when fewer frames decoded than the container declares (OpenCV's count is
        exact for mp4 / avi, estimated from the duration for some containers, hence a tolerance)."""
        if self.declared_frames is not None and self._next < self.declared_frames - FRAME_COUNT_TOLERANCE:
            warn(f"{self.path}: the video ends after {self._next} of the {self.declared_frames} frames its container "
                 "declares (truncated or damaged)")  # fmt: skip

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._pending = None
        self._done = True


def _open_file(path: Path, threads: int | None) -> Any:
    """cv2.VideoCapture of a file with `threads` decoder threads, where the backend takes that setting (else its
    default)."""
    prop = getattr(cv2, "CAP_PROP_N_THREADS", None)
    if threads is not None and prop is not None:
        cap = cv2.VideoCapture(str(path), cv2.CAP_ANY, [prop, int(threads)])
        if cap.isOpened():
            return cap
        cap.release()
    return cv2.VideoCapture(str(path))


class ImageFolderSource(Source):
    """Images of a directory sorted by file name, one frame each: index = position in the folder, time = index /
    fps. An unreadable image (corrupt, not an image, gone) is skipped with a warning line and counted in
    `stats["skipped"]`; its index stays unused, as a dropped frame's would. A folder with no readable image is
    refused (UserError)."""

    def __init__(self, directory: Path, fps: float = DEFAULT_FILE_FPS, source_id: str | None = None,
                 uri: str | None = None):  # fmt: skip
        files = sorted((p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                       key=lambda p: p.name)  # fmt: skip
        if not files:
            raise UserError(f"{directory}: no images ({', '.join(IMAGE_SUFFIXES)}) in this directory")
        self.files = files
        self.fps = fps
        self._next = 0
        unreadable: list[Path] = []
        first = self._next_frame(unreadable)
        if first is None:
            raise UserError(f"{directory}: none of its {len(files)} images can be read (corrupt or not images)")
        super().__init__(uri or str(directory), source_id or _safe_id(directory.name), False, fps,
                         (first.image.shape[1], first.image.shape[0]))  # fmt: skip
        self.path = directory
        self.stats["skipped"] = 0
        self._pending: Frame | None = first
        for path in unreadable:  # warned once the folder is known to hold an image at all
            self._skipped(path)

    @staticmethod
    def _load(path: Path) -> np.ndarray | None:
        try:
            return cv2.imread(str(path), cv2.IMREAD_COLOR)
        except cv2.error:  # e.g. an image larger than OpenCV's pixel limit
            return None

    def _skipped(self, path: Path) -> None:
        self.stats["skipped"] += 1
        warn(f"{path}: cannot read this image (corrupt or not an image); skipped")

    def _next_frame(self, unreadable: list[Path] | None = None) -> Frame | None:
        """The next readable image as a Frame; unreadable ones on the way are skipped (or collected)."""
        while self._next < len(self.files):
            index, path = self._next, self.files[self._next]
            self._next += 1
            image = self._load(path)
            if image is not None:
                return Frame(image, index, index / self.fps)
            if unreadable is None:
                self._skipped(path)
            else:
                unreadable.append(path)
        return None

    def read(self, timeout: float | None = None) -> Frame | None:
        frame, self._pending = self._pending, None
        if frame is None:
            frame = self._next_frame()
        if frame is None:
            self._done = True
            return None
        self.stats["frames"] += 1
        return frame

    def close(self) -> None:
        self._next = len(self.files)
        self._pending = None
        self._done = True


class LiveSource(Source):
    """A camera or network stream read on its own thread, handing out only the newest frame, reconnecting.

    `open_capture` makes a capture (called again on every reconnect). The first connection is tried before the
    constructor returns: when it delivers a frame the source starts `up` (its fps and size known), otherwise it
    starts `down` and keeps trying on its thread; with `reconnect=0` a source that cannot deliver is refused
    here with `open_error` instead. A failed read (the stream ended, the connection was lost, the camera was
    unplugged) releases the capture and reconnects after waits of `backoff` (the last one repeated, each
    +-`jitter`): forever by default (`reconnect=None`), or until `reconnect` attempts in a row failed, when
    the source ends with `error` set. `reconnect=0`: the first failed read ends the stream cleanly, as the end
    of a file.

    Each state change is a `source` event (`events.source_event`: `{"v": 1, "type": "source", "source", "state":
    "up" | "down", "reason", "time"}`, `time`: seconds since the source was opened, as the frames'), handed out by
    `take_events()` once the frames read before it have been handed out; a source that gives up ends with one
    more `down` whose reason starts with "gave up". `stats["reconnects"]` counts the recoveries (frames
    flowing again). Frame indices count every frame decoded, so dropped frames and outages leave gaps.
    """

    def __init__(self, uri: str, open_capture: Callable[[], Capture], *, source_id: str, open_error: str,
                 fps: float | None = None, reconnect: bool | int | None = None,
                 backoff: Sequence[float] = DEFAULT_BACKOFF, jitter: float = BACKOFF_JITTER,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self._open_capture = open_capture
        self._clock = clock
        self._t0 = clock()
        self.open_error = open_error
        self.max_attempts = reconnect_attempts(reconnect)
        self.backoff = tuple(backoff) or (0.0,)
        self.jitter = jitter
        cap, image, reason = self._connect()
        if cap is None and self.max_attempts == 0:
            raise UserError(reason)
        size = None if image is None else (image.shape[1], image.shape[0])
        native = _fps(cap.get(cv2.CAP_PROP_FPS), DEFAULT_LIVE_FPS) if cap is not None else DEFAULT_LIVE_FPS
        super().__init__(uri, source_id, True, fps or native, size)
        self.state = "up" if cap is not None else "down"
        self.error: str | None = None  # why the stream ended, when it gave up (or the reader failed)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._latest: Frame | None = None
        self._index = 0  # the next decoded frame's index
        self._events: list[tuple[int, dict[str, Any]]] = []  # (index of the last frame before it, event)
        self._ended = False
        if image is not None:
            self._change("up", f"connected ({size[0]}x{size[1]}, {self.fps:g} fps)")
            self._publish(image)
        else:
            self._change("down", f"{reason}; {self._retry_note()}")
        self._thread = threading.Thread(target=self._run, args=(cap,), name=f"stp-source-{source_id}", daemon=True)
        self._thread.start()

    @property
    def reconnect(self) -> bool:
        """True when a failed read is followed by reconnect attempts."""
        return self.max_attempts != 0

    def _retry_note(self) -> str:
        low, high = min(self.backoff), max(self.backoff)
        waits = f"{low:g}-{high:g} s" if high > low else f"{high:g} s"
        limit = "" if self.max_attempts is None else f", at most {self.max_attempts} attempts"
        return f"reconnecting (waits {waits}{limit})"

    def _delay(self, attempt: int) -> float:
        base = self.backoff[min(attempt, len(self.backoff) - 1)]
        return max(0.0, base * (1.0 + self.jitter * (2.0 * random.random() - 1.0)))

    def _connect(self) -> tuple[Capture | None, np.ndarray | None, str]:
        """(capture, its first frame, "") when a frame came, else (None, None, why not); never raises."""
        try:
            cap = self._open_capture()
        except Exception as err:  # noqa: BLE001 - whatever OpenCV or a driver raised is a failed attempt
            return None, None, f"{self.open_error} ({type(err).__name__}: {first_line(err)})"
        if cap is None:
            return None, None, self.open_error
        try:
            ok, image = cap.read() if cap.isOpened() else (False, None)
        except Exception:  # noqa: BLE001 - as above
            ok, image = False, None
        if not ok or image is None:
            _release(cap)
            return None, None, self.open_error
        return cap, image, ""

    def _publish(self, image: np.ndarray) -> None:
        frame = Frame(image, self._index, self._clock() - self._t0)
        self._index += 1
        with self._cond:
            if self._latest is not None:
                self.stats["dropped"] += 1  # the consumer never saw it: a newer frame replaces it
            self._latest = frame
            self._cond.notify_all()

    def _change(self, state: str, reason: str) -> None:
        event = source_event(self.id, state, reason, self._clock() - self._t0)
        with self._cond:
            self.state = state
            self._events.append((self._index - 1, event))
            self._cond.notify_all()

    def _run(self, cap: Capture | None) -> None:
        attempts = 0  # failed attempts since the stream went down
        down_since = None if cap is not None else self._t0
        reason = self.open_error
        try:
            while not self._stop.is_set():
                if cap is None:
                    if self.max_attempts is not None and attempts >= self.max_attempts:
                        self.error = f"gave up after {attempts} reconnect attempt{'s' * (attempts != 1)}: {reason}"
                        self._change("down", self.error)
                        return
                    if self._stop.wait(self._delay(attempts)):
                        return
                    attempts += 1
                    cap, image, why = self._connect()
                    if cap is None:
                        reason = why
                        continue
                    if self._stop.is_set():
                        return
                    with self._cond:
                        self.stats["reconnects"] += 1
                    down = self._clock() - (down_since if down_since is not None else self._t0)
                    self._change("up", f"reconnected after {attempts} attempt{'s' * (attempts != 1)}, {down:.1f} s "
                                 "without frames")  # fmt: skip
                    self._publish(image)
                    attempts, down_since = 0, None
                    continue
                try:
                    ok, image = cap.read()
                    why = "no frame (the stream ended or the connection was lost)"
                except Exception as err:  # noqa: BLE001 - a failed read, whatever raised it
                    ok, image, why = False, None, f"read failed: {type(err).__name__}: {first_line(err)}"
                if self._stop.is_set():
                    return
                if ok and image is not None:
                    self._publish(image)
                    continue
                _release(cap)
                cap, down_since, reason = None, self._clock(), why
                if self.max_attempts == 0:
                    self._change("down", f"{why}; not reconnecting (reconnect off): the stream ends here")
                    return
                self._change("down", f"{why}; {self._retry_note()}")
        except Exception as err:  # noqa: BLE001 - a bug here must not hang the run: end the stream, say why
            self.error = f"reader failed: {type(err).__name__}: {first_line(err)}"
            self._change("down", self.error)
        finally:
            if cap is not None:
                _release(cap)
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def read(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet returned; blocks until one exists (at most `timeout` s when given; while the
        source is down, until it is up again or gives up).

        None once the stream ended or was closed, or on timeout (then `ended` is still False).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._latest is None and not self._ended and not self._stop.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            if self._stop.is_set():
                return None
            frame, self._latest = self._latest, None
            if frame is not None:
                self.stats["frames"] += 1
            return frame

    def take_events(self) -> list[dict[str, Any]]:
        """The `source` events (state changes) whose earlier frames have all been handed out (read or dropped)."""
        with self._cond:
            ready: list[dict[str, Any]] = []
            while self._events and (self._latest is None or self._latest.index > self._events[0][0]):
                ready.append(self._events.pop(0)[1])
            return ready

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._stop.is_set() or (self._ended and self._latest is None)

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)  # a read blocked inside FFmpeg ends at its timeout; the thread is a daemon


def _release(cap: Capture) -> None:
    with contextlib.suppress(Exception):  # a capture that cannot even be released is gone anyway
        cap.release()


# --- URIs ----------------------------------------------------------------------------------------------------------


def opencv_has_gstreamer() -> bool:
    """True when this OpenCV build has the GStreamer video I/O backend (pip's opencv-python does not)."""
    match = re.search(r"GStreamer:\s*(\w+)", cv2.getBuildInformation())
    return bool(match and match.group(1).upper() == "YES")


def csi_pipeline(sensor: int = 0, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0) -> str:
    """The nvarguscamerasrc pipeline for a Jetson CSI camera, BGR frames into an appsink that keeps the newest."""
    return (
        f"nvarguscamerasrc sensor-id={sensor} ! "
        f"video/x-raw(memory:NVMM), width={width}, height={height}, framerate={fps}/1, format=NV12 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw, format=BGRx ! videoconvert ! video/x-raw, format=BGR ! "
        "appsink drop=true max-buffers=1 sync=false"
    )


def _int_query(query: dict[str, list[str]], key: str, default: int, uri: str) -> int:
    value = query.get(key, [str(default)])[-1]
    if not value.isdigit():
        raise UserError(f"{uri}: {key}={value!r} must be a whole number")
    return int(value)


def classify_uri(uri: str) -> tuple[str, Any]:
    """(kind, target): ("camera", 0 | "/dev/v4l/..."), ("csi", uri), ("gst", pipeline), ("network", uri),
    ("folder", (Path, fps)), ("file", Path), ("nvdec", Path). Pure parsing: nothing is opened."""
    text = uri.strip()
    if not text:
        raise UserError("empty source URI")
    if m := re.fullmatch(r"(?:camera|v4l2://)?(\d+)", text, re.IGNORECASE):
        return "camera", int(m.group(1))
    device = text[len("v4l2://") :] if text.lower().startswith("v4l2://") else text
    if m := re.fullmatch(r"/dev/video(\d+)", device):
        return "camera", int(m.group(1))
    if device.startswith("/dev/"):
        return "camera", device
    if text.lower().startswith("csi://"):
        return "csi", text
    if text.lower().startswith("nvdec:"):
        from .nvdec import parse_nvdec

        return "nvdec", parse_nvdec(text)
    if text.lower().startswith("gst:"):
        pipeline = text[4:].removeprefix("//").strip()
        if not pipeline:
            raise UserError(f"{uri}: empty GStreamer pipeline (use gst:<pipeline> ... ! appsink)")
        return "gst", pipeline
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in NETWORK_SCHEMES:
        return "network", text
    if scheme and scheme != "file":
        raise UserError(
            f"{redact(uri)}: unknown source type {scheme + '://'!r}; use a video file, an image folder, camera0, "
            "/dev/video0, csi://0, gst:<pipeline>, nvdec:<video file>, rtsp://, rtmp:// or http(s)://"
        )
    if scheme == "file":
        text = unquote(text[len("file://") :])
    path_text, _, query_text = text.partition("?")
    if query_text and Path(path_text).is_dir():
        query = parse_qs(query_text)
        try:
            fps = float(query.get("fps", [str(DEFAULT_FILE_FPS)])[-1])
        except ValueError:
            fps = -1.0
        if not math.isfinite(fps) or fps <= 0:
            raise UserError(f"{uri}: ?fps= must be a positive number")
        return "folder", (Path(path_text), fps)
    path = Path(text).expanduser()
    if path.is_dir():
        return "folder", (path, DEFAULT_FILE_FPS)
    return "file", path


def _camera_capture(target: int | str, device: str) -> Callable[[], Any]:
    linux = sys.platform.startswith("linux")
    api = cv2.CAP_V4L2 if linux and hasattr(cv2, "CAP_V4L2") else cv2.CAP_ANY

    def open_camera() -> Any:
        if linux and not Path(device).exists():  # not plugged in (yet): no capture, without OpenCV's probing
            return None
        return cv2.VideoCapture(target, api)

    return open_camera


def _gst_capture(pipeline: str, uri: str) -> Callable[[], Any]:
    if not opencv_has_gstreamer():
        raise UserError(
            f"{uri}: this OpenCV ({cv2.__version__}) was built without GStreamer, which CSI cameras and gst: "
            "pipelines need; pip's opencv-python(-headless) never has it. On Jetson use JetPack's OpenCV "
            "(apt install python3-opencv, and pip uninstall opencv-python-headless), or read the camera as "
            "/dev/video0 (USB) or rtsp://"
        )
    if "appsink" not in pipeline:
        pipeline += " ! videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false"
    return lambda: cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)


def _ffmpeg_capture(uri: str) -> Callable[[], Any]:
    params: list[int] = []
    for name in ("CAP_PROP_OPEN_TIMEOUT_MSEC", "CAP_PROP_READ_TIMEOUT_MSEC"):
        if hasattr(cv2, name):
            params += [getattr(cv2, name), STREAM_TIMEOUT_MS]
    return lambda: cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)


def open_source(uri: str, *, source_id: str | None = None, reconnect: bool | int | None = None) -> Source:
    """Open the source a URI names (see the module docstring); problems a user can fix raise UserError.

    `reconnect` applies to live sources (LiveSource): None (default) reconnects forever, also when the camera or
    stream is not up yet at start-up; N gives up after N failed attempts in a row; 0 never reconnects and
    refuses a source that cannot deliver a frame now. A URI that can never work (unknown scheme, no host, an
    OpenCV without GStreamer for csi:// and gst:) is refused at once whatever the policy; a missing V4L2 node
    (/dev/videoN) is waited for, as a USB camera may be plugged in later, unless `reconnect` is 0.
    """
    kind, target = classify_uri(uri)
    if kind == "file":
        return VideoFileSource(target, source_id, uri)
    if kind == "folder":
        return ImageFolderSource(target[0], target[1], source_id, uri)
    if kind == "nvdec":
        from .nvdec import NvdecFileSource

        return NvdecFileSource(target, source_id, uri)
    if kind == "camera":
        device = f"/dev/video{target}" if isinstance(target, int) else target
        name = f"camera {target}"
        missing = sys.platform.startswith("linux") and not Path(device).exists()
        if missing and reconnect_attempts(reconnect) == 0:  # fail fast, without OpenCV's probing
            raise UserError(f"{name} not found or busy ({device}); video devices here: {_cameras()}")
        return LiveSource(uri, _camera_capture(target, device), source_id=source_id or _safe_id(f"camera{target}"),
                          open_error=f"{name} not found or busy ({device})", reconnect=reconnect)  # fmt: skip
    if kind == "csi":
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        sensor = int(parts.netloc) if parts.netloc.isdigit() else 0
        pipeline = csi_pipeline(sensor, _int_query(query, "width", 1280, uri), _int_query(query, "height", 720, uri),
                                _int_query(query, "fps", 30, uri), _int_query(query, "flip", 0, uri))  # fmt: skip
        return LiveSource(uri, _gst_capture(pipeline, uri), source_id=source_id or f"csi{sensor}",
                          open_error=f"CSI camera {sensor} did not start ({pipeline}); is nvargus-daemon running?",
                          reconnect=reconnect)  # fmt: skip
    if kind == "gst":
        return LiveSource(uri, _gst_capture(target, uri), source_id=source_id or "gst",
                          open_error=f"GStreamer pipeline did not deliver a frame: {target}",
                          reconnect=reconnect)  # fmt: skip
    parts = urlsplit(target)
    try:
        parts.port  # noqa: B018 - urllib checks the port when it is read
    except ValueError:
        raise UserError(f"{redact(target)}: the port is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise UserError(f"{redact(target)}: no host in this URL (rtsp://HOST[:PORT]/PATH)")
    default_id = _safe_id(f"{parts.hostname or 'stream'}{parts.path}")
    return LiveSource(uri, _ffmpeg_capture(target), source_id=source_id or default_id,
                      open_error=f"cannot open stream {redact(target)} (unreachable, wrong URL or credentials, "
                      "or no video track)", reconnect=reconnect)  # fmt: skip


def _cameras() -> str:
    found = sorted(Path("/dev").glob("video[0-9]*"), key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else 0)
    return ", ".join(str(p) for p in found) or "none"
