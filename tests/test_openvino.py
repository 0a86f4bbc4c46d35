"""OpenVINO engines (issue 19): stp-build --openvino builds bf16 and NNCF INT8 IR on an stp-tiny bundle and gates them
like an export, a broken calibration writes nothing, stp-run on the IR equals ONNX Runtime within the gate, the key
forces a rebuild when OpenVINO changes, stp-bench measures both, and every place OpenVINO is missing says so in one
line (stp-appliance falls back to ONNX Runtime)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import write_video

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from stprompt import appliance  # noqa: E402
from stprompt.bench import cli as bench_cli  # noqa: E402
from stprompt.bundle.compare import centered_cosine  # noqa: E402
from stprompt.bundle.manifest import load_manifest  # noqa: E402
from stprompt.bundle.openvino_keys import BF16_ROLE, INT8_ROLE, recorded_thresholds  # noqa: E402
from stprompt.bundle.probe import probe_batch  # noqa: E402
from stprompt.engines import build_cli  # noqa: E402
from stprompt.engines import openvino as ov_engines  # noqa: E402
from stprompt.engines.calibration import video_calibration  # noqa: E402
from stprompt.errors import UserError  # noqa: E402
from stprompt.runtime import cli as run_cli  # noqa: E402
from stprompt.runtime.backends import open_backend  # noqa: E402


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src.parent, dst)
    return dst / src.name


@pytest.fixture(scope="module")
def ov_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """A copy of the stp-tiny bundle with both OpenVINO engines built (INT8 on the probe scene); its manifest."""
    manifest = copy_bundle(tiny_bundle, tmp_path_factory.mktemp("ov") / "b")
    assert build_cli.main([str(manifest), "--openvino", "--quiet"]) == 0
    assert build_cli.main([str(manifest), "--openvino", "--int8", "--quiet"]) == 0
    return manifest


@pytest.fixture(scope="module")
def clip_video(tmp_path_factory) -> Path:
    """A synthetic camera (stp-synth's renderer: a street with people and cars), 96 frames: 6 sampled at stride 16."""
    from stprompt.data.synth import generate

    out = tmp_path_factory.mktemp("site")
    generate(out, n_train=1, n_test=0, n_frames=96, width=320, height=240, n_scenes=1, anomaly_fraction=0.0, seed=5,
             workers=1)  # fmt: skip
    (video,) = sorted((out / "videos").glob("*.mp4"))
    return video.rename(out / "site.mp4")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --- building and gating -----------------------------------------------------------------------------------------


def test_bf16_and_int8_engines_pass_their_gates_and_are_recorded(ov_bundle):
    m = load_manifest(ov_bundle)
    bf16, int8 = m.engines[BF16_ROLE], m.engines[INT8_ROLE]
    assert (bf16["path"], bf16["weights"]["path"]) == ("model.xml", "model.bin")
    assert (int8["path"], int8["weights"]["path"]) == ("model.int8.xml", "model.int8.bin")
    cpu = ov_engines.target()[1]
    assert bf16["precision"] == ov_engines.float_precision(cpu) and int8["precision"] == "int8"
    for record in (bf16, int8):
        gates = record["gates"]
        assert gates["encoder"]["passed"] and gates["scores"]["passed"]
        assert gates["encoder"]["min"] >= record["thresholds"]["cosine"]
        assert gates["probe"]["crops"] == m.gates["probe"]["crops"]  # the export's own probe
        assert record["cpu"] == cpu and record["openvino"] == ov_engines.openvino_version(ov_engines.require_openvino())
        assert len(record["key"]) == 64
    assert bf16["calibration"] is None and bf16["nncf"] is None
    assert int8["calibration"]["source"] == "probe" and int8["nncf"]
    assert int8["thresholds"]["cosine"] == m.gates["encoder_int8"]["threshold"]  # the bundle's own INT8 gate
    assert m.engines.get("encoder") is None  # no TensorRT record appeared
    assert recorded_thresholds(m, ov_bundle.with_name("model.xml")) == bf16["thresholds"]
    assert recorded_thresholds(m, "model.int8.xml")["cosine"] == 0.99 and recorded_thresholds(m, "model.onnx") is None


def test_current_engines_are_reused(ov_bundle, capsys):
    before = ov_bundle.read_bytes()
    assert build_cli.main([str(ov_bundle), "--openvino"]) == 0
    assert build_cli.main([str(ov_bundle), "--openvino", "--int8"]) == 0
    err = capsys.readouterr().err
    assert "model.xml is current" in err and "model.int8.xml is current" in err and "building" not in err
    assert ov_bundle.read_bytes() == before


def test_calibration_on_footage_gates_held_out_frames(tiny_bundle, clip_video, tmp_path, capsys):
    m = load_manifest(tiny_bundle)
    data = video_calibration([clip_video], m.stride, m.offset, m.preprocess, frames=2)
    assert data.crops.shape == (200, 3, 224, 224) and data.holdout.shape == (100, 3, 224, 224)  # + 2 probe scenes
    assert data.identity["videos"][0]["name"] == "site.mp4" and len(data.identity["videos"][0]["sha256"]) == 64
    assert not np.array_equal(data.crops[:50], data.holdout[:50])  # different frames calibrate and gate
    manifest = copy_bundle(tiny_bundle, tmp_path / "b")
    argv = [str(manifest), "--openvino", "--int8", "--calibrate", str(clip_video), "--calibration-frames", "2",
            "--gate", "0.98", "--quiet"]  # fmt: skip
    assert build_cli.main(argv) == 0
    record = load_manifest(manifest).engines[INT8_ROLE]
    assert record["calibration"]["source"] == "video" and record["calibration"]["probe"]["source"] == "probe"
    footage = record["gates"]["footage"]
    assert footage["passed"] and footage["crops"] == 100 and "held-out footage" in footage["metric"]
    assert record["thresholds"]["cosine"] == 0.98 and record["gates"]["encoder"]["passed"]
    # stp-run --check on this footage holds the engine to the gate it was built to (--gate 0.98)
    report = check_report(manifest.with_name("model.int8.xml"), manifest.with_name("model.onnx"), clip_video, capsys)
    assert report["gate"]["encoder_threshold"] == 0.98 and report["gate"]["passed"]


def test_constant_calibration_fails_the_gate_and_writes_nothing(tiny_bundle, tmp_path, monkeypatch, capsys):
    from stprompt.engines import calibration

    manifest = copy_bundle(tiny_bundle, tmp_path / "b")
    before, doc = sorted(p.name for p in manifest.parent.iterdir()), manifest.read_bytes()

    real = calibration.probe_calibration

    def constant(pre, frames):  # deliberately broken: every calibration crop one flat colour (the CLIP mean)
        good = real(pre, frames)
        return calibration.Calibration(np.zeros_like(good.crops), None, good.identity)

    monkeypatch.setattr(calibration, "probe_calibration", constant)
    assert build_cli.main([str(manifest), "--openvino", "--int8", "--quiet"]) == 2
    line = one_line_error(capsys)
    assert line.startswith("stp-build: error: model.int8.xml: accuracy gate failed: encoder ")
    assert "nothing written" in line
    assert sorted(p.name for p in manifest.parent.iterdir()) == before  # no IR, no partial file
    assert manifest.read_bytes() == doc


def test_blank_footage_is_refused_before_quantizing(ov_bundle, tmp_path, capsys):
    video = tmp_path / "lens-cap.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (160, 120))
    for _ in range(64):
        writer.write(np.full((120, 160, 3), 40, np.uint8))
    writer.release()
    argv = [str(ov_bundle), "--openvino", "--int8", "--calibrate", str(video), "--quiet"]
    assert build_cli.main(argv) == 2
    assert "every sampled frame is blank" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["--int8"], "--int8: OpenVINO settings; add --openvino"),
     (["--openvino", "--calibrate", "x.mp4"], "--calibrate sets INT8 ranges: add --int8"),
     (["--openvino", "--max-batch", "8"], "--max-batch: TensorRT plan settings"),
     (["--openvino", "--int8", "--calibrate", "nope.mp4"], "--calibrate nope.mp4: video file not found"),
     (["--openvino", "--calibration-frames", "0"], "--calibration-frames must be at least 1"),
     (["--openvino", "--gate", "1.5"], "--gate must be in (0, 1]")],
)  # fmt: skip
def test_build_mistakes_are_one_line(ov_bundle, argv, needle, capsys):
    assert build_cli.main([str(ov_bundle), *argv]) == 2
    line = one_line_error(capsys)
    assert line.startswith("stp-build: error: ") and needle in line


