"""The per-frame work of stp-run, for any number of streams (SPEC.md + DESIGN.md runtime pipeline).

sample one frame in `stride` -> resize + scale-A windows (`stprompt.windows`, the code stp-extract runs) ->
one batched encoder call for the sampled frames of all streams -> SA2 kernel -> per-stream ring buffer ->
head -> frame events
-> alarms (hysteresis) -> alarm events (lifecycle new -> update... -> end under one id); a flagged snippet
(score >= alarm-on, `localize.heat.flagged`, the rule stp-eval boxes by) also gets scale-B windows, heat map
and boxes. Every event is built by `events` as the shipped schema (schemas/events-1.json) defines it.

`process` is three steps a Pipeline runs apart so the encoder never waits for the host: `prepare` (sampling,
resize, gating, the encoder batch, windows cut for several frames at once), `encode` (the encoder call only, safe
on another thread) and `complete` (SA2, head, alarms, localization, events), batches in order.

A snippet enters the head only once its `stride` frames have all been seen, as offline (the tail shorter
than `stride` is dropped at the end of a stream), so streamed scores with exact lookahead equal stp-eval's.
Torch-free: it needs numpy, cv2, numba and a backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import kernels, sampling, windows
from ..bundle.manifest import Thresholds
from ..errors import UserError, first_line
from ..kernels.boxes import extract_boxes
from ..kernels.sa2 import sa2_step
from ..localize.heat import LocalizeSettings, flagged, frame_heat
from . import events as ev
from .backends.base import EncoderUnavailable
from .frames import Frame
from .gating import REFRESH_DEFAULT, WindowGate
from .incremental import IncrementalFeatureHead
from .parallel import EncoderThread, parallel_map
from .stageclock import NO_CLOCK, StageClock
from .stream import SnippetResult, StreamingFeatureHead, StreamingHead


@dataclass
class AlarmSettings:
    on: float = 0.5  # a snippet at or above starts (or continues) an alarm
    off: float = 0.4  # an alarm ends at the first snippet below
    min_snippets: int = 1  # consecutive snippets at or above `on` before an alarm starts

    @classmethod
    def from_thresholds(
        cls, thresholds: Thresholds, on: float | None = None, off: float | None = None, min_snippets: int = 1
    ) -> AlarmSettings:
        """A bundle's alarm threshold as `on` and min(0.4, on) as `off`, unless given."""
        on = thresholds.alarm if on is None else on
        return cls(on=on, off=min(0.4, on) if off is None else off, min_snippets=min_snippets)

    def __post_init__(self) -> None:
        if not 0 <= self.off <= self.on <= 1 or self.min_snippets < 1:
            raise UserError(f"need 0 <= alarm off ({self.off}) <= on ({self.on}) <= 1 and min duration >= 1")


@dataclass
class Sampled:
    """What a snippet needs until it is scored: its frame for localization and drawing, and x_patch."""

    frame_index: int
    time: float
    image: np.ndarray  # the source frame (BGR)
    small: np.ndarray  # 224x224 resize (scale-B windows are cut from it)
    x_clip: np.ndarray
    x_patch: np.ndarray  # [49, D]


BUFFERS = 2  # encoder batches alive at once: one being encoded while the next is prepared


@dataclass
class Batch:
    """One encoder call's worth of frames, prepared on the host (`Detector.prepare`): what `encode` sends and
    `complete` scores."""

    items: list[tuple[str, Frame]]  # every frame of the call, in order per stream
    sampled: list[tuple[str, Frame]]  # the sampled ones
    smalls: list[np.ndarray]  # their 224x224 resizes
    masks: list[np.ndarray]  # scale-A windows to encode (motion gating)
    crops: np.ndarray | None  # the encoder input (a view of one of the detector's buffers); None: device preprocessing
    rows: int  # crops in the call


@dataclass
class StreamState:
    head: StreamingHead
    waiting: Sampled | None = None  # sampled, its stride frames not all seen yet
    snippets: dict[int, Sampled] = field(default_factory=dict)  # pushed, not scored yet
    last_frame: int = -1
    next_sample: int = 0  # native index of the next frame to sample (set from the offset on first use)
    alarm: ev.Alarm | None = None  # the alarm on, if any
    run: int = 0  # consecutive snippets at or above alarm-on
    token: str = field(default_factory=ev.stream_token)  # the random part of this stream's alarm ids


