#!/usr/bin/env bash
# GPU check, sized for one device call (under 8 minutes on an H100/H200): the `gpu`-marked tests, then stp-bench
# with a random-weights ViT-B-16 on the PyTorch CUDA fp16 backend (CUDA graphs, windows cut on the GPU) beside
# ONNX Runtime and PyTorch on the host CPU and the naive open_clip loop. Where TensorRT is installed it also builds
# a ViT-B-16 fp16 plan, checks it against ONNX Runtime with the export's gates and times it (about 10 more
# minutes: give the call its own device time); where it is not, the log says so. The lent machine has none.
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]        (default benchmarks/results; run from the repository root)
#
# Results: RESULTS_DIR/gpu-tests-<gpu>.txt, bench-vitb16-<gpu>.json / .txt, gpu-check-<gpu>.log; with TensorRT
# also trt-check-<gpu>.json (the parity report with its gate verdict) and bench-vitb16-trt-<gpu>.json / .txt.
# GPU decode (nvdec:, PyNvVideoCodec) is tested by a `gpu` test where PyNvVideoCodec is installed (carry its wheel
# in .whl/ too); the log says when it is not. The host side against the real GPU is benchmarks/gpu_host_check.sh
# (its own device call).
#
# The project's lent GPU machine has PyTorch (CUDA), onnx, onnxruntime (CPU), numba, OpenCV and pytest, but not
# open_clip and cannot reach a package index. Carry the missing wheels in .whl/ (git-ignored via
# .git/info/exclude), prepared where pip works:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 ftfy wcwidth
# and pass carry=[".whl"] to the device call: this script installs them into /tmp/site when open_clip is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
SCRIPT=gpu_check
# shellcheck source=benchmarks/gpu_env.sh
. benchmarks/gpu_env.sh

LOG="$RESULTS/gpu-check-$GPU.log"
{
    date -u +"gpu_check: %Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    nproc
} 2>&1 | tee "$LOG"

status=0
echo "== gpu-marked tests" | tee -a "$LOG"
timeout 180 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tee "$RESULTS/gpu-tests-$GPU.txt" | tail -n 30 \
    | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== stp-bench ViT-B-16 (random weights)" | tee -a "$LOG"
timeout 420 "$PY" -m stprompt.bench.cli --clip ViT-B-16:random \
    --backends torch-cuda-fp16,ort-fp32,torch-fp32,baseline --frames 64 --repeats 5 \
    --json "$RESULTS/bench-vitb16-$GPU.json" 2>>"$LOG" | tee "$RESULTS/bench-vitb16-$GPU.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
if ! "$PY" -c "import PyNvVideoCodec" 2>/dev/null; then
    echo "gpu_check: PyNvVideoCodec is not installed on this machine: GPU decode (nvdec:) was not tested" | tee -a "$LOG"
fi
# TensorRT, where this machine has it: a random-weights ViT-B-16 fp16 bundle, stp-build (strongly typed, from
# model.fp16.onnx), stp-run --check of the plan against ONNX Runtime on that graph (the export's gates), and stp-bench
# on the plan. Where TensorRT is absent the log says so and nothing else changes.
if "$PY" -c "import tensorrt" 2>/dev/null; then
    TRT_DIR=${TRT_DIR:-/tmp/stp-trt-bundle}
    echo "== TensorRT $("$PY" -c 'import tensorrt; print(tensorrt.__version__)'): build, parity, bench" | tee -a "$LOG"
    timeout 420 "$PY" -c "import sys; from pathlib import Path; from stprompt.bench.bundle import random_bundle; \
from stprompt.bench.stages import write_test_video; d = Path(sys.argv[1]); \
random_bundle('ViT-B-16:random', d, fp16=True, log=print); write_test_video(d / 'check.mp4', 64)" "$TRT_DIR" \
        2>&1 | tee -a "$LOG" && \
    timeout 600 "$PY" -m stprompt.engines.build_cli "$TRT_DIR/model.json" 2>&1 | tee -a "$LOG" && \
    timeout 300 "$PY" -m stprompt.runtime.cli "$TRT_DIR/check.mp4" --engine "$TRT_DIR/model.plan" \
        --check "$TRT_DIR/model.fp16.onnx" --check-frames 2 2>&1 | tee "$RESULTS/trt-check-$GPU.json" | tee -a "$LOG" && \
    timeout 420 "$PY" -m stprompt.bench.cli --engine "$TRT_DIR/model.plan" --backends trt --frames 64 --repeats 5 \
        --json "$RESULTS/bench-vitb16-trt-$GPU.json" 2>>"$LOG" | tee "$RESULTS/bench-vitb16-trt-$GPU.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
    echo "gpu_check: TensorRT is not installed on this machine: no engine built, no TensorRT parity or timing" \
        | tee -a "$LOG"
fi
echo "gpu_check: exit $status" | tee -a "$LOG"
exit $status
