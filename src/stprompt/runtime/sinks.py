"""Where stp-run's results go: outputs named by URIs, as sources are (jetson-inference's videoOutput convention).

- `events.jsonl` (any path ending .jsonl, .json or .ndjson) or `-` (stdout): the JSON Lines events
- a video path (.mp4, .avi, .mkv, .mov): the annotated sampled frames, one file per source when several
- `display://0`: a live window with the annotated frames (q or Esc stops the run)

Every output is a Sink: it gets each batch's events (`write`) and each scored snippet with its frame, heat map and
boxes (`snippet`). A new kind of output is one Sink subclass listed in OUTPUTS; `open_output` picks it by scheme
or suffix. The status line on stderr lives here too.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote

import cv2
import numpy as np

from ..draw import RED, draw_boxes, draw_score_bar, overlay_heat
from ..errors import UserError
from .sources import redact

if TYPE_CHECKING:
    from .detector import Snippet
    from .sources import Source


@dataclass(frozen=True)
class OutputContext:
    """What an output needs to know about the run it records: sampled frames per second (the annotated video's
    frame rate), the alarm threshold the score bar marks, and whether several sources share the output."""

    fps: float = 25.0
    threshold: float = 0.5
    several: bool = False

    @classmethod
    def for_run(cls, sources: Sequence[Source], stride: int, threshold: float) -> OutputContext:
        """The first source's frame rate over the stride: one video frame per sampled frame."""
        return cls((sources[0].fps or 25.0) / stride if sources else 25.0, threshold, len(sources) > 1)


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

    def write(self, events: list[dict[str, Any]]) -> None:
        """A batch of events (frame and alarm), in the order the detector emitted them."""

    def snippet(self, snippet: Snippet) -> None:
        """A scored snippet with its frame, and when alarmed its heat map and boxes."""

    def close(self) -> None:
        """Flush and release; called once when the run ends, however it ends."""


def annotate(snippet: Snippet, threshold: float, text: str) -> np.ndarray:
    """The frame a person looks at, for the video file and the live window alike: the heat map on alarms, red
    boxes, and the score bar (its threshold mark and `text`)."""
    img = snippet.image.copy() if snippet.heat is None else overlay_heat(snippet.image, snippet.heat)
    if snippet.boxes is not None:
        draw_boxes(img, snippet.boxes, RED)
    draw_score_bar(img, snippet.event["score"], threshold, text)
    return img


class JsonLinesSink(Sink):
    """One JSON object per line, flushed per batch: the file stays valid JSON Lines whenever the run stops."""

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

    def write(self, events: list[dict[str, Any]]) -> None:
        for e in events:
            self.fh.write(json.dumps(e, separators=(",", ":")) + "\n")
            self.count += 1
        if events:
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not sys.stdout:
            self.fh.close()


EventWriter = JsonLinesSink  # the name it had before outputs were URIs


class VideoSink(Sink):
    """The annotated sampled frames of each source (score bar, heat overlay and boxes on alarms), mp4v."""

    suffixes = (".mp4", ".avi", ".mkv", ".mov")
    accepts = "a video file (.mp4, .avi, .mkv, .mov) for the annotated frames"

    def __init__(self, path: str, fps: float, threshold: float, several: bool = False):
        self.path = Path(path)
        self.target = str(self.path.resolve())
        self.fps = max(fps, 1.0)
        self.threshold = threshold
        self.several = several
        self.writers: dict[str, cv2.VideoWriter] = {}
        self.size: dict[str, tuple[int, int]] = {}

    @classmethod
    def from_uri(cls, uri: str, ctx: OutputContext, name: str) -> VideoSink:
        return cls(_path(uri), ctx.fps, ctx.threshold, several=ctx.several)

    def _writer(self, source: str, image: np.ndarray) -> cv2.VideoWriter:
        if source not in self.writers:
            path = self.path
            if self.several:
                safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in source)
                path = self.path.with_name(f"{self.path.stem}.{safe}{self.path.suffix or '.mp4'}")
            h, w = image.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not writer.isOpened():
                raise UserError(f"cannot write video {path} (mp4v)")
            self.writers[source], self.size[source] = writer, (w, h)
        return self.writers[source]

    def snippet(self, snippet: Snippet) -> None:
        writer = self._writer(snippet.source, snippet.image)
        e = snippet.event
        name = e["source"].rstrip("/").rsplit("/", 1)[-1]  # a file's name, not its whole path
        img = annotate(snippet, self.threshold, f"{name} frame {e['frame']} {e['score']:.2f} {e['class']}")
        if (img.shape[1], img.shape[0]) != self.size[snippet.source]:
            img = cv2.resize(img, self.size[snippet.source])
        writer.write(img)

    def close(self) -> None:
        for w in self.writers.values():
            w.release()


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
        index = uri.split("://", 1)[1].strip("/") if "://" in uri else "0"
        if not index.isdigit():
            raise UserError(f"{name}: the display is a number (display://0)")
        return cls(ctx.threshold, int(index), name)

    def snippet(self, snippet: Snippet) -> None:
        cv2.imshow(self.window, annotate(snippet, self.threshold, f"{snippet.source} {snippet.event['score']:.2f}"))
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.stop_requested = True

    def close(self) -> None:
        with contextlib.suppress(cv2.error):  # the user may have closed it already
            cv2.destroyWindow(self.window)


