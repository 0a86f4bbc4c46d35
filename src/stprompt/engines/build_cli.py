"""`stp-build`: build (or reuse) a bundle's engines on the device that will run them: TensorRT plans on a GPU,
OpenVINO IR (bf16, or INT8 calibrated with NNCF) on a CPU with --openvino."""

from __future__ import annotations

import argparse
import sys

from ..bundle.openvino_keys import HINTS
from ..cliformat import HelpFormatter
from ..errors import UserError, cli_entry
from ..fileio import check_writable
from .openvino import BF16_GATE, FP32_GATE, INT8_GATE, OpenVinoOptions

ov_defaults = OpenVinoOptions()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stp-build",
        description=(
            "Build the TensorRT 10 / 11 engines of an stp-export bundle on this GPU, strongly typed (the precision "
            "comes from the graphs): model.plan (image encoder, from model.fp16.onnx when the bundle is fp16, else "
            "model.onnx), model.head.plan and model.head_as.plan (fp32). A plan is reused only when its cache key "
            "(ONNX sha256, TensorRT version, compute capability, precision, profiles) matches the manifest; "
            "otherwise it is rebuilt. Settings default to the export's. With --openvino: the OpenVINO engine for this "
            "CPU instead, model.xml (bf16 precision hint where the CPU has bf16, else fp32) or, with --int8, "
            "model.int8.xml (NNCF post-training INT8 calibrated on the probe scene, and on --calibrate footage); "
            "each is gated against the bundle's fp32 graph (centred cosine, head scores) or not written."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("manifest", help="bundle manifest model.json (or its stem)")
    p.add_argument("--max-batch", type=int, default=None, help="most crops per encoder call (default: the bundle's)")
    p.add_argument("--opt-batch", type=int, default=None, help="encoder batch to tune for (default: the bundle's)")
    p.add_argument("--max-window", type=int, default=None, help="most snippets per head call (default: the bundle's)")
    p.add_argument("--opt-window", type=int, default=None, help="head length to tune for (default: the bundle's)")
    p.add_argument("--workspace-gb", type=float, default=None, help="TensorRT workspace limit (default: the bundle's)")
    o = p.add_argument_group("OpenVINO (CPU; pip install \"stprompt[openvino]\")")
    o.add_argument("--openvino", action="store_true", help="build the OpenVINO engine for this CPU (model.xml, or "
                   "model.int8.xml with --int8) instead of TensorRT plans")  # fmt: skip
    o.add_argument("--int8", action="store_true", help="with --openvino: quantize the encoder to INT8 with NNCF")
    o.add_argument("--calibrate", action="append", metavar="VIDEO", help="with --int8: calibrate on sampled frames of "
                   "this video of the site's own cameras (repeat for several) beside the probe scene (which keeps "
                   "rare, bright content in range); every other chosen frame is held out for a second gate. "
                   "Default: the bundle's procedural probe scene alone")  # fmt: skip
    o.add_argument("--calibration-frames", type=int, default=ov_defaults.calibration_frames, metavar="N",
                   help="sampled frames (50 crops each) to calibrate on, as many again held out from the footage")
    o.add_argument("--hint", choices=HINTS, default=ov_defaults.hint, help="OpenVINO performance hint stp-run "
                   "compiles with: latency = one stream on every core; throughput = several streams, each encoder "
                   "call split over OpenVINO's optimal number of requests")  # fmt: skip
    o.add_argument("--gate", type=float, default=None, help="min centred cosine to the fp32 graph (default: "
                   f"{BF16_GATE} bf16, the bundle's gates for fp32 ({FP32_GATE}) and INT8 ({INT8_GATE}))")
    o.add_argument("--score-gate", type=float, default=ov_defaults.score_gate, help="max abs difference of the "
                   "head's scores fed the engine's embeddings vs the fp32 graph's")  # fmt: skip
    p.add_argument("--force", action="store_true", help="rebuild even when the cached plans are current")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    return p


@cli_entry("stp-build")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..bundle.manifest import load_manifest
    from .tensorrt import build_bundle_engines, require_tensorrt

    ov_options = openvino_options(args)
    manifest = load_manifest(args.manifest)  # a missing or tampered bundle is reported before TensorRT is looked for
    # the plans, their timing cache and the manifest's engine records are written beside model.json
    check_writable(manifest.path, "manifest", hint="stp-build writes the plans beside it: copy the bundle to a "
                   "writable folder, or let stp-appliance build them into its --cache")  # fmt: skip
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    if ov_options is not None:
        from .openvino import build_openvino_engine

        build_openvino_engine(args.manifest, ov_options, force=args.force, log=log, progress=not args.quiet)
        return 0
    require_tensorrt()
    for name in ("max_batch", "opt_batch", "max_window", "opt_window"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
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


TRT_SETTINGS = ("max_batch", "opt_batch", "max_window", "opt_window", "workspace_gb")


def openvino_options(args: argparse.Namespace, implied: bool = False) -> OpenVinoOptions | None:
    """The OpenVINO build parsed flags ask for (None: TensorRT plans). `implied`: the appliance chose OpenVINO
    (no usable TensorRT), so OpenVINO flags need no --openvino and TensorRT settings are left to a GPU start."""
    ov_flags = {"--int8": args.int8, "--calibrate": args.calibrate,
                "--hint": args.hint != ov_defaults.hint, "--gate": args.gate is not None,
                "--calibration-frames": args.calibration_frames != ov_defaults.calibration_frames,
                "--score-gate": args.score_gate != ov_defaults.score_gate}  # fmt: skip
    if not (args.openvino or implied):
        given = [flag for flag, value in ov_flags.items() if value]
        if given:
            raise UserError(f"{', '.join(given)}: OpenVINO settings; add --openvino to build the OpenVINO engine")
        return None
    if not implied:
        trt = [f"--{n.replace('_', '-')}" for n in TRT_SETTINGS if getattr(args, n) is not None]
        if trt:
            raise UserError(f"{', '.join(trt)}: TensorRT plan settings, not used by --openvino")
    return OpenVinoOptions(int8=args.int8, calibrate=tuple(args.calibrate or ()),
                           calibration_frames=args.calibration_frames, hint=args.hint, gate=args.gate,
                           score_gate=args.score_gate)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