@dataclass
class Snippet:
    """A scored snippet, handed to sinks: its frame event, and when flagged during an alarm its heat map and boxes."""

    source: str
    event: dict[str, Any]
    image: np.ndarray
    heat: np.ndarray | None = None
    boxes: np.ndarray | None = None


class Detector:
    """Feed frames of one or more streams; get frame and alarm events (JSON-ready dicts)."""

    def __init__(
        self,
        backend,
        manifest,
        *,
        lookahead: int | None = None,
        lookahead_per_source: dict[str, int] | None = None,
        alarm: AlarmSettings | None = None,
        localize: LocalizeSettings | None = None,
        max_batch: int = 256,
        gate: float = 0.0,
        gate_per_source: dict[str, float] | None = None,
        gate_refresh: int = REFRESH_DEFAULT,
        on_snippet: Callable[[Snippet], None] | None = None,
        window_workers: int | None = None,
        incremental_head: bool = True,
    ):
        self.backend = backend
        self.manifest = manifest
        self.stride, self.offset = int(manifest.stride), int(manifest.offset)
        self.classes = list(manifest.classes)
        self.preprocess = manifest.preprocess  # crops are made as the bundle prescribes (mean / std, windows)
        self.scale_a, self.scale_b = windows.scales(self.preprocess)
        self.head_settings = manifest.head_settings
        self.context = self.head_settings.exact_lookahead
        # SA2 as a Numba kernel feeding the head after SA2 (x_clip, x_AS: 49x less head input) when the bundle
        # has that graph; older bundles run SA2 inside the head graph on x_patch windows
        self.sa2_kernel = manifest.streams_sa2_kernel
        # each snippet's adapter rows computed once (runtime.incremental) where the bundle has the snippet-wise
        # graphs and the backend runs heads on the host; else the head over a window per snippet
        self.head_stages = getattr(backend, "head_stages", None) if incremental_head else None
        self.lookahead = self.context if lookahead is None else int(lookahead)
        self.lookahead_per_source = {sid: int(v) for sid, v in (lookahead_per_source or {}).items()}
        if self.lookahead < 0 or any(v < 0 for v in self.lookahead_per_source.values()):
            raise UserError("--lookahead must be >= 0")
        self.alarm = alarm or AlarmSettings.from_thresholds(manifest.thresholds)
        self.localize = localize or LocalizeSettings.from_thresholds(manifest.thresholds)
        self.queries, self.abnormal, _ = manifest.load_queries()
        self.max_batch = max(windows.crops_per_frame(pre=self.preprocess), int(max_batch))
        self.on_snippet = on_snippet
        self.gate = WindowGate(gate, self.scale_a, per_source=gate_per_source, refresh=gate_refresh)
        self._buffers: list[np.ndarray | None] = [None] * BUFFERS  # encoder batches, grown and reused in turn
        # uint8 BGR crops for backends that normalise on their device (TensorRT with model.pre.plan), else float32
        self._pixels = getattr(backend, "input_format", "float32") == "uint8"
        self._turn = 0
        self.window_workers = window_workers  # frames cut at once on `parallel.window_pool` (None: one per core)
        self.clock: StageClock | Any = NO_CLOCK  # stp-bench's StageClock: host CPU time per stage
        self.encoder_thread: EncoderThread | None = None  # set by a Pipeline that overlaps encoder and host
        kernels.warmup()  # JIT or disk-cache load now, not on the first snippet or the first alarm
        self.streams: dict[str, StreamState] = {}
        self.stats = {"sampled": 0, "snippets": 0, "alarms": 0, "encoder_calls": 0, "crops": 0, "gated_crops": 0}
        self.encode_observers: list[Callable[[int], None]] = []  # each called with an encoder request's crops

    # -- public ---------------------------------------------------------------------------------------
    def process(self, items: list[tuple[str, Frame]]) -> list[dict[str, Any]]:
        """Frames (source id, Frame) of any streams, in order per stream: `prepare`, `encode`, `complete` in one go."""
        batch = self.prepare(items)
        return self.complete(batch, self.encode(batch))

    def prepare(self, items: list[tuple[str, Frame]]) -> Batch:
        """The host work before the encoder: sample, resize, gate, cut and normalise the windows into the encoder
        batch. Batches are prepared, encoded and completed in the same order; at most `BUFFERS` may be prepared
        and not yet completed (the Pipeline prepares the next while the encoder runs the current one)."""
        sampled = [(sid, f) for sid, f in items if self._take(sid, f.index)]
        for sid, f in sampled:
            if f.image is None:  # a bug, not a user's mistake: the source skipped a frame the sampling wants
                raise RuntimeError(f"frame {f.index} of {sid} is sampled but was not decoded")
        smalls = self._resize([f.image for _, f in sampled])
        with self.clock("gating"):
            masks = [self.gate.select(sid, small) for (sid, _), small in zip(sampled, smalls, strict=True)]
        self.stats["gated_crops"] = self.gate.stats["skipped"]
        rows = sum(1 + int(m.sum()) for m in masks)
        self._count(rows, len(sampled))
        crops = None
        if sampled and not self.backend.gpu_preprocessing:
            crops = self._batch(smalls, masks, rows)
        return Batch(items, sampled, smalls, masks, crops, rows)

    def encode(self, batch: Batch) -> np.ndarray:
        """The batch's one encoder call (split at the backend's max batch inside it): [rows, D] embeddings. Touches
        no detector state, so it may run on another thread while the next batch is prepared."""
        if not batch.sampled:
            return np.zeros((0, self.backend.dim), np.float32)
        if self.backend.gpu_preprocessing:  # backends that cut windows on their device get the 224x224 uint8 frames
            return self.backend.encode_frames(batch.smalls, batch.masks)
        if self._pixels:  # backends that normalise on their device get uint8 crops (a quarter of the bytes)
            return self.backend.encode_pixels(batch.crops)
        return self.backend.encode(batch.crops)

    def complete(self, batch: Batch, embeddings: np.ndarray) -> list[dict[str, Any]]:
        """The host work after the encoder: x_patch (gate merge), SA2, head, alarms and localization; the events."""
        ready: dict[int, Sampled] = {}
        start = 0
        for (sid, f), small, mask in zip(batch.sampled, batch.smalls, batch.masks, strict=True):
            n = 1 + int(mask.sum())
            emb = embeddings[start : start + n]
            start += n
            with self.clock("gating"):
                x_patch = self.gate.merge(sid, mask, emb[1:])
            ready[id(f)] = Sampled(f.index, f.time, f.image, small, emb[0], x_patch)
        events: list[dict[str, Any]] = []
        for sid, f in batch.items:
            state = self._state(sid)
            state.last_frame = f.index
            events += self._complete(sid, state)
            if id(f) in ready:
                if state.waiting is not None:  # frames were dropped (live source): push it as it is
                    events += self._complete(sid, state, force=True)
                state.waiting = ready[id(f)]
                events += self._complete(sid, state)
        return events

    def feed(self, image: np.ndarray, source: str = "api", time: float | None = None) -> list[dict[str, Any]]:
        """Python API: the next frame of `source` (frames counted per source; time defaults to index / fps)."""
        state = self._state(source)
        index = state.last_frame + 1
        return self.process([(source, Frame(image, index, index / 25.0 if time is None else time))])

    def finish(self, source: str) -> list[dict[str, Any]]:
        """End of a stream: drop an incomplete last snippet, score the rest with the true end."""
        state = self.streams.pop(source, None)
        self.gate.drop(source)
        if state is None:
            return []
        with self.clock("sa2_head"):
            results = state.head.flush()
        events = self._emit(source, state, results)
        if state.alarm is not None:
            events.append(state.alarm.end("stream"))
            state.alarm = None
        return events

    # -- internals ------------------------------------------------------------------------------------
    def _take(self, sid: str, index: int) -> bool:
        """Sample frames k*stride + offset; a live source that dropped that frame gives the next one instead."""
        state = self._state(sid)
        if index < state.next_sample:
            return False
        state.next_sample = sampling.next_sampled(index, self.stride, self.offset)
        return True

    def lookahead_for(self, source: str) -> int:
        """The source's own lookahead (e.g. a few snippets for live cameras, exact for files), else the default."""
        return self.lookahead_per_source.get(source, self.lookahead)

    def _state(self, sid: str) -> StreamState:
        if sid not in self.streams:
            settings = self.head_settings
            if self.sa2_kernel and self.head_stages is not None:
                head = IncrementalFeatureHead(
                    self.head_stages, self.backend.dim, self.context - 1, self.lookahead_for(sid), sa2_step,
                    settings.topk_windows, settings.sigma, settings.radius,
                )
            elif self.sa2_kernel:
                k = settings.topk_windows
                head = StreamingFeatureHead(
                    self.backend.head_features, self.backend.dim, self.context - 1, self.lookahead_for(sid), sa2_step, k
                )
            else:
                head = StreamingHead(self.backend.head, self.backend.dim, self.context, self.lookahead_for(sid))
            self.streams[sid] = StreamState(head=head, next_sample=self.offset)
        return self.streams[sid]

    def _resize(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """224x224 resizes of the sampled frames (OpenCV releases the GIL: streams in parallel on the window pool)."""

        def one(image: np.ndarray) -> np.ndarray:
            with self.clock("windows"):
                return windows.resize_frame(image)

        return parallel_map(one, images, self.window_workers)

    def _batch(self, smalls: list[np.ndarray], masks: list[np.ndarray], rows: int | None = None) -> np.ndarray:
        """The encoder input of these sampled frames (full frame + kept windows each), in the next of `BUFFERS`
        reused buffers.

        Written in place by the normalisation kernels (no per-frame arrays, no concatenation), each frame's rows by
        one task of the window pool (Numba and OpenCV release the GIL): the same bytes as one thread writes.
        Backends copy their input, so a buffer is free again once its batch's `encode` returned; the Pipeline keeps
        at most `BUFFERS` batches between prepare and complete.
        """
        rows = sum(1 + int(m.sum()) for m in masks) if rows is None else rows
        self._turn = (self._turn + 1) % BUFFERS
        buffer = self._buffers[self._turn]
        if buffer is None or len(buffer) < rows:
            size, n = self.preprocess.size, max(rows, windows.crops_per_frame(pre=self.preprocess))
            shape = (n, size, size, 3) if self._pixels else (n, 3, size, size)
            buffer = np.empty(shape, np.uint8 if self._pixels else np.float32)
            self._buffers[self._turn] = buffer
        starts = np.cumsum([0] + [1 + int(m.sum()) for m in masks])[:-1].tolist()
        fill_rows = windows.fill_pixel_batch if self._pixels else windows.fill_encoder_batch

        def fill(job: tuple[np.ndarray, np.ndarray, int]) -> int:
            small, mask, start = job
            with self.clock("windows"):
                return fill_rows(small, buffer[start:], mask, pre=self.preprocess)

        parallel_map(fill, list(zip(smalls, masks, starts, strict=True)), self.window_workers)
        return buffer[:rows]

    def _count(self, crops: int, sampled: int = 0) -> None:
        """Encoder work for the status line and stp-bench: crops, calls (of at most the backend's max batch),
        sampled frames. The backend splits a batch at its own limit (`backends.base.split_batches`)."""
        limit = min(self.max_batch, self.backend.max_batch or self.max_batch)
        self.stats["crops"] += crops
        self.stats["encoder_calls"] += -(-crops // limit)
        self.stats["sampled"] += sampled
        for observe in self.encode_observers:  # e.g. the metrics' batch histogram, fed from these very numbers
            observe(crops)

    def _complete(self, sid: str, state: StreamState, force: bool = False) -> list[dict[str, Any]]:
        """Push the waiting snippet once all of its stride frames have arrived."""
        w = state.waiting
        last_of_snippet = sampling.snippet_last_frame(w.frame_index, self.stride, self.offset) if w else 0
        if w is None or (not force and state.last_frame < last_of_snippet):
            return []
        state.waiting = None
        state.snippets[state.head.received] = w
        with self.clock("sa2_head"):
            results = state.head.push(w.x_clip, w.x_patch)
        return self._emit(sid, state, results)

    def _emit(self, sid: str, state: StreamState, results: list[SnippetResult]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for r in results:
            s = state.snippets.pop(r.index)
            self.stats["snippets"] += 1
            event = ev.frame_event(sid, s.frame_index, s.time, r.score, r.score_c, self.classes, r.probs)
            events.append(event)
            snippet = Snippet(source=sid, event=event, image=s.image)
            alarm_event = self._alarm_event(sid, state, r, s, snippet)
            if alarm_event is not None:
                events.append(alarm_event)
            if self.on_snippet is not None:
                self.on_snippet(snippet)
        return events

    def _alarm_event(self, sid: str, state: StreamState, r: SnippetResult, s: Sampled,
                     snippet: Snippet) -> dict[str, Any] | None:  # fmt: skip
        """Hysteresis: `new` after min_snippets at or above alarm-on, `update` while at or above alarm-off, `end`
        at the first snippet below it; new and update carry this snippet's boxes."""
        alarm = state.alarm
        if alarm is not None and r.score < self.alarm.off:
            state.alarm, state.run = None, 0
            return alarm.end("score", s.frame_index, s.time, r.score)
        if alarm is not None:
            alarm.add(s.frame_index, s.time, r.score, self._anomaly_class(r.probs))
            phase = "update"
        else:
            state.run = state.run + 1 if r.score >= self.alarm.on else 0
            if state.run < self.alarm.min_snippets:
                return None
            alarm = state.alarm = ev.Alarm.start(state.token, sid, s.frame_index, s.time, r.score,
                                                 self._anomaly_class(r.probs))  # fmt: skip
            self.stats["alarms"] += 1
            phase = "new"
        rows, note = self._boxes(snippet, s, r.score)
        alarm.located(s.frame_index, rows)
        return alarm.event(phase, rows, note)

    def _boxes(self, snippet: Snippet, s: Sampled, score: float) -> tuple[list[list[float]], str | None]:
        """Boxes of a new / update snippet iff it is flagged, so they equal stp-eval's for that snippet.

        Otherwise (hysteresis tail, or a remote encoder gone for good) the event still goes out, with `[]` and a
        `localization` note (the second item), so "no region found" (boxes [] without a note) stays distinct.
        """
        if not flagged(score, self.alarm.on):
            return [], f"skipped: score below alarm-on ({self.alarm.on:g})"
        try:
            snippet.heat, snippet.boxes = self._locate(s)
        except EncoderUnavailable as err:  # a remote encoder gone for good: the score stands, no boxes
            return [], f"skipped: {first_line(err)}"
        return ev.boxes(snippet.boxes), None

    def _anomaly_class(self, probs: np.ndarray) -> str:
        return self.classes[1 + int(np.argmax(probs[1:]))]

    def _locate(self, s: Sampled) -> tuple[np.ndarray, np.ndarray]:
        """Scale-B windows of the snippet's frame, the fused heat map and its boxes (source pixels)."""
        size, n = self.preprocess.size, self.scale_b.count
        with self.clock("localization"):
            if self._pixels:  # uint8 crops for a backend that normalises on its device, as the sampled frames'
                crops_b = np.empty((n, size, size, 3), np.uint8)
                windows.fill_pixel_windows(s.small, self.scale_b, crops_b)
            else:
                crops_b = np.empty((n, 3, size, size), np.float32)
                windows.fill_windows(s.small, self.scale_b, crops_b, pre=self.preprocess)
        x_patch_b = self._encode_extra(crops_b)
        with self.clock("localization"):
            h, w = s.image.shape[:2]
            g_a, g_b = self.scale_a.grid, self.scale_b.grid
            heat = frame_heat(
                s.x_patch.reshape(g_a, g_a, -1), x_patch_b.reshape(g_b, g_b, -1), self.queries, self.abnormal, w, h,
                self.localize, (self.scale_a, self.scale_b),
            )  # fmt: skip
            min_area = max(1, int(np.ceil(self.localize.min_box_area * w * h)))
            return heat, extract_boxes(heat, self.localize.heat_threshold, min_area)

    def _encode_extra(self, crops: np.ndarray) -> np.ndarray:
        """Localization's scale-B crops: through `encoder_thread` when the Pipeline runs one (every encoder call on
        one thread, in order: backends such as TensorRT keep per-thread device state), else here."""
        self._count(len(crops))
        encode = self.backend.encode_pixels if self._pixels else self.backend.encode
        if self.encoder_thread is not None:
            return self.encoder_thread.call(encode, crops)
        return encode(crops)
