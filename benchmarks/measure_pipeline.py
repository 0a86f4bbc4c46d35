"""Pipeline efficiency of the runtime: sampled frames/s through the Detector vs the bare encoder.

    python benchmarks/measure_pipeline.py --clip ViT-B-16:random --frames 48 [--int8]

Builds a random-weights bundle of the architecture (checkpoint with a random head -> stp-export), writes a
640x360 test video, then times (1) the Detector on all frames of the video (decode excluded: frames are in
memory; preprocessing, encoder, head and events included) and (2) the bare encoder on the same crops in the
same batches. Efficiency = (2) / (1). Prints JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def make_bundle(clip_spec: str, out: Path, int8: bool) -> Path:
    import torch

    from stprompt.checkpoint import Checkpoint
    from stprompt.clip.loader import load_clip
    from stprompt.export import cli as export_cli
    from stprompt.model.config import HeadConfig
    from stprompt.model.head import STPromptHead

    clip = load_clip(clip_spec)
    torch.manual_seed(0)
    cfg = HeadConfig(dim=clip.dim, n_classes=2)
    ckpt = Checkpoint(cfg, ["normal", "Fighting"], ["normal", "fighting"], str(clip.spec), clip.sha256, 16,
                      STPromptHead(cfg).state_dict(), torch.zeros(8, 1), torch.randn(2, clip.dim))  # fmt: skip
    ckpt.save(out / "model.pt")
    argv = ["--ckpt", str(out / "model.pt"), "--out", str(out / "model"), "--quiet", "--probe-frames", "1"]
    with contextlib.redirect_stdout(sys.stderr):  # stp-export prints the manifest path
        assert export_cli.main(argv + (["--int8-cpu"] if int8 else [])) == 0
    return out / ("model.int8.onnx" if int8 else "model.onnx")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="ViT-B-16:random")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--int8", action="store_true")
    args = p.parse_args()
    from stprompt import windows
    from stprompt.runtime.api import open_detector
    from stprompt.runtime.detector import AlarmSettings
    from stprompt.runtime.sources import Frame

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        engine = make_bundle(args.clip, Path(tmp), args.int8)
        export_s = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        frames = [cv2.GaussianBlur(rng.integers(0, 256, (360, 640, 3), dtype=np.uint8), (0, 0), 3)
                  for _ in range(args.frames)]  # fmt: skip
        # alarms off: localization encodes extra scale-B crops that the bare-encoder row does not
        detector = open_detector(str(engine), alarm=AlarmSettings(on=1.0, off=1.0, min_snippets=10**9))
        detector.backend.encode(windows.encoder_batch(frames[0])[:2])  # warm-up
        t0 = time.perf_counter()
        events = detector.process([("v", Frame(f, i, i / 25)) for i, f in enumerate(frames)]) + detector.finish("v")
        pipeline_s = time.perf_counter() - t0
        sampled = [f for i, f in enumerate(frames) if i % 16 == 8]
        crops = np.concatenate([windows.encoder_batch(f) for f in sampled])
        t0 = time.perf_counter()
        detector.backend.encode(crops)
        bare_s = time.perf_counter() - t0
    n = len(sampled)
    print(json.dumps({
        "clip": args.clip, "engine": engine.name, "frames": args.frames, "sampled_frames": n,
        "crops": len(crops), "export_s": round(export_s, 1),
        "pipeline_sampled_fps": n / pipeline_s, "pipeline_s_per_sampled_frame": pipeline_s / n,
        "bare_encoder_sampled_fps": n / bare_s, "crops_per_s_bare": len(crops) / bare_s,
        "pipeline_efficiency": bare_s / pipeline_s, "frame_events": sum(e["type"] == "frame" for e in events),
        "detector_crops": detector.stats["crops"],
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
