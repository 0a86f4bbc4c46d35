"""`stp-demo`: the whole offline chain on CPU in a few minutes, and what its numbers mean.

Two chains, each step the library function behind the console verb a user runs (with that verb's own defaults),
called in-process:

- video: synthetic dataset (stp-synth) -> features (stp-extract, `--clip`: the random-weight stp-tiny by default,
  with scale-B windows) -> training (stp-train) -> evaluation with localization (stp-eval --localize) -> bundle
  (stp-export) -> streaming run on a test video (stp-run: events + annotated video);
- controlled: features with planted anomalies and a known truth (`data.feature_synth`) -> stp-train -> stp-eval.
  Random CLIP weights leave the video chain at chance; here the features carry the anomaly, so this shows the
  learning machinery at work where it can be seen without real weights.

The summary on stderr says what the numbers mean and what would change them; OUT/summary.json holds both chains'
metrics and every file, paths relative to OUT. OUT/demo.json records the settings that made the dataset, the
features and the controlled features: a rerun reuses a part made with the same settings (extraction resumes),
makes again a part made with other ones and says so, and refuses a part it has no record of (an older stp-demo,
another tool), so a run never trains on data its flags did not ask for.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .cliformat import HelpFormatter
from .errors import UserError, cli_entry
from .fileio import atomic_write_json, check_writable

T = TypeVar("T")
LEDGER = "demo.json"
# the controlled stage: sizes and schedule measured to finish in about 20 s on a busy 2-core machine, frame AUC
# 0.92-0.99 over seeds 0-2 (feature_synth defaults otherwise: D = the CLIP's, 4 anomaly classes, stride 4)
CONTROLLED_VIDEOS = {"n_train": 48, "n_test": 24}
CONTROLLED_TRAIN = ["--steps", "80", "--batch", "16", "--lr", "1e-3"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stp-demo",
        description="Run synth -> extract -> train -> eval (+ localization) -> export -> stp-run on CPU, then the same "
        "training and evaluation on controlled features with planted anomalies; everything in OUT.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--out", default="stp-demo-out", help="output folder")
    p.add_argument("--train", type=int, default=16, help="synthetic training videos")
    p.add_argument("--test", type=int, default=8, help="synthetic test videos")
    p.add_argument("--frames", type=int, default=192, help="frames per synthetic video")
    p.add_argument("--stride", type=int, default=8, help="sample one frame in STRIDE")
    p.add_argument("--epochs", type=int, default=100, help="training epochs (the dataset is small)")
    p.add_argument("--clip", default="stp-tiny", help="ClipSpec for extraction (random tiny CLIP by default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the datasets and of training")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fastest on a busy machine, where "
                   "more threads wait on each other; 0 = torch's default)")  # fmt: skip
    return p


def _step(name: str, what: str, work: Callable[[], T]) -> T:
    """Run one verb's library function with a progress line before and a timing line after."""
    print(f"stp-demo: {name}: {what}", file=sys.stderr)
    t0 = time.perf_counter()
    result = work()
    print(f"stp-demo: {name} done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return result


def _say(text: str) -> None:
    print(f"stp-demo: {text}", file=sys.stderr)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _settings(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items())


# -- what OUT holds: reuse, make again, or refuse ----------------------------------------------------------------
def read_ledger(out: Path) -> dict[str, dict[str, Any]]:
    """OUT/demo.json: per part (dataset, features, controlled) the settings that made it; {} when absent."""
    path = out / LEDGER
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err}); remove {out} or choose another --out") from None
    return data if isinstance(data, dict) else {}


