"""stp-export / stp-build: ONNX graphs vs PyTorch, manifest integrity, precision gates, op check, TensorRT keys."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from stprompt.bundle.engine_keys import (
    BuildSettings,
    InputProfile,
    default_max_window,
    default_opt_window,
    encoder_profiles,
    engine_cache_key,
    expected_key,
    head_profiles,
    plan_is_current,
)
from stprompt.bundle.manifest import FORMAT, load_manifest
from stprompt.engines import build_cli
from stprompt.engines.tensorrt import trtexec_command
from stprompt.errors import UserError
from stprompt.export import cli
from stprompt.export.trt_ops import check_graph

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
from conftest import CLASSES, make_checkpoint  # noqa: E402
from fake_tensorrt import fake_tensorrt, read_plan  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Path:
    return tiny_bundle


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_bundle) -> Path:
    return tiny_bundle.with_name("model.pt")


@pytest.fixture
def bundle_copy(bundle, tmp_path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(bundle.parent, dst)
    return dst / "model.json"


def ort(path: Path):
    from stprompt.bundle.ort import ort_session

    return ort_session(path)


def torch_head(ckpt_path: Path, x_clip: np.ndarray, x_patch: np.ndarray, x_as: torch.Tensor | None = None):
    from stprompt.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    head = ckpt.build_head()
    t, d = x_clip.shape
    xc = torch.from_numpy(x_clip)[None]
    mask = torch.ones(1, t)
    with torch.inference_mode():
        if x_as is None:
            out = head(xc, torch.from_numpy(x_patch).view(1, t, 7, 7, d), mask, ckpt.prompt_features)
        else:
            out = head.forward_features(xc, x_as, mask, ckpt.prompt_features)
    return {"score": out.score[0].numpy(), "score_c": out.score_c[0].numpy(), "probs": out.probs[0].numpy()}


def assert_head_close(onnx_out: dict, ref: dict) -> None:
    for name in ("score", "score_c", "probs"):
        np.testing.assert_allclose(onnx_out[name], ref[name], rtol=1e-4, atol=1e-5, err_msg=name)


# --- graphs vs PyTorch -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [2, 17, 256, 1000])
def test_head_onnx_matches_pytorch_at_any_length(bundle, tiny_ckpt, t):
    from stprompt.bundle.ort import run_head

    rng = np.random.default_rng(t)
    d = load_manifest(bundle).dim
    x_clip = (2 * rng.standard_normal((t, d))).astype(np.float32)
    x_patch = (2 * rng.standard_normal((t, 49, d))).astype(np.float32)
    out = run_head(ort(bundle.with_name("model.head.onnx")), x_clip, x_patch)
    assert out["score"].shape == (t,) and out["probs"].shape == (t, len(CLASSES))
    assert_head_close(out, torch_head(tiny_ckpt, x_clip, x_patch))


@pytest.mark.parametrize("t", [1, 5])
def test_head_onnx_with_tied_motion_keeps_lowest_window_indices(bundle, tiny_ckpt, t):
    """T = 1 (and a static scene) ties every window's motion at 0: both the graph (ONNX TopK) and the PyTorch
    head (stable sort) keep windows 0..11, so the scores agree exactly where ties decide."""
    from stprompt.bundle.ort import run_head

    rng = np.random.default_rng(t)
    d = load_manifest(bundle).dim
    x_clip = rng.standard_normal((t, d)).astype(np.float32)
    x_patch = np.repeat(rng.standard_normal((1, 49, d)).astype(np.float32), t, axis=0)
    out = run_head(ort(bundle.with_name("model.head.onnx")), x_clip, x_patch)
    assert_head_close(out, torch_head(tiny_ckpt, x_clip, x_patch))


def test_head_onnx_of_an_ablation_config_matches_pytorch(tmp_path):
    from stprompt.bundle.ort import run_head
    from stprompt.export.onnx_graphs import export_head
    from stprompt.model.config import HeadConfig
    from stprompt.model.head import STPromptHead

    torch.manual_seed(1)
    head = STPromptHead(HeadConfig(dim=32, n_classes=4, use_sa2=False, layers=1, sigma=2.5)).eval()
    prompts = torch.randn(4, 32)
    export_head(head, prompts, tmp_path / "h.onnx")
    session = ort(tmp_path / "h.onnx")
    for t in (3, 130):
        rng = np.random.default_rng(t)
        x_clip, x_patch = rng.standard_normal((t, 32), np.float32), rng.standard_normal((t, 49, 32), np.float32)
        with torch.inference_mode():
            o = head(torch.from_numpy(x_clip)[None], torch.from_numpy(x_patch)[None], torch.ones(1, t), prompts)
        ref = {"score": o.score[0].numpy(), "score_c": o.score_c[0].numpy(), "probs": o.probs[0].numpy()}
        assert_head_close(run_head(session, x_clip, x_patch), ref)


def test_encoder_onnx_matches_pytorch_with_dynamic_batch(bundle, tiny_clip):
    from stprompt.bundle.ort import run_encoder
    from stprompt.bundle.probe import probe_batch

    images = probe_batch(1)
    session = ort(bundle.with_name("model.onnx"))
    with torch.inference_mode():
        ref = tiny_clip.model.encode_image(torch.from_numpy(images)).numpy()
    for batch in (1, 7, 50):
        np.testing.assert_allclose(run_encoder(session, images, batch=batch), ref, rtol=1e-4, atol=1e-5)
    assert [i.name for i in session.get_inputs()] == ["images"] and session.get_outputs()[0].name == "embeddings"


# --- manifest ----------------------------------------------------------------------------------------------------


def test_manifest_round_trip(bundle, tiny_ckpt, tiny_clip):
    m = load_manifest(bundle)
    assert load_manifest(bundle.with_name("model")).raw == m.raw  # the stem works too
    raw = m.raw
    assert raw["format"] == FORMAT and m.clip == "stp-tiny" and m.clip_sha256 == tiny_clip.sha256
    assert m.dim == 64 and m.classes == CLASSES and raw["class_phrases"][2] == "road accidents"
    assert (m.stride, m.offset) == (16, 8)
    assert raw["preprocess"]["size"] == 224 and raw["preprocess"]["resampler"] == "cv2.INTER_CUBIC"
    assert raw["preprocess"]["colour_order"] == "BGR->RGB" and raw["preprocess"]["scale"] == pytest.approx(1 / 255)
    assert raw["windows"]["A"] == {"size": 32, "stride": 32, "grid": 7}
    assert raw["windows"]["B"] == {"size": 80, "stride": 48, "grid": 4}
    assert raw["windows"]["crops_per_frame"] == 50 and raw["windows"]["order"] == "row-major"
    assert m.head["radius"] == 20 and m.head["exact_lookahead"] == 41 and m.head["n_classes"] == 3
    thresholds = {"alarm": 0.5, "heat": 0.5, "min_box_area": 0.001, "tau_loc": 0.01, "fusion_lambda": 0.5}
    assert m.thresholds.to_dict() == thresholds
    assert set(raw["files"]) == {"encoder", "head", "head_features", "queries", "encoder_fp16", "encoder_int8",
                                 "encoder_pre", "head_layer0", "head_layer1", "head_scores"}  # fmt: skip
    assert m.file("head_layer1").name == "model.head_l1.onnx" and raw["gates"]["head_stages_fp32"]["passed"]
    assert m.file("encoder_pre").name == "model.pre.onnx" and raw["gates"]["encoder_pre"]["max_abs"] == 0.0
    assert m.file("head").name == "model.head.onnx" and m.file("encoder_fp16").name == "model.fp16.onnx"
    assert m.file("head_features").name == "model.head_as.onnx" and raw["gates"]["head_features_fp32"]["passed"]
    assert m.precision["encoder"] == "fp16" and m.precision["head"] == "fp32" and m.precision["int8_cpu"]
    assert raw["versions"]["opset"] == {"encoder": 17, "head": 18} and raw["versions"]["onnxruntime"]
    assert datetime.fromisoformat(raw["created"]).tzinfo is not None
    assert m.build["max_window"] == 256 + 2 * 41 and m.build["opt_batch"] == 50 and m.engines == {}
    emb, abnormal, texts = m.load_queries()
    n_normal = raw["queries"]["n_normal"]
    assert emb.shape == (len(texts), 64) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert n_normal == 13 and not abnormal[:n_normal].any() and abnormal[n_normal:].all()
    assert "fighting" in texts and "people knockout someone" in texts
    with np.load(m.file("queries"), allow_pickle=False) as z:
        assert list(z["texts"]) == texts


def test_manifest_reader_and_trt_module_import_without_torch(bundle):
    code = (
        "import sys\n"
        "from stprompt.bundle.manifest import load_manifest\n"
        "from stprompt.bundle import engine_keys, ort, compare, membership, preprocess, gates, probe\n"
        "from stprompt.engines import tensorrt, build_cli\n"
        "from stprompt.export import trt_ops\n"
        f"m = load_manifest({str(bundle)!r})\n"
        "m.load_queries()\n"
        "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["model.head.onnx", "model.onnx", "model.queries.npz", "model.int8.onnx"])
def test_tampered_file_is_refused_by_name(bundle_copy, name):
    path = bundle_copy.with_name(name)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=rf"^{name}: sha256 mismatch \(bundle modified or corrupt\)$"):
        load_manifest(bundle_copy)
    load_manifest(bundle_copy, verify=False)  # fields alone are still valid


def test_missing_file_is_refused_by_name(bundle_copy):
    bundle_copy.with_name("model.onnx").unlink()
    with pytest.raises(UserError, match=r"^model\.onnx: missing from the bundle"):
        load_manifest(bundle_copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("dim"), "missing field 'dim'"),
        (lambda d: d.update(format="other/1"), "'format' must be"),
        (lambda d: d["files"]["head"].update(path="../model.head.onnx"), "plain file name"),
        (lambda d: d["files"].pop("queries"), "lacks the 'queries' file"),
        (lambda d: d.update(class_phrases=["normal"]), "equal-length"),
    ],
)
def test_invalid_manifest_fields_are_refused(bundle_copy, edit, message):
    doc = json.loads(bundle_copy.read_text())
    edit(doc)
    bundle_copy.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=message):
        load_manifest(bundle_copy)


# --- precision gates ---------------------------------------------------------------------------------------------


def test_fp16_variant_passes_its_gate_with_norms_in_fp32(bundle):
    import onnx

    m = load_manifest(bundle)
    g = m.gates["encoder_fp16"]
    assert g["passed"] and g["min"] >= 0.999 and g["threshold"] == 0.999 and g["crops"] == 100
    assert m.gates["encoder_fp32"]["min"] >= 0.9999 and m.gates["head_fp32"]["max_abs"] <= 1e-3
    model = onnx.shape_inference.infer_shapes(onnx.load(m.file("encoder_fp16")))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    by_op: dict[str, set[int]] = {}
    for node in model.graph.node:
        by_op.setdefault(node.op_type, set()).add(types.get(node.output[0]))
    assert by_op["LayerNormalization"] == {onnx.TensorProto.FLOAT} and by_op["Softmax"] == {onnx.TensorProto.FLOAT}
    assert by_op["MatMul"] == {onnx.TensorProto.FLOAT16}  # the bulk of the work is fp16
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_int8_variant_is_written_and_gated(bundle):
    m = load_manifest(bundle)
    g = m.gates["encoder_int8"]
    assert g["passed"] and g["min"] >= 0.99 and g["threshold"] == 0.99
    report = check_graph(m.file("encoder_int8"))
    assert "MatMulInteger" in report.counts and not report.ok  # CPU-only variant: TensorRT does not take it


def test_failed_gate_writes_no_manifest_and_no_files(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "model"
    code = cli.main(["--ckpt", str(tiny_ckpt), "--out", str(out), "--int8-cpu", "--int8-gate", "1.0", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("stp-export: error: accuracy gate failed: encoder_int8") and "no manifest" in err[0]
    assert list(tmp_path.iterdir()) == []


# --- TensorRT: op check, cache key, command (no TensorRT needed) ---------------------------------------------------


def test_exported_graphs_use_only_tensorrt10_ops(bundle):
    for name in ("model.onnx", "model.head.onnx"):
        report = check_graph(bundle.with_name(name))
        assert report.ok, "\n".join(report.lines())
    assert all(v["ok"] for v in load_manifest(bundle).raw["op_check"].values())


def test_op_check_flags_unsupported_ops_and_non_constant_axes():
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], name="sum"),
        helper.make_node("StringNormalizer", ["t"], ["u"], name="strings"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("axes", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("t", TensorProto.STRING, [2]),
        ],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, None), helper.make_tensor_value_info("u", 8, None)],
    )
    report = check_graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), name="g")
    assert report.unsupported == ["StringNormalizer"]
    assert report.restrictions == ["ReduceSum 'sum': input 1 must be a build-time constant"]
    assert not report.ok and any("unsupported op: StringNormalizer" in line for line in report.lines())
    assert onnx.__version__


def test_engine_cache_key_changes_with_every_input():
    profiles = encoder_profiles(256, 50)
    base = dict(onnx_sha256="a" * 64, trt_version="10.3.0", compute_capability="8.7", precision="fp16",
                profiles=profiles)  # fmt: skip
    key = engine_cache_key(**base)
    assert len(key) == 64 and int(key, 16) >= 0 and key == engine_cache_key(**base)
    variants = [
        {"onnx_sha256": "b" * 64},
        {"trt_version": "10.7.0"},
        {"compute_capability": "8.6"},
        {"precision": "fp32"},
        {"profiles": encoder_profiles(128, 50)},
        {"profiles": encoder_profiles(256, 64)},
        {"profiles": [InputProfile("images", (2, 3, 224, 224), (50, 3, 224, 224), (256, 3, 224, 224))]},
    ]
    keys = {engine_cache_key(**{**base, **v}) for v in variants}
    assert len(keys) == len(variants) and key not in keys


def test_profiles_and_window_defaults():
    (enc,) = encoder_profiles()
    assert (enc.name, enc.min[0], enc.opt[0], enc.max[0]) == ("images", 1, 50, 256)
    assert default_max_window(41) == 338 and default_opt_window(41, 338) == 83 and default_opt_window(41, 10) == 10
    clip_p, patch_p = head_profiles(512, 338, 83)
    assert clip_p.min == (1, 512) and patch_p.opt == (83, 49, 512) and patch_p.max == (338, 49, 512)
    with pytest.raises(UserError):
        encoder_profiles(16, 50)


def test_trtexec_command_mirrors_the_build():
    enc = trtexec_command("m.fp16.onnx", "m.plan", encoder_profiles(256, 50), "fp16", 2.0, "m.cache")
    assert enc[0] == "trtexec" and "--onnx=m.fp16.onnx" in enc and "--saveEngine=m.plan" in enc
    assert "--minShapes=images:1x3x224x224" in enc and "--optShapes=images:50x3x224x224" in enc
    assert "--maxShapes=images:256x3x224x224" in enc and "--memPoolSize=workspace:2048M" in enc
    assert "--stronglyTyped" in enc and "--timingCacheFile=m.cache" in enc and "--noTF32" not in enc
    assert not [a for a in enc if a.startswith(("--fp16", "--precisionConstraints", "--layerPrecisions",
                                                 "--layerOutputTypes"))]  # fmt: skip
    head = trtexec_command("h.onnx", "h.plan", head_profiles(64, 338, 83), "fp32", 1, "c")
    assert "--optShapes=x_clip:83x64,x_patch:83x49x64" in head and "--noTF32" in head and "--fp16" not in head
    assert "--stronglyTyped" in head


def test_build_settings_and_plan_cache_check(bundle_copy):
    m = load_manifest(bundle_copy)
    s = BuildSettings.from_manifest(m)
    assert (s.max_batch, s.opt_batch, s.max_window, s.opt_window, s.workspace_gb) == (256, 50, 338, 83, 4.0)
    s2 = BuildSettings.from_manifest(m, max_window=40, max_batch=32)
    assert (s2.max_window, s2.opt_window, s2.max_batch, s2.opt_batch) == (40, 40, 32, 32)
    key = expected_key(m, "encoder", "10.3.0", "8.7")
    assert key != expected_key(m, "encoder", "10.3.0", "8.9") != expected_key(m, "head", "10.3.0", "8.7")
    plan = bundle_copy.with_name("model.plan")
    plan.write_bytes(b"not really a plan")
    from stprompt.bundle.hashing import sha256_file

    doc = dict(m.raw, engines={"encoder": {"path": plan.name, "key": key, "sha256": sha256_file(plan)}})
    bundle_copy.write_text(json.dumps(doc))
    m = load_manifest(bundle_copy)
    assert plan_is_current(m, "encoder", key)
    assert not plan_is_current(m, "encoder", expected_key(m, "encoder", "10.4.0", "8.7"))  # other TensorRT
    assert not plan_is_current(m, "head", expected_key(m, "head", "10.3.0", "8.7"))  # never built
    plan.write_bytes(b"a modified plan")
    assert not plan_is_current(m, "encoder", key)


def test_engine_build_records_keys_caches_and_rebuilds_on_change(bundle_copy, monkeypatch, capsys):
    from stprompt.engines import tensorrt as trt_build

    monkeypatch.setattr(trt_build, "gpu_compute_capability", lambda device=0: "8.7")
    trt = fake_tensorrt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    logs: list[str] = []
    m = trt_build.build_bundle_engines(bundle_copy, log=logs.append)
    assert len(trt.builds) == 4 and set(m.engines) == {"encoder", "head", "head_features", "encoder_pre"}
    (enc_net, enc_cfg), (head_net, head_cfg), (_, features_cfg), (_, pre_cfg) = trt.builds
    assert enc_cfg.flags == set() == head_cfg.flags and head_cfg.cleared == {"tf32"} and enc_cfg.cleared == set()
    assert enc_net.flags == head_net.flags == 1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert enc_cfg.pool == ("workspace", 4 << 30) and enc_cfg.profiles[0]["images"][2] == (256, 3, 224, 224)
    assert head_cfg.profiles[0]["x_patch"] == ((1, 49, 64), (83, 49, 64), (338, 49, 64))
    assert features_cfg.profiles[0]["x_as"] == ((1, 64), (83, 64), (338, 64)) and features_cfg.flags == set()
    assert pre_cfg.profiles[0]["pixels"] == ((1, 224, 224, 3), (50, 224, 224, 3), (256, 224, 224, 3))
    for role in ("encoder", "head", "head_features", "encoder_pre"):
        key = expected_key(m, role, "10.3.0", "8.7")
        assert m.engines[role]["key"] == key and plan_is_current(m, role, key)
    assert m.engine("encoder") == bundle_copy.with_name("model.plan") and m.engine("head").is_file()
    plans = {role: read_plan(m.engine(role).read_bytes()) for role in m.engines}
    assert plans["encoder"]["onnx"] == str(m.file("encoder_fp16"))  # the fp16 engine: from model.fp16.onnx
    assert plans["encoder"]["flags"] == ["strongly_typed"] == plans["head"]["flags"]
    assert m.engines["encoder"]["mode"] == "strongly typed" and m.engines["encoder"]["onnx"] == "model.fp16.onnx"
    assert plans["head"]["onnx"] == str(m.file("head"))
    assert plans["head_features"]["profiles"]["x_clip"] == [[1, 64], [83, 64], [338, 64]]
    assert load_manifest(bundle_copy).engines == m.engines  # written to model.json, bundle still verifies
    cache = bundle_copy.with_name("model.timing-trt10.3.0-sm87.cache")
    assert cache.read_bytes() == b"++++"  # loaded by each later build, extended, saved again
    assert any("--stronglyTyped" in line and "--onnx=" in line and "model.fp16.onnx" in line for line in logs)
    assert any("from model.fp16.onnx (fp16, strongly typed, TensorRT 10.3.0" in line for line in logs)

    trt_build.build_bundle_engines(bundle_copy, log=logs.append)
    assert len(trt.builds) == 4 and "is current" in logs[-1]  # cache hit: nothing rebuilt
    bundle_copy.with_name("model.head.plan").write_bytes(b"tampered")
    trt_build.build_bundle_engines(bundle_copy, log=logs.append)
    assert len(trt.builds) == 5  # the modified plan is rebuilt, not loaded
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.7.0"))
    assert build_cli.main([str(bundle_copy), "--max-batch", "64", "--quiet"]) == 0
    m = load_manifest(bundle_copy)
    assert m.engines["encoder"]["tensorrt"] == "10.7.0" and m.build["max_batch"] == 64
    assert m.engines["encoder"]["profiles"][0]["max"][0] == 64 and capsys.readouterr().err == ""


# --- command lines -----------------------------------------------------------------------------------------------


def test_export_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert cli.main(["--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stp-export: error: checkpoint not found")


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_export_trt_without_tensorrt_is_one_line(tiny_ckpt, tmp_path, capsys):
    assert cli.main(["--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "m"), "--trt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stprompt[trt]" in err[0] and "JetPack" in err[0]
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_build_without_tensorrt_is_one_line(bundle, capsys):
    assert build_cli.main([str(bundle)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stp-build: error: TensorRT is not installed") and "[trt]" in err[0]


def test_build_refuses_a_tampered_bundle_first(bundle_copy, capsys):
    bundle_copy.with_name("model.head.onnx").write_bytes(b"oops")
    assert build_cli.main([str(bundle_copy)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "stp-build: error: model.head.onnx: sha256 mismatch (bundle modified or corrupt)"
    )


@pytest.mark.parametrize("module", [cli, build_cli])
def test_help_lists_defaults(module, capsys):
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0 and "default" in capsys.readouterr().out


# --- ViT-B-16 and TensorRT -----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("STP_SLOW") != "1", reason="ViT-B-16 export takes minutes; set STP_SLOW=1")
def test_vit_b16_random_weights_export_matches_pytorch(tmp_path):
    from stprompt.bundle.ort import run_encoder, run_head
    from stprompt.bundle.probe import probe_batch
    from stprompt.clip.loader import load_clip

    clip = load_clip("ViT-B-16:random:0")
    ckpt = make_checkpoint(clip, tmp_path / "vitb.pt")
    out = tmp_path / "bundle" / "model"
    assert cli.main(["--ckpt", str(ckpt), "--out", str(out), "--probe-frames", "1", "--quiet"]) == 0
    m = load_manifest(out.with_name("model.json"))
    assert m.dim == 512 and m.gates["encoder_fp32"]["min"] >= 0.999
    images = probe_batch(1)[:4]
    with torch.inference_mode():
        ref = clip.model.encode_image(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(run_encoder(ort(m.file("encoder")), images), ref, rtol=1e-3, atol=1e-4)
    rng = np.random.default_rng(0)
    for t in (2, 64):
        x_clip = rng.standard_normal((t, 512)).astype(np.float32)
        x_patch = rng.standard_normal((t, 49, 512)).astype(np.float32)
        assert_head_close(run_head(ort(m.file("head")), x_clip, x_patch), torch_head(ckpt, x_clip, x_patch))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT (pip install 'stprompt[trt]' or JetPack)")
def test_tensorrt_engines_build_cache_and_match(bundle_copy):
    import tensorrt as trt

    from stprompt.bundle.probe import probe_batch
    from stprompt.engines.tensorrt import build_bundle_engines, gpu_compute_capability

    m = build_bundle_engines(bundle_copy, log=lambda _m: None, max_batch=64, max_window=64)
    assert set(m.engines) == {"encoder", "head", "head_features", "encoder_pre"}
    cc = gpu_compute_capability()
    for role in ("encoder", "head", "head_features", "encoder_pre"):
        key = expected_key(m, role, trt.__version__, cc)
        assert m.engines[role]["key"] == key and plan_is_current(m, role, key)
    stamp = bundle_copy.with_name("model.plan").stat().st_mtime_ns
    build_bundle_engines(bundle_copy, log=lambda _m: None, max_batch=64, max_window=64)  # cached: not rebuilt
    assert bundle_copy.with_name("model.plan").stat().st_mtime_ns == stamp
    images = torch.from_numpy(probe_batch(1)).cuda()
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
        bundle_copy.with_name("model.plan").read_bytes()
    )
    ctx = engine.create_execution_context()
    ctx.set_input_shape("images", tuple(images.shape))
    out = torch.empty((images.shape[0], m.dim), device="cuda")
    ctx.set_tensor_address("images", images.data_ptr())
    ctx.set_tensor_address("embeddings", out.data_ptr())
    stream = torch.cuda.current_stream()
    assert ctx.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    from stprompt.bundle.compare import centered_cosine
    from stprompt.bundle.ort import run_encoder

    ref = run_encoder(ort(m.file("encoder")), images.cpu().numpy())
    assert centered_cosine(out.cpu().numpy(), ref).min() >= 0.999
    # uint8 crops through model.pre.plan chained into the encoder on the device: the same embeddings
    from stprompt.bundle.probe import probe_pixels
    from stprompt.runtime.backends import open_backend

    backend, _ = open_backend(bundle_copy.with_name("model.plan"))
    try:
        assert backend.input_format == "uint8"
        assert centered_cosine(backend.encode_pixels(probe_pixels(1)), ref).min() >= 0.999
    finally:
        backend.close()
