"""`stp-demo`: the whole offline chain on an embedded default, on CPU, in a few minutes.

synthetic dataset (stp-synth) -> features (stp-extract, stp-tiny random CLIP, with scale-B windows) ->
training (stp-train) -> evaluation with localization (stp-eval --localize) -> bundle (stp-export) ->
streaming run on a test video (stp-run: events + annotated video) -> OUT/summary.json.
Each step is the library function behind the console verb a user runs (with that verb's own defaults), called
in-process; a finished step is not redone when the demo is run again into the same folder (extraction resumes,
the dataset is kept).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .cliformat import HelpFormatter
from .errors import UserError, cli_entry
from .fileio import atomic_write_json, check_writable

T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stp-demo",
        description="Run synth -> extract -> train -> eval (+ localization) on CPU and leave everything in OUT.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--out", default="stp-demo-out", help="output folder")
    p.add_argument("--train", type=int, default=16, help="synthetic training videos")
    p.add_argument("--test", type=int, default=8, help="synthetic test videos")
    p.add_argument("--frames", type=int, default=192, help="frames per synthetic video")
    p.add_argument("--stride", type=int, default=8, help="sample one frame in STRIDE")
    p.add_argument("--epochs", type=int, default=100, help="training epochs (the dataset is small)")
    p.add_argument("--clip", default="stp-tiny", help="ClipSpec for extraction (random tiny CLIP by default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dataset and of training")
    return p


def _step(name: str, what: str, work: Callable[[], T]) -> T:
    """Run one verb's library function with a progress line before and a timing line after."""
    print(f"stp-demo: {name}: {what}", file=sys.stderr)
    t0 = time.perf_counter()
    result = work()
    print(f"stp-demo: {name} done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return result


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@cli_entry("stp-demo")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import evaluate, extract, train
    from .data import annotations as ann_mod
    from .data.features import FeatureStore
    from .data.synth import generate
    from .export.bundle import export_bundle
    from .export.options import ExportOptions
    from .runtime.api import open_pipeline

    out = Path(args.out)
    check_writable(out, "--out", folder=True)  # before any step: summary.json is written last
    data, feats, model = out / "data", out / "features", out / "model.pt"
    t0 = time.perf_counter()
    if not (data / "annotations.json").is_file():
        _step("synth", f"{args.train} train + {args.test} test videos of {args.frames} frames -> {data}",
              lambda: generate(data, n_train=args.train, n_test=args.test, n_frames=args.frames, seed=args.seed))
    # each verb runs with its own parser's defaults (the SPEC defaults) plus what the demo sets
    extract_args = extract.build_parser().parse_args(
        [str(data), "--out", str(feats), "--clip", args.clip, "--stride", str(args.stride), "--scale-b"]
    )
    if _step("extract", f"{args.clip} features, stride {args.stride} -> {feats}",
             lambda: extract.extract_dataset(extract_args)) != 0:
        raise UserError("some videos could not be extracted; see the messages above")
    train_args = train.build_parser().parse_args(
        [str(feats), "--out", str(model), "--epochs", str(args.epochs), "--seed", str(args.seed)]
    )
    _step("train", f"{args.epochs} epochs -> {model}", lambda: train.train(FeatureStore.open(feats), train_args))
    eval_args = evaluate.build_parser().parse_args(
        [str(feats), "--ckpt", str(model), "--localize", "--predictions", str(out / "predictions.json"),
         "--plots", str(out / "plots")]
    )  # fmt: skip
    metrics = _step("eval", "frame AUC, TIoU, plots", lambda: evaluate.evaluate(eval_args))
    stem = out / "bundle" / "model"
    _step("export", f"bundle -> {stem}.json",
          lambda: export_bundle(model, stem, ExportOptions(), log=lambda _msg: None))  # fmt: skip
    dataset = ann_mod.load(data)
    test_videos = dataset.split("test")
    shown = next((v for v in test_videos if v.is_anomalous), test_videos[0])
    outputs = [str(out / "events.jsonl"), str(out / "annotated.mp4")]
    _step("run", f"stp-run on {shown.path} -> {', '.join(outputs)}",
          lambda: open_pipeline(f"{stem}.onnx", [str(dataset.video_path(shown))], outputs=outputs).run())
    summary = {
        "metrics": metrics,
        "clip": args.clip,
        "seconds": round(time.perf_counter() - t0, 1),
        "files": {
            "dataset": str(data),
            "features": str(feats),
            "checkpoint": str(model),
            "predictions": str(out / "predictions.json"),
            "plots": str(out / "plots"),
            "bundle": f"{stem}.json",
            "events": str(out / "events.jsonl"),
            "annotated_video": str(out / "annotated.mp4"),
            "streamed_video": shown.path,
        },
        "note": "random CLIP weights carry no semantics: the numbers show the chain works, not what real CLIP reaches",
    }
    atomic_write_json(out / "summary.json", summary)
    print(
        f"stp-demo: frame AUC {_fmt(metrics.get('auc'))} (C-branch {_fmt(metrics.get('auc_c'))}), "
        f"TIoU {_fmt(metrics.get('tiou'))} on {metrics['n_videos']} test videos; "
        f"{summary['seconds']}s; results in {out}/summary.json",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
