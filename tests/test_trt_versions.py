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
