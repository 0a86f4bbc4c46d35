"""The builder and the TensorRT backend on each TensorRT version whose API names tests/trt_api records."""

from __future__ import annotations

import shutil

import fake_tensorrt
import pytest

from stprompt.bundle.engine_keys import expected_key
from stprompt.runtime.backends import open_backend


@pytest.mark.parametrize("version", ["10.3.0", "10.6.0", "11.4.0"])
def test_strongly_typed_build_and_run_per_version(version, tiny_bundle, tmp_path, monkeypatch):
    from stprompt.engines.tensorrt import build_bundle_engines

    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle.parent, dst)
    trt = fake_tensorrt.install(monkeypatch, version)
    assert hasattr(trt.BuilderFlag, "FP16") == version.startswith("10.")  # 11.4 lacks it, so must the fake
    m = build_bundle_engines(dst / "model.json", log=lambda _: None, max_batch=2, opt_batch=1, max_window=8)
    strongly = 1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert all(net.flags == strongly and cfg.flags == set() for net, cfg in trt.builds)
    plan = fake_tensorrt.read_plan((dst / "model.plan").read_bytes())
    assert plan["onnx"] == str(dst / "model.fp16.onnx") and plan["flags"] == ["strongly_typed"]
    assert m.engines["encoder"]["mode"] == "strongly typed" and m.engines["encoder"]["tensorrt"] == version
    key = expected_key(m, "encoder", version, fake_tensorrt.COMPUTE_CAPABILITY)
    assert m.engines["encoder"]["key"] == key != expected_key(m, "encoder", "9.9.9", fake_tensorrt.COMPUTE_CAPABILITY)
    backend, _ = open_backend(dst / "model.plan")
    assert backend.name == "tensorrt"
    backend.close()


def test_dependency_pins_cover_exactly_the_checked_tensorrt_versions_on_one_cuda_major():
    """pyproject's [trt] extra: the CUDA 12 wheels, bounded to the versions whose API names are recorded, and a
    cuda-python of the same CUDA major; the Dockerfile's cuda-python pins are the same."""
    import re
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    root = Path(__file__).resolve().parents[1]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["trt"]
    trt = next(d for d in extra if d.startswith("tensorrt"))
    cuda = next(d for d in extra if d.startswith("cuda-python"))
    assert trt.startswith("tensorrt-cu12") and cuda == "cuda-python>=12.6,<13"
    low, high = re.fullmatch(r"tensorrt-cu12>=([\d.]+),<([\d.]+)", trt).groups()

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("."))

    checked = sorted((p.stem.removeprefix("tensorrt-") for p in (root / "tests" / "trt_api").glob("tensorrt-*.txt")),
                     key=key)  # fmt: skip
    assert checked[0] == low  # the oldest checked version is the lower bound
    assert all(key(low) <= key(v) < key(high) for v in checked)
    newest = key(checked[-1])
    assert key(high) == (newest[0], newest[1] + 1)  # nothing newer than the newest checked minor
    dockerfile = (root / "Dockerfile").read_text()
    assert dockerfile.count('"cuda-python>=12.6,<13"') == 2 and '"cuda-python>=12"' not in dockerfile


def test_stp_run_check_gates_a_plan_against_onnx_runtime(tiny_bundle, tmp_path, monkeypatch, capsys):
    """`stp-run --check` on a plan built by the real builder (11.4's fake) against the graph it was built from:
    the export's gates are applied and pass (the fake runs that same graph)."""
    import json

    from conftest import write_video

    from stprompt.engines.tensorrt import build_bundle_engines
    from stprompt.runtime import cli as run_cli

    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle.parent, dst)
    fake_tensorrt.install(monkeypatch, "11.4.0")
    build_bundle_engines(dst / "model.json", log=lambda _: None, max_batch=64, opt_batch=50, max_window=64)
    video = tmp_path / "v.mp4"
    write_video(video, 40)
    argv = [str(video), "--engine", str(dst / "model.plan"), "--check", str(dst / "model.fp16.onnx"),
            "--check-frames", "2"]  # fmt: skip
    assert run_cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["a"] == "tensorrt" and report["gate"]["passed"] and report["crops"] == 100


def test_stp_run_feeds_a_tensorrt_plan_uint8_crops_and_scores_as_the_graph_does(tiny_bundle, tmp_path, monkeypatch):
    """With model.pre.plan the Detector cuts uint8 crops (a quarter of the float32 bytes) and the device normalises
    them into the encoder's input: stp-run's events equal those of the graph the plan is built from, where the host
    normalises (model.fp16.onnx on ONNX Runtime), to the last digit."""
    import json

    from conftest import write_video

    from stprompt.engines.tensorrt import build_bundle_engines
    from stprompt.runtime import cli as run_cli

    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle.parent, dst)
    trt = fake_tensorrt.install(monkeypatch, "10.6.0")
    build_bundle_engines(dst / "model.json", log=lambda _: None, max_batch=64, opt_batch=50, max_window=128)
    video = tmp_path / "v.mp4"
    write_video(video, 80)
    events = {}
    for engine in ("model.plan", "model.fp16.onnx"):
        out = tmp_path / f"{engine}.jsonl"
        assert run_cli.main([str(video), "--engine", str(dst / engine), "--events", str(out), "--quiet"]) == 0
        events[engine] = [json.loads(line) for line in out.read_text().splitlines()]
    frames = {k: [(e["frame"], e["score"], e["probs"]) for e in v if e["type"] == "frame"] for k, v in events.items()}
    assert frames["model.plan"] == frames["model.fp16.onnx"] and len(frames["model.plan"]) >= 4
    calls = [(name, shapes) for name, shapes in trt.executions if "head" not in name]
    pre = [i for i, (name, _) in enumerate(calls) if name == "model.pre.onnx"]
    assert len(pre) >= 2  # the sampled frames' crops crossed as uint8 ...
    for i in pre:  # ... each batch normalised on the device straight into the encoder's call that followed
        (_, pixels), (encoder, images) = calls[i], calls[i + 1]
        assert encoder == "model.fp16.onnx" and pixels["pixels"][1:] == (224, 224, 3)
        assert images["images"] == (pixels["pixels"][0], 3, 224, 224)
    assert len(calls) == 2 * len(pre)  # localization's scale-B crops of alarm frames too
    assert any(e["type"] == "alarm" for e in events["model.plan"])  # (there were some)