OUTPUTS: tuple[type[Sink], ...] = (JsonLinesSink, VideoSink, DisplaySink)  # a new kind of output: add it here


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


def open_output(uri: str, ctx: OutputContext | None = None, *, kind: type[Sink] | None = None,
                name: str | None = None) -> Sink:  # fmt: skip
    """The Sink an output URI names (the module docstring); `kind` skips the choice by scheme or suffix."""
    ctx = ctx or OutputContext()
    text, name = uri.strip(), name or redact(uri)
    if not text:
        raise UserError("empty output URI")
    if kind is not None:
        return kind.from_uri(text, ctx, name)
    m = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*)://", text)
    scheme = m.group(1).lower() if m else ""
    if scheme and scheme != "file":
        for candidate in OUTPUTS:
            if scheme in candidate.schemes:
                return candidate.from_uri(text, ctx, name)
        raise UserError(f"{name}: unknown output type {scheme + '://'!r}; use {accepted_outputs()}")
    suffix = Path(_path(text)).suffix.lower()
    for candidate in OUTPUTS:
        if text in candidate.names or (suffix and suffix in candidate.suffixes):
            return candidate.from_uri(text, ctx, name)
    what = f"suffix {suffix!r}" if suffix else "no suffix"
    raise UserError(f"{name}: unknown output ({what}); use {accepted_outputs()}")


def open_outputs(outputs: Sequence[str | Output | Sink], ctx: OutputContext | None = None, *,
                 default_events: str | None = None) -> list[Sink]:  # fmt: skip
    """All outputs or none (those opened are closed when one fails); the same target twice is refused.

    `default_events`: where the JSON Lines events go when no output takes them (stp-run: `-`, stdout).
    """
    sinks: list[Sink] = []
    try:
        for out in outputs:
            if isinstance(out, Sink):
                sink = out
            elif isinstance(out, Output):
                sink = open_output(out.uri, ctx, kind=out.kind, name=out.name)
            else:
                sink = open_output(out, ctx)
            sinks.append(sink)
            if sink.target is not None and sum(s.target == sink.target for s in sinks) > 1:
                raise UserError(f"output {sink.target} given twice")
        if default_events is not None and not any(isinstance(s, JsonLinesSink) for s in sinks):
            sinks.insert(0, JsonLinesSink(default_events))
    except BaseException:
        for s in sinks:
            s.close()
        raise
    return sinks


class Status:
    """A one-line status on stderr, refreshed at most twice a second."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.start = time.perf_counter()
        self.last = 0.0
        self.frames = 0

    def update(self, frames: int, stats: dict[str, int], latency: float, drops: int, force: bool = False) -> None:
        self.frames += frames
        now = time.perf_counter()
        if self.quiet or (not force and now - self.last < 0.5):
            return
        self.last = now
        dt = max(now - self.start, 1e-9)
        batch = stats["crops"] / max(stats["encoder_calls"], 1)
        skipped = stats.get("gated_crops", 0)
        gated = f"gated {skipped / max(1, skipped + stats['crops']):.0%} | " if skipped else ""
        print(
            f"\rstp-run: {self.frames} frames {self.frames / dt:.1f} fps in | {stats['sampled'] / dt:.2f} sampled/s | "
            f"batch {batch:.0f} | {gated}latency {latency:.2f}s | alarms {stats['alarms']} | drops {drops}   ",
            end="\n" if force else "",
            file=sys.stderr,
            flush=True,
        )
