"""Frame sources named by URIs users know from jetson-inference and DeepStream.

- `camera0`, `0`, `/dev/video0`, `v4l2:///dev/video0`: a V4L2 camera (live)
- `csi://0[?width=1280&height=720&fps=30&flip=0]`: a Jetson CSI camera through nvarguscamerasrc (live, GStreamer)
- `gst:<pipeline>`: any GStreamer pipeline ending in appsink (live, GStreamer)
- `rtsp://`, `rtsps://`, `rtmp://`, `http(s)://`: a network stream through FFmpeg (live, reconnects)
- a video file path or `file://path`: every frame at full speed, none dropped
- a directory of jpg/jpeg/png/bmp images (sorted by name), optional `?fps=N` (default 25)

Live sources decode on a reader thread that keeps only the newest frame: a pipeline slower than the camera
skips frames (counted in `stats["dropped"]`) instead of building latency. Files and image folders are read on
the caller's thread and never drop a frame, so a file gives exactly the frames `stp-extract` sees.
"""

from __future__ import annotations

import abc
import math
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

from ..errors import UserError
from .frames import Frame  # the one Frame type; `from stprompt.runtime.sources import Frame` keeps working

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https")
DEFAULT_FILE_FPS = 25.0  # video files without a usable fps, and image folders without ?fps=
DEFAULT_LIVE_FPS = 30.0  # nominal only: live frame times are wall-clock
STREAM_TIMEOUT_MS = 10_000  # FFmpeg open / read timeout of network streams


def backoff_delays(first: float = 0.5, cap: float = 8.0, attempts: int = 8) -> list[float]:
    """Reconnect waits: `first` doubling up to `cap`, `attempts` of them (0.5, 1, 2, 4, 8, 8, 8, 8 s)."""
    return [min(cap, first * 2**i) for i in range(attempts)]


DEFAULT_BACKOFF = tuple(backoff_delays())


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
    only) and successful reconnects.
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
    """Every frame of a video file in order, index = decode position, time = index / fps."""

    def __init__(self, path: Path, source_id: str | None = None, uri: str | None = None):
        if not path.is_file():
            raise UserError(f"video file not found: {path}")
        cap = cv2.VideoCapture(str(path))
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
        self._cap: Any = cap
        self._pending: np.ndarray | None = image
        self._next = 0

    def read(self, timeout: float | None = None) -> Frame | None:
        if self._cap is None:
            return None
        image, self._pending = self._pending, None
        if image is None:
            ok, image = self._cap.read()
            if not ok or image is None:
                self.close()
                return None
        frame = Frame(image, self._next, self._next / self.fps)
        self._next += 1
        self.stats["frames"] += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._pending = None
        self._done = True


