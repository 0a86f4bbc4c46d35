"""`stp-export`: checkpoint -> deployment bundle (ONNX graphs, query embeddings, manifest; engines with --trt)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from ..bundle.engine_keys import DEFAULT_MAX_BATCH, DEFAULT_OPT_BATCH, DEFAULT_WORKSPACE_GB, engine_jobs, engine_path
from ..cliformat import HelpFormatter
from ..errors import UserError, cli_entry
from ..fileio import check_writable


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stp-export",
        description=(
            "Export a trained STPrompt checkpoint as a bundle of files sharing the stem --out (default: the "
            "checkpoint's own, beside it: runs/model.pt -> runs/model.json, runs/model.onnx, ...): "
            "model.onnx (image encoder, fp32), model.head.onnx (temporal head, T dynamic), model.queries.npz, "
            "model.json (manifest with sha256 of every file), plus model.fp16.onnx / model.int8.onnx on request. "
            "Every graph is gated against the PyTorch reference; a failed gate writes nothing. "
            "TensorRT engines are built on the target: stp-build model.json (or --trt here, on the target)."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--ckpt", required=True, help="checkpoint model.pt written by stp-train")
    p.add_argument(
        "--out",
        default=None,
        help="bundle stem: DIR/model writes DIR/model.json, DIR/model.onnx, ... (default: the checkpoint's, beside "
        "it: runs/model.pt -> runs/model)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        default="fp32",
        help="encoder precision of the engines; fp16 also writes and gates model.fp16.onnx (norms/softmax in fp32)",
    )
    p.add_argument("--int8-cpu", action="store_true", help="also write model.int8.onnx (ONNX Runtime dynamic int8)")
    p.add_argument("--queries", default=None, help="localization query bank JSON (default: the built-in bank)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="most crops per encoder engine call")
    p.add_argument("--opt-batch", type=int, default=DEFAULT_OPT_BATCH, help="encoder batch TensorRT tunes for")
    p.add_argument(
        "--max-window", type=int, default=None, help="most snippets per head call (default 256 + 2 x exact lookahead)"
    )
    p.add_argument("--opt-window", type=int, default=None, help="head length tuned for (default 2 x lookahead + 1)")
    p.add_argument("--trt", action="store_true", help="also build TensorRT engines now (run this on the target)")
    p.add_argument("--workspace-gb", type=float, default=DEFAULT_WORKSPACE_GB, help="TensorRT workspace pool limit")
    p.add_argument("--probe-frames", type=int, default=2, help="procedural frames (50 crops each) the gates encode")
    p.add_argument("--encoder-gate", type=float, default=0.999, help="fp32/fp16 encoder: min centered cosine")
    p.add_argument("--int8-gate", type=float, default=0.99, help="int8 encoder: min centered cosine")
    p.add_argument("--head-gate", type=float, default=1e-3, help="head: max abs difference to PyTorch")
    p.add_argument("--int8-per-channel", action="store_true", help="per-channel int8 weight scales")
    p.add_argument("--alarm-threshold", type=float, default=0.5, help="snippet score that raises an alarm")
    p.add_argument("--heat-threshold", type=float, default=0.5, help="heat above which pixels form boxes")
    p.add_argument("--min-box-area", type=float, default=0.001, help="smallest box, fraction of the frame")
    p.add_argument("--tau-loc", type=float, default=0.01, help="softmax temperature over localization queries")
    p.add_argument("--fusion-lambda", type=float, default=0.5, help="weight of scale A in the fused heat map")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--quiet", action="store_true", help="print only errors and the manifest path")
    return p


def default_out(ckpt: str) -> str:
    """--out when none is given: the bundle beside the checkpoint, under its stem (runs/model.pt -> runs/model),
    named by its manifest so that a folder called like the stem is not taken for the bundle's folder."""
    p = Path(ckpt)
    return os.fspath(p.with_name(p.stem + ".json"))


