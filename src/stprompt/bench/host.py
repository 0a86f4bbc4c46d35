"""`stp-bench --streams N`: the host side of the pipeline, measured against a simulated GPU encoder.

On a GPU appliance the encoder stops being the bottleneck and the host becomes it: every frame of every stream is
decoded (one sampled frame in 16 still costs 16 decodes), each sampled frame resized and cut into 49 windows, while
gating, SA2, the head, localization and the sinks run beside. This module runs stp-run's Pipeline on N concurrent
streams of one file (events written to a JSON Lines file, alarms off) and reports:

- per stage, the host CPU time per sampled frame (`stageclock`: thread CPU time summed over the threads a stage
  ran on; `other` = the process's CPU time no stage claims; `total` = the process's CPU time), and localization
  per alarm frame, timed on its own (the timed runs raise no alarm);
- the host ceiling: sampled frames/s the host sustains with an instant encoder (`sim:0`), on this machine's cores,
  and per core (1000 / total ms);
- per simulated latency (`sim:MS`), the pipeline's sampled frames/s against the encoder's alone: the pipeline
  efficiency, and the share of the run the encoder was busy;
- the capacity estimate: host cores a GPU server needs for S streams at F fps (one sampled frame in `stride`).

Reference latencies (ms per 50 crops, ViT-B/16 FP16) are in `REFERENCE_MS` with where each figure comes from.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.detector import Detector
from ..runtime.pipeline import LIVE_LOOKAHEAD, Pipeline
from ..runtime.sinks import JsonLinesSink
from ..runtime.sources import VideoFileSource
from ..runtime.stageclock import STAGES, StageClock
from .machine import load_average
from .stages import NO_ALARMS, EncoderClock, sampled_frame

# ms per 50 crops (one sampled frame) of a ViT-B/16 image encoder in FP16: what `sim:MS` stands in for
REFERENCE_MS = {
    "data-centre GPU": (16.0, "about 3,000 crops/s: timm's published inference benchmark gives "
                        "vit_base_patch16_clip_224 2,784 img/s (AMP fp16, batch 1024, PyTorch 2.4) on an RTX 4090 "
                        "(huggingface/pytorch-image-models, results/benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv); "
                        "no data-centre card's figure was found to cite"),
    "embedded GPU": (125.0, "about 400 crops/s (Jetson AGX Orin class): the issue's figure; no published ViT-B/16 "
                     "FP16 number for Orin was found to cite"),
}  # fmt: skip
CAPACITY_STREAMS, CAPACITY_FPS = 150, 25.0  # the capacity table's GPU server: 150 camera streams at 25 fps


def load_1min() -> float:
    """The 1-minute load average (the machine is shared: every host figure carries it); -1 where there is none."""
    loads = load_average()
    return loads[0] if loads else -1.0


def run_streams(backend, manifest, video: Path, streams: int, frames: int, events: Path | None = None,
                gate: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """stp-run's Pipeline on `streams` copies of `video` (`frames` each, alarms off, events to `events`): wall time,
    process CPU, CPU per stage, the encoder's busy time. The same Detector first runs the streams untimed for two
    sampled frames each (ONNX Runtime's first head calls, the encoder batches' first touch of their memory).
    Lookahead is stp-run's for cameras (`LIVE_LOOKAHEAD` snippets): each snippet then costs one head call over
    context + lookahead + 1 snippets from the first minute on, as on a camera that runs for days (files, scored
    exactly, would only reach that steady state after the exact lookahead's 41 snippets)."""
    timed = EncoderClock(backend)
    detector = Detector(timed, manifest, alarm=NO_ALARMS, gate=gate, lookahead=LIVE_LOOKAHEAD)
    _pipeline(detector, video, streams, 2 * manifest.stride, None).run()
    before, timed.seconds = dict(detector.stats), 0.0
    clock = StageClock()
    pipeline = _pipeline(detector, video, streams, frames, events, clock)
    load_before = load_1min()
    cpu0, t0 = time.process_time(), time.perf_counter()
    stats = pipeline.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    count = {k: int(stats[k] - before.get(k, 0)) for k in ("sampled", "crops", "gated_crops")}
    per = 1e3 / max(1, count["sampled"])
    host = {stage: clock.cpu_s.get(stage, 0.0) * per for stage in STAGES if stage != "localization"}
    host["other"] = max(0.0, cpu * per - sum(host.values()))
    host["total"] = cpu * per
    return {
        "streams": streams, "frames_per_stream": frames, "lookahead": LIVE_LOOKAHEAD, "frames": int(stats["frames"]),
        **count, "wall_s": wall, "cpu_s": cpu, "sampled_fps": count["sampled"] / wall,
        "host_ms_per_sampled_frame": {k: round(v, 3) for k, v in host.items()},
        "host_sampled_fps_per_core": 1e3 / host["total"] if host["total"] > 0 else None,
        "encoder_s": timed.seconds, "encoder_busy": timed.seconds / wall,
        "load_average_1min": [load_before, load_1min()],
    }  # fmt: skip


def _pipeline(detector: Detector, video: Path, streams: int, frames: int, events: Path | None,
              clock: StageClock | None = None) -> Pipeline:  # fmt: skip
    sources: list[VideoFileSource] = []
    sinks = []
    try:
        sources = [VideoFileSource(video, source_id=f"stream{i}") for i in range(streams)]
        sinks = [JsonLinesSink(str(events))] if events is not None else []
        return Pipeline(detector, sources, sinks, max_frames=frames, clock=clock)
    except BaseException:
        for s in (*sources, *sinks):
            s.close()
        raise


def localization_ms(backend, manifest, frame: np.ndarray, repeats: int = 5) -> float:
    """Host CPU ms of localization per alarm frame (scale-B crops, heat map, boxes; the encoder's own time is not
    host CPU with a simulated encoder), median of `repeats` after one warm-up."""
    detector = Detector(backend, manifest)
    sampled = sampled_frame(detector, frame)
    detector._locate(sampled)
    samples = []
    for _ in range(repeats):
        t0 = time.thread_time()
        detector._locate(sampled)
        samples.append(time.thread_time() - t0)
    return float(np.median(samples)) * 1e3


def capacity(total_ms: float, stride: int, streams: int = CAPACITY_STREAMS, fps: float = CAPACITY_FPS,
             per_core_ms: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Host cores for `streams` cameras at `fps` with one sampled frame in `stride`, from the host CPU ms per
    sampled frame (decode of all `stride` frames included), and GPUs at each reference latency."""
    sampled_fps = streams * fps / stride
    return {
        "streams": streams, "fps": fps, "stride": stride, "sampled_fps": sampled_fps,
        "host_ms_per_sampled_frame": round(total_ms, 3),
        "host_cpu_ms_per_stream_s": round(total_ms * fps / stride, 2),
        "cores": round(sampled_fps * total_ms / 1e3, 2),
        "gpus": {name: round(sampled_fps * ms / 1e3, 2) for name, (ms, _) in REFERENCE_MS.items()},
    }  # fmt: skip


# how the crops reach the encoder: JSON key under `host` (None: the top level), table column, SimBackend options
MODES = {"host": (None, "float32 crops", {}), "uint8": ("uint8_crops", "uint8 crops", {"pixels": True}),
         "device": ("device_windows", "device windows", {"device": True})}  # fmt: skip


def render(result: dict[str, Any]) -> list[str]:
    """The host section of the stdout table (nothing when the run measured no streams)."""
    host = result.get("host")
    if not host:
        return []
    ceiling = host["ceiling"]
    cols = [("float32 crops", {"ceiling": ceiling, "host_ms_per_sampled_frame": result["host_ms_per_sampled_frame"],
                         "capacity": host["capacity"]})]  # fmt: skip
    cols += [(label, host[key]) for key, label, _ in MODES.values() if key and key in host]
    out = ["", f"host, {ceiling['streams']} streams of {result['frame_size'][0]}x{result['frame_size'][1]}, "
           f"instant encoder (sim:0), {host['cores']} cores, load {ceiling['load_average_1min'][0]:g}",
           f"{'CPU ms per sampled frame':28}" + "".join(f"{label:>16}" for label, _ in cols)]  # fmt: skip
    for stage in result["host_ms_per_sampled_frame"]:
        label = "localization (alarm frame)" if stage == "localization" else stage
        out.append(f"{label:28}" + "".join(f"{c['host_ms_per_sampled_frame'][stage]:>16.2f}" for _, c in cols))
    out.append(f"{'ceiling, sampled frames/s':28}" + "".join(f"{c['ceiling']['sampled_fps']:>16.1f}" for _, c in cols))
    out.append(f"{'  per core':28}" + "".join(f"{c['ceiling']['host_sampled_fps_per_core']:>16.1f}" for _, c in cols))
    for label, c in cols:
        cap = c["capacity"]
        out.append(f"capacity ({label}): {cap['streams']} streams at {cap['fps']:g} fps, stride {cap['stride']}: "
                   f"{cap['cores']:.1f} host cores; " + ", ".join(f"{v:.1f} x {k}" for k, v in cap["gpus"].items()))
    return out


def ceiling(manifest, video: Path, frame: np.ndarray, streams: int, frames: int, work: Path) -> dict[str, Any]:
    """The host with an instant encoder (`sim:0`): its ceiling, CPU per stage (localization per alarm frame beside
    them), the capacity estimate; stp-bench's top-level `host_ceiling_sampled_fps`, `host_ms_per_sampled_frame`
    and `host` for float32 crops cut on the host (ONNX Runtime, OpenVINO, TensorRT without model.pre.plan). The same
    again with uint8 crops normalised on the device (`sim:0:u8`, TensorRT with model.pre.plan) in
    `host.uint8_crops`, and with the windows cut on the device (`sim:0:device`, the PyTorch CUDA backend's way) in
    `host.device_windows`."""
    from ..runtime.backends.sim import SimBackend
    from .machine import usable_cores

    runs = {}
    for mode, (_, _, options) in MODES.items():
        backend = SimBackend(manifest, 0.0, **options)
        try:
            run = run_streams(backend, manifest, video, streams, frames, work / f"events-ceiling-{mode}.jsonl")
            located = localization_ms(backend, manifest, frame)
        finally:
            backend.close()
        ms = {**run["host_ms_per_sampled_frame"], "localization": round(located, 3)}
        runs[mode] = {"ceiling": run, "host_ms_per_sampled_frame": ms, "capacity": capacity(ms["total"],
                                                                                          manifest.stride)}  # fmt: skip
    on_host = runs["host"]
    return {
        "host_ceiling_sampled_fps": on_host["ceiling"]["sampled_fps"],
        "host_ms_per_sampled_frame": on_host["host_ms_per_sampled_frame"],
        "host": {"ceiling": on_host["ceiling"], "cores": usable_cores(), "capacity": on_host["capacity"],
                 **{key: runs[mode] for mode, (key, _, _) in MODES.items() if key},
                 "references_ms_per_50_crops": {k: {"ms": v, "source": src} for k, (v, src) in REFERENCE_MS.items()},
                 "timed": "host CPU = thread CPU time inside each stage summed over threads (stageclock), other = "
                 "the process's CPU time beyond the stages, total = the process's CPU time, each per sampled frame "
                 "(decode of every frame included); localization per alarm frame, timed alone; ceiling = sampled "
                 "frames/s with sim:0 on this machine's cores, float32 crops cut on the host; uint8_crops: the same "
                 "with sim:0:u8 (uint8 crops cut on the host, normalised on the device, as TensorRT with "
                 "model.pre.plan); device_windows: with sim:0:device (windows cut on the device from 224x224 uint8 "
                 "frames, as the PyTorch CUDA backend)"},
    }  # fmt: skip
