"""Where stp-run's results go: outputs named by URIs, as sources are (jetson-inference's videoOutput convention).

- `events.jsonl` (any path ending .jsonl, .json or .ndjson) or `-` (stdout): the JSON Lines events, each object
  as the shipped schema defines it (`events`, schemas/events-1.json)
- a video path (.mp4, .avi, .mkv, .mov): the annotated sampled frames, one file per source when several (VideoSink:
  H.264 through PyAV in a container a hard kill leaves playable; OpenCV's mp4v where PyAV is missing)
- `display://0`: a live window with the annotated frames (q or Esc stops the run)

Every output is a Sink: it gets each batch's events (`write`) and each scored snippet with its frame, heat map and
boxes (`snippet`). A new kind of output is one Sink subclass listed in OUTPUTS; `open_output` picks it by scheme
or suffix. `check_outputs` checks every output without writing anything (stp-run calls it before any source is
opened), and `open_outputs` opens the outputs that truncate nothing (videos, the window) before the JSON Lines
files: an output that cannot be written never costs an existing events file. The status line on stderr lives here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np

from ..draw import RED, draw_boxes, draw_score_bar, overlay_heat
from ..errors import UserError, first_line, inform, status_line_open, warn
from .sources import redact

if TYPE_CHECKING:
    from .detector import Snippet
    from .sources import Source


@dataclass(frozen=True)
class OutputContext:
    """What an output needs to know about the run it records: sampled frames per second (the annotated video's
    frame rate; `rates` per source id, `fps` for a source not in it), the alarm threshold the score bar marks,
    whether several sources share the output, and `names`: each source's short file-name id (`short_ids`)."""

    fps: float = 25.0
    threshold: float = 0.5
    several: bool = False
    rates: Mapping[str, float] = field(default_factory=dict)
    names: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def for_run(cls, sources: Sequence[Source], stride: int, threshold: float) -> OutputContext:
        """Each source's own frame rate over the stride (one video frame per sampled frame), the first's as the
        default, and the sources' short ids."""
        rates = {s.id: (s.fps or 25.0) / stride for s in sources}
        first = rates[sources[0].id] if sources else 25.0
        ids = short_ids([getattr(s, "uri", None) or s.id for s in sources])
        names = dict(zip([s.id for s in sources], ids, strict=True))
        return cls(first, threshold, len(sources) > 1, rates, names)


def source_slug(uri: str) -> str:
    """A short, filesystem-safe name for a source: a file's or folder's name without its extension (a folder's
    `?fps=` dropped), a stream's host and last path component (`rtsp://cam-2/live` -> cam-2-live), camera0 for
    `0`, gst for a GStreamer pipeline; only letters, digits, `.`, `_` and `-`, at most 40 characters."""
    text = redact(uri.strip())
    m = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*)://", text)
    scheme = m.group(1).lower() if m else ""
    if text.lower().startswith("gst:"):
        name = "gst"
    elif scheme and scheme != "file":
        parts = urlsplit(text)
        last = parts.path.rstrip("/").rsplit("/", 1)[-1]
        name = "-".join(p for p in (parts.hostname, last) if p) or scheme
        name = scheme + name if name.isdigit() else name  # csi://0 -> csi0
    else:
        path = _path(text).partition("?")[0].rstrip("/") or text
        name = Path(path).stem or Path(path).name
        name = "camera" + name if name.isdigit() else name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:40].strip("-.")
    return slug or "source"


def short_ids(uris: Sequence[str]) -> list[str]:
    """Each source's `source_slug`, prefixed with its index (`1-clip`) where two sources share a slug (letter case
    ignored): the per-source part of a shared video output's file names."""
    slugs = [source_slug(u) for u in uris]
    keys = [s.casefold() for s in slugs]
    ids = [f"{i}-{s}" if keys.count(k) > 1 else s for i, (s, k) in enumerate(zip(slugs, keys, strict=True))]
    if len({i.casefold() for i in ids}) < len(ids):  # an index-prefixed id met a source named like it
        ids = [f"{i}-{s}" for i, s in enumerate(slugs)]
    return ids


