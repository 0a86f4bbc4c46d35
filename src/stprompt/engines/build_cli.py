"""`stp-build`: build (or reuse) a bundle's TensorRT engines on the device that will run them."""

from __future__ import annotations

import argparse
import sys

from ..cliformat import HelpFormatter
from ..errors import UserError, cli_entry
from ..fileio import check_writable


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stp-build",
        description=(
            "Build the TensorRT 10 / 11 engines of an stp-export bundle on this GPU, strongly typed (the precision "
            "comes from the graphs): model.plan (image encoder, from model.fp16.onnx when the bundle is fp16, else "
            "model.onnx), model.head.plan and model.head_as.plan (fp32). A plan is reused only when its cache key "
            "(ONNX sha256, TensorRT version, compute capability, precision, profiles) matches the manifest; "
            "otherwise it is rebuilt. Settings default to the export's."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("manifest", help="bundle manifest model.json (or its stem)")
    p.add_argument("--max-batch", type=int, default=None, help="most crops per encoder call (default: the bundle's)")
    p.add_argument("--opt-batch", type=int, default=None, help="encoder batch to tune for (default: the bundle's)")
    p.add_argument("--max-window", type=int, default=None, help="most snippets per head call (default: the bundle's)")
    p.add_argument("--opt-window", type=int, default=None, help="head length to tune for (default: the bundle's)")
    p.add_argument("--workspace-gb", type=float, default=None, help="TensorRT workspace limit (default: the bundle's)")
    p.add_argument("--force", action="store_true", help="rebuild even when the cached plans are current")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    return p


@cli_entry("stp-build")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..bundle.manifest import load_manifest
    from .tensorrt import build_bundle_engines, require_tensorrt

    manifest = load_manifest(args.manifest)  # a missing or tampered bundle is reported before TensorRT is looked for
    # the plans, their timing cache and the manifest's engine records are written beside model.json
    check_writable(manifest.path, "manifest", hint="stp-build writes the plans beside it: copy the bundle to a "
                   "writable folder, or let stp-appliance build them into its --cache")  # fmt: skip
    require_tensorrt()
    for name in ("max_batch", "opt_batch", "max_window", "opt_window"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    manifest = build_bundle_engines(
        args.manifest,
        force=args.force,
        log=log,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        max_window=args.max_window,
        opt_window=args.opt_window,
        workspace_gb=args.workspace_gb,
    )
    for role, record in manifest.engines.items():
        log(f"stp-build: {role}: {record['path']} key {record['key'][:16]} ({record['precision']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
