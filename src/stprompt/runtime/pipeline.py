"""stp-run's scheduler as one object, so the CLI, the Python API and stp-bench run the same loop.

Sources -> frames of all streams cut into batches of at most `sampled_per_batch` sampled frames (one encoder call
of up to max_batch crops) -> Detector -> events and scored snippets fanned out to every Sink -> status line.

The host keeps the encoder busy (a GPU appliance's host, not its encoder, is the bottleneck): each file or folder
is decoded ahead on a thread of its own (`prefetch`; frames that will not be sampled skip their colour conversion
and copy), the sampled frames of a batch are cut into windows in parallel (`parallel.window_pool`), and the
encoder runs on a thread of its own (`parallel.EncoderThread`): while it encodes one batch, this loop reads and
prepares the next and scores the one before (SA2, head, alarms, localization, sinks). Results are those of the
sequential loop: the same batches, scored in order. A stop therefore may find one more batch already read; it is
scored too.

Files are read as fast as the detector goes and never drop a frame. Live sources never block the others: each is
polled for LIVE_WAIT_S, and a batch is cut as soon as a round over the streams has given any frame (latency over
batch size); the sources themselves drop what the pipeline was too slow for. A stop (`stop()`: a signal handler,
another thread, or a sink such as the live window asking) ends reading at the next batch boundary and still
scores every snippet already read: each open stream is finished with its true end; close() on the iterating
thread is such a stop too. A live source's state changes (down / up, `source` events) reach every sink and one
stderr line each; a down ends that stream as an end of file does (a reconnect starts a new one), and `report()`
tells per source how it ended. A remote encoder (Triton) reports its outages as `engine` events, written the
moment they happen (from the encoder thread); while it is down the encoder call waits (files wait, live sources
drop frames), and when it stays down (its reconnect policy gave up) the run stops as at a stop, scores what was
encoded and raises `EncoderUnavailable` at the end. A `RunObserver` (stp-run --metrics: `metrics.Metrics`) watches
the run from inside: frames as they are read and events as the sinks get them. Torch-free.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..errors import UserError, inform
from ..sampling import is_sampled
from .defaults import LIVE_LOOKAHEAD  # defined there: stp-run --help reads it without NumPy
from .parallel import EncoderThread
from .stageclock import NO_CLOCK, StageClock

if TYPE_CHECKING:
    from .detector import Batch, Detector, Snippet
    from .frames import Frame
    from .sinks import Sink, Status
    from .sources import Source

LIVE_WAIT_S = 0.02  # how long one live source may hold up the others in a round of reads
QUIET_ROUNDS_S = 0.5  # while no live source gives a frame (all down), the status line is refreshed this often


class RunObserver:
    """Watches a Pipeline from inside (the Prometheus metrics, `metrics.Metrics`). Every method does nothing by
    default. All but close() run on the thread running the pipeline (`write` with a remote encoder's `engine` events
    on the encoder thread, never at the same time as another `write`), `frame` once per frame read: keep them quick.
    """

    def attach(self, pipeline: Pipeline) -> None:
        """The pipeline it watches, once built (its engine is loaded, its sources open)."""

    def started(self) -> None:
        """The run starts reading."""

    def frame(self, source: str, index: int) -> None:
        """A frame of `source` (its id) was read; `index` is the frame's, as events name it."""

    def write(self, events: list[dict[str, Any]]) -> None:
        """Events the sinks just got: frame, alarm, source and engine events, in order."""

    def ended(self) -> None:
        """The run ended (every source ended, a stop, or an error); `Pipeline.stats` and `report()` are final."""

    def close(self) -> None:
        """Release what it holds (the metrics server stops); called once, by `Pipeline.close()` (or its `with`)."""


def lookaheads(lookahead: int | str | None, sources: Sequence[Any]) -> tuple[int | None, dict[str, int]]:
    """(default, per-source) lookahead for the Detector: 'auto' = exact (None) for files and folders and
    LIVE_LOOKAHEAD for live sources; 'exact' or None = the bundle's exact value everywhere; a number everywhere."""
    if lookahead == "auto":
        return None, {s.id: LIVE_LOOKAHEAD for s in sources if s.live}
    return (None if lookahead in (None, "exact") else int(lookahead)), {}


