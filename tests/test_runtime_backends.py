"""Runtime backends: bundle lookup and integrity, ONNX Runtime vs the PyTorch reference, batching, parity,
clear errors, and the rule that the runtime imports and runs without torch."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from stprompt.bundle.hashing import sha256_file
from stprompt.bundle.manifest import load_manifest, write_manifest
from stprompt.errors import UserError
from stprompt.runtime.backends import Backend, bundle_manifest_for, open_backend, parity

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
import fake_tensorrt  # noqa: E402
from conftest import CLASSES  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Path:
    return tiny_bundle


@pytest.fixture
def bundle_copy(bundle, tmp_path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(bundle.parent, dst)
    return dst / "model.json"


@pytest.fixture(scope="module")
def inputs(bundle):
    rng = np.random.default_rng(0)
    d = load_manifest(bundle, verify=False).dim
    images = rng.standard_normal((5, 3, 224, 224)).astype(np.float32)
    x_clip = rng.standard_normal((9, d)).astype(np.float32)
    x_patch = rng.standard_normal((9, 49, d)).astype(np.float32)
    return images, x_clip, x_patch


@pytest.fixture(scope="module")
def ort_cpu(bundle):
    backend, _ = open_backend(bundle.with_name("model.onnx"))
    return backend


# --- opening ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.head.onnx", "model.plan", "model.head.plan",
             "model.engine", "model.xml", "model.int8.xml", "model.pt"],
)  # fmt: skip
def test_manifest_is_found_by_stem(name):
    assert bundle_manifest_for(Path("out") / name) == Path("out/model.json")


def test_ort_backend_shapes_and_name(bundle, ort_cpu, inputs):
    images, x_clip, x_patch = inputs
    manifest = load_manifest(bundle)
    assert isinstance(ort_cpu, Backend)
    assert ort_cpu.name == "onnxruntime[CPUExecutionProvider]" and ort_cpu.dim == manifest.dim
    emb = ort_cpu.encode(images)
    assert emb.shape == (5, manifest.dim) and emb.dtype == np.float32
    assert ort_cpu.encode(images[:0]).shape == (0, manifest.dim)
    out = ort_cpu.head(x_clip, x_patch)
    assert set(out) == {"score", "score_c", "probs"}
    assert out["score"].shape == (9,) and out["score_c"].shape == (9,) and out["probs"].shape == (9, len(CLASSES))
    assert all(v.dtype == np.float32 for v in out.values())
    grid = ort_cpu.head(x_clip, x_patch.reshape(9, 7, 7, -1))  # [T, 7, 7, D] is accepted as well
    np.testing.assert_array_equal(grid["probs"], out["probs"])
    with pytest.raises(ValueError, match="encoder input"):
        ort_cpu.encode(images[:, :, :100])


def test_ort_matches_pytorch_reference(bundle, ort_cpu, inputs):
    ref, manifest = open_backend(bundle.with_name("model.pt"))
    assert ref.name == "torch-cpu-fp32" and manifest.path == bundle.resolve()
    report = parity(ort_cpu, ref, *inputs)
    assert report["a"] == ort_cpu.name and report["b"] == "torch-cpu-fp32"
    assert report["crops"] == 5 and report["snippets"] == 9
    assert report["embeddings"]["max_rel"] < 1e-4 and report["embeddings"]["centered_cosine_min"] > 0.9999
    for key in ("score", "score_c", "probs"):
        assert report[key]["max_abs"] < 1e-4, key


@pytest.mark.parametrize(("name", "min_cos"), [("model.fp16.onnx", 0.999), ("model.int8.onnx", 0.9)])
def test_reduced_precision_encoders_open_with_the_bundle_head(bundle, ort_cpu, inputs, name, min_cos):
    backend, manifest = open_backend(bundle.with_name(name))
    assert manifest.path == bundle.resolve()
    report = parity(backend, ort_cpu, *inputs)
    assert report["embeddings"]["centered_cosine_min"] > min_cos  # random-noise crops: a loose bound
    assert report["probs"]["max_abs"] == 0.0  # the same fp32 head graph


def test_parity_of_a_backend_with_itself_is_zero(ort_cpu, inputs):
    report = parity(ort_cpu, ort_cpu, *inputs)
    assert all(report[k]["max_abs"] == 0.0 for k in ("embeddings", "score", "score_c", "probs"))


def test_large_encoder_calls_are_split(bundle, ort_cpu, inputs):
    images = inputs[0]
    backend, _ = open_backend(bundle.with_name("model.onnx"), max_batch=2, providers=["cpu"])
    calls = []
    inner = backend._encode_batch
    backend._encode_batch = lambda x: calls.append(len(x)) or inner(x)
    np.testing.assert_allclose(backend.encode(images), ort_cpu.encode(images), rtol=1e-5, atol=1e-5)
    assert calls == [2, 2, 1]
    with pytest.raises(UserError, match="--max-batch must be at least 1"):
        open_backend(bundle.with_name("model.onnx"), max_batch=0)


def test_pytorch_checkpoint_elsewhere_with_explicit_manifest(bundle, tmp_path):
    ckpt = tmp_path / "trained.pt"
    shutil.copy(bundle.with_name("model.pt"), ckpt)
    with pytest.raises(UserError, match=r"bundle manifest .*trained\.json not found"):
        open_backend(ckpt)
    backend, manifest = open_backend(ckpt, manifest=bundle)
    assert backend.name == "torch-cpu-fp32" and manifest.path == bundle.resolve()


# --- refusals ------------------------------------------------------------------------------------------------------


def test_missing_manifest_and_missing_engine(bundle, tmp_path):
    lone = tmp_path / "model.onnx"
    shutil.copy(bundle.with_name("model.onnx"), lone)
    with pytest.raises(UserError, match=r"bundle manifest .*model\.json not found"):
        open_backend(lone)
    with pytest.raises(UserError, match=r"engine file not found: .*ghost\.onnx"):
        open_backend(tmp_path / "ghost.onnx")
    with pytest.raises(UserError, match=r"unknown engine type '\.npz'"):
        open_backend(bundle.with_name("model.queries.npz"))


def test_engine_from_another_export_is_refused(bundle_copy):
    """A stale model.int8.onnx left beside a newer bundle that has no int8 encoder is not run."""
    doc = json.loads(bundle_copy.read_text())
    del doc["files"]["encoder_int8"]
    write_manifest(bundle_copy, doc)
    with pytest.raises(UserError, match=r"model\.int8\.onnx is not part of bundle .*model\.json \(engine from another"):
        open_backend(bundle_copy.with_name("model.int8.onnx"))
    plan = bundle_copy.with_name("model.plan")
    plan.write_bytes(b"a plan from somewhere else")
    with pytest.raises(UserError, match=r"model\.plan is not part of bundle"):
        open_backend(plan)


def test_modified_bundle_file_is_refused(bundle_copy):
    head = bundle_copy.with_name("model.head.onnx")
    head.write_bytes(head.read_bytes() + b"\0")
    with pytest.raises(UserError, match=r"model\.head\.onnx: sha256 mismatch"):
        open_backend(bundle_copy.with_name("model.onnx"))


def test_head_file_is_not_an_encoder(bundle):
    with pytest.raises(UserError, match=r"model\.head\.onnx is the bundle's temporal head"):
        open_backend(bundle.with_name("model.head.onnx"))
    with pytest.raises(UserError, match=r"model\.pre\.onnx is the bundle's preprocessing .* pass the image encoder"):
        open_backend(bundle.with_name("model.pre.onnx"))


def test_unavailable_provider_lists_available(bundle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(UserError, match=r"CUDAExecutionProvider is not available.*available: .*CPUExecutionProvider"):
        open_backend(bundle.with_name("model.onnx"), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_checkpoint_with_other_clip_weights_is_refused(bundle_copy):
    from stprompt.checkpoint import load_checkpoint

    ckpt = load_checkpoint(bundle_copy.with_name("model.pt"))
    ckpt.clip_sha256 = "f" * 64
    ckpt.save(bundle_copy.with_name("model.pt"))
    with pytest.raises(UserError, match=r"model\.pt was trained on CLIP weights sha256 ffffffffffff"):
        open_backend(bundle_copy.with_name("model.pt"))


# --- no torch on the appliance --------------------------------------------------------------------------------------

NO_TORCH = textwrap.dedent(
    """
    import importlib.abc, json, sys
    from pathlib import Path

    BLOCKED = {"torch", "open_clip", "tensorrt", "pycuda", "cuda"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    import stprompt.runtime, stprompt.runtime.backends, stprompt.runtime.sources
    from stprompt.errors import UserError
    from stprompt.bundle.hashing import sha256_file
    from stprompt.bundle.manifest import write_manifest
    from stprompt.runtime.backends import open_backend

    def error(engine):
        try:
            open_backend(engine)
        except UserError as err:
            return str(err)
        return None

    manifest = Path(sys.argv[1])
    backend, m = open_backend(manifest.with_name("model.onnx"))
    emb = backend.encode(np.zeros((2, 3, 224, 224), np.float32))
    out = backend.head(np.zeros((3, m.dim), np.float32), np.zeros((3, 49, m.dim), np.float32))
    report = {"emb": list(emb.shape), "probs": list(out["probs"].shape), "torch": error(manifest.with_name("model.pt"))}
    # a plan the manifest records: the TensorRT backend is chosen, and tensorrt is missing
    plan = manifest.with_name("model.plan")
    plan.write_bytes(b"plan bytes")
    doc = json.loads(manifest.read_text())
    doc["engines"] = {"encoder": {"path": plan.name, "sha256": sha256_file(plan), "key": "k"}}
    write_manifest(manifest, doc)
    report["trt"] = error(plan)
    for name in [n for n in sys.modules if n.split(".")[0] == "onnxruntime"]:
        del sys.modules[name]
    BLOCKED.add("onnxruntime")
    report["ort"] = error(manifest.with_name("model.onnx"))
    report["loaded"] = sorted(n for n in BLOCKED if n in sys.modules)
    print(json.dumps(report))
    """
)


def test_runtime_runs_without_torch_and_names_missing_extras(bundle_copy):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(bundle_copy)], capture_output=True, text=True,
                          timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["emb"][0] == 2 and report["probs"] == [3, len(CLASSES)]
    assert 'pip install "stprompt[train]"' in report["torch"] and "torch" in report["torch"]
    assert 'pip install "stprompt[trt]"' in report["trt"]
    assert 'pip install "stprompt[ort]"' in report["ort"]
    assert report["loaded"] == []


# --- TensorRT (GPU machines only) -----------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed")
def test_tensorrt_backend_matches_onnx_runtime(bundle_copy, inputs):
    from stprompt.engines.tensorrt import build_bundle_engines

    build_bundle_engines(bundle_copy, log=lambda _: None, max_batch=4, opt_batch=2, max_window=32, opt_window=9)
    trt_backend, manifest = open_backend(bundle_copy.with_name("model.plan"))
    assert trt_backend.name == "tensorrt" and trt_backend.max_batch == 4
    assert sha256_file(manifest.engine("encoder")) == manifest.engines["encoder"]["sha256"]
    reference, _ = open_backend(bundle_copy.with_name("model.onnx"))
    report = parity(trt_backend, reference, *inputs)  # 5 crops: split into 4 + 1
    assert report["embeddings"]["centered_cosine_min"] > 0.999
    assert report["probs"]["max_abs"] < 1e-3
    with pytest.raises(UserError, match="exceeds"):
        trt_backend.head(np.zeros((33, manifest.dim), np.float32), np.zeros((33, 49, manifest.dim), np.float32))
    trt_backend.close()


# --- TensorRT plumbing on CPU: the fake tensorrt + cudart of tests/fake_tensorrt.py run the bundle's ONNX graphs ---


def test_tensorrt_backend_plumbing_with_fake_tensorrt(bundle_copy, inputs, ort_cpu, monkeypatch):
    """Buffers at profile max, named-tensor I/O, batch splitting, window limit, cache-key refusal, freeing."""
    from stprompt.bundle.engine_keys import expected_key

    trt = fake_tensorrt.install(monkeypatch, "10.3.0", compute_capability="9.0")
    cudart = trt.cudart
    m = load_manifest(bundle_copy)
    write_manifest(bundle_copy, dict(m.raw, build=dict(m.raw["build"], max_batch=4, opt_batch=2, max_window=32,
                                                       opt_window=9)))  # fmt: skip
    m = load_manifest(bundle_copy)
    d, engines = m.dim, {}
    plans = [("encoder", "model.plan", {"images": [4, 3, 224, 224]}),
             ("head", "model.head.plan", {"x_clip": [32, d], "x_patch": [32, 49, d]}),
             ("head_features", "model.head_as.plan", {"x_clip": [32, d], "x_as": [32, d]}),
             ("encoder_pre", "model.pre.plan", {"pixels": [4, 224, 224, 3]})]  # fmt: skip
    for role, name, shapes in plans:
        plan = bundle_copy.with_name(name)
        plan.write_bytes(fake_tensorrt.plan_bytes(m.file(role), shapes, "10.3.0"))
        engines[role] = {"path": name, "sha256": sha256_file(plan), "key": expected_key(m, role, "10.3.0", "9.0")}
    write_manifest(bundle_copy, dict(m.raw, engines=engines))

    backend, _ = open_backend(bundle_copy.with_name("model.plan"), max_batch=256)
    assert (backend.name, backend.max_batch, backend.max_window) == ("tensorrt", 4, 32)
    c = len(CLASSES)
    encoder, head, features = [4 * 3 * 224 * 224, 4 * d], [32 * d, 32 * 49 * d, 32, 32, 32 * c], [32 * d] * 2
    features += [32, 32, 32 * c]  # x_clip, x_as; score, score_c, probs
    sizes = sorted(buf.size for buf in cudart.mem.values())  # buffers allocated once at the profile max
    pixels = 4 * 224 * 224 * 3  # uint8; the preprocessing plan writes into the encoder's input buffer, its own freed
    assert sizes == sorted([pixels] + [4 * n for n in encoder + head + features])
    report = parity(backend, ort_cpu, *inputs)  # 5 crops -> calls of 4 and 1
    assert all(report[k]["max_abs"] == 0.0 for k in ("embeddings", "score", "score_c", "probs"))
    assert [run["images"][0] for run in backend._encoder.context.runs] == [4, 1]
    # uint8 crops: normalised by model.pre.plan on the "device", straight into the encoder: the host's numbers
    assert backend.input_format == "uint8"
    u8 = np.random.default_rng(3).integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)
    from stprompt import windows

    expected = ort_cpu.encode(windows.normalize(u8, pre=m.preprocess))
    assert np.array_equal(backend.encode_pixels(u8), expected)
    assert [run["pixels"][0] for run in backend._pre.context.runs] == [4, 1]
    assert [run["images"][0] for run in backend._encoder.context.runs] == [4, 1, 4, 1]
    with pytest.raises(UserError, match=r"x_clip \[33, .*exceeds the engine's profile max \[32"):
        backend.head(np.zeros((33, d), np.float32), np.zeros((33, 49, d), np.float32))
    backend.close()
    assert cudart.mem == {} and cudart.streams == set()
    with pytest.raises(UserError, match=r"model\.head\.plan is the bundle's temporal head"):
        open_backend(bundle_copy.with_name("model.head.plan"))
    engines["head"]["key"] = "built-elsewhere"
    write_manifest(bundle_copy, dict(m.raw, engines=engines))
    with pytest.raises(UserError, match=r"model\.head\.plan was not built for this bundle .*stp-build"):
        open_backend(bundle_copy.with_name("model.plan"))


def test_plans_built_by_stp_build_run_in_the_tensorrt_backend(bundle_copy, inputs, ort_cpu, monkeypatch):
    """The whole chain on the fake: stp-build's builder writes the plans and keys, `open_backend(model.plan)` checks
    and runs them; a TensorRT upgrade makes them stale (refused) until stp-build rebuilds them."""
    from stprompt.engines import build_cli
    from stprompt.engines.tensorrt import build_bundle_engines

    trt = fake_tensorrt.install(monkeypatch, "10.3.0")
    m = build_bundle_engines(bundle_copy, log=lambda _: None, max_batch=4, opt_batch=2, max_window=32, opt_window=9)
    assert len(trt.builds) == 4 and m.engines["encoder"]["compute_capability"] == fake_tensorrt.COMPUTE_CAPABILITY
    assert m.engines["encoder_pre"]["path"] == "model.pre.plan" and m.engines["encoder_pre"]["onnx"] == "model.pre.onnx"
    backend, manifest = open_backend(bundle_copy.with_name("model.plan"))
    assert manifest.engines == m.engines and manifest.engine("encoder") == bundle_copy.with_name("model.plan")
    assert (backend.name, backend.max_batch, backend.max_window) == ("tensorrt", 4, 32)
    assert backend._encoder.engine.flags == ["strongly_typed"] == backend._head.engine.flags
    ort_fp16, _ = open_backend(bundle_copy.with_name("model.fp16.onnx"))  # the graph the fp16 plan is built from
    report = parity(backend, ort_fp16, *inputs)  # 5 crops: split into 4 + 1
    assert all(report[k]["max_abs"] == 0.0 for k in ("embeddings", "score", "score_c", "probs"))
    _, x_clip, x_patch = inputs
    x_as = x_patch.mean(axis=1)
    ours, ref = backend.head_features(x_clip, x_as), ort_cpu.head_features(x_clip, x_as)
    assert all(np.array_equal(ours[k], ref[k]) for k in ("score", "score_c", "probs"))
    pixels = np.random.default_rng(4).integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)  # through model.pre.plan
    from stprompt import windows

    assert backend.input_format == "uint8"
    np.testing.assert_array_equal(backend.encode_pixels(pixels), ort_fp16.encode(windows.normalize(pixels)))
    backend.close()

    trt = fake_tensorrt.install(monkeypatch, "10.7.0")  # a TensorRT upgrade on the device
    with pytest.raises(UserError, match=r"model\.plan was not built for this bundle on TensorRT 10\.7\.0"):
        open_backend(bundle_copy.with_name("model.plan"))
    assert build_cli.main([str(bundle_copy), "--quiet"]) == 0 and len(trt.builds) == 4
    backend, manifest = open_backend(bundle_copy.with_name("model.plan"))
    assert manifest.engines["head"]["tensorrt"] == "10.7.0" and backend.max_batch == 4  # the bundle's settings kept
    emb = backend.encode(inputs[0])
    np.testing.assert_array_equal(emb, ort_fp16.encode(inputs[0]))
    backend.close()