# --- running -----------------------------------------------------------------------------------------------------


def frame_scores(path: Path) -> dict[int, tuple[float, list[float]]]:
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return {e["frame"]: (e["score"], list(e["probs"].values())) for e in events if e["type"] == "frame"}


@pytest.mark.parametrize("engine", ["model.xml", "model.int8.xml"])
def test_stp_run_on_the_openvino_engine_equals_onnx_runtime_within_the_gate(ov_bundle, clip_video, tmp_path, engine):
    out = {}
    for name in ("model.onnx", engine):
        events = tmp_path / f"{name}.jsonl"
        argv = [str(clip_video), "--engine", str(ov_bundle.with_name(name)), "--events", str(events), "--quiet"]
        assert run_cli.main(argv) == 0
        out[name] = frame_scores(events)
    assert list(out[engine]) == list(out["model.onnx"]) == [8, 24, 40, 56, 72, 88]
    role = INT8_ROLE if engine == "model.int8.xml" else BF16_ROLE
    limit = load_manifest(ov_bundle).engines[role]["thresholds"]["scores"] + 1e-4  # events round to 4 decimals
    for frame, (score, probs) in out["model.onnx"].items():
        other_score, other_probs = out[engine][frame]
        assert abs(other_score - score) <= limit
        assert max(abs(a - b) for a, b in zip(other_probs, probs, strict=True)) <= limit


