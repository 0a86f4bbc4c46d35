#!/usr/bin/env bash
# Host side against a real GPU (issue 20), sized for one device call (about 6 minutes on an H100/H200 with 16 cores):
# a random-weights ViT-B-16 bundle, then stp-bench's end-to-end pipeline on 8 concurrent streams of a 640x360
# synthetic video (stp-synth) against the real PyTorch CUDA fp16 encoder and the simulated ones (sim:16 with float32
# crops cut on the host, as ONNX Runtime takes them; sim:16:u8 with uint8 crops normalised on the device, as TensorRT
# with model.pre.plan; sim:16:device with the windows cut on the device, as the PyTorch CUDA backend does): CPU time per stage per sampled frame, the host ceiling on this
# machine's cores and per core, the pipeline efficiency, and the cores 150 streams need. Where the simulation and
# the real encoder disagree, the real one is right.
#
#   bash benchmarks/gpu_host_check.sh [RESULTS_DIR]     (default benchmarks/results; run from the repository root)
#
# Results: RESULTS_DIR/bench-host-vitb16-<gpu>.json / .txt and gpu-host-check-<gpu>.log. Needs what
# benchmarks/gpu_check.sh needs (open_clip from .whl/ where the machine has none; see its header).
set -uo pipefail
cd "$(dirname "$0")/.."
SCRIPT=gpu_host_check
# shellcheck source=benchmarks/gpu_env.sh
. benchmarks/gpu_env.sh
WORK=${WORK_DIR:-/tmp/stp-host-check}

LOG="$RESULTS/gpu-host-check-$GPU.log"
{ date -u +"gpu_host_check: %Y-%m-%dT%H:%M:%SZ"; nproc; cat /proc/loadavg; } 2>&1 | tee "$LOG"

status=0
echo "== bundle and video" | tee -a "$LOG"
timeout 300 "$PY" -c "import sys; from pathlib import Path; from stprompt.bench.bundle import random_bundle; \
random_bundle('ViT-B-16:random', Path(sys.argv[1]) / 'vitb', log=print)" "$WORK" 2>&1 | tee -a "$LOG" \
    && timeout 120 "$PY" -m stprompt.data.synth_cli "$WORK/synth" --train 1 --test 0 --frames 800 --width 640 \
        --height 360 --anomaly-fraction 0 --force 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu_host_check: could not make the bundle or the video" | tee -a "$LOG"; exit 1; }
VIDEO=$(ls "$WORK"/synth/videos/*.mp4 | head -1)

echo "== host side: 8 streams, real encoder and simulated ones" | tee -a "$LOG"
timeout 420 "$PY" -m stprompt.bench.cli --engine "$WORK/vitb/model.json" --video "$VIDEO" \
    --backends torch-cuda-fp16,sim:16,sim:16:u8,sim:16:device --streams 8 --frames 720 --repeats 3 --no-flops \
    --json "$RESULTS/bench-host-vitb16-$GPU.json" 2>>"$LOG" | tee "$RESULTS/bench-host-vitb16-$GPU.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
cat /proc/loadavg | tee -a "$LOG"
echo "gpu_host_check: exit $status" | tee -a "$LOG"
exit $status
