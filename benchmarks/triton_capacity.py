"""Triton capacity on this machine: a real tritonserver serving a bundle's encoder, measured by stp-bench --triton.

    python benchmarks/triton_capacity.py --bundle BUNDLE/model.json [--precision fp32] [--threads 2]
        [--streams 1,2] [--duration 60] [--json OUT]

Writes the bundle's repository with stp-triton (`--kind cpu`), serves it from NVIDIA's tritonserver binary in the
nvidia-pytriton wheel (tests/triton_server.py: the encoder as a Python-backend model running the same ONNX graph
with ONNX Runtime on the CPU, `--threads` threads; the server's ONNX Runtime and TensorRT backends are not in the
wheel) on 127.0.0.1, and runs `stp-bench --triton` against it, whose table (what was timed, rate, latency, the
server's statistics, the streams estimate) is printed and whose JSON goes to --json. A machine with a GPU and
Docker measures the real thing with stp-triton + NGC's Triton image + the same stp-bench command instead.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from triton_server import TritonServer, missing_reason, python_backend_repository  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="the bundle's model.json")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"), help="encoder graph to host")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads of the server's encoder")
    p.add_argument("--streams", default="1,2", help="stp-bench --streams")
    p.add_argument("--duration", type=float, default=60.0, help="stp-bench --duration (seconds per level)")
    p.add_argument("--timeout", type=float, default=120.0, help="stp-bench --triton-timeout")
    p.add_argument("--json", help="stp-bench --json")
    args = p.parse_args()
    if (why := missing_reason()) is not None:
        print(f"triton_capacity: {why}", file=sys.stderr)
        return 2
    from stprompt.triton.repository import RepositoryOptions, write_repository

    bundle = Path(args.bundle)
    with tempfile.TemporaryDirectory(prefix="stp-triton-capacity-") as tmp:
        work = Path(tmp)
        generated = write_repository(bundle, work / "repository", RepositoryOptions(precision=args.precision,
                                                                                     kind="cpu"))  # fmt: skip
        served = python_backend_repository(generated, work / "served", threads=args.threads)
        with TritonServer(served, work) as server:
            cmd = ["stp-bench", "--engine", str(bundle.with_name(bundle.stem + ".onnx")), "--triton", server.url,
                   "--streams", args.streams, "--duration", str(args.duration), "--triton-timeout",
                   str(args.timeout)]  # fmt: skip
            if args.json:
                cmd += ["--json", args.json]
            print("triton_capacity: " + " ".join(cmd), file=sys.stderr)
            return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
