"""stp-bench --streams N against the simulated GPU encoder: the host's cost per stage, its ceiling, the pipeline
efficiency at a simulated latency, the capacity estimate, and the one-line refusals (stp-tiny bundle, tiny runs)."""

from __future__ import annotations

import json

import pytest

from stprompt.bench import cli, host
from stprompt.runtime.stageclock import STAGES

FAST = ["--repeats", "1", "--warmup", "0", "--size", "160x120", "--quiet", "--no-flops"]


def test_streams_against_a_simulated_encoder_write_the_keys_the_issue_names(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "host.json"
    argv = ["--engine", str(tiny_bundle), "--backends", "sim:125,sim:125:u8", "--streams", "2", "--frames", "48",
            "--json", str(out), *FAST]  # fmt: skip
    assert cli.main(argv) == 0
    r = json.loads(out.read_text())
    row = r["backends"]["sim:125"]
    # rates are wall clock (the simulated hold itself is tested by its CPU time in test_runtime_sim): present only
    assert row["pipeline_efficiency"] > 0 and row["encoder_sampled_fps"] > 0
    assert row["host"]["streams"] == 2 and row["host"]["sampled"] == 2 * 3  # 48 frames at stride 16, per stream
    assert row["crops_encoded"] == 6 * 50 and 0 < row["encoder_share"] <= 1.0
    u8 = r["backends"]["sim:125:u8"]  # uint8 crops, normalised on the (simulated) device: timed the same way
    assert u8["crops_encoded"] == 6 * 50 and 0 < u8["encoder_share"] <= 1.0 and u8["host"]["sampled"] == 6
    ms = r["host_ms_per_sampled_frame"]
    assert set(ms) == {*STAGES, "other", "total"}
    assert ms["decode"] > 0 and ms["windows"] > 0 and ms["localization"] > 0
    assert ms["total"] >= sum(v for k, v in ms.items() if k not in ("total", "other", "localization")) - 1e-6
    assert r["host_ceiling_sampled_fps"] > 0 and r["host"]["ceiling"]["encoder_busy"] < 0.5  # sim:0: no hold
    cap = r["host"]["capacity"]
    assert cap["streams"] == 150 and cap["stride"] == 16
    assert cap["cores"] == pytest.approx(150 * 25 / 16 * ms["total"] / 1e3, abs=0.01)  # both rounded to 2 decimals
    assert set(r["host"]["references_ms_per_50_crops"]) == set(host.REFERENCE_MS)
    for run in (row["host"], r["host"]["ceiling"]):
        assert len(run["load_average_1min"]) == 2 and run["lookahead"] == 8
    assert r["settings"]["streams"] == "2"
    table = capsys.readouterr().out
    assert "ceiling, sampled frames/s" in table and "capacity (device windows)" in table and "sim:125" in table
    # uint8 crops normalised on the device (TensorRT with model.pre.plan) and windows cut on the device: same keys
    for mode in ("uint8_crops", "device_windows"):
        other = r["host"][mode]
        assert set(other["host_ms_per_sampled_frame"]) == set(ms) and other["ceiling"]["sampled"] == 2 * 3
        assert other["capacity"]["cores"] > 0
    assert "capacity (uint8 crops)" in table


@pytest.mark.parametrize(
    ("extra", "needle"),
    [(["--backends", "sim:fast"], "sim:MS"), (["--backends", "sim:16", "--streams", "1,2"], "--streams"),
     (["--backends", "sim:16", "--streams", "0"], "--streams"), (["--video", "/nope.mp4"], "not found")],
)  # fmt: skip
def test_bad_host_requests_end_in_one_line(tiny_bundle, extra, needle, capsys):
    assert cli.main(["--engine", str(tiny_bundle), *FAST, "--frames", "16", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_capacity_arithmetic():
    cap = host.capacity(20.0, 16)
    assert cap["sampled_fps"] == pytest.approx(150 * 25 / 16) and cap["cores"] == pytest.approx(4.69, abs=0.01)
    assert cap["host_cpu_ms_per_stream_s"] == pytest.approx(20 * 25 / 16, abs=0.01)
    assert cap["gpus"]["embedded GPU"] == pytest.approx(234.375 * 0.125, abs=0.01)


def test_gpu_host_check_calls_stp_bench_with_valid_flags_and_refuses_a_machine_without_gpu(tmp_path):
    import re
    import shlex
    import subprocess
    from pathlib import Path

    from stprompt.runtime.backends.sim import parse_sim

    script = Path(__file__).parents[1] / "benchmarks" / "gpu_host_check.sh"
    call = re.search(r"-m stprompt\.bench\.cli (.*?)\\\n(.*?)\\\n(.*?)2>>", script.read_text(), re.S)
    args = cli.build_parser().parse_args(shlex.split(" ".join(call.groups())))
    names = args.backends.split(",")
    assert "torch-cuda-fp16" in names and all(n in cli.BACKENDS or parse_sim(n) is not None for n in names)
    assert int(args.streams) >= 4 and args.video
    import torch

    if not torch.cuda.is_available():
        proc = subprocess.run(["bash", str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "no NVIDIA GPU" in proc.stderr