def check_report(engine: Path, reference: Path, video: Path, capsys) -> dict:
    argv = [str(video), "--engine", str(engine), "--check", str(reference), "--check-frames", "2"]
    assert run_cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_stp_run_check_holds_an_openvino_engine_to_its_own_gate(ov_bundle, clip_video, capsys):
    """`stp-run --check model.onnx` on an OpenVINO engine applies the gates stp-build built it to, not the fp32
    graph's 0.999 that a reduced-precision engine is not meant to meet (the INT8 case: the calibration test)."""
    report = check_report(ov_bundle.with_name("model.xml"), ov_bundle.with_name("model.onnx"), clip_video, capsys)
    built = load_manifest(ov_bundle).engines[BF16_ROLE]["thresholds"]
    assert report["gate"]["passed"] and report["crops"] == 100
    gate = report["gate"]
    assert gate["encoder_threshold"] == built["cosine"] and gate["head_threshold"] == built["scores"]


def test_backend_names_its_settings_and_splits_calls_over_requests(ov_bundle):
    from stprompt.runtime.api import default_max_batch

    backend, _ = open_backend(ov_bundle.with_name("model.xml"), max_batch=3)
    reference, _ = open_backend(ov_bundle.with_name("model.onnx"))
    try:
        assert default_max_batch(backend) == 50  # a CPU encoder: one sampled frame per call, as ONNX Runtime's
        assert backend.name.startswith("openvino[CPU,") and "throughput" in backend.name  # stp-build's default
        images = probe_batch(1)[::7]  # 8 distinct crops: a reordering would show
        expected = reference.encode(images)
        emb = backend.encode(images)  # 3 + 3 + 2: split at max_batch, then over the requests
        assert emb.shape == (8, backend.dim) and emb.dtype == np.float32
        assert centered_cosine(emb, expected).min() > 0.99  # a row out of order would fail this
        backend._infer_requests = [backend._compiled.create_infer_request() for _ in range(3)]  # 3 in flight
        assert centered_cosine(backend.encode(images), expected).min() > 0.99
        backend._infer_requests = backend._infer_requests[:1]  # one synchronous request (the latency hint's path)
        assert centered_cosine(backend.encode(images), expected).min() > 0.99
    finally:
        backend.close()
        reference.close()


SIGNAL_AFTER_TWO_ENGINES = """
import os, signal, sys
from stprompt.runtime.backends import open_backend
from stprompt.bundle.probe import probe_batch

crops = probe_batch(1)
first, _ = open_backend(sys.argv[1])
second, _ = open_backend(sys.argv[2])
first.encode(crops), second.encode(crops)
first.close(), second.close()  # in the order they were opened, as stp-bench's turns do
del first, second
got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
os.kill(os.getpid(), signal.SIGTERM)  # what stp-run's stop and docker stop send
print("handled", got)
"""


