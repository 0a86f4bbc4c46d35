"""Motion gating trade-off: crops skipped, speed-up and score deviation per threshold (the README's gating table).

    python benchmarks/measure_gating.py --engine BUNDLE/model.onnx --data DATASET [--split test]
        [--thresholds 0,0.5,1,2,4,8] [--videos N] [--json OUT]

For every threshold the Detector runs over the split's videos exactly as stp-run does (decode included, exact
lookahead, alarms off so that localization's extra crops do not blur the encoder comparison) and the table
reports: the share of scale-A window crops that reused a cached embedding, sampled frames/s and the speed-up over
threshold 0 (ungated), the largest and mean absolute score deviation from the ungated run, and the frame AUC of
both (with the dataset's labels).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from stprompt.bench.stages import NO_ALARMS
from stprompt.data.annotations import load
from stprompt.metrics import frame_auc, snippet_to_frames
from stprompt.runtime.backends import open_backend
from stprompt.runtime.detector import Detector
from stprompt.runtime.sources import VideoFileSource


def run_video(backend, manifest, path: Path, gate: float) -> tuple[np.ndarray, float, dict]:
    detector = Detector(backend, manifest, alarm=NO_ALARMS, gate=gate)
    src = VideoFileSource(path)
    events, t0 = [], time.perf_counter()
    try:
        while (frame := src.read()) is not None:
            events += detector.process([("v", frame)])
        events += detector.finish("v")
    finally:
        src.close()
    seconds = time.perf_counter() - t0
    scores = np.array([e["score"] for e in events if e["type"] == "frame"], np.float64)
    return scores, seconds, dict(detector.stats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True)
    p.add_argument("--data", required=True, help="dataset folder with annotations.json")
    p.add_argument("--split", default="test")
    p.add_argument("--thresholds", default="0,0.5,1,2,4,8")
    p.add_argument("--videos", type=int, default=0, help="first N videos of the split (0 = all)")
    p.add_argument("--json")
    args = p.parse_args()
    ann = load(Path(args.data) / "annotations.json")
    videos = ann.split(args.split)[: args.videos or None]
    backend, manifest = open_backend(args.engine)
    backend.encode(np.zeros((2, 3, 224, 224), np.float32))  # warm-up
    thresholds = [float(t) for t in args.thresholds.split(",")]
    if thresholds[0] != 0:
        thresholds.insert(0, 0.0)
    reference: dict[str, np.ndarray] = {}
    rows = []
    for thr in thresholds:
        seconds, sampled, skipped, windows_total, labels, scores, devs = 0.0, 0, 0, 0, [], [], []
        for v in videos:
            s, dt, stats = run_video(backend, manifest, Path(args.data) / v.path, thr)
            seconds += dt
            sampled += stats["sampled"]
            skipped += stats["gated_crops"]
            windows_total += stats["sampled"] * 49
            if thr == 0:
                reference[v.path] = s
            devs.append(np.abs(s - reference[v.path]))
            labels.append(v.frame_labels(len(s) * manifest.stride))
            scores.append(snippet_to_frames(s, manifest.stride))
        dev = np.concatenate(devs)
        row = {"threshold": thr, "skipped_windows": skipped / max(1, windows_total),
               "sampled_fps": sampled / seconds, "max_abs_dev": float(dev.max()), "mean_abs_dev": float(dev.mean()),
               "frame_auc": frame_auc(np.concatenate(labels), np.concatenate(scores))}  # fmt: skip
        row["speedup"] = row["sampled_fps"] / rows[0]["sampled_fps"] if rows else 1.0
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    result = {"engine": args.engine, "clip": manifest.clip, "data": args.data, "split": args.split,
              "videos": len(videos), "rows": rows}  # fmt: skip
    print(f"{'gate':>6}{'skipped':>9}{'sampled/s':>11}{'speed-up':>10}{'max |dev|':>11}{'mean |dev|':>12}{'AUC':>8}")
    for r in rows:
        auc = f"{r['frame_auc']:.4f}" if r["frame_auc"] is not None else "-"
        print(f"{r['threshold']:>6g}{r['skipped_windows']:>9.1%}{r['sampled_fps']:>11.3f}{r['speedup']:>10.2f}"
              f"{r['max_abs_dev']:>11.2e}{r['mean_abs_dev']:>12.2e}{auc:>8}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