class Sink:
    """One output of a run. Every method does nothing by default: a sink implements what it consumes."""

    schemes: ClassVar[tuple[str, ...]] = ()  # URI schemes that name this output (`display` for display://0)
    suffixes: ClassVar[tuple[str, ...]] = ()  # path suffixes that name it (lower case, with the dot)
    names: ClassVar[tuple[str, ...]] = ()  # exact URIs that name it (`-`)
    accepts: ClassVar[str] = ""  # how the error for an unknown output describes it
    target: str | None = None  # what it writes to (a resolved path, `-`, display://0): the same one twice is refused
    stop_requested: bool = False  # set by a sink that asks the run to stop (the live window's q / Esc)

    @classmethod
    def from_uri(cls, uri: str, ctx: OutputContext, name: str) -> Sink:
        """Open the output `uri` names (scheme and `file://` included); `name` is how the user spelled it."""
        raise NotImplementedError

    @classmethod
    def check(cls, uri: str, ctx: OutputContext, name: str) -> str | None:
        """Raise UserError if `uri` cannot be opened, without writing or truncating anything the user keeps; the
        target it would write to (None: not known before it opens). The default checks nothing."""
        return None

    def write(self, events: list[dict[str, Any]]) -> None:
        """A batch of events (frame, alarm, source, engine: `events`' schema), in the order they were emitted."""

    def snippet(self, snippet: Snippet) -> None:
        """A scored snippet with its frame, and when alarmed its heat map and boxes."""

    def close(self) -> None:
        """Flush and release; called once when the run ends, however it ends."""


def caption(event: Mapping[str, Any], threshold: float, name: str | None = None) -> str:
    """What the annotated frame says, two lines: the source's name and the frame; the score against the alarm
    threshold and the most likely class (the event's `class`): what the score bar and its colour mean, in words."""
    score = float(event["score"])
    name = name if name is not None else str(event["source"]).rstrip("/").rsplit("/", 1)[-1]
    versus = ">=" if score >= threshold else "<"
    verdict = f"score {score:.2f} {versus} alarm {threshold:.2f}"
    return f"{name}  frame {event['frame']}\n{verdict}  top class {event['class']}"


def annotate(snippet: Snippet, threshold: float, text: str | None = None) -> np.ndarray:
    """The frame a person looks at, for the video file and the live window alike: the heat map on alarms (colour and
    opacity follow the heat), red boxes with their scores, and the score bar with its threshold mark and `text`
    (default `caption`) on dark plates, legible on any background."""
    img = snippet.image.copy() if snippet.heat is None else overlay_heat(snippet.image, snippet.heat)
    if snippet.boxes is not None:
        draw_boxes(img, snippet.boxes, RED)
    draw_score_bar(img, snippet.event["score"], threshold, caption(snippet.event, threshold) if text is None else text)
    return img