def _thresholds(args: argparse.Namespace) -> dict[str, float]:
    if not 0 <= args.fusion_lambda <= 1 or args.tau_loc <= 0 or not 0 <= args.min_box_area < 1:
        raise UserError("need 0 <= --fusion-lambda <= 1, --tau-loc > 0 and 0 <= --min-box-area < 1")
    if not (0 <= args.alarm_threshold <= 1 and 0 <= args.heat_threshold <= 1):
        raise UserError("need 0 <= --alarm-threshold, --heat-threshold <= 1 (they are scores)")
    return {
        "alarm": args.alarm_threshold,
        "heat": args.heat_threshold,
        "min_box_area": args.min_box_area,
        "tau_loc": args.tau_loc,
        "fusion_lambda": args.fusion_lambda,
    }


def print_next_steps(manifest) -> None:
    """How to build the engines on the target, with stp-build or with trtexec alone: every engine the builder
    would build (`engine_jobs`, the builder's own list), each as one trtexec command."""
    from ..bundle.engine_keys import BuildSettings
    from ..engines.tensorrt import trtexec_command

    settings = BuildSettings.from_manifest(manifest)
    print(f"stp-export: build engines on the target: stp-build {manifest.path}")
    cache = manifest.stem.with_name(manifest.stem.name + ".timing.cache")
    for role, precision, profiles, source in engine_jobs(manifest, settings):
        cmd = trtexec_command(manifest.file(source).name, engine_path(manifest, role).name, profiles, precision,
                              settings.workspace_gb, cache.name)  # fmt: skip
        print(f"stp-export: or with trtexec ({role}): {shlex.join(cmd)}")


@cli_entry("stp-export")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.trt:
        from ..engines.tensorrt import TRT_MISSING, tensorrt_available

        if not tensorrt_available():
            raise UserError(f"--trt: {TRT_MISSING}")
    from ..checkpoint import load_checkpoint

    problem = load_checkpoint(args.ckpt).config.streaming_problem  # before any CLIP load or file write
    if problem:
        raise UserError(f"{args.ckpt}: {problem}")
    from .options import ExportOptions, resolve_stem

    if args.out is not None:
        out, what = args.out, "--out"
        stem = resolve_stem(out)
    else:
        out, what = default_out(args.ckpt), "--out (default: beside --ckpt)"
        try:
            stem = resolve_stem(out)
        except UserError:
            raise UserError(f"--ckpt {args.ckpt}: its name ends like a bundle file's, so the bundle cannot be named "
                            "after it; give --out DIR/model") from None  # fmt: skip
    check_writable(stem, what)  # the bundle's files go beside the stem: before any CLIP load, gate or file write
    from .bundle import export_bundle

    opts = ExportOptions(
        precision=args.precision,
        int8_cpu=args.int8_cpu,
        queries=args.queries,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        max_window=args.max_window,
        opt_window=args.opt_window,
        workspace_gb=args.workspace_gb,
        probe_frames=args.probe_frames,
        encoder_gate=args.encoder_gate,
        int8_gate=args.int8_gate,
        head_gate=args.head_gate,
        int8_per_channel=args.int8_per_channel,
        strict_ops=args.trt,
        thresholds=_thresholds(args),
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    path = export_bundle(args.ckpt, out, opts, log=log)

    from ..bundle.manifest import load_manifest

    manifest = load_manifest(path)
    if not args.quiet:
        for role in manifest.raw["files"]:
            entry = manifest.raw["files"][role]
            print(f"stp-export: {role:13s} {entry['path']} ({entry['bytes'] / 1e6:.2f} MB)", file=sys.stderr)
    if args.trt:
        from ..engines.tensorrt import build_bundle_engines

        build_bundle_engines(path, log=log)
    elif not args.quiet:
        import contextlib

        with contextlib.redirect_stdout(sys.stderr):
            print_next_steps(manifest)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
