"""`stp-demo`: the whole offline chain on an embedded default, on CPU, in a few minutes.

synthetic dataset (stp-synth) -> features (stp-extract, stp-tiny random CLIP, with scale-B windows) ->
training (stp-train) -> evaluation with localization (stp-eval --localize) -> bundle (stp-export) ->
streaming run on a test video (stp-run: events + annotated video) -> OUT/summary.json.
Each step is the same console verb a user runs, called in-process; a finished step is not redone when the
demo is run again into the same folder (extraction resumes, the dataset is kept).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

from .cliformat import HelpFormatter
from .errors import UserError, cli_entry
from .fileio import atomic_write_json


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


def _step(name: str, main, argv: list[str], capture_stdout: bool = False) -> str:
    print(f"stp-demo: {name}: {' '.join(argv)}", file=sys.stderr)
    t0 = time.perf_counter()
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if capture_stdout else contextlib.nullcontext():
        code = main(argv)
    if code != 0:
        raise UserError(f"step {name} failed (exit {code}); see the messages above")
    print(f"stp-demo: {name} done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return out.getvalue()


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@cli_entry("stp-demo")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import evaluate, extract, train
    from .data import synth_cli

    out = Path(args.out)
    data, feats, model = out / "data", out / "features", out / "model.pt"
    t0 = time.perf_counter()
    if not (data / "annotations.json").is_file():
        _step(
            "synth",
            synth_cli.main,
            [str(data), "--train", str(args.train), "--test", str(args.test), "--frames", str(args.frames),
             "--seed", str(args.seed)],
        )  # fmt: skip
    _step(
        "extract",
        extract.main,
        [str(data), "--out", str(feats), "--clip", args.clip, "--stride", str(args.stride), "--scale-b"],
    )
    _step(
        "train", train.main, [str(feats), "--out", str(model), "--epochs", str(args.epochs), "--seed", str(args.seed)]
    )
    report = _step(
        "eval",
        evaluate.main,
        [str(feats), "--ckpt", str(model), "--localize", "--predictions", str(out / "predictions.json"),
         "--plots", str(out / "plots")],
        capture_stdout=True,
    )  # fmt: skip
    metrics = json.loads(report)
    from .export import cli as export_cli
    from .runtime import cli as run_cli

    stem = out / "bundle" / "model"
    _step("export", export_cli.main, ["--ckpt", str(model), "--out", str(stem), "--quiet"])
    annotations = json.loads((data / "annotations.json").read_text())
    test_videos = [v for v in annotations["videos"] if v["split"] == "test"]
    shown = next((v for v in test_videos if v["label"] != "normal"), test_videos[0])
    _step(
        "run",
        run_cli.main,
        [str(data / shown["path"]), "--engine", f"{stem}.onnx", "--events", str(out / "events.jsonl"),
         "--video-out", str(out / "annotated.mp4"), "--quiet"],
    )  # fmt: skip
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
            "streamed_video": shown["path"],
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
