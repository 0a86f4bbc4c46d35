"""stp-run's scheduler as one object, so the CLI, the Python API and stp-bench run the same loop.

Sources -> frames of all streams cut into batches of at most `sampled_per_batch` sampled frames (one encoder call
of up to max_batch crops) -> Detector -> events and scored snippets fanned out to every Sink -> status line.

Files are read as fast as the detector goes and never drop a frame. Live sources never block the others: each is
polled for LIVE_WAIT_S, and a batch is cut as soon as a round over the streams has given any frame (latency over
batch size); the sources themselves drop what the pipeline was too slow for. A stop (`stop()`: a signal handler,
another thread, or a sink such as the live window asking) ends reading at the next batch boundary and still
scores every snippet already read: each open stream is finished with its true end. Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..sampling import is_sampled

if TYPE_CHECKING:
    from .detector import Detector, Snippet
    from .frames import Frame
    from .sinks import Sink, Status
    from .sources import Source

LIVE_WAIT_S = 0.02  # how long one live source may hold up the others in a round of reads


def gate_thresholds(gate: float | str, sources: Sequence[Any]) -> tuple[float, dict[str, float]]:
    """(default threshold, per-source thresholds) for --gate: 'auto' gates live sources only."""
    from .gating import LIVE_DEFAULT

    if gate != "auto":
        return float(gate), {}
    return 0.0, {s.id: LIVE_DEFAULT if s.live else 0.0 for s in sources}


def open_sources(sources: Sequence[str | Source]) -> list[Source]:
    """Open URIs (Source objects pass through) with stp-run's ids: the URI with credentials redacted, prefixed
    `i:` when there are several. All or none: those opened are closed when one fails."""
    from .sources import Source, open_source, redact

    opened: list[Source] = []
    try:
        for i, src in enumerate(sources):
            if isinstance(src, Source):
                opened.append(src)
                continue
            sid = redact(src) if len(sources) == 1 else f"{i}:{redact(src)}"
            opened.append(open_source(src, source_id=sid))
    except BaseException:
        for s in opened:
            s.close()
        raise
    return opened


def build_pipeline(backend, manifest, sources: Sequence[str | Source], outputs: Sequence[Any] = (), *,
                   lookahead: int | None = None, alarm=None, localize=None, max_batch: int = 256,
                   gate: float | str = "auto", status: Status | None = None, default_events: str | None = None,
                   on_frame: Callable[[str, Frame], None] | None = None) -> Pipeline:  # fmt: skip
    """Sources (URIs or Source objects), outputs (URIs or Sinks), a Detector and the Pipeline over them: what
    stp-run and `api.open_pipeline` both assemble. All or nothing: what was opened is closed when a part fails."""
    from .detector import AlarmSettings, Detector
    from .sinks import OutputContext, open_outputs

    alarm = alarm or AlarmSettings.from_thresholds(manifest.thresholds)
    opened = open_sources(sources)
    sinks: list[Sink] = []
    try:
        ctx = OutputContext.for_run(opened, manifest.stride, alarm.on)
        sinks = open_outputs(outputs, ctx, default_events=default_events)
        threshold, per_source = gate_thresholds(gate, opened)
        detector = Detector(backend, manifest, lookahead=lookahead, alarm=alarm, localize=localize,
                            max_batch=max_batch, gate=threshold, gate_per_source=per_source)  # fmt: skip
        return Pipeline(detector, opened, sinks, status=status, on_frame=on_frame)
    except BaseException:
        for s in opened:
            s.close()
        for sink in sinks:
            sink.close()
        raise


class Pipeline:
    """Run a Detector over sources into sinks; owns (and closes) both.

    `run()` goes to the end of every source (or a stop) and returns the counters; iterating (`events()`) yields
    each event once the sinks have it. `on_frame(source_id, frame)` is called for every frame once the detector
    has processed it (stp-bench times the pipeline with it). `sampled_per_batch` defaults to what fills the
    detector's max_batch; `max_frames` ends each source after that many frames.
    """

    def __init__(
        self,
        detector: Detector,
        sources: Sequence[Source],
        sinks: Sequence[Sink] = (),
        *,
        status: Status | None = None,
        on_frame: Callable[[str, Frame], None] | None = None,
        sampled_per_batch: int | None = None,
        max_frames: int | None = None,
    ):
        ids = [s.id for s in sources]
        if not ids:
            raise UserError("no source to run")
        if len(set(ids)) != len(ids):
            raise UserError(f"two sources share an id: {', '.join(sorted({i for i in ids if ids.count(i) > 1}))}")
        if sampled_per_batch is None:
            from .. import windows

            sampled_per_batch = max(1, detector.max_batch // windows.crops_per_frame(pre=detector.preprocess))
        self.detector = detector
        self.sources = list(sources)
        self.sinks = list(sinks)
        self.status = status
        self.on_frame = on_frame
        self.sampled_per_batch = max(1, int(sampled_per_batch))
        self.max_frames = max_frames
        self.interrupted = False  # the run was stopped before every source had ended
        self.frames = 0  # frames read, all sources
        self.events_out = 0  # events handed to the sinks
        self._stop = False
        self._started = False
        self._closed = False
        self._read: dict[str, int] = dict.fromkeys(ids, 0)
        self._chained = detector.on_snippet
        detector.on_snippet = self._snippet

    # -- public ---------------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        """The detector's counters, plus frames read, frames the live sources dropped and events written."""
        return {**self.detector.stats, "frames": self.frames, "dropped": self._drops(), "events": self.events_out}

    @property
    def stopping(self) -> bool:
        """True once stop() was called (or a sink asked to stop)."""
        return self._stop

    def run(self) -> dict[str, int]:
        """Run to the end of every source, or until stop(); the counters (`stats`)."""
        for _ in self.events():
            pass
        return self.stats

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.events()

    def events(self) -> Iterator[dict[str, Any]]:
        """Run, yielding each event (the dicts the JSON Lines sink writes) after the sinks got it.

        Runs once; closes sources and sinks when it ends, is closed early, or fails.
        """
        if self._started:
            raise RuntimeError("a Pipeline runs once")
        self._started = True
        active = list(self.sources)
        try:
            while active and not self._stop:
                chunk: list[tuple[str, Frame]] = []
                sampled, read, t0 = 0, 0, time.perf_counter()
                live = any(s.live for s in active)
                while active and not self._stop and sampled < self.sampled_per_batch and not (live and chunk):
                    for src in list(active):
                        frame = self._next(src)
                        if frame is None and src.live and not src.ended and not self._at_limit(src):
                            continue  # nothing new from this camera yet: serve the next stream
                        if frame is None:
                            yield from self._process(chunk)
                            chunk = []
                            yield from self._write(self.detector.finish(src.id))
                            active.remove(src)
                            continue
                        chunk.append((src.id, frame))
                        read += 1
                        sampled += is_sampled(frame.index, self.detector.stride, self.detector.offset)
                yield from self._process(chunk)
                self.frames += read
                if any(s.stop_requested for s in self.sinks):
                    self.stop()
                self._update_status(read, time.perf_counter() - t0)
            self.interrupted = bool(active)
            for src in active:  # stopped: score every snippet already read
                yield from self._write(self.detector.finish(src.id))
            self._update_status(0, 0.0, force=True)
        except KeyboardInterrupt:  # a hard stop (a second Ctrl-C): no more scoring
            self.interrupted = True
            self._update_status(0, 0.0, force=True)
            raise
        finally:
            self.close()

    def stop(self) -> None:
        """Stop reading at the next batch boundary; the snippets already read are still scored. Only sets a flag:
        safe from a signal handler or another thread."""
        self._stop = True

    def close(self) -> None:
        """Release sources and sinks (once). After a run, or to abandon one that never started."""
        if self._closed:
            return
        self._closed = True
        self.detector.on_snippet = self._chained
        for s in self.sources:
            s.close()
        for sink in self.sinks:
            sink.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------------
    def _at_limit(self, src: Source) -> bool:
        return self.max_frames is not None and self._read[src.id] >= self.max_frames

    def _next(self, src: Source) -> Frame | None:
        """The next frame of `src`; None at its end or its frame limit, or (live) when none came in time."""
        if self._at_limit(src):
            return None
        frame = src.read(timeout=LIVE_WAIT_S) if src.live else src.read()
        if frame is not None:
            self._read[src.id] += 1
        return frame

    def _process(self, chunk: list[tuple[str, Frame]]) -> Iterator[dict[str, Any]]:
        """One detector call over a batch; its events reach the sinks before on_frame and the caller see them."""
        if not chunk:
            return
        events = self._write(self.detector.process(chunk))
        if self.on_frame is not None:
            for sid, frame in chunk:
                self.on_frame(sid, frame)
        yield from events

    def _write(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for sink in self.sinks:
            sink.write(events)
        self.events_out += len(events)
        return events

    def _snippet(self, snippet: Snippet) -> None:
        for sink in self.sinks:
            sink.snippet(snippet)
        if self._chained is not None:
            self._chained(snippet)

    def _drops(self) -> int:
        return sum(int(s.stats.get("dropped", 0)) for s in self.sources)

    def _update_status(self, frames: int, latency: float, force: bool = False) -> None:
        if self.status is not None:
            self.status.update(frames, self.detector.stats, latency, self._drops(), force=force)