def reuse_part(out: Path, ledger: dict, part: str, folder: Path, wanted: dict[str, Any], stale: bool = False) -> bool:
    """True when `folder` holds `part` made with `wanted` (reuse it); else False after removing what stands there
    and saying so. A folder the ledger has no record of is not the demo's to remove: UserError. `stale`: a part it
    was made from changed, so it is made again whatever its own settings."""
    recorded = ledger.get(part)
    if not folder.exists():
        ledger.pop(part, None)
        return False
    if recorded is None:
        raise UserError(f"{folder} exists but {out / LEDGER} has no record of it (an older stp-demo or another tool "
                        f"made it); remove it or choose another --out")  # fmt: skip
    if recorded == wanted and not stale:
        _say(f"reusing {folder} ({_settings(wanted)})")
        return True
    if recorded.get("finished") is False:
        why = "an earlier run stopped before it was complete"
    else:
        why = "its dataset changed" if recorded == wanted else f"it was made with {_settings(recorded)}"
    _say(f"making {folder} again for {_settings(wanted)}: {why}")
    shutil.rmtree(folder)
    ledger.pop(part)
    atomic_write_json(out / LEDGER, ledger)
    return False


def record_part(out: Path, ledger: dict, part: str, settings: dict[str, Any]) -> None:
    ledger[part] = settings
    atomic_write_json(out / LEDGER, ledger)


# -- the two chains ------------------------------------------------------------------------------------------------
def video_chain(args: argparse.Namespace, out: Path, ledger: dict) -> dict[str, Any]:
    """synth -> extract -> train -> eval --localize -> export -> stp-run on one test video: metrics, streamed-run
    facts and files."""
    from . import evaluate, extract, train, windows
    from .data import annotations as ann_mod
    from .data.features import FeatureStore
    from .data.synth import generate
    from .export.bundle import export_bundle
    from .export.options import ExportOptions

    data, feats, model = out / "data", out / "features", out / "model.pt"
    dataset = {"train": args.train, "test": args.test, "frames": args.frames, "seed": args.seed}
    earlier = "dataset" in ledger
    kept = reuse_part(out, ledger, "dataset", data, dataset)
    if earlier and not kept and (out / "plots").is_dir():  # pictures of videos the new dataset may not have
        shutil.rmtree(out / "plots")
    if not kept:
        record_part(out, ledger, "dataset", {**dataset, "finished": False})
        what = f"{args.train} train + {args.test} test videos of {args.frames} frames -> {data}"
        _step("synth", what, lambda: generate(data, n_train=args.train, n_test=args.test, n_frames=args.frames,
                                              seed=args.seed))  # fmt: skip
        record_part(out, ledger, "dataset", dataset)
    reuse_part(out, ledger, "features", feats, {"clip": args.clip, "stride": args.stride}, stale=not kept)
    record_part(out, ledger, "features", {"clip": args.clip, "stride": args.stride})  # extraction resumes in it
    # one frame's crops per encoder call: on a CPU larger calls cost memory and page faults, not time (measured
    # under load: 17 s for two videos at 66 crops and one thread, 36 s at stp-extract's default 250 and two threads)
    extract_args = extract.build_parser().parse_args(
        [str(data), "--out", str(feats), "--clip", args.clip, "--stride", str(args.stride), "--scale-b",
         "--threads", str(args.threads), "--batch", str(windows.crops_per_frame(True))]
    )  # fmt: skip
    status = _step("extract", f"{args.clip} features, stride {args.stride} -> {feats}",
                   lambda: extract.extract_dataset(extract_args))  # fmt: skip
    if status != 0:
        raise UserError("some videos could not be extracted; see the messages above")
    train_args = train.build_parser().parse_args(
        [str(feats), "--out", str(model), "--epochs", str(args.epochs), "--seed", str(args.seed),
         "--threads", str(args.threads)]
    )  # fmt: skip
    _step("train", f"{args.epochs} epochs -> {model}", lambda: train.train(FeatureStore.open(feats), train_args))
    eval_args = evaluate.build_parser().parse_args(
        [str(feats), "--ckpt", str(model), "--localize", "--predictions", str(out / "predictions.json"),
         "--plots", str(out / "plots")]
    )  # fmt: skip
    metrics = _step("eval", "frame AUC, TIoU, plots", lambda: evaluate.evaluate(eval_args))
    stem = out / "bundle" / "model"
    _step("export", f"bundle -> {stem}.json",
          lambda: export_bundle(model, stem, ExportOptions(), log=lambda _msg: None))  # fmt: skip
    ds = ann_mod.load(data)
    test_videos = ds.split("test")
    shown = next((v for v in test_videos if v.is_anomalous), test_videos[0])
    streamed = ds.video_path(shown)
    stream = _step("run", f"stp-run on {streamed} -> {out / 'events.jsonl'}, {out / 'annotated.mp4'}",
                   lambda: stream_video(f"{stem}.onnx", streamed, out))  # fmt: skip
    return {"metrics": metrics, "stream": {**stream, "video": shown.path, "labels": shown.labels},
            "files": {"dataset": data, "features": feats, "checkpoint": model, "predictions": out / "predictions.json",
                      "plots": out / "plots", "bundle": Path(f"{stem}.json"), "events": out / "events.jsonl",
                      "annotated_video": out / "annotated.mp4", "streamed_video": streamed}}  # fmt: skip