class JsonLinesSink(Sink):
    """One JSON object per line, the event as it came (schemas/events-1.json), flushed per batch: the file stays
    valid JSON Lines whenever the run stops."""

    suffixes = (".jsonl", ".json", ".ndjson")
    names = ("-",)
    accepts = "events.jsonl (.jsonl, .json, .ndjson) or - (stdout) for the JSON Lines events"

    def __init__(self, path: str | None):
        self.path = path
        stdout = not path or path == "-"
        self.target = "-" if stdout else str(Path(path).resolve())
        try:
            self.fh: IO[str] = sys.stdout if stdout else open(path, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as err:
            raise UserError(f"cannot write events to {path}: {err.strerror}") from None
        self.count = 0

    @classmethod
    def from_uri(cls, uri: str, ctx: OutputContext, name: str) -> JsonLinesSink:
        return cls(_path(uri))

    @classmethod
    def check(cls, uri: str, ctx: OutputContext, name: str) -> str | None:
        """Its folder exists and it can be written (the file is neither created nor truncated here)."""
        path = _path(uri)
        if not path or path == "-":
            return "-"
        p = Path(path)
        why = ("Is a directory" if p.is_dir() else "No such file or directory" if not p.parent.is_dir()
               else "" if os.access(p if p.exists() else p.parent, os.W_OK) else "Permission denied")  # fmt: skip
        if why:
            raise UserError(f"cannot write events to {path}: {why}")
        return str(p.resolve())

    def write(self, events: list[dict[str, Any]]) -> None:
        for e in events:
            self.fh.write(json.dumps(e, separators=(",", ":")) + "\n")
            self.count += 1
        if events:
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not sys.stdout:
            self.fh.close()


VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")
FALLBACK_WARNING = (
    "PyAV is not installed (pip install av): {path} is written with OpenCV's mp4v, which browsers do not play and "
    "a hard kill leaves unreadable"
)


def _import_av() -> Any:
    """PyAV, or None where it is missing (the writer falls back to OpenCV's mp4v)."""
    try:
        import av
    except ImportError:
        return None
    return av


def _why(err: BaseException) -> str:
    return getattr(err, "strerror", None) or first_line(err)


class AvVideoWriter:
    """H.264 (libx264, yuv420p) through PyAV in a container that keeps what was written when the process dies:
    .mp4 / .mov fragmented (empty moov, a fragment per keyframe), .mkv Matroska clusters of at most a second,
    .avi as it is; a keyframe every second of video and every packet flushed to the file, so a SIGKILL costs at
    most the last second. Browsers play the .mp4. Odd frame sizes are padded to even (edge pixels repeated)."""

    formats: ClassVar[dict[str, tuple[str, dict[str, str]]]] = {
        ".mp4": ("mp4", {"movflags": "frag_keyframe+empty_moov+default_base_moof"}),
        ".mov": ("mov", {"movflags": "frag_keyframe+empty_moov+default_base_moof"}),
        ".mkv": ("matroska", {"cluster_time_limit": "1000"}),
        ".avi": ("avi", {}),
    }
    x264: ClassVar[dict[str, str]] = {"preset": "veryfast", "tune": "zerolatency"}  # zerolatency: no frame held back

    def __init__(self, av: Any, path: Path, fps: float, size: tuple[int, int]):
        self.errors = (OSError, av.error.FFmpegError)
        self.av, self.path, self.count = av, path, 0
        fmt, options = self.formats[path.suffix.lower()]
        self.container = av.open(str(path), "w", format=fmt, container_options={**options, "flush_packets": "1"})
        try:
            self.codec = next((c for c in ("libx264", "libopenh264") if c in av.codecs_available), "mpeg4")
            rate = Fraction(fps).limit_denominator(10_000)
            self.stream = self.container.add_stream(self.codec, rate=rate,
                                                    options=self.x264 if self.codec == "libx264" else {})  # fmt: skip
            w, h = size
            self.pad = (h % 2, w % 2)
            self.stream.width, self.stream.height, self.stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
            self.stream.codec_context.gop_size = max(1, round(fps))
        except BaseException:
            self.container.close()
            raise

    def write(self, image: np.ndarray) -> None:
        if any(self.pad):
            image = cv2.copyMakeBorder(image, 0, self.pad[0], 0, self.pad[1], cv2.BORDER_REPLICATE)
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        frame.pts = self.count
        self.count += 1
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        try:
            self.container.mux(self.stream.encode(None))
        finally:
            self.container.close()


class Mp4vVideoWriter:
    """OpenCV's mp4v: the fallback where PyAV is missing (browsers do not play it; a killed .mp4 is unreadable)."""

    errors = (OSError, cv2.error)
    codec = "mp4v"

    def __init__(self, path: Path, fps: float, size: tuple[int, int]):
        self.path = path
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            raise OSError(f"OpenCV cannot open an mp4v writer for {path.suffix}")

    def write(self, image: np.ndarray) -> None:
        self.writer.write(image)

    def close(self) -> None:
        self.writer.release()


def open_video_writer(path: Path, fps: float, size: tuple[int, int]) -> AvVideoWriter | Mp4vVideoWriter:
    """PyAV's H.264 writer, or OpenCV's mp4v where PyAV is missing. Errors are OSError (or PyAV's FFmpegError)."""
    av = _import_av()
    return Mp4vVideoWriter(path, fps, size) if av is None else AvVideoWriter(av, path, fps, size)


class VideoSink(Sink):
    """The annotated sampled frames of each source (score bar, heat overlay and boxes on alarms).

    H.264 through PyAV (`AvVideoWriter`: fragmented .mp4 that browsers play and a hard kill leaves playable up to
    its last second), OpenCV's mp4v where PyAV is missing. Each source's video runs at that source's own frame rate
    over the stride (`OutputContext.rates`), fixed when its first frame arrives. When several sources share the
    output, source i writes `<stem>.<short-id><suffix>` beside it, short-id = `source_slug` of its URI (a file's
    or folder's name without extension, a stream's host and last path component; filesystem-safe, at most 40
    characters), prefixed `i-` where two sources share a slug: `annotated.gate.mp4`, `annotated.0-clip.mp4`.
    Opening checks the folder, the suffix and the encoder (a writer on a temporary file there), so a video that
    cannot be written fails before the run starts, not at its first frame.
    """

    suffixes = VIDEO_SUFFIXES
    accepts = "a video file (.mp4, .avi, .mkv, .mov) for the annotated frames"

    def __init__(self, path: str, fps: float = 25.0, threshold: float = 0.5, several: bool = False, *,
                 rates: Mapping[str, float] | None = None, names: Mapping[str, str] | None = None,
                 name: str | None = None):  # fmt: skip
        self.path = Path(path)
        self.target = self.check_path(self.path, name or path)
        self.fps = fps if fps > 0 else 25.0
        self.threshold = threshold
        self.several = several
        self.rates = dict(rates or {})
        self.names = dict(names or {})
        self.writers: dict[str, AvVideoWriter | Mp4vVideoWriter] = {}
        self.size: dict[str, tuple[int, int]] = {}
        self.paths: dict[str, Path] = {}  # each source's video file, once its first frame came
        if _import_av() is None:
            warn(FALLBACK_WARNING.format(path=self.path))

    @classmethod
    def from_uri(cls, uri: str, ctx: OutputContext, name: str) -> VideoSink:
        return cls(_path(uri), ctx.fps, ctx.threshold, several=ctx.several, rates=ctx.rates, names=ctx.names,
                   name=name)  # fmt: skip

    @classmethod
    def check(cls, uri: str, ctx: OutputContext, name: str) -> str | None:
        return cls.check_path(Path(_path(uri)), name)

    @staticmethod
    def check_path(path: Path, name: str) -> str:
        """The resolved target once the suffix is a video's, the folder exists and is writable, and the encoder
        opens there (one frame written to a temporary file, then removed); UserError otherwise."""
        label = f"cannot write video {path}" if name in (str(path), "file://" + str(path)) else (
            f"{name}: cannot write video {path}")  # fmt: skip
        suffix = path.suffix.lower()
        if suffix not in VIDEO_SUFFIXES:
            what = f"unknown video suffix {path.suffix!r}" if path.suffix else "no suffix"
            raise UserError(f"{label}: {what}; use {', '.join(VIDEO_SUFFIXES)}")
        folder, probe = path.parent, None
        try:
            if path.is_dir():
                raise UserError(f"{label}: it is a folder")
            if not folder.is_dir():
                raise UserError(f"{label}: {'no folder' if not folder.exists() else 'not a folder:'} {folder}")
            fd, probe = tempfile.mkstemp(prefix=".stp-check-", suffix=suffix, dir=folder)
            os.close(fd)
            writer = open_video_writer(Path(probe), 25.0, (16, 16))
            try:
                writer.write(np.zeros((16, 16, 3), np.uint8))
            finally:
                writer.close()
        except UserError:
            raise
        except Exception as err:  # OSError, PyAV's FFmpegError, cv2.error: the folder or the encoder
            raise UserError(f"{label}: {_why(err)}") from None
        finally:
            if probe is not None:
                with contextlib.suppress(OSError):
                    os.unlink(probe)
        return str(path.resolve())

    def video_path(self, source: str) -> Path:
        """Where `source`'s frames go: the output itself, or with several sources `<stem>.<short-id><suffix>`."""
        if not self.several:
            return self.path
        short = self.names.get(source)
        if short is None:  # a source the context did not list: its own slug, made unique here
            short = source_slug(re.sub(r"^\d+:", "", source))
            if any(p.name.casefold() == self._file_name(short).casefold() for p in self.paths.values()):
                short = f"{len(self.paths)}-{short}"
        return self.path.with_name(self._file_name(short))

    def _file_name(self, short: str) -> str:
        return f"{self.path.stem}.{short}{self.path.suffix}"

    def _writer(self, source: str, image: np.ndarray) -> AvVideoWriter | Mp4vVideoWriter:
        if source not in self.writers:
            path = self.video_path(source)
            h, w = image.shape[:2]
            try:
                writer = open_video_writer(path, self.rates.get(source, self.fps), (w, h))
            except Exception as err:  # OSError, PyAV's FFmpegError
                raise UserError(f"cannot write video {path}: {_why(err)}") from None
            self.writers[source], self.size[source], self.paths[source] = writer, (w, h), path
        return self.writers[source]

    def snippet(self, snippet: Snippet) -> None:
        writer = self._writer(snippet.source, snippet.image)
        img = annotate(snippet, self.threshold)  # a file's name in the caption, not its whole path
        if (img.shape[1], img.shape[0]) != self.size[snippet.source]:
            img = cv2.resize(img, self.size[snippet.source])
        try:
            writer.write(img)
        except writer.errors as err:
            raise UserError(f"cannot write video {writer.path}: {_why(err)}") from None

    def close(self) -> None:
        for w in self.writers.values():
            try:
                w.close()
            except w.errors as err:  # e.g. a full disk: what was written before stays playable
                warn(f"cannot finish video {w.path}: {_why(err)}")


class DisplaySink(Sink):
    """`display://0` (`--show`): the annotated sampled frames in a window; q or Esc stops the run cleanly."""

    schemes = ("display",)
    accepts = "display://0 for a live window"

    def __init__(self, threshold: float, index: int = 0, name: str = "display://0"):
        self.threshold = threshold
        self.window = "stp-run" if index == 0 else f"stp-run {index}"
        self.target = f"display://{index}"
        try:
            cv2.namedWindow(self.window, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise UserError(
                f"{name} needs an OpenCV with GUI support and a display (pip's opencv-python-headless has none; "
                "install opencv-python, or write a video: --output out.mp4)"
            ) from None

    @classmethod
    def from_uri(cls, uri: str, ctx: OutputContext, name: str) -> DisplaySink:
        return cls(ctx.threshold, cls._index(uri, name), name)

    @classmethod
    def check(cls, uri: str, ctx: OutputContext, name: str) -> str | None:
        return f"display://{cls._index(uri, name)}"

    @staticmethod
    def _index(uri: str, name: str) -> int:
        index = uri.split("://", 1)[1].strip("/") if "://" in uri else "0"
        if not index.isdigit():
            raise UserError(f"{name}: the display is a number (display://0)")
        return int(index)

    def snippet(self, snippet: Snippet) -> None:
        cv2.imshow(self.window, annotate(snippet, self.threshold, caption(snippet.event, self.threshold,
                                                                          snippet.source)))  # fmt: skip
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.stop_requested = True

    def close(self) -> None:
        with contextlib.suppress(cv2.error):  # the user may have closed it already
            cv2.destroyWindow(self.window)


from .mqtt import MqttSink  # noqa: E402 - it subclasses Sink (paho is imported when one opens)

OUTPUTS: tuple[type[Sink], ...] = (JsonLinesSink, VideoSink, DisplaySink, MqttSink)  # a new kind of output: add it here


def accepted_outputs() -> str:
    """What --output accepts, for error messages (from OUTPUTS, so a new kind names itself)."""
    return "; ".join(kind.accepts for kind in OUTPUTS)


def _path(uri: str) -> str:
    return unquote(uri[len("file://") :]) if uri.lower().startswith("file://") else uri


@dataclass(frozen=True)
class Output:
    """An output as the user spelled it: a URI, or a path bound to one kind (`--events X` is JSON Lines whatever
    X ends with) under the flag `name` that error messages quote."""

    uri: str
    kind: type[Sink] | None = None
    name: str | None = None


def resolve_output(uri: str, *, kind: type[Sink] | None = None, name: str | None = None) -> tuple[type[Sink], str, str]:
    """(kind, URI, name) for an output URI: its Sink class (`kind` skips the choice by scheme or suffix), the URI
    stripped, and how errors name it; UserError for an output no Sink takes. Opens nothing."""
    text, name = uri.strip(), name or redact(uri)
    if not text:
        raise UserError("empty output URI")
    if kind is not None:
        return kind, text, name
    m = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*)://", text)
    scheme = m.group(1).lower() if m else ""
    if scheme and scheme != "file":
        for candidate in OUTPUTS:
            if scheme in candidate.schemes:
                return candidate, text, name
        raise UserError(f"{name}: unknown output type {scheme + '://'!r}; use {accepted_outputs()}")
    suffix = Path(_path(text)).suffix.lower()
    for candidate in OUTPUTS:
        if text in candidate.names or (suffix and suffix in candidate.suffixes):
            return candidate, text, name
    what = f"suffix {suffix!r}" if suffix else "no suffix"
    raise UserError(f"{name}: unknown output ({what}); use {accepted_outputs()}")


def open_output(uri: str, ctx: OutputContext | None = None, *, kind: type[Sink] | None = None,
                name: str | None = None) -> Sink:  # fmt: skip
    """The Sink an output URI names (the module docstring); `kind` skips the choice by scheme or suffix."""
    kind, text, name = resolve_output(uri, kind=kind, name=name)
    return kind.from_uri(text, ctx or OutputContext(), name)


def _resolved(out: str | Output | Sink) -> Sink | tuple[type[Sink], str, str]:
    if isinstance(out, Sink):
        return out
    if isinstance(out, Output):
        return resolve_output(out.uri, kind=out.kind, name=out.name)
    return resolve_output(out)


def check_outputs(outputs: Sequence[str | Output | Sink], ctx: OutputContext | None = None) -> None:
    """UserError for the first output that cannot be opened (unknown, a folder missing or read-only, a video
    encoder that does not open) or a target given twice, without creating or truncating any file the user keeps:
    what stp-run calls before it opens a source."""
    ctx = ctx or OutputContext()
    targets: list[str] = []
    for out in outputs:
        r = _resolved(out)
        target = r.target if isinstance(r, Sink) else r[0].check(r[1], ctx, r[2])
        if target is not None and target in targets:
            raise UserError(f"output {target} given twice")
        targets += [target] if target is not None else []


def open_outputs(outputs: Sequence[str | Output | Sink], ctx: OutputContext | None = None, *,
                 default_events: str | None = None) -> list[Sink]:  # fmt: skip
    """All outputs or none (those opened are closed when one fails); the same target twice is refused.

    The outputs that truncate nothing (videos, which check their encoder as they open, and windows) are opened
    before the JSON Lines files, so an unusable video never costs an existing events file; the list keeps the
    given order. `default_events`: where the JSON Lines events go when no output takes them (stp-run: `-`).
    """
    ctx = ctx or OutputContext()
    opened: dict[int, Sink] = {}
    try:
        resolved = [_resolved(out) for out in outputs]
        for last in (False, True):  # JSON Lines last
            for i, r in enumerate(resolved):
                if isinstance(r, Sink) or issubclass(r[0], JsonLinesSink) != last:
                    continue
                opened[i] = r[0].from_uri(r[1], ctx, r[2])
        sinks = [r if isinstance(r, Sink) else opened[i] for i, r in enumerate(resolved)]
        targets = [s.target for s in sinks if s.target is not None]
        if len(set(targets)) < len(targets):
            raise UserError(f"output {next(t for t in targets if targets.count(t) > 1)} given twice")
        if default_events is not None and not any(isinstance(s, JsonLinesSink) for s in sinks):
            sinks.insert(0, JsonLinesSink(default_events))
    except BaseException:
        for s in [*(out for out in outputs if isinstance(out, Sink)), *opened.values()]:
            s.close()
        raise
    return sinks


class Status:
    """A one-line status on stderr, refreshed at most twice a second, and the run's summary in its place at the end."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.start = time.perf_counter()
        self.last = 0.0
        self.frames = 0
        self.width = 0  # characters of the status line now on stderr without its newline (0: none)

    def update(self, frames: int, stats: dict[str, int], latency: float, drops: int, force: bool = False,
               skipped_frames: int = 0, reconnects: str = "") -> None:  # fmt: skip
        """`skipped_frames`: unreadable images the sources skipped (shown when there are any); `reconnects`: the
        live sources' reconnects and states, as the pipeline words them (shown when given)."""
        self.frames += frames
        now = time.perf_counter()
        if self.quiet or (not force and now - self.last < 0.5):
            return
        self.last = now
        dt = max(now - self.start, 1e-9)
        batch = stats["crops"] / max(stats["encoder_calls"], 1)
        skipped = stats.get("gated_crops", 0)
        gated = f"gated {skipped / max(1, skipped + stats['crops']):.0%} | " if skipped else ""
        text = (
            f"stp-run: {self.frames} frames {self.frames / dt:.1f} fps in | {stats['sampled'] / dt:.2f} sampled/s | "
            f"batch {batch:.0f} | {gated}latency {latency:.2f}s | alarms {stats['alarms']} | drops {drops}"
            f"{f' | skipped {skipped_frames}' if skipped_frames else ''}{f' | {reconnects}' if reconnects else ''}   "
        )
        print("\r" + text, end="\n" if force else "", file=sys.stderr, flush=True)
        self.width = 0 if force else len(text)
        status_line_open(not force)  # a warning printed now starts on a line of its own

    def finish(self, lines: Sequence[str]) -> None:
        """The run's summary, in place of the status line: on a terminal the refreshed line gives way to it, so a
        run ends with its summary alone (elsewhere the status line is ended first)."""
        if self.quiet:
            return
        if self.width:
            if getattr(sys.stderr, "isatty", lambda: False)():
                print("\r" + " " * self.width, end="\r", file=sys.stderr, flush=True)  # blanked, the summary on it
            else:
                print(file=sys.stderr, flush=True)  # a log keeps the last status line, ended
            self.width = 0
            status_line_open(False)
        for line in lines:
            inform(line)


def summary_lines(report: Sequence[Mapping[str, Any]], stats: Mapping[str, int], seconds: float,
                  unencoded: int = 0) -> list[str]:  # fmt: skip
    """stp-run's last words: one line for one source (how it ended, frames, snippets, alarms, wall time,
    throughput); with several, one line per source and a line of totals."""

    def source(r: Mapping[str, Any]) -> str:
        counts = f"{r['frames']} frames"
        if r["live"]:
            counts += f", {r['reconnects']} reconnect{'s' * (r['reconnects'] != 1)}, {r['dropped']} dropped"
        return f"{r['source']}: {counts}; {r['end']}{': ' + r['error'] if r['error'] else ''}"

    frames, alarms = int(stats.get("frames", 0)), int(stats.get("alarms", 0))
    rate = f"{frames / seconds:.1f} frames/s" if seconds > 0 else "- frames/s"
    work = f"{stats.get('snippets', 0)} snippets, {alarms} alarm{'s' * (alarms != 1)} in {seconds:.1f} s ({rate})"
    if len(report) == 1:
        lines = [f"summary: {source(report[0])}; {work}"]
    else:
        lines = [*(f"summary: {source(r)}" for r in report), f"summary: {len(report)} sources: {frames} frames, {work}"]
    if unencoded:
        lines.append(f"summary: {unencoded} frames read while the encoder was unreachable were not scored")
    return lines
