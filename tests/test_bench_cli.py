"""stp-bench: what it measures, what it writes, and how it refuses what cannot run (stp-tiny bundles only)."""

from __future__ import annotations

import json

import pytest

from stprompt.bench import cli, stages
from stprompt.bench.flops import encoder_flops
from stprompt.bench.machine import machine_stamp
from stprompt.bench.timing import Timing, measure
from stprompt.bundle.manifest import load_manifest

FAST = ["--repeats", "1", "--warmup", "0", "--frames", "32", "--size", "160x120", "--quiet"]


def test_measure_warms_up_then_takes_enough_samples():
    calls = []
    t = measure(lambda: calls.append(1), "s", "b", "unit", warmup=2, repeats=5, min_seconds=0.0)
    assert len(calls) == 7 and len(t.samples) == 5
    t = Timing("s", "b", "unit", [0.001, 0.002, 0.003, 0.004])
    assert t.percentile(50) == pytest.approx(2.5) and t.percentile(100) == pytest.approx(4.0)
    d = t.as_dict()
    assert d["n"] == 4 and d["p99_ms"] <= 4.0 and d["mean_ms"] == pytest.approx(2.5)


def test_engine_run_writes_the_json_the_issue_names(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "r.json"
    engine = tiny_bundle.with_name("model.onnx")
    argv = ["--engine", str(engine), "--backends", "ort-fp32,ort-int8,baseline", "--json", str(out), *FAST]
    assert cli.main(argv) == 0
    r = json.loads(out.read_text())
    m = load_manifest(tiny_bundle)
    assert r["encoder_gflops_per_crop"] == round(encoder_flops(m.clip).gflops, 2)
    assert set(r["backends"]) == {"ort-fp32", "ort-int8", "baseline"}
    for name in ("ort-fp32", "ort-int8"):
        row = r["backends"][name]
        for key in ("crops_per_s", "sampled_fps", "p50_ms", "p99_ms", "pipeline_efficiency", "speedup_vs_baseline"):
            assert row[key] > 0, (name, key)
        assert row["crops_encoded"] == 2 * 50  # 32 frames at stride 16, alarms off: 2 sampled frames
        assert 0 < row["encoder_share"] < 1  # the encoder's part of the same end-to-end run
        assert row["crops_per_s"] == pytest.approx(50 / (row["p50_ms"] / 1e3), rel=1e-9)  # one sample: mean = p50
    assert r["pipeline_efficiency"] == r["backends"]["ort-fp32"]["pipeline_efficiency"]
    stages_seen = {(t["stage"], t["backend"]) for t in r["timings"]}
    for stage in ("decode", "windows", "sa2", "sinks"):
        assert (stage, "-") in stages_seen or (stage, "numba") in stages_seen
    for stage in ("encode", "head", "end-to-end"):
        assert (stage, "ort-int8") in stages_seen
    assert ("localization", "ort-fp32") in stages_seen and ("encode", "baseline") in stages_seen
    assert r["machine"]["cores"] >= 1 and r["machine"]["cpu"] and "numpy" in r["machine"]["versions"]
    assert r["bundle"]["clip"] == m.clip and "end-to-end" in r["timed"]
    table = capsys.readouterr().out
    assert "encoder" in table and "ort-int8" in table and "x baseline" in table


def test_auto_with_an_engine_is_that_backend_and_the_baseline(tiny_bundle):
    class Args:
        backends = "auto"

    run, _ = cli.choose_backends(Args, tiny_bundle.parent, tiny_bundle.with_name("model.int8.onnx"))
    assert run == ["ort-int8", "baseline"]
    run, skipped = cli.choose_backends(Args, tiny_bundle.parent, tiny_bundle.with_name("model.json"))
    assert "ort-fp32" in run and "trt" in skipped and "stp-build" in skipped["trt"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [(["--backends", "trt"], "backend trt cannot run here"), (["--backends", "tpu"], "unknown backend tpu"),
     (["--size", "big"], "--size"), (["--frames", "0"], "--frames")],
)  # fmt: skip
def test_bad_requests_end_in_one_line(tiny_bundle, extra, needle, capsys):
    assert cli.main(["--engine", str(tiny_bundle.with_name("model.onnx")), *FAST, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_missing_engine_is_one_line(tmp_path, capsys):
    assert cli.main(["--engine", str(tmp_path / "nope.onnx")]) == 2
    assert "not found" in capsys.readouterr().err


def test_clip_spec_builds_a_random_bundle_and_keeps_it(tmp_path, capsys):
    keep = tmp_path / "b"
    assert cli.main(["--clip", "stp-tiny", "--keep", str(keep), "--backends", "ort-fp32", "--no-flops", *FAST]) == 0
    m = load_manifest(keep / "model.json")
    assert m.clip.startswith("stp-tiny") and len(m.classes) == 14  # UCF-Crime's head: normal + 13
    assert "ort-fp32" in capsys.readouterr().out


def test_end_to_end_counts_one_sample_per_sampled_frame_and_gating(tiny_bundle, tmp_path):
    from stprompt.runtime.backends import open_backend

    backend, m = open_backend(tiny_bundle.with_name("model.onnx"))
    video = stages.write_test_video(tmp_path / "v.mp4", 64, (160, 120))
    timing, stats = stages.run_end_to_end(backend, "ort", m, video, 64)
    assert len(timing.samples) == 4 and stats["crops"] == 200 and stats["gated_crops"] == 0
    _, gated = stages.run_end_to_end(backend, "ort", m, video, 64, gate=1.0)
    assert gated["gated_crops"] > 0 and gated["crops"] + gated["gated_crops"] == 200


def test_machine_stamp_is_json_ready():
    stamp = machine_stamp()
    json.dumps(stamp)
    assert stamp["cores"] >= 1 and isinstance(stamp["gpus"], list)


def test_machine_stamp_names_the_cpu_features_engines_depend_on(monkeypatch, tmp_path):
    """AMX or not changes the CPU engines several times over: the stamp and its one-line header say which."""
    import builtins

    from stprompt.bench import machine

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Some Xeon\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile amx_bf16\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(cpuinfo if f == "/proc/cpuinfo" else f, *a, **k))
    stamp = machine.machine_stamp()
    assert stamp["cpu"] == "Some Xeon" and stamp["cpu_flags"] == ["amx_bf16", "amx_tile", "avx512_vnni", "avx512f",
                                                                   "avx2"]  # fmt: skip
    assert "(amx_bf16 amx_tile avx512_vnni avx512f avx2)" in machine.describe(stamp)


def test_gpu_check_script_calls_stp_bench_with_valid_flags_and_refuses_a_machine_without_gpu(tmp_path):
    import re
    import shlex
    import subprocess
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"
    text = script.read_text()
    call = re.search(r"-m stprompt\.bench\.cli (.*?)\\\n(.*?)\\\n(.*?)2>>", text, re.S)
    argv = shlex.split(" ".join(call.groups()).replace('"$RESULTS/bench-vitb16-$GPU.json"', "out.json"))
    args = cli.build_parser().parse_args(argv)
    assert args.clip == "ViT-B-16:random" and "torch-cuda-fp16" in args.backends.split(",")
    assert all(b in cli.BACKENDS for b in args.backends.split(","))
    import torch

    if not torch.cuda.is_available():
        proc = subprocess.run(["bash", str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "no NVIDIA GPU" in proc.stderr