def stream_video(engine: str, video: Path, out: Path) -> dict[str, Any]:
    """stp-run's pipeline on one video into events.jsonl and annotated.mp4: its snippets, alarms, highest score and
    the alarm threshold (what the annotated video shows, in numbers)."""
    from .runtime.api import open_pipeline

    pipeline = open_pipeline(engine, [str(video)], outputs=[str(out / "events.jsonl"), str(out / "annotated.mp4")])
    threshold = pipeline.detector.alarm.on
    stats = pipeline.run()
    scores = [e["score"] for e in map(json.loads, (out / "events.jsonl").read_text().splitlines())
              if e.get("type") == "frame"]  # fmt: skip
    return {"snippets": int(stats["snippets"]), "alarms": int(stats["alarms"]),
            "max_score": max(scores, default=0.0), "alarm_threshold": threshold}  # fmt: skip


def controlled_chain(args: argparse.Namespace, out: Path, ledger: dict) -> dict[str, Any]:
    """Planted-anomaly features for the same CLIP (its width and prompts) -> stp-train -> stp-eval: the metrics."""
    from . import evaluate, train
    from .data.feature_synth import make_feature_dataset
    from .data.features import FeatureStore

    video_feats = FeatureStore.open(out / "features")
    root = out / "controlled"
    feats, model = root / "features", root / "model.pt"
    wanted = {**CONTROLLED_VIDEOS, "seed": args.seed, "clip": args.clip}
    if not reuse_part(out, ledger, "controlled", root, wanted):
        record_part(out, ledger, "controlled", {**wanted, "finished": False})
        _step("controlled", f"{CONTROLLED_VIDEOS['n_train']} train + {CONTROLLED_VIDEOS['n_test']} test videos of "
              f"planted-anomaly features -> {feats}",
              lambda: make_feature_dataset(feats, dim=video_feats.dim, clip=video_feats.index["clip"],
                                           clip_sha256=video_feats.index["clip_sha256"], seed=args.seed,
                                           **CONTROLLED_VIDEOS))  # fmt: skip
        record_part(out, ledger, "controlled", wanted)
    train_args = train.build_parser().parse_args(
        [str(feats), "--out", str(model), *CONTROLLED_TRAIN, "--seed", str(args.seed), "--threads", str(args.threads),
         "--quiet"]
    )  # fmt: skip
    _step("controlled train", f"{CONTROLLED_TRAIN[1]} steps -> {model}",
          lambda: train.train(FeatureStore.open(feats), train_args))  # fmt: skip
    eval_args = evaluate.build_parser().parse_args([str(feats), "--ckpt", str(model), "--plots", str(root / "plots")])
    metrics = _step("controlled eval", "frame AUC, plots", lambda: evaluate.evaluate(eval_args))
    return {"metrics": metrics, "files": {"controlled_features": feats, "controlled_checkpoint": model,
                                          "controlled_plots": root / "plots"}}  # fmt: skip


