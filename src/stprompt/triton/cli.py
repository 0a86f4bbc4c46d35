"""`stp-triton`: write a Triton Inference Server model repository from an stp-export bundle."""

from __future__ import annotations

import argparse
import sys

from ..cliformat import HelpFormatter
from ..errors import cli_entry, inform
from .repository import DEFAULT_NAME, MAX_QUEUE_DELAY_US, RELEASE, RepositoryOptions, write_repository


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stp-triton",
        description=(
            "Write a standard NVIDIA Triton Inference Server model repository from an stp-export bundle: the image "
            "encoder as NAME_encoder (batched crops, dynamic batching) and the temporal head after SA2 as NAME_head, "
            "each with its config.pbtxt and a copy of the bundle's graph, plus a README with the docker command. "
            "Every config carries the hosted graph's sha256, so `stp-run --triton` refuses a server that hosts "
            "another export. The bundle's files are checked against its manifest first."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("manifest", help="bundle manifest model.json (or its stem)")
    p.add_argument("--out", required=True, help="repository folder to write (mounted as /models in Triton)")
    p.add_argument("--name", default=DEFAULT_NAME, help="model name prefix: NAME_encoder, NAME_head")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None,
                   help="encoder graph to host: model.onnx, model.fp16.onnx or model.int8.onnx (int8: for ONNX "
                        "Runtime on CPUs) (default: the bundle's encoder precision, its fp16 graph when it has "
                        "one)")  # fmt: skip
    p.add_argument("--input", choices=("pixels", "images"), default=None,
                   help="what clients send: pixels = uint8 BGR crops, the bundle's model.pre.onnx fused in front of "
                        "the encoder (a quarter of the bytes, no normalisation on the clients); images = "
                        "CLIP-normalised float32 crops (default: pixels when the bundle has "
                        "model.pre.onnx)")  # fmt: skip
    p.add_argument("--accelerator", choices=("none", "tensorrt"), default="none",
                   help="tensorrt: ONNX Runtime's TensorRT execution accelerator in FP16 (engine built when the "
                        "model loads, cached in the container's /tmp)")  # fmt: skip
    p.add_argument("--plan", action="store_true",
                   help="host a TensorRT plan (tensorrt_plan) instead of ONNX: writes the source graph and "
                        "build_plan.sh, which builds 1/model.plan on the server in the TensorRT image of --release "
                        "(fp16 from model.fp16.onnx when the hosted graph is fp16, else fp32)")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=None,
                   help="max_batch_size: most crops per batch, at least one sampled frame's (50) "
                        "(default: the bundle's build max_batch)")  # fmt: skip
    p.add_argument("--queue-delay-us", type=int, default=2000,
                   help=f"dynamic batching: longest a request waits for others, 0 to {MAX_QUEUE_DELAY_US}")
    p.add_argument("--instances", type=int, default=1, help="encoder model instances per device (instance_group)")
    p.add_argument("--kind", choices=("gpu", "cpu"), default="gpu", help="where the models run (KIND_GPU, KIND_CPU)")
    p.add_argument("--no-head", action="store_true",
                   help="write only the encoder (stp-run --triton runs the head locally anyway)")
    p.add_argument("--release", default=RELEASE,
                   help="NGC release yy.mm of the tritonserver image in the README (and of the tensorrt image "
                        "that builds --plan engines: same release, same TensorRT)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an existing non-empty --out")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    return p


@cli_entry("stp-triton")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = RepositoryOptions(
        name=args.name,
        precision=args.precision,
        input=args.input,
        accelerator=args.accelerator,
        plan=args.plan,
        max_batch=args.max_batch,
        queue_delay_us=args.queue_delay_us,
        instances=args.instances,
        kind=args.kind,
        head=not args.no_head,
        release=args.release,
    )
    write_repository(args.manifest, args.out, options, force=args.force, log=None if args.quiet else inform)
    return 0


if __name__ == "__main__":
    sys.exit(main())