class ImageFolderSource(Source):
    """Images of a directory sorted by file name, one frame each, time = index / fps."""

    def __init__(self, directory: Path, fps: float = DEFAULT_FILE_FPS, source_id: str | None = None,
                 uri: str | None = None):  # fmt: skip
        files = sorted((p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                       key=lambda p: p.name)  # fmt: skip
        if not files:
            raise UserError(f"{directory}: no images ({', '.join(IMAGE_SUFFIXES)}) in this directory")
        first = self._load(files[0])
        super().__init__(uri or str(directory), source_id or _safe_id(directory.name), False, fps,
                         (first.shape[1], first.shape[0]))  # fmt: skip
        self.path = directory
        self.files = files
        self._pending: np.ndarray | None = first
        self._next = 0

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise UserError(f"{path}: cannot read this image (corrupt or not an image)")
        return image

    def read(self, timeout: float | None = None) -> Frame | None:
        if self._next >= len(self.files):
            self._done = True
            return None
        image, self._pending = self._pending, None
        if image is None:
            image = self._load(self.files[self._next])
        frame = Frame(image, self._next, self._next / self.fps)
        self._next += 1
        self.stats["frames"] += 1
        return frame

    def close(self) -> None:
        self._next = len(self.files)
        self._pending = None
        self._done = True


class LiveSource(Source):
    """A camera or network stream read on its own thread, handing out only the newest frame.

    `open_capture` makes a capture (called again on reconnect); the first frame is read before the
    constructor returns, so a camera or stream that cannot deliver fails here with `open_error`. On a failed
    read the capture is reopened after each wait in `backoff` (bounded); `stats["reconnects"]` counts the
    recoveries (frames flowing again). Frame indices count every frame decoded, so dropped frames leave gaps.
    """

    def __init__(self, uri: str, open_capture: Callable[[], Capture], *, source_id: str, open_error: str,
                 fps: float | None = None, reconnect: bool = True, backoff: Sequence[float] = DEFAULT_BACKOFF,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self._open_capture = open_capture
        self._clock = clock
        self._t0 = clock()
        cap = self._try_open()
        ok, image = cap.read() if cap is not None else (False, None)
        if not ok or image is None:
            if cap is not None:
                cap.release()
            raise UserError(open_error)
        super().__init__(uri, source_id, True, fps or _fps(cap.get(cv2.CAP_PROP_FPS), DEFAULT_LIVE_FPS),
                         (image.shape[1], image.shape[0]))  # fmt: skip
        self.reconnect = reconnect
        self.backoff = tuple(backoff)
        self.error: str | None = None  # why the stream ended, when it did not end cleanly
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._latest: Frame | None = Frame(image, 0, self._clock() - self._t0)
        self._ended = False
        self._thread = threading.Thread(target=self._run, args=(cap,), name=f"stp-source-{source_id}", daemon=True)
        self._thread.start()

    def _try_open(self) -> Capture | None:
        try:
            cap = self._open_capture()
        except Exception:  # noqa: BLE001 - a failed (re)open is retried or reported, whatever OpenCV raised
            return None
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            return None
        return cap

    def _publish(self, image: np.ndarray, index: int) -> None:
        frame = Frame(image, index, self._clock() - self._t0)
        with self._cond:
            if self._latest is not None:
                self.stats["dropped"] += 1  # the consumer never saw it: a newer frame replaces it
            self._latest = frame
            self._cond.notify_all()

    def _run(self, cap: Capture | None) -> None:
        index, attempt = 1, 0
        try:
            while not self._stop.is_set():
                ok, image = cap.read() if cap is not None else (False, None)
                if self._stop.is_set():
                    break
                if ok and image is not None:
                    if attempt:
                        attempt = 0
                        with self._cond:
                            self.stats["reconnects"] += 1
                    self._publish(image, index)
                    index += 1
                    continue
                if cap is not None:
                    cap.release()
                    cap = None
                if not self.reconnect:
                    break
                if attempt >= len(self.backoff):
                    self.error = f"{redact(self.uri)}: no frames after {attempt} reconnect attempts"
                    break
                if self._stop.wait(self.backoff[attempt]):
                    break
                attempt += 1
                cap = self._try_open()
        except Exception as err:  # noqa: BLE001 - end the stream, keep the reason for the caller
            self.error = f"{redact(self.uri)}: {type(err).__name__}: {err}"
        finally:
            if cap is not None:
                cap.release()
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def read(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet returned; blocks until one exists (at most `timeout` s when given).

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
    ("folder", (Path, fps)), ("file", Path). Pure parsing: nothing is opened."""
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
            "/dev/video0, csi://0, gst:<pipeline>, rtsp://, rtmp:// or http(s)://"
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


def _camera_capture(target: int | str) -> Callable[[], Any]:
    api = cv2.CAP_V4L2 if sys.platform.startswith("linux") and hasattr(cv2, "CAP_V4L2") else cv2.CAP_ANY
    return lambda: cv2.VideoCapture(target, api)


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


def open_source(uri: str, *, source_id: str | None = None, reconnect: bool = True) -> Source:
    """Open the source a URI names (see the module docstring); problems a user can fix raise UserError.

    `reconnect` applies to live sources: after a failed read the capture is reopened with backoff.
    """
    kind, target = classify_uri(uri)
    if kind == "file":
        return VideoFileSource(target, source_id, uri)
    if kind == "folder":
        return ImageFolderSource(target[0], target[1], source_id, uri)
    if kind == "camera":
        device = f"/dev/video{target}" if isinstance(target, int) else target
        name = f"camera {target}"
        if sys.platform.startswith("linux") and not Path(device).exists():  # fail fast, without OpenCV's probing
            raise UserError(f"{name} not found or busy ({device}); video devices here: {_cameras()}")
        return LiveSource(uri, _camera_capture(target), source_id=source_id or _safe_id(f"camera{target}"),
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
    default_id = _safe_id(f"{parts.hostname or 'stream'}{parts.path}")
    return LiveSource(uri, _ffmpeg_capture(target), source_id=source_id or default_id,
                      open_error=f"cannot open stream {redact(target)} (unreachable, wrong URL or credentials, "
                      "or no video track)", reconnect=reconnect)  # fmt: skip


def _cameras() -> str:
    found = sorted(Path("/dev").glob("video[0-9]*"), key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else 0)
    return ", ".join(str(p) for p in found) or "none"