# -- what the numbers mean -----------------------------------------------------------------------------------------
def explain(clip: str, video: dict[str, Any], controlled: dict[str, Any], out: Path, seconds: float) -> list[str]:
    """The summary a newcomer reads: both chains' numbers, what they mean here and what would change them."""
    from .clip.spec import ClipSpec

    m, c, s = video["metrics"], controlled["metrics"], video["stream"]
    random = ClipSpec.parse(clip).source == "random"
    lines = [f"video chain ({clip}{', random weights' if random else ''}): frame AUC {_fmt(m.get('auc'))} (C-branch "
             f"{_fmt(m.get('auc_c'))}), TIoU {_fmt(m.get('tiou'))} on {m['n_videos']} test videos"]  # fmt: skip
    if random:
        lines.append("  random CLIP weights give features that mean nothing, so a frame AUC near 0.5 (chance; 1.0 "
                     "is perfect) and a TIoU near 0 are the expected result: this run shows the chain works end to "
                     "end, not that it detects")  # fmt: skip
    if s["alarms"] == 0:
        lines.append(f"  the annotated video ({s['video']}) calls every frame normal: its highest score is "
                     f"{s['max_score']:.2f}, under the alarm threshold {s['alarm_threshold']:.2f}")  # fmt: skip
    else:
        alarms = f"{s['alarms']} alarm{'s' * (s['alarms'] != 1)}"
        chance = ": by chance" if random else ""
        lines.append(f"  the annotated video ({s['video']}) raised {alarms}, highest score {s['max_score']:.2f} "
                     f"against the alarm threshold {s['alarm_threshold']:.2f}{chance}")  # fmt: skip
    lines.append("  what changes them: real CLIP weights (--clip ViT-B-16:openai, a download) and real footage "
                 "(stp-import); README, What to expect")  # fmt: skip
    lines.append(f"controlled features (planted anomalies, known truth): frame AUC {_fmt(c.get('auc'))} (C-branch "
                 f"{_fmt(c.get('auc_c'))}) on {c['n_videos']} test videos: the same training and evaluation find "
                 "anomalies when the features carry them")  # fmt: skip
    lines.append(f"{seconds:.0f} s; results in {out / 'summary.json'}, score plots in {out / 'plots'} and "
                 f"{out / 'controlled' / 'plots'}, the annotated video {out / 'annotated.mp4'}")  # fmt: skip
    return lines


def summary_json(args: argparse.Namespace, video: dict[str, Any], controlled: dict[str, Any], out: Path,
                 seconds: float, lines: list[str]) -> dict[str, Any]:  # fmt: skip
    """summary.json: both chains' metrics, the streamed run, the explanation, every file relative to OUT."""
    files = {**video["files"], **controlled["files"]}
    return {
        "metrics": video["metrics"],
        "controlled_metrics": controlled["metrics"],
        "stream": video["stream"],
        "clip": args.clip,
        "seconds": round(seconds, 1),
        "paths": "relative to this file's folder",
        "files": {k: Path(os.path.relpath(v, out)).as_posix() for k, v in files.items()},
        "explanation": [line.strip() for line in lines[:-1]],
    }


@cli_entry("stp-demo")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    check_writable(out, "--out", folder=True)  # before any step: summary.json is written last
    out.mkdir(parents=True, exist_ok=True)
    ledger = read_ledger(out)
    t0 = time.perf_counter()
    video = video_chain(args, out, ledger)
    controlled = controlled_chain(args, out, ledger)
    seconds = time.perf_counter() - t0
    lines = explain(args.clip, video, controlled, out, seconds)
    atomic_write_json(out / "summary.json", summary_json(args, video, controlled, out, seconds, lines))
    for line in lines:
        _say(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
