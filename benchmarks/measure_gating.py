"""Motion gating trade-off: crops skipped, speed-up and score deviation per setting (the README's gating tables).

Annotated dataset (frame AUC too):

    python benchmarks/measure_gating.py --engine BUNDLE/model.onnx --data DATASET [--split test]
        [--thresholds 0,0.5,1,2,4,8] [--refresh 0] [--videos N] [--json OUT]

Plain video files, no annotations (e.g. real public surveillance clips):

    python benchmarks/measure_gating.py --engine BUNDLE/model.onnx --clips A.mp4 B.mp4 ...
        [--thresholds 0,1,2,4,8] [--refresh 0,4,8,16] [--max-frames N] [--json OUT]

For every (threshold, refresh) setting the Detector runs over the videos as stp-run does (exact lookahead,
alarms off so that localization's extra crops do not blur the encoder comparison; `--refresh` is stp-run's
--gate-refresh). Dataset mode reports the share of scale-A window crops that reused a cached embedding, sampled
frames/s (decode included) and the speed-up over threshold 0 (ungated), the largest and mean absolute score
deviation from the ungated run, and the frame AUC of both (with the dataset's labels).

Clips mode reports per clip and setting: the skipped share, the p50 / p90 / p99 / max of |gated - exact score| per
snippet, that max divided by the clip's own exact score spread (p95 - p5 of the exact scores), the Spearman rank
correlation of gated vs exact snippet scores, and the most, p90 and mean windows encoded per sampled frame (the load
spikes forced refreshes cause; `--compare-stagger` adds unstaggered refresh rows). Each clip is decoded once and its
sampled frames kept in memory. By default the encoder runs once per clip (the exact pass) and the gated passes
reuse those embeddings (`--memo`: every crop a gated pass encodes is a crop of the exact pass, same pixels, so
its embedding is looked up by content instead of recomputed; scores within float noise of a real run, and no speed
column); `--no-memo` encodes every pass for real and reports sampled frames/s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from stprompt.bench.stages import NO_ALARMS
from stprompt.runtime.backends import open_backend
from stprompt.runtime.detector import Detector
from stprompt.runtime.frames import Frame
from stprompt.runtime.gating import WindowGate
from stprompt.runtime.sources import VideoFileSource
from stprompt.sampling import is_sampled


class MemoBackend:
    """The backend, with every crop's embedding remembered by the crop's bytes (and encoder calls recorded)."""

    def __init__(self, backend, memo: bool = True):
        self.backend, self.memo = backend, memo
        self.cache: dict[bytes, np.ndarray] = {}
        self.calls: list[int] = []  # crops per encoder call: one call per sampled frame here
        self.encoded = 0

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def encode(self, images: np.ndarray) -> np.ndarray:
        if len(images):
            self.calls.append(len(images))
        if not self.memo or not len(images):
            self.encoded += len(images)
            return self.backend.encode(images)
        keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in images]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            self.encoded += len(missing)
            for i, e in zip(missing, self.backend.encode(np.ascontiguousarray(images[missing])), strict=True):
                self.cache[keys[i]] = e
        return np.stack([self.cache[k] for k in keys])


def run_frames(backend, manifest, frames, gate: float, refresh: int, stagger: bool = True):
    """Scores, seconds and stats of one Detector pass over `frames` (a list of Frame, one stream)."""
    detector = Detector(backend, manifest, alarm=NO_ALARMS, gate=gate, gate_refresh=refresh)
    detector.gate = WindowGate(gate, detector.scale_a, refresh=refresh, stagger=stagger)
    events, t0 = [], time.perf_counter()
    for frame in frames:
        events += detector.process([("v", frame)])
    events += detector.finish("v")
    seconds = time.perf_counter() - t0
    scores = np.array([e["score"] for e in events if e["type"] == "frame"], np.float64)
    return scores, seconds, {**detector.stats, "refreshed": detector.gate.stats["refreshed"]}


def read_frames(path: Path, stride: int, offset: int, max_frames: int = 0) -> tuple[list[Frame], float]:
    """Every frame of a video, only the sampled ones with their image (the Detector never looks at the others)."""
    src = VideoFileSource(path)
    frames, blank = [], np.zeros((1, 1, 3), np.uint8)
    try:
        while (frame := src.read()) is not None and (not max_frames or len(frames) < max_frames):
            keep = is_sampled(frame.index, stride, offset)
            frames.append(frame if keep else Frame(blank, frame.index, frame.time))
    finally:
        src.close()
    return frames, src.fps


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    try:
        from scipy.stats import spearmanr
    except ImportError:  # ranks by numpy (ties broken by position)
        ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
        return float(np.corrcoef(ra, rb)[0, 1])
    return float(spearmanr(a, b).statistic)


def settings(thresholds: list[float], refreshes: list[int], compare_stagger: bool) -> list[tuple[float, int, bool]]:
    """(gate, refresh, stagger): gate 0 once (refresh means nothing ungated), then every gate x refresh."""
    out = [(0.0, 0, True)]
    for thr in thresholds:
        for r in refreshes if thr > 0 else ():
            out.append((thr, r, True))
            if compare_stagger and r > 1:
                out.append((thr, r, False))
    return out


def clips_mode(args, backend, manifest, thresholds, refreshes) -> dict:
    clips = []
    for path in map(Path, args.clips):
        frames, fps = read_frames(path, manifest.stride, manifest.offset, args.max_frames)
        memo = MemoBackend(backend, memo=args.memo)
        rows, exact, spread = [], None, 0.0
        for gate, refresh, stagger in settings(thresholds, refreshes, args.compare_stagger):
            memo.calls = []
            scores, seconds, stats = run_frames(memo, manifest, frames, gate, refresh, stagger)
            if exact is None:
                exact = scores
                spread = float(np.percentile(exact, 95) - np.percentile(exact, 5))
            dev = np.abs(scores - exact)
            per_frame = np.array(memo.calls[1:], np.int64) - 1  # windows encoded per sampled frame after the first
            windows_total = stats["sampled"] * 49
            row = {
                "gate": gate, "refresh": refresh, "stagger": stagger, "snippets": len(scores),
                "skipped": stats["gated_crops"] / max(1, windows_total),
                "refreshed": stats["refreshed"] / max(1, windows_total),
                "dev_p50": float(np.percentile(dev, 50)), "dev_p90": float(np.percentile(dev, 90)),
                "dev_p99": float(np.percentile(dev, 99)), "dev_max": float(dev.max()),
                "max_over_spread": float(dev.max() / spread) if spread > 0 else None,
                "spearman": spearman(scores, exact) if gate > 0 else 1.0,
                "windows_per_frame_max": int(per_frame.max()) if len(per_frame) else 0,
                "windows_per_frame_p90": float(np.percentile(per_frame, 90)) if len(per_frame) else 0.0,
                "windows_per_frame_mean": float(per_frame.mean()) if len(per_frame) else 0.0,
            }  # fmt: skip
            if not args.memo:
                row["sampled_fps"] = stats["sampled"] / seconds
            rows.append(row)
            print(json.dumps({"clip": path.name, **row}), file=sys.stderr, flush=True)
        p5, p95 = np.percentile(exact, [5, 95])
        clips.append({"clip": path.name, "frames": len(frames), "fps": fps, "sampled": int(stats["sampled"]),
                      "exact_score_p5": float(p5), "exact_score_p95": float(p95), "spread": spread,
                      "encoded_crops": memo.encoded, "rows": rows})  # fmt: skip
    print(f"{'clip':<34}{'gate':>5}{'ref':>4}{'stg':>4}{'skipped':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}"
          f"{'max/spr':>8}{'rho':>7}{'win/f max':>10}{'p90':>5}{'mean':>6}")  # fmt: skip
    for c in clips:
        print(f"{c['clip']} ({c['sampled']} sampled frames, exact spread p95-p5 {c['spread']:.3g})")
        for r in c["rows"]:
            ratio = f"{r['max_over_spread']:.2f}" if r["max_over_spread"] is not None else "-"
            print(f"{'':<34}{r['gate']:>5g}{r['refresh']:>4}{'y' if r['stagger'] else 'n':>4}{r['skipped']:>9.1%}"
                  f"{r['dev_p50']:>9.1e}{r['dev_p90']:>9.1e}{r['dev_p99']:>9.1e}{r['dev_max']:>9.1e}{ratio:>8}"
                  f"{r['spearman']:>7.3f}{r['windows_per_frame_max']:>10}{r['windows_per_frame_p90']:>5.0f}"
                  f"{r['windows_per_frame_mean']:>6.1f}")  # fmt: skip
    return {"engine": args.engine, "clip_model": manifest.clip, "stride": int(manifest.stride), "memo": args.memo,
            "max_frames": args.max_frames, "clips": clips}  # fmt: skip


def data_mode(args, backend, manifest, thresholds, refreshes) -> dict:
    from stprompt.data.annotations import load
    from stprompt.metrics import frame_auc, snippet_to_frames

    ann = load(Path(args.data) / "annotations.json")
    videos = ann.split(args.split)[: args.videos or None]
    reference: dict[str, np.ndarray] = {}
    rows = []
    for thr, refresh, stagger in settings(thresholds, refreshes, False):
        seconds, sampled, skipped, windows_total, labels, scores, devs = 0.0, 0, 0, 0, [], [], []
        for v in videos:
            t0 = time.perf_counter()  # decode included in the speed, as before
            frames, _ = read_frames(Path(args.data) / v.path, manifest.stride, manifest.offset)
            s, _, stats = run_frames(backend, manifest, frames, thr, refresh, stagger)
            seconds += time.perf_counter() - t0
            sampled += stats["sampled"]
            skipped += stats["gated_crops"]
            windows_total += stats["sampled"] * 49
            if thr == 0:
                reference[v.path] = s
            devs.append(np.abs(s - reference[v.path]))
            labels.append(v.frame_labels(len(s) * manifest.stride))
            scores.append(snippet_to_frames(s, manifest.stride))
        dev = np.concatenate(devs)
        row = {"threshold": thr, "refresh": refresh, "skipped_windows": skipped / max(1, windows_total),
               "sampled_fps": sampled / seconds, "max_abs_dev": float(dev.max()), "mean_abs_dev": float(dev.mean()),
               "frame_auc": frame_auc(np.concatenate(labels), np.concatenate(scores))}  # fmt: skip
        row["speedup"] = row["sampled_fps"] / rows[0]["sampled_fps"] if rows else 1.0
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"{'gate':>6}{'ref':>4}{'skipped':>9}{'sampled/s':>11}{'speed-up':>10}{'max |dev|':>11}{'mean |dev|':>12}"
          f"{'AUC':>8}")  # fmt: skip
    for r in rows:
        auc = f"{r['frame_auc']:.4f}" if r["frame_auc"] is not None else "-"
        print(f"{r['threshold']:>6g}{r['refresh']:>4}{r['skipped_windows']:>9.1%}{r['sampled_fps']:>11.3f}"
              f"{r['speedup']:>10.2f}{r['max_abs_dev']:>11.2e}{r['mean_abs_dev']:>12.2e}{auc:>8}")  # fmt: skip
    return {"engine": args.engine, "clip": manifest.clip, "data": args.data, "split": args.split,
            "videos": len(videos), "rows": rows}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", help="dataset folder with annotations.json")
    what.add_argument("--clips", nargs="+", metavar="VIDEO", help="plain video files (no annotations)")
    p.add_argument("--split", default="test")
    p.add_argument("--thresholds", help="gates in grey levels (default 0,0.5,1,2,4,8; clips: 0,1,2,4,8)")
    p.add_argument("--refresh", help="--gate-refresh values, sampled frames (default 0; clips: 0,4,8,16)")
    p.add_argument("--videos", type=int, default=0, help="dataset: first N videos of the split (0 = all)")
    p.add_argument("--max-frames", type=int, default=0, help="clips: first N frames of each (0 = all)")
    p.add_argument("--memo", action=argparse.BooleanOptionalAction, default=True,
                   help="clips: encode each crop once, gated passes reuse the exact pass's embeddings")  # fmt: skip
    p.add_argument("--compare-stagger", action="store_true", help="clips: also unstaggered refresh rows")
    p.add_argument("--json")
    args = p.parse_args()
    thresholds = [float(t) for t in (args.thresholds or ("0,1,2,4,8" if args.clips else "0,0.5,1,2,4,8")).split(",")]
    refreshes = [int(r) for r in (args.refresh or ("0,4,8,16" if args.clips else "0")).split(",")]
    backend, manifest = open_backend(args.engine)
    backend.encode(np.zeros((2, 3, 224, 224), np.float32))  # warm-up
    if args.clips:
        result = clips_mode(args, backend, manifest, thresholds, refreshes)
    else:
        result = data_mode(args, backend, manifest, thresholds, refreshes)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
