#!/usr/bin/env bash
# GPU check, sized for one device call (under 8 minutes on an H100/H200): the `gpu`-marked tests, then stp-bench
# with a random-weights ViT-B-16 on the PyTorch CUDA fp16 backend (CUDA graphs, windows cut on the GPU) beside
# ONNX Runtime and PyTorch on the host CPU and the naive open_clip loop. TensorRT rows appear where TensorRT is
# installed and a plan was built; the lent machine has none.
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]        (default benchmarks/results; run from the repository root)
#
# Results: RESULTS_DIR/gpu-tests-<gpu>.txt, bench-vitb16-<gpu>.json / .txt, gpu-check-<gpu>.log.
#
# The project's lent GPU machine has PyTorch (CUDA), onnx, onnxruntime (CPU), numba, OpenCV and pytest, but not
# open_clip and cannot reach a package index. Carry the missing wheels in .whl/ (git-ignored via
# .git/info/exclude), prepared where pip works:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 ftfy wcwidth
# and pass carry=[".whl"] to the device call: this script installs them into /tmp/site when open_clip is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-benchmarks/results}
mkdir -p "$RESULTS"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-/tmp/numba-cache}

if ! "$PY" -c "import open_clip" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || { echo "gpu_check: installing .whl/ failed" >&2; exit 2; }
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "gpu_check: open_clip is not installed and no .whl/ folder was carried (see the header)" >&2
        exit 2
    fi
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}  # the package from this tree, no install needed

if ! command -v nvidia-smi >/dev/null || ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: no NVIDIA GPU visible to PyTorch here" >&2
    exit 2
fi
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')
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
echo "gpu_check: exit $status" | tee -a "$LOG"
exit $status