def gate_thresholds(gate: float | str, sources: Sequence[Any]) -> tuple[float, dict[str, float]]:
    """(default threshold, per-source thresholds) for --gate: 'auto' gates live sources only."""
    from .gating import LIVE_DEFAULT

    if gate != "auto":
        return float(gate), {}
    return 0.0, {s.id: LIVE_DEFAULT if s.live else 0.0 for s in sources}


def open_sources(sources: Sequence[str | Source], reconnect: int | None = None) -> list[Source]:
    """Open URIs (Source objects pass through) with stp-run's ids: the URI with credentials redacted, prefixed
    `i:` when there are several; `reconnect`: the live sources' policy (None = forever, N attempts, 0 = never;
    `sources.open_source`). All or none: those opened are closed when one fails."""
    from .sources import Source, open_source, redact

    opened: list[Source] = []
    try:
        for i, src in enumerate(sources):
            if isinstance(src, Source):
                opened.append(src)
                continue
            sid = redact(src) if len(sources) == 1 else f"{i}:{redact(src)}"
            opened.append(open_source(src, source_id=sid, reconnect=reconnect))
    except BaseException:
        for s in opened:
            s.close()
        raise
    return opened


def build_pipeline(backend, manifest, sources: Sequence[str | Source], outputs: Sequence[Any] = (), *,
                   lookahead: int | str | None = "auto", alarm=None, localize=None, max_batch: int = 256,
                   gate: float | str = "auto", gate_refresh: int | None = None, status: Status | None = None,
                   default_events: str | None = None, on_frame: Callable[[str, Frame], None] | None = None,
                   reconnect: int | None = None, observer: RunObserver | None = None) -> Pipeline:  # fmt: skip
    """Sources (URIs or Source objects), outputs (URIs or Sinks), a Detector and the Pipeline over them: what
    stp-run and `api.open_pipeline` both assemble. All or nothing: what was opened is closed when a part fails
    (an `observer` too). `gate_refresh`: re-encode gated windows at least every N sampled frames (None =
    `gating.REFRESH_DEFAULT`). `observer`: watches the run (stp-run --metrics), closed with the pipeline."""
    from .detector import AlarmSettings, Detector
    from .gating import REFRESH_DEFAULT
    from .sinks import OutputContext, check_outputs, open_outputs

    alarm = alarm or AlarmSettings.from_thresholds(manifest.thresholds)
    try:  # every output (a video's folder and encoder too) before a source is opened or an events file truncated
        check_outputs(outputs)
    except BaseException:
        # Source and Sink objects handed in are ours to close, as below, and so is the observer
        for given in (*sources, *outputs, observer):
            if callable(getattr(given, "close", None)):
                given.close()
        raise
    opened = open_sources(sources, reconnect)
    sinks: list[Sink] = []
    try:
        ctx = OutputContext.for_run(opened, manifest.stride, alarm.on)
        sinks = open_outputs(outputs, ctx, default_events=default_events)
        threshold, per_source = gate_thresholds(gate, opened)
        default_lookahead, lookahead_per_source = lookaheads(lookahead, opened)
        detector = Detector(backend, manifest, lookahead=default_lookahead, lookahead_per_source=lookahead_per_source,
                            alarm=alarm, localize=localize, max_batch=max_batch, gate=threshold,
                            gate_per_source=per_source,
                            gate_refresh=REFRESH_DEFAULT if gate_refresh is None else gate_refresh)  # fmt: skip
        return Pipeline(detector, opened, sinks, status=status, on_frame=on_frame, observer=observer)
    except BaseException:
        for s in opened:
            s.close()
        for sink in sinks:
            sink.close()
        if observer is not None:
            observer.close()
        raise


