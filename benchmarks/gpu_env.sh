# Sourced by benchmarks/gpu_check.sh and gpu_host_check.sh (SCRIPT = the caller's name, for its messages): the
# environment both need on the lent GPU machine. open_clip from the carried .whl/ folder when the machine has none
# (see gpu_check.sh's header), then this tree's package on PYTHONPATH, no install needed. Sets RESULTS (the caller's
# first argument, default benchmarks/results) and GPU (the GPU's name as a file-name word); exits 2 where PyTorch
# sees no GPU.
PY=${PYTHON:-python3}
RESULTS=${1:-benchmarks/results}  # the caller's first argument
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-/tmp/numba-cache}

if ! "$PY" -c "import open_clip" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || { echo "$SCRIPT: installing .whl/ failed" >&2; exit 2; }
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "$SCRIPT: open_clip is not installed and no .whl/ folder was carried (see gpu_check.sh's header)" >&2
        exit 2
    fi
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}

if ! command -v nvidia-smi >/dev/null || ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "$SCRIPT: no NVIDIA GPU visible to PyTorch here" >&2
    exit 2
fi
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')
export GPU