def test_a_signal_after_two_engines_were_closed_is_handled(ov_bundle):
    """Each OpenVINO Core's CPU plugin swaps the thread's alternate signal stack and puts the old one back when it
    dies; two Cores dying in the order they were made left a freed stack, and the next SIGTERM was a SIGSEGV. The
    runtime shares one Core (engines.openvino.shared_core)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    argv = [sys.executable, "-c", SIGNAL_AFTER_TWO_ENGINES, str(ov_bundle.with_name("model.xml")),
            str(ov_bundle.with_name("model.int8.xml"))]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.strip().endswith("handled [15]")


def test_openvino_version_change_forces_a_rebuild(ov_bundle, tmp_path, monkeypatch, capsys):
    manifest = copy_bundle(ov_bundle, tmp_path / "b")
    real = ov_engines.openvino_version
    monkeypatch.setattr(ov_engines, "openvino_version", lambda ov: "2099.1.0-0-fake")
    with pytest.raises(UserError, match=r"not built for this bundle on OpenVINO 2099\.1\.0.*stp-build --openvino"):
        open_backend(manifest.with_name("model.xml"))
    old_key = load_manifest(manifest).engines[BF16_ROLE]["key"]
    assert build_cli.main([str(manifest), "--openvino"]) == 0
    assert "building model.xml" in capsys.readouterr().err
    record = load_manifest(manifest).engines[BF16_ROLE]
    assert record["openvino"] == "2099.1.0-0-fake" and record["key"] != old_key
    backend, _ = open_backend(manifest.with_name("model.xml"))  # current for the (faked) version now
    backend.close()
    monkeypatch.setattr(ov_engines, "openvino_version", real)
    with pytest.raises(UserError, match="stale or foreign engine"):
        open_backend(manifest.with_name("model.xml"))


def test_a_modified_ir_is_refused(ov_bundle, tmp_path):
    manifest = copy_bundle(ov_bundle, tmp_path / "b")
    weights = manifest.with_name("model.bin")
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(UserError, match="stale or foreign engine"):
        open_backend(manifest.with_name("model.xml"))


def test_missing_ir_says_how_to_build_it(tiny_bundle, capsys):
    with pytest.raises(UserError, match=r"OpenVINO engine not found: .*stp-build --openvino --int8 "):
        open_backend(tiny_bundle.with_name("model.int8.xml"))


# --- stp-bench ---------------------------------------------------------------------------------------------------


def test_bench_measures_openvino_beside_onnx_runtime_in_turns(ov_bundle, tmp_path):
    out = tmp_path / "r.json"
    argv = ["--engine", str(ov_bundle), "--backends", "ort-fp32,openvino-bf16,openvino-int8", "--turns", "2",
            "--repeats", "1", "--warmup", "0", "--frames", "32", "--size", "160x120", "--no-flops", "--quiet",
            "--json", str(out)]  # fmt: skip
    assert bench_cli.main(argv) == 0
    r = json.loads(out.read_text())
    rows = r["backends"]
    assert set(rows) == {"ort-fp32", "openvino-bf16", "openvino-int8"}
    assert set(rows["openvino-bf16"]) == set(rows["ort-fp32"]) == set(rows["openvino-int8"])  # the same keys
    assert all(row["n"] == 2 for row in rows.values())  # 2 turns x 1 call
    encodes = [t for t in r["timings"] if t["stage"] == "encode"]
    assert all("in turns: 2 rounds" in t["note"] for t in encodes)
    assert r["turns"]["rounds"] == 2 and len(r["turns"]["load_average_after_each"]) == 2
    assert r["load_average"]["start"] is not None
    assert r["accuracy"]["openvino-int8"]["centered_cosine_min"] >= 0.99
    assert r["settings"]["turns"] == 2


def test_bench_knows_openvino_files_and_what_builds_them(tiny_bundle):
    assert bench_cli._engine_backend(Path("b/model.int8.xml")) == "openvino-int8"
    assert bench_cli._engine_backend(Path("b/model.xml")) == "openvino-bf16"
    assert bench_cli._available("openvino-int8", tiny_bundle.parent) == (
        "no model.int8.xml in the bundle (run stp-build --openvino --int8)"
    )


# --- without OpenVINO, and the appliance ---------------------------------------------------------------------------


@pytest.fixture
def no_openvino(monkeypatch):
    """openvino cannot be imported (as on an image without the extra)."""
    monkeypatch.setitem(sys.modules, "openvino", None)


def test_without_openvino_every_command_says_so_in_one_line(ov_bundle, no_openvino, capsys):
    assert build_cli.main([str(ov_bundle), "--openvino"]) == 2
    assert one_line_error(capsys) == 'stp-build: error: OpenVINO is not installed: pip install "stprompt[openvino]"'
    with pytest.raises(UserError, match=r'OpenVINO is not installed: pip install "stprompt\[openvino\]"'):
        open_backend(ov_bundle.with_name("model.xml"))
    assert "openvino not installed" in bench_cli._available("openvino-bf16", ov_bundle.parent)


def test_appliance_falls_back_to_onnx_runtime_without_openvino(tiny_bundle, tmp_path, monkeypatch, no_openvino):
    monkeypatch.setattr(appliance, "probe_tensorrt", lambda: "TensorRT is not installed")
    lines = []
    decision = appliance.prepare_engine(tiny_bundle, tmp_path / "cache", log=lines.append)
    engine = tiny_bundle.with_name("model.onnx")
    assert decision.action == "fallback" and decision.engine == engine
    assert lines == [
        "stp-appliance: fallback to ONNX Runtime: TensorRT is not installed; OpenVINO is not installed "
        f'(pip install "stprompt[openvino]"); stp-run gets {engine}'
    ]
    with pytest.raises(UserError, match="--build-args asks for OpenVINO: OpenVINO is not installed"):
        appliance.prepare_engine(tiny_bundle, tmp_path / "cache", build_args=["--int8"], log=lines.append)


def test_appliance_builds_reuses_and_rebuilds_the_openvino_engine(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(appliance, "probe_tensorrt", lambda: "TensorRT is not installed")
    cache, before = tmp_path / "cache", sorted(p.name for p in tiny_bundle.parent.iterdir())
    lines: list[str] = []
    first = appliance.prepare_engine(tiny_bundle, cache, build_args=["--quiet"], log=lines.append)
    assert first.action == "build" and first.engine == cache / "model.xml" and first.engine.is_file()
    assert lines == [first.message] and "no model.xml for this bundle yet (first start)" in first.message
    assert "OpenVINO" in first.message and "TensorRT is not installed" in first.message
    assert sorted(p.name for p in tiny_bundle.parent.iterdir()) == before  # the bundle is left alone
    assert appliance.prepare_engine(tiny_bundle, cache, log=lines.append).action == "reuse"
    monkeypatch.setattr(ov_engines, "openvino_version", lambda ov: "2099.1.0-0-fake")
    again = appliance.prepare_engine(tiny_bundle, cache, build_args=["--quiet"], log=lines.append)
    assert again.action == "rebuild" and "does not match" in again.message
    backend, _ = open_backend(again.engine)  # what stp-run gets opens with the staged bundle
    backend.close()


def test_appliance_on_a_tensorrt_machine_refuses_openvino_flags_without_openvino(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(appliance, "probe_tensorrt", lambda: appliance.TrtTarget("10.3.0", "8.7"))
    with pytest.raises(UserError, match="--int8: OpenVINO settings; add --openvino"):
        appliance.prepare_engine(tiny_bundle, tmp_path / "cache", build_args=["--int8"], log=lambda _m: None)


def test_appliance_builds_and_runs_openvino_without_torch(tiny_bundle, tmp_path):
    """With only the CPU image's packages importable (no torch, onnx or TensorRT; OpenVINO present), stp-appliance
    builds model.xml into its cache and the stp-run it becomes streams a video to events."""
    from test_appliance import BLOCK_TORCH

    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCK_TORCH)
    video = tmp_path / "gate.mp4"
    write_video(video, 48, blob=(16, 40))
    events = tmp_path / "events.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "block"), *(p for p in sys.path if p)]),
           "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "STP_TEST_BLOCK_LOG": str(tmp_path / "block.log")}  # fmt: skip
    env.pop(appliance.ENV_BUNDLE, None)
    cache = tmp_path / "c"
    cmd = [sys.executable, "-m", "stprompt.appliance", "--bundle", str(tiny_bundle), "--cache", str(cache),
           "--build-args=--quiet", "--", str(video), "--events", str(events), "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("stp-appliance: build: no model.xml for this bundle yet (first start); building into ")
    frames = [e for e in map(json.loads, events.read_text().splitlines()) if e["type"] == "frame"]
    assert [e["frame"] for e in frames] == [8, 24, 40]
    assert (cache / "model.xml").is_file() and (cache / "model.bin").is_file()


def test_a_build_sends_no_usage_telemetry(tiny_bundle, tmp_path):
    """`import openvino` and `import nncf` send usage events to Intel by default, leaving a client id under ~/intel;
    stp-build and stp-run run on appliances that must not reach out, so a build leaves nothing there and the
    environment is as it was."""
    manifest = copy_bundle(tiny_bundle, tmp_path / "b")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NNCF_CI", "NNCF_DEV", "CI")}
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    argv = [sys.executable, "-m", "stprompt.engines.build_cli", str(manifest), "--openvino", "--int8", "--quiet"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load_manifest(manifest).engines[INT8_ROLE]
    assert not (home / "intel").exists(), sorted(p.name for p in (home / "intel").rglob("*"))
    probe = "import os; from stprompt.engines import openvino as o; o.require_nncf(); print(os.environ.get('CI'))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=env)
    assert proc.stdout.split()[-1] == "None" and not (home / "intel").exists()