class Pipeline:
    """Run a Detector over sources into sinks; owns (and closes) both.

    `run()` goes to the end of every source (or a stop) and returns the counters; iterating (`events()`) yields
    each event once the sinks have it. `on_frame(source_id, frame)` is called for every frame once the detector
    has processed it (stp-bench times the pipeline with it). `sampled_per_batch` defaults to what fills the
    detector's max_batch; `max_frames` ends each source after that many frames. `observer` (a RunObserver, e.g.
    the metrics server) outlives the run: it is closed by close() or the `with` block, not when run() returns.
    `clock` (stp-bench): a `stageclock.StageClock` that collects the host CPU time of each stage.
    `decode_all`: give every frame of a video file its pixels; by default (None) only when `on_frame` is given (it
    may look at them): otherwise frames that will not be sampled come without (`Frame.image` None), which spares
    their colour conversion and copy.
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
        observer: RunObserver | None = None,
        clock: StageClock | None = None,
        decode_all: bool | None = None,
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
        self._t0 = 0.0  # when the run started reading: the summary's wall time
        self._released = False
        self._run_gen: Iterator[dict[str, Any]] | None = None  # the running events() generator, once it started
        self._owner: int | None = None  # the thread iterating it
        self._read: dict[str, int] = dict.fromkeys(ids, 0)
        self._endings: dict[str, str] = {}  # source id -> how it ended (report())
        self._states: dict[str, str] = {}  # source id -> its last `source` event's state (live sources)
        self.unencoded = 0  # frames read but never encoded: the encoder server was down when the run stopped
        self.engine_error: Exception | None = None  # a remote encoder that stayed unreachable (raised at the end)
        self._engine_events: list[dict[str, Any]] = []  # written during an encoder call, yielded after it
        self._encoder: EncoderThread | None = None  # the run's encoder calls, beside the host work (once running)
        self._inflight: tuple[list[tuple[str, Frame]], Batch, Future[Any]] | None = None  # handed over, not scored
        self._encoder_failed = False  # a remote encoder stayed unreachable: batches queued behind are not sent
        self._lock = threading.RLock()  # sinks and observer: engine events come from the encoder thread
        self._chained = detector.on_snippet
        detector.on_snippet = self._snippet
        bind_run = getattr(detector.backend, "bind_run", None)  # a remote encoder's down / up events, and its waits
        if bind_run is not None:  # end when the run stops
            bind_run(self._engine_event, lambda: self._stop or self._released)
        self.clock: StageClock | Any = NO_CLOCK if clock is None else clock  # stp-bench: host CPU per stage
        # video files skip the pixels of frames that will not be sampled, unless someone may look at them
        self.decode_all = on_frame is not None if decode_all is None else bool(decode_all)
        self._readers: dict[str, Source] = {}  # files and folders read ahead on their own threads, once running
        detector.clock = self.clock
        self.observer = observer
        self._observer_closed = observer is None
        self._close_asked = False  # close() came while the run was going: the observer closes at its release
        if observer is not None:
            observer.attach(self)

    # -- public ---------------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        """The detector's counters, plus frames read, frames the live sources dropped, unreadable images skipped and
        events written."""
        return {**self.detector.stats, "frames": self.frames, "dropped": self._drops(), "skipped": self._skipped(),
                "unencoded": self.unencoded, "events": self.events_out}  # fmt: skip

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
        """Run, yielding each event (the dicts the JSON Lines sink writes) after the sinks got it: frame and alarm
        events, and the live sources' `source` events (state changes: down / up).

        Runs once; releases sources and sinks when it ends or fails. Stopping it early: stop() or close().
        """
        holder: list[Iterator[dict[str, Any]]] = []
        gen = self._events(holder)
        holder.append(gen)
        return gen

    def report(self) -> list[dict[str, Any]]:
        """Per source: `source`, `live`, `frames` read, `dropped`, `reconnects`, `end` (how it ended: "ended" at
        its end, "failed" with the reason in `error` (a live source that gave up), "stopped" by a stop or close,
        "frame limit", "aborted" by a second signal; "running" before the end)."""
        return [
            {"source": s.id, "live": bool(s.live), "frames": self._read[s.id],
             "dropped": int(s.stats.get("dropped", 0)), "reconnects": int(s.stats.get("reconnects", 0)),
             "end": self._endings.get(s.id, "running"),
             "error": getattr(s, "error", None) if self._endings.get(s.id) == "failed" else None}
            for s in self.sources
        ]  # fmt: skip

    def stop(self) -> None:
        """Stop reading at the next batch boundary; the snippets already read are still scored. Only sets a flag:
        safe from a signal handler or another thread."""
        self._stop = True

    def close(self) -> None:
        """End the run cleanly and release sources and sinks (once).

        Called on the thread iterating the run while it is paused (after a `break` out of `for event in
        pipeline`, or by `with` leaving the block), it is a stop: every stream is finished with its true end as
        at an end of file, so the sinks get the snippets already read (scored and flushed; the abandoned
        iterator yields nothing more), then everything is released. From another thread, or from a callback
        inside the run (a sink, on_frame), it only asks that stop (as stop()): the run then scores, flushes and
        releases by itself. Before a run, it only releases.
        """
        if self._released:
            self._close_observer()
            return
        gen = self._run_gen
        state = inspect.getgeneratorstate(gen) if gen is not None else None  # type: ignore[arg-type]
        if state == inspect.GEN_RUNNING or (state == inspect.GEN_SUSPENDED and threading.get_ident() != self._owner):
            self._close_asked = True
            self.stop()
            return
        if state == inspect.GEN_SUSPENDED:
            self.stop()
            for _ in gen:  # type: ignore[union-attr] - the rest of the run: finish the streams, then release
                pass
        self._release()
        self._close_observer()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        gen = self._run_gen  # an error or Ctrl-C inside the block is no clean stop: release without scoring
        if gen is not None and inspect.getgeneratorstate(gen) == inspect.GEN_SUSPENDED:  # type: ignore[arg-type]
            gen.close()  # type: ignore[attr-defined]
        self._release()
        self._close_observer()

    # -- the run --------------------------------------------------------------------------------------
    def _events(self, holder: list[Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        if self._started or self._released:
            raise RuntimeError("a Pipeline runs once")
        self._started = True
        self._t0 = time.perf_counter()
        self._run_gen, self._owner = holder[0], threading.get_ident()
        self._readers = {s.id: self._reader(s) for s in self.sources}
        self._encoder = self.detector.encoder_thread = EncoderThread()
        active = list(self.sources)
        observer = self.observer
        try:  # from here on the finally below stops the readers and the encoder thread, whatever fails
            if observer is not None:
                observer.started()
            while active and not self._stop:
                chunk: list[tuple[str, Frame]] = []
                changes: list[tuple[Source, dict[str, Any]]] = []  # live sources' state changes in this batch
                sampled, read, t0 = 0, 0, time.perf_counter()
                live = any(s.live for s in active)
                while (active and not self._stop and sampled < self.sampled_per_batch
                       and not (live and (chunk or changes))):  # fmt: skip
                    for src in list(active):
                        if change := self._changes_of(src):  # applied before its next frame is read: a down
                            changes += change  # ends the stream, frames after a reconnect start a new one
                            continue
                        frame = self._next(src)
                        if frame is None and src.live and not src.ended and not self._at_limit(src):
                            continue  # nothing new from this camera yet (or it is down): serve the next stream
                        if frame is None:
                            yield from self._submit(chunk)
                            yield from self._drain()  # every batch holding its frames is scored before its end
                            chunk = []
                            changes += self._changes_of(src)  # its last ones (a live source that gave up)
                            yield from self._write(self.detector.finish(src.id))
                            self._endings[src.id] = self._ending(src)
                            active.remove(src)
                            continue
                        chunk.append((src.id, frame))
                        read += 1
                        if observer is not None:
                            observer.frame(src.id, frame.index)
                        sampled += is_sampled(frame.index, self.detector.stride, self.detector.offset)
                    if live and not chunk and time.perf_counter() - t0 >= QUIET_ROUNDS_S:
                        break  # no frame from any camera for a while (down, reconnecting): refresh the status line
                yield from self._submit(chunk)
                if changes:  # a state change follows the frames read before it: score those first
                    yield from self._drain()
                yield from self._apply(changes)
                self.frames += read
                if any(s.stop_requested for s in self.sinks):
                    self.stop()
                self._update_status(read, time.perf_counter() - t0)
            yield from self._drain()
            self.interrupted = bool(active)
            for src in active:  # stopped: score every snippet already read
                yield from self._apply(self._changes_of(src))
                yield from self._write(self.detector.finish(src.id))
                self._endings[src.id] = "stopped"
            self._summary()
            if self.engine_error is not None and getattr(self.engine_error, "gave_up", True):
                raise self.engine_error
        except KeyboardInterrupt:  # a hard stop (a second Ctrl-C): no more scoring
            self.interrupted = True
            for src in active:
                self._endings.setdefault(src.id, "aborted")
            self._summary()
            raise
        finally:
            self._release()

    def _release(self) -> None:
        """Release sources and sinks, once."""
        if self._released:
            return
        self._released = True
        self.detector.on_snippet = self._chained
        if self._encoder is not None:  # waits for a call in flight (a remote encoder waiting for its server gives
            self._encoder.close()  # up now): the backend is not closed under it
            self.detector.encoder_thread = self._encoder = None
        for s in self.sources:
            self._readers.get(s.id, s).close()  # a reader thread closes its source once it has stopped
        for sink in self.sinks:
            sink.close()
        if self.observer is not None and self._started:
            self.observer.ended()
        if self._close_asked:
            self._close_observer()

    def _close_observer(self) -> None:
        """Close the observer, once (the metrics server stops)."""
        if not self._observer_closed:
            self._observer_closed = True
            self.observer.close()  # type: ignore[union-attr]

    # -- internals ------------------------------------------------------------------------------------
    def _changes_of(self, src: Source) -> list[tuple[Source, dict[str, Any]]]:
        take = getattr(src, "take_events", None)  # Source objects of the caller's own may not have it
        return [(src, event) for event in take()] if take is not None else []

    def _apply(self, changes: list[tuple[Source, dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        """Live sources' state changes: one log line each and a `source` event to every sink. A source going down
        ends its stream there as an end of file does (the snippets read are scored, an alarm is closed); frames
        after a reconnect start a new one."""
        for src, event in changes:
            if event.get("state") == "down":
                yield from self._write(self.detector.finish(src.id))
            self._states[src.id] = str(event.get("state"))
            inform(f"source {src.id} {event.get('state')}: {event.get('reason')}")
            yield from self._write([event])

    def _ending(self, src: Source) -> str:
        if getattr(src, "error", None):
            return "failed"
        return "frame limit" if self._at_limit(src) else "ended"

    def _summary(self) -> None:
        """The run's summary on stderr in place of the status line, when it is shown (`sinks.summary_lines`: one
        line for one source: how it ended, frames, snippets, alarms, wall time, throughput)."""
        if self.status is None or getattr(self.status, "quiet", False):
            return
        from .sinks import summary_lines

        seconds = time.perf_counter() - self._t0
        self.status.finish(summary_lines(self.report(), self.stats, seconds, self.unencoded))

    def _reconnect_note(self) -> str:
        """The live sources' reconnects for the status line: `reconnects 2`, `reconnects 0:1 2:0 (down)`."""
        live = [(i, s) for i, s in enumerate(self.sources) if s.live]
        if not live:
            return ""

        def one(s: Source) -> str:
            down = " (down)" if self._states.get(s.id) == "down" else ""
            return f"{int(s.stats.get('reconnects', 0))}{down}"

        if len(self.sources) == 1:
            return f"reconnects {one(live[0][1])}"
        return "reconnects " + " ".join(f"{i}:{one(s)}" for i, s in live)

    def _at_limit(self, src: Source) -> bool:
        return self.max_frames is not None and self._read[src.id] >= self.max_frames

    def _reader(self, src: Source) -> Source:
        """What the run reads `src` through: files and folders on a reader thread of their own (`prefetch`), with
        pixels only for the frames it will sample unless `decode_all`; live and custom sources as they are."""
        from .prefetch import PrefetchSource, can_prefetch

        if src.live or not can_prefetch(src):
            return src
        stride, offset = self.detector.stride, self.detector.offset
        needed = None if self.decode_all else (lambda index: is_sampled(index, stride, offset))
        return PrefetchSource(src, needed, limit=self.max_frames, clock=self.clock)

    def _next(self, src: Source) -> Frame | None:
        """The next frame of `src`; None at its end or its frame limit, or (live) when none came in time."""
        if self._at_limit(src):
            return None
        if src.live:
            with self.clock("decode"):
                frame = src.read(timeout=LIVE_WAIT_S)
        else:
            frame = self._readers.get(src.id, src).read()
        if frame is not None:
            self._read[src.id] += 1
        return frame

    def _submit(self, chunk: list[tuple[str, Frame]]) -> Iterator[dict[str, Any]]:
        """Prepare `chunk`'s encoder batch and hand it to the encoder thread, then score the batch handed over
        before it while this one encodes: the next batch's decode, windows and gating, and the last one's SA2,
        head, localization and sinks all run beside the encoder, off its critical path."""
        if not chunk:  # nothing read (live sources all quiet): the batch in flight need not wait for more
            yield from self._drain()
            return
        batch = self.detector.prepare(chunk)
        if batch.sampled:
            future = self._encoder.submit(self._encode, batch)  # type: ignore[union-attr]
        else:  # no sampled frame (a live source's frame in between): no encoder call, no hand-off
            future = Future()
            future.set_result(self.detector.encode(batch))
        previous, self._inflight = self._inflight, (chunk, batch, future)
        if previous is not None:
            yield from self._score(*previous)

    def _drain(self) -> Iterator[dict[str, Any]]:
        """Score the batch in flight, if any: before a stream ends, a source changes state, or the run ends."""
        previous, self._inflight = self._inflight, None
        if previous is not None:
            yield from self._score(*previous)

    def _encode(self, batch: Batch) -> Any:
        """The encoder call (on the encoder thread). After a remote encoder stayed unreachable, the batches queued
        behind the failed one are not sent (the run is stopping; they count as unencoded)."""
        from .backends.base import EncoderUnavailable

        if self._encoder_failed:
            return None
        try:
            return self.detector.encode(batch)
        except EncoderUnavailable:
            self._encoder_failed = True
            raise

    def _score(self, chunk: list[tuple[str, Frame]], batch: Batch, future: Future[Any]) -> Iterator[dict[str, Any]]:
        """A batch's embeddings through the detector (SA2, head, alarms, localization); its events reach the sinks
        before on_frame and the caller see them."""
        from .backends.base import EncoderUnavailable

        try:
            embeddings = future.result()
        except EncoderUnavailable as err:  # what was encoded before is still scored: a stop, then `err` at the end
            embeddings, self.engine_error = None, self.engine_error or err
            self.stop()
        if embeddings is None or self.engine_error is not None:  # this batch or one before it was not encoded
            self.unencoded += len(chunk)
            yield from self._take_engine_events()
            return
        yield from self._take_engine_events()
        events = self._write(self.detector.complete(batch, embeddings))
        if self.on_frame is not None:
            for sid, frame in chunk:
                self.on_frame(sid, frame)
        yield from events

    def _engine_event(self, event: dict[str, Any]) -> None:
        """A remote encoder's state change, during an encoder call: one log line and the sinks at once (an
        operator learns of an outage when it starts, not when it ends); the iterator gets it after the call."""
        inform(f"engine {event.get('engine')} {event.get('state')}: {event.get('reason')}")
        with self._lock:
            self._write([event])
            self._engine_events.append(event)

    def _take_engine_events(self) -> list[dict[str, Any]]:
        with self._lock:
            events, self._engine_events = self._engine_events, []
        return events

    def _write(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self._lock, self.clock("sinks"):
            for sink in self.sinks:
                sink.write(events)
            self.events_out += len(events)
            if self.observer is not None and events:
                self.observer.write(events)
        return events

    def _snippet(self, snippet: Snippet) -> None:
        with self._lock, self.clock("sinks"):
            for sink in self.sinks:
                sink.snippet(snippet)
        if self._chained is not None:
            self._chained(snippet)

    def _drops(self) -> int:
        return sum(int(s.stats.get("dropped", 0)) for s in self.sources)

    def _skipped(self) -> int:
        return sum(int(s.stats.get("skipped", 0)) for s in self.sources)

    def _update_status(self, frames: int, latency: float, force: bool = False) -> None:
        if self.status is not None:
            self.status.update(frames, self.detector.stats, latency, self._drops(), force=force,
                               skipped_frames=self._skipped(), reconnects=self._reconnect_note())  # fmt: skip
