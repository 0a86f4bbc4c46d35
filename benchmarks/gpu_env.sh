# Sourced by benchmarks/gpu_check.sh and gpu_host_check.sh (SCRIPT = the caller's name, for its messages): the
# environment both need on the lent GPU machine. open_clip from the carried .whl/ folder when the machine has none
# (see gpu_check.sh's header), then this tree's package on PYTHONPATH, no install needed.
PY=${PYTHON:-python3}
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
