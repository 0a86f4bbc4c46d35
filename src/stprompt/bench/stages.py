"""The units of work stp-bench times, one function per pipeline stage, each built exactly as stp-run runs it.

decode (one frame of a file), windows (resize + 1 + 49 crops + normalisation of one sampled frame), encode (one
sampled frame's 50 crops in one backend call), SA2 (the two kernel calls a snippet costs in the stream), head
(what scoring one snippet costs the stream: one incremental push, or one head call over the window),
localization (scale-B crops, their encoding, heat map and boxes of one alarm frame), sinks (one event line and
one annotated frame written), end to end (stp-run's Pipeline on a video file, decode included), and the baseline
(a researcher's loop: each crop resized alone and encoded alone with open_clip in PyTorch fp32).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .. import windows
from ..kernels.sa2 import sa2_step
from ..runtime.detector import AlarmSettings, Detector, Sampled, Snippet
from ..runtime.events import frame_event
from ..runtime.frames import Frame
from ..runtime.incremental import IncrementalFeatureHead
from ..runtime.pipeline import Pipeline
from ..runtime.sinks import JsonLinesSink, VideoSink
from ..runtime.sources import VideoFileSource
from ..sampling import is_sampled
from .timing import Timing, measure

NO_ALARMS = AlarmSettings(on=1.0, off=1.0, min_snippets=10**9)  # end to end without localization's extra crops


def write_test_video(path: Path, n_frames: int, size: tuple[int, int] = (640, 360), seed: int = 0) -> Path:
    """A textured scene with a moving block (mp4v), the input every timed stage uses."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for f in range(n_frames):
        frame = base.copy()
        x = (f * 7) % (w - 60)
        frame[h // 3 : h // 3 + 60, x : x + 60] = (40, 200, 240)
        writer.write(frame)
    writer.release()
    return path


def read_frames(path: Path, n: int) -> list[np.ndarray]:
    src = VideoFileSource(path)
    frames = []
    try:
        while len(frames) < n and (f := src.read()) is not None:
            frames.append(f.image)
    finally:
        src.close()
    return frames


def time_decode(video: Path, **kw) -> Timing:
    state: dict[str, Any] = {"src": VideoFileSource(video)}

    def one() -> None:
        if state["src"].read() is None:  # wrap around: reopen (the reopen is rare and lands in p99)
            state["src"].close()
            state["src"] = VideoFileSource(video)
            state["src"].read()

    try:
        return measure(one, "decode", "-", "frame", note="OpenCV VideoCapture, mp4v", **kw)
    finally:
        state["src"].close()


def time_windows(frame: np.ndarray, **kw) -> Timing:
    out = np.empty((windows.crops_per_frame(), 3, 224, 224), np.float32)
    h, w = frame.shape[:2]
    return measure(lambda: windows.encoder_batch(frame, out=out), "windows", "-", "sampled frame",
                   note=f"{w}x{h} -> 224 resize, 49 windows, normalise", **kw)  # fmt: skip


def time_encode(backend, name: str, crops: np.ndarray, **kw) -> Timing:
    return measure(lambda: backend.encode(crops), "encode", name, "sampled frame",
                   note=f"{len(crops)} crops, one call", **kw)  # fmt: skip


def time_device_windows(backend, name: str, frame: np.ndarray, **kw) -> Timing:
    """What stp-run does with a GPU-preprocessing backend: the 224x224 uint8 frame goes to the device, the crops
    are cut and normalised there and encoded (compare with `encode`, which copies 50 float32 crops)."""
    small = windows.resize_frame(frame)
    keep = np.ones(windows.SCALE_A.count, bool)
    return measure(lambda: backend.encode_frames([small], [keep]), "windows+encode", name, "sampled frame",
                   note="uint8 224x224 upload, crops cut + normalised on the device, encoded", **kw)  # fmt: skip


def time_sa2(dim: int, k: int, **kw) -> Timing:
    rng = np.random.default_rng(0)
    prev, cur, nxt = (rng.standard_normal((49, dim)).astype(np.float32) for _ in range(3))

    def one() -> None:  # the stream finalises the previous snippet and makes the newest provisional
        sa2_step(prev, cur, nxt, k)
        sa2_step(cur, nxt, nxt, k)

    return measure(one, "sa2", "numba", "snippet", note="2 sa2_step calls", **kw)


def head_window(manifest, lookahead: int | None = None) -> int:
    """Snippets in the head call that scores one snippet in the stream: context + lookahead + 1."""
    exact = manifest.head_settings.exact_lookahead
    return (exact - 1) + (exact if lookahead is None else lookahead) + 1


def time_head(backend, name: str, manifest, **kw) -> Timing:
    """What the stream's head costs per snippet, as stp-run scores it: with the bundle's snippet-wise graphs on a
    host-head backend, one push into a primed incremental head (runtime.incremental); else one head call over
    the window."""
    rng = np.random.default_rng(0)
    stages = getattr(backend, "head_stages", None)
    if stages is not None and manifest.has_head_stages:
        return _time_incremental_head(stages, name, manifest, rng, **kw)
    t = head_window(manifest)
    x_clip = rng.standard_normal((t, manifest.dim)).astype(np.float32)
    x_as = rng.standard_normal((t, manifest.dim)).astype(np.float32)
    return measure(lambda: backend.head_features(x_clip, x_as), "head", name, "snippet",
                   note=f"head after SA2 over {t} snippets", **kw)  # fmt: skip


def _time_incremental_head(stages, name: str, manifest, rng, **kw) -> Timing:
    settings = manifest.head_settings
    exact = settings.exact_lookahead
    head = IncrementalFeatureHead(stages, manifest.dim, exact - 1, exact, sa2_step, settings.topk_windows,
                                  settings.sigma, settings.radius)  # fmt: skip
    x_clip = rng.standard_normal((4 * exact, manifest.dim)).astype(np.float32)
    x_patch = rng.standard_normal((4 * exact, 49, manifest.dim)).astype(np.float32)
    for i in range(3 * exact):  # past the start: every push now finalises one row per layer and scores one
        head.push(x_clip[i], x_patch[i])
    turn = itertools.count()

    def one() -> None:
        i = next(turn) % exact + 3 * exact
        head.push(x_clip[i], x_patch[i])

    return measure(one, "head", name, "snippet", note=f"incremental: one push (2 SA2 steps, {settings.adapter_layers} "
                   "layer rows, scores), exact lookahead", **kw)  # fmt: skip


def sampled_frame(detector: Detector, frame: np.ndarray) -> Sampled:
    """A Sampled of `frame` as the Detector keeps it (resize, encoded crops): the input localization works on."""
    small = windows.resize_frame(frame)
    emb = detector.backend.encode(windows.encoder_batch(frame))
    return Sampled(0, 0.0, frame, small, emb[0], emb[1:])


def time_localization(backend, name: str, manifest, frame: np.ndarray, **kw) -> Timing:
    detector = Detector(backend, manifest)
    sampled = sampled_frame(detector, frame)
    return measure(lambda: detector._locate(sampled), "localization", name, "alarm frame",
                   note="16 scale-B crops encoded, heat map, boxes", **kw)  # fmt: skip


def time_sinks(manifest, frame: np.ndarray, out_dir: Path, **kw) -> Timing:
    h, w = frame.shape[:2]
    heat = np.linspace(0, 1, h * w, dtype=np.float32).reshape(h, w)
    boxes = np.array([[10, 10, w // 2, h // 2, 0.9]], np.float32)
    rest = len(manifest.classes) - 1
    event = frame_event("bench", 0, 0.0, 0.7, 0.7, manifest.classes, [0.3] + [0.7 / rest] * rest)
    snippet = Snippet("bench", event, frame, heat, boxes)
    events = JsonLinesSink(str(out_dir / "events.jsonl"))
    video = VideoSink(str(out_dir / "sinks.mp4"), 25.0, 0.5)

    def one() -> None:
        events.write([event])
        video.snippet(snippet)

    try:
        return measure(one, "sinks", "-", "snippet", note="JSON line + annotated alarm frame (heat, boxes)", **kw)
    finally:
        video.close()
        events.close()


class EncoderClock:
    """A backend whose encoder calls are timed: the seconds spent inside the encoder during a pipeline run."""

    def __init__(self, backend):
        self._backend = backend
        self.seconds = 0.0

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    def _timed(self, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds += time.perf_counter() - t0

    def encode(self, images):
        return self._timed(self._backend.encode, images)

    def encode_frames(self, smalls, masks):
        return self._timed(self._backend.encode_frames, smalls, masks)

    def encode_pixels(self, pixels):
        return self._timed(self._backend.encode_pixels, pixels)


def run_end_to_end(backend, name: str, manifest, video: Path, n_frames: int,
                   gate: float = 0.0) -> tuple[Timing, dict[str, float]]:  # fmt: skip
    """stp-run's Pipeline on a file (decode included, alarms off, no sinks); one sample per sampled frame.

    The pipeline cuts a batch at each sampled frame here (one sampled frame per encoder call, the file's natural
    unit), and a sample is the time from the end of the previous batch to the end of the batch that holds a
    sampled frame: reading its frames, windows, encoding, SA2, head, i.e. what one sampled frame costs the pipeline;
    the total gives the sustained sampled frames/s. Also returns the pipeline's counters (crops encoded, crops the
    gate skipped, frames read) and `encode_s`, the time spent inside the encoder during this same run: its share of
    the total is the pipeline efficiency measured without a second run, so a machine whose speed drifts between
    runs (shared CPUs) does not bias it.
    """
    clock = EncoderClock(backend)
    detector = Detector(clock, manifest, alarm=NO_ALARMS, gate=gate)
    samples: list[float] = []
    last = [0.0]

    def on_frame(source: str, frame: Frame) -> None:
        if is_sampled(frame.index, manifest.stride, manifest.offset):
            now = time.perf_counter()
            samples.append(now - last[0])
            last[0] = now

    src = VideoFileSource(video, source_id="bench")
    try:
        pipeline = Pipeline(detector, [src], on_frame=on_frame, sampled_per_batch=1, max_frames=n_frames,
                            decode_all=False)  # on_frame reads indices only: unsampled frames keep no pixels
    except BaseException:
        src.close()
        raise
    last[0] = time.perf_counter()
    stats = pipeline.run()
    note = f"{n_frames} frames, stride {manifest.stride}, decode + windows + encode + SA2 + head + events"
    return Timing("end-to-end", name, "sampled frame", samples, note), {**stats, "encode_s": clock.seconds}


def baseline_encoder(manifest) -> Callable[[np.ndarray], None]:
    """What a researcher's script does per sampled frame: each window resized alone, each crop encoded alone
    with open_clip in PyTorch fp32 under no_grad (the model loaded from the bundle's ClipSpec)."""
    import torch

    from ..clip.loader import load_clip

    model = load_clip(manifest.clip).model.eval()

    def one(frame: np.ndarray) -> None:
        small = windows.resize_frame(frame)
        crops = [small, *windows.window_crops_reference(small, windows.SCALE_A)]
        with torch.no_grad():
            for crop in crops:
                x = torch.from_numpy(windows.normalize(crop[None]))
                model.encode_image(x)

    return one
