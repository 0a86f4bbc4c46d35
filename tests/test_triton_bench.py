"""stp-bench --triton: a real Triton server (tests/triton_server.py) measured at two concurrency levels, the JSON and
table it writes, the streams estimate, and the one-line refusals (never wall-clock assertions)."""

from __future__ import annotations

import json
import math

import pytest
from triton_server import TritonServer, free_port, missing_reason, python_backend_repository

from stprompt.bench import cli
from stprompt.bench import triton as tb
from stprompt.bundle.manifest import load_manifest
from stprompt.errors import UserError
from stprompt.windows import crops_per_frame

REASON = missing_reason()


@pytest.fixture(scope="module")
def triton_bench_server(tiny_bundle, tmp_path_factory):
    """One tritonserver for the module: the tiny bundle's fp32 encoder (Python backend, ONNX Runtime on the CPU)."""
    if REASON is not None:
        pytest.skip(REASON)
    from stprompt.triton.repository import RepositoryOptions, write_repository

    root = tmp_path_factory.mktemp("triton-bench")
    generated = write_repository(tiny_bundle, root / "generated", RepositoryOptions(precision="fp32"))
    repository = python_backend_repository(generated, root / "repository")
    with TritonServer(repository, root) as server:
        yield server


def test_triton_bench_measures_two_levels_and_estimates_streams(tiny_bundle, triton_bench_server, tmp_path, capsys):
    out = tmp_path / "t.json"
    engine = tiny_bundle.with_name("model.onnx")
    argv = ["--engine", str(engine), "--triton", triton_bench_server.url, "--streams", "1,2", "--duration", "1.5",
            "--json", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    r = json.loads(out.read_text())
    m = load_manifest(tiny_bundle)
    crops = crops_per_frame(pre=m.preprocess)
    assert r["format"] == "stprompt-bench-triton/1" and r["crops_per_sampled_frame"] == crops == 50
    assert [row["streams"] for row in r["levels"]] == [1, 2]
    for row in r["levels"]:
        assert row["sampled_frames"] > 0 and row["requests"] == row["sampled_frames"]  # one request per call
        assert row["crops_per_s"] > 0 and row["crops"] == row["sampled_frames"] * crops
        assert row["crops_per_s"] == pytest.approx(row["crops"] / row["wall_s"], rel=1e-9)
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert len(row["per_stream_sampled_frames"]) == row["streams"] and min(row["per_stream_sampled_frames"]) > 0
        srv = row["server"]
        assert srv["requests"] >= row["requests"] and srv["failed"] == 0  # this bench is the server's only client
        assert 0 < srv["executions"] <= srv["requests"] and srv["avg_batch_requests"] >= 1
        assert srv["crops"] == srv["requests"] * crops and srv["queue_ms_per_request"] is not None
    best = max(row["crops_per_s"] for row in r["levels"])
    e = r["estimate"]
    assert e["best_crops_per_s"] == best and e["fps"] == 25 and e["stride"] == m.stride
    assert e["streams"] == pytest.approx(best / (crops * 25 / m.stride), rel=1e-12)
    assert e["whole_streams"] == math.floor(e["streams"])
    s = r["server"]
    assert s["url"].startswith(triton_bench_server.url) and s["model"] == "stp_encoder"
    assert s["role"] == "encoder" and s["version"] and s["config"]["max_batch_size"] >= crops
    assert r["machine"]["cores"] >= 1 and r["bundle"]["stride"] == m.stride and r["engine_events"] == []
    table = capsys.readouterr()
    assert "encoder requests through Triton gRPC, one sampled frame (50 crops" in table.out
    assert triton_bench_server.url in table.out and "hosted role encoder" in table.out and s["version"] in table.out
    assert e["formula"] in table.out and "wall time 1.5 s" in table.out
    assert "2 stream(s)" in table.err  # progress on stderr


def test_triton_bench_model_the_server_does_not_host_is_one_line(tiny_bundle, triton_bench_server, capsys):
    argv = ["--engine", str(tiny_bundle.with_name("model.onnx")), "--triton", f"{triton_bench_server.url}/other",
            "--duration", "1"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no model 'other'" in err[0] and "stp_encoder" in err[0]


def test_triton_bench_unreachable_server_is_one_line(tiny_bundle, capsys):
    pytest.importorskip("tritonclient.grpc")
    url = f"grpc://127.0.0.1:{free_port()}"  # nothing listens there
    assert cli.main(["--engine", str(tiny_bundle.with_name("model.onnx")), "--triton", url, "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreachable" in err[0] and "127.0.0.1" in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [(["--clip", "stp-tiny"], "--engine"), (["--backends", "ort-fp32"], "--backends"),
     (["--streams", "0"], "--streams"), (["--streams", "two"], "--streams"), (["--duration", "0"], "--duration")],
)  # fmt: skip
def test_triton_bench_refusals_are_one_line(tiny_bundle, extra, needle, capsys):
    argv = ["--triton", "grpc://127.0.0.1:1", *extra]
    if "--clip" not in extra:
        argv = ["--engine", str(tiny_bundle.with_name("model.onnx")), *argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_triton_streams_levels_and_estimate_formula():
    assert tb.parse_streams("1,2,4,8") == [1, 2, 4, 8] and tb.parse_streams("4,1,4") == [1, 4]
    assert tb.parse_streams("8") == [1, 2, 4, 8] and tb.parse_streams("6") == [1, 2, 4, 6]
    assert tb.parse_streams("1") == [1]
    with pytest.raises(UserError):
        tb.parse_streams("1,x")
    levels = [{"streams": 1, "crops_per_s": 500.0}, {"streams": 2, "crops_per_s": 781.25}]
    e = tb.estimate(levels, 50, 25.0, 16)
    assert e["streams"] == pytest.approx(10.0) and e["whole_streams"] == 10 and e["best_at_streams"] == 2
    assert "781.2 / (50 x 25 / 16 = 78.12) = 10.00" in e["formula"]


def test_triton_server_view_from_statistics_deltas():
    before = dict.fromkeys(("requests", "failed", "executions", "inferences", "queue_count", "queue_ns",
                            "compute_input_ns", "compute_infer_ns", "compute_output_ns"), 0)  # fmt: skip
    after = {**before, "requests": 10, "executions": 4, "inferences": 500, "queue_count": 10, "queue_ns": 20_000_000,
             "compute_infer_ns": 100_000_000}  # fmt: skip
    v = tb.server_view(before, after)
    assert v["avg_batch_requests"] == 2.5 and v["avg_batch_crops"] == 125 and v["queue_ms_per_request"] == 2.0
    assert v["compute_ms_per_request"] == 10.0
    assert tb.server_view(before, before)["avg_batch_requests"] is None
    # Triton's JSON statistics: uint64 counters as strings, zero counters left out
    model = {"execution_count": "4", "inference_stats": {"success": {"count": "10"}, "queue": {"ns": "7"}}}
    assert tb._count(model, "inference_stats", "queue", "ns") == 7 and tb._count(model, "execution_count") == 4
    assert tb._count(model, "inference_stats", "fail", "count") == 0 and tb._count(model, "inference_count") == 0
