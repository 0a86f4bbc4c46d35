"""stp-triton: the repository a Triton server loads, read back with Triton's own protobuf and checked against the
bundle's ONNX graphs and against the check `stp-run --triton` makes of a server's config."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stprompt.bundle.manifest import load_manifest, write_manifest
from stprompt.bundle.serving import P_INPUT, P_PRE_SHA256, P_ROLE, P_SHA256, served_encoder_problems
from stprompt.errors import UserError
from stprompt.triton import cli
from stprompt.triton.repository import RELEASE, RepositoryOptions, encoder_config, head_config, write_repository

text_format = pytest.importorskip("google.protobuf.text_format")
json_format = pytest.importorskip("google.protobuf.json_format")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
onnx = pytest.importorskip("onnx")


def parse(path: Path):
    """config.pbtxt as Triton reads it: the ModelConfig protobuf (fails on any unknown field or bad syntax)."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def as_json(msg) -> dict:
    """The model config in Triton's JSON form (what a server reports over gRPC/HTTP)."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def graph_io(path: Path) -> tuple[list, list]:
    """[(name, elem_type, dims)] of a graph's inputs and outputs; symbolic dims as -1."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def rows(values):
        return [(v.name, v.type.tensor_type.elem_type,
                 [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim])
                for v in values]  # fmt: skip

    return rows(graph.input), rows(graph.output)


def config_io(msg) -> tuple[list, list]:
    return ([(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in msg.input],
            [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in msg.output])  # fmt: skip


def params(msg) -> dict[str, str]:
    return {k: v.string_value for k, v in msg.parameters.items()}


def copy_bundle(tiny_bundle: Path, dst: Path) -> Path:
    shutil.copytree(tiny_bundle.parent, dst)
    return dst / tiny_bundle.name


def edit_manifest(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    write_manifest(path, doc)


def stderr_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def repo(tiny_bundle, tmp_path_factory) -> Path:
    """The default repository of the tiny bundle (fp16 encoder graph, head after SA2)."""
    return write_repository(tiny_bundle, tmp_path_factory.mktemp("triton") / "repo", RepositoryOptions())


# --- the default repository ------------------------------------------------------------------------------------------


def test_triton_configs_parse_and_match_the_onnx_graphs(repo, tiny_bundle):
    manifest = load_manifest(tiny_bundle)
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "stp_encoder", "stp_head"]
    enc = parse(repo / "stp_encoder" / "config.pbtxt")
    assert enc.name == "stp_encoder" and enc.platform == "onnxruntime_onnx"
    g_in, g_out = graph_io(repo / "stp_encoder" / "1" / "model.onnx")
    c_in, c_out = config_io(enc)
    fp32, uint8 = onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8
    assert [t[1] for t in g_in + g_out] == [uint8, fp32]  # clients send uint8 crops: model.pre.onnx runs first
    assert [g[0] for g in g_in] == [c[0] for c in c_in] == ["pixels"]
    assert [g[0] for g in g_out] == [c[0] for c in c_out] == ["embeddings"]
    assert [dtype for _, dtype, _ in c_in + c_out] == ["TYPE_UINT8", "TYPE_FP32"]
    assert g_in[0][2][0] == -1 and g_out[0][2][0] == -1  # the batch dim is symbolic in the graph...
    assert [c[2] for c in c_in] == [g_in[0][2][1:]] == [[224, 224, 3]]  # ...and left out of a batched config
    assert [c[2] for c in c_out] == [g_out[0][2][1:]] == [[manifest.dim]]

    head = parse(repo / "stp_head" / "config.pbtxt")
    assert head.name == "stp_head" and head.platform == "onnxruntime_onnx" and head.max_batch_size == 0
    g_in, g_out = graph_io(repo / "stp_head" / "1" / "model.onnx")
    c_in, c_out = config_io(head)
    assert [(n, d) for n, _, d in c_in] == [(n, d) for n, _, d in g_in]  # unbatched: every dim, T as -1
    assert [(n, d) for n, _, d in c_out] == [(n, d) for n, _, d in g_out]
    assert [d for _, _, d in c_out] == [[-1], [-1], [-1, len(manifest.classes)]]
    assert all(t == fp32 for _, t, _ in g_in + g_out) and all(t == "TYPE_FP32" for _, t, _ in c_in + c_out)
    assert params(head)[P_ROLE] == "head_features"
    assert params(head)[P_SHA256] == manifest.raw["files"]["head_features"]["sha256"]


def test_triton_graph_copies_and_identity_are_the_bundles(repo, tiny_bundle):
    """The hosted encoder is model.pre.onnx fused in front of the bundle's encoder graph: the same numbers as the
    two run one after the other (what a TensorRT appliance chains on its device)."""
    import numpy as np

    from stprompt.bundle.ort import ort_session

    manifest = load_manifest(tiny_bundle)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    fused = ort_session(repo / "stp_encoder" / "1" / "model.onnx", fp16=True).run(None, {"pixels": pixels})[0]
    images = ort_session(manifest.file("encoder_pre")).run(None, {"pixels": pixels})[0]
    two = ort_session(manifest.file("encoder_fp16"), fp16=True).run(None, {"images": images})[0]
    assert fused.shape == (3, manifest.dim) and np.array_equal(fused, two)
    assert (repo / "stp_head" / "1" / "model.onnx").read_bytes() == manifest.file("head_features").read_bytes()
    enc = parse(repo / "stp_encoder" / "config.pbtxt")
    p = params(enc)
    assert p[P_ROLE] == "encoder_fp16"  # the bundle's encoder precision, as stp-build picks it
    assert p[P_SHA256] == manifest.raw["files"]["encoder_fp16"]["sha256"]
    assert p[P_INPUT] == "pixels" and p[P_PRE_SHA256] == manifest.raw["files"]["encoder_pre"]["sha256"]
    assert p["stprompt_clip_sha256"] == manifest.clip_sha256 and p["stprompt_dim"] == str(manifest.dim)
    assert served_encoder_problems(as_json(enc), manifest) == []
    text = (repo / "README.md").read_text()
    assert f"nvcr.io/nvidia/tritonserver:{RELEASE}-py3 tritonserver --model-repository=/models" in text
    assert '-v "$PWD/repo":/models' in text and "-p 8001:8001" in text
    assert "stp-run --engine BUNDLE/model.onnx --triton grpc://HOST:8001 SOURCE" in text
    assert manifest.raw["files"]["encoder_fp16"]["sha256"] in text


def test_triton_client_check_refuses_a_config_of_another_export(repo, tiny_bundle, tmp_path):
    other = copy_bundle(tiny_bundle, tmp_path / "other")
    edit_manifest(other, lambda doc: doc["files"]["encoder_fp16"].update(sha256="0" * 64))
    problems = served_encoder_problems(as_json(parse(repo / "stp_encoder" / "config.pbtxt")),
                                       load_manifest(other, verify=False))  # fmt: skip
    assert len(problems) == 1 and "another export" in problems[0]


def test_triton_batching_defaults_to_the_bundle_and_plain_dynamic_batching(repo, tiny_bundle):
    manifest = load_manifest(tiny_bundle)
    enc = parse(repo / "stp_encoder" / "config.pbtxt")
    assert enc.max_batch_size == manifest.build["max_batch"] == 256
    assert enc.HasField("dynamic_batching") and enc.dynamic_batching.max_queue_delay_microseconds == 2000
    assert list(enc.dynamic_batching.preferred_batch_size) == []
    assert [(g.count, g.kind) for g in enc.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    assert not enc.HasField("optimization")  # no accelerator unless asked
    options = RepositoryOptions(max_batch=64, queue_delay_us=500, instances=2, kind="cpu", name="cam")
    custom = text_format.Parse(encoder_config(manifest, options), model_config_pb2.ModelConfig())
    assert custom.name == "cam_encoder" and custom.max_batch_size == 64
    assert custom.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in custom.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert served_encoder_problems(as_json(custom), manifest) == []


def test_triton_accelerator_block_only_with_tensorrt(tiny_bundle):
    manifest = load_manifest(tiny_bundle)
    text = encoder_config(manifest, RepositoryOptions(accelerator="tensorrt", max_batch=100))
    enc = text_format.Parse(text, model_config_pb2.ModelConfig())
    (acc,) = enc.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    assert acc.parameters["trt_profile_min_shapes"] == "pixels:1x224x224x3"
    assert acc.parameters["trt_profile_max_shapes"] == "pixels:100x224x224x3"  # the batch range, no rebuilds
    assert "gpu_execution_accelerator" not in encoder_config(manifest, RepositoryOptions())
    assert served_encoder_problems(as_json(enc), manifest) == []


@pytest.mark.parametrize("precision, role", [("fp32", "encoder"), ("fp16", "encoder_fp16"), ("int8", "encoder_int8")])
def test_triton_precision_picks_the_hosted_graph(precision, role, tiny_bundle, tmp_path):
    manifest = load_manifest(tiny_bundle)
    out = write_repository(tiny_bundle, tmp_path / "r", RepositoryOptions(precision=precision, head=False))
    enc = parse(out / "stp_encoder" / "config.pbtxt")
    assert params(enc)[P_ROLE] == role and served_encoder_problems(as_json(enc), manifest) == []
    assert graph_io(out / "stp_encoder" / "1" / "model.onnx")[0][0][0] == "pixels"
    images = write_repository(tiny_bundle, tmp_path / "i", RepositoryOptions(precision=precision, head=False,
                                                                             input="images"))  # fmt: skip
    assert (images / "stp_encoder" / "1" / "model.onnx").read_bytes() == manifest.file(role).read_bytes()
    enc = parse(images / "stp_encoder" / "config.pbtxt")
    assert params(enc)[P_ROLE] == role and P_INPUT not in params(enc)
    assert config_io(enc)[0] == [("images", "TYPE_FP32", [3, 224, 224])]
    assert served_encoder_problems(as_json(enc), manifest) == []


def test_triton_pixels_need_the_bundles_preprocessing_graph(tiny_bundle, tmp_path, capsys):
    """A bundle exported before model.pre.onnx gets the float32 encoder by default and a clear line for --input
    pixels; a client refuses a pixels model whose preprocessing graph is not its bundle's."""
    old = copy_bundle(tiny_bundle, tmp_path / "old")
    edit_manifest(old, lambda doc: doc["files"].pop("encoder_pre"))
    out = write_repository(old, tmp_path / "r", RepositoryOptions(head=False))
    assert config_io(parse(out / "stp_encoder" / "config.pbtxt"))[0][0][0] == "images"
    assert cli.main([str(old), "--out", str(tmp_path / "p"), "--input", "pixels"]) == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and "has no model.pre.onnx for --input pixels" in err[0]
    pixels = as_json(parse(write_repository(tiny_bundle, tmp_path / "q", RepositoryOptions(head=False))
                           / "stp_encoder" / "config.pbtxt"))  # fmt: skip
    other = copy_bundle(tiny_bundle, tmp_path / "other")
    edit_manifest(other, lambda doc: doc["files"]["encoder_pre"].update(sha256="1" * 64))
    problems = served_encoder_problems(pixels, load_manifest(other, verify=False))
    assert len(problems) == 1 and "preprocessing graph is not this bundle's" in problems[0]
    assert "preprocessing graph" in served_encoder_problems(pixels, load_manifest(old, verify=False))[0]


# --- --plan ---------------------------------------------------------------------------------------------------------

FAKE_DOCKER = textwrap.dedent(
    """\
    #!{python}
    # docker run ... -v HOST:/model IMAGE CMD...: records its argv, runs CMD with /model meaning HOST
    import json, os, sys
    args = sys.argv[1:]
    with open(os.environ["FAKE_LOG"], "a") as fh:
        fh.write(json.dumps(args) + "\\n")
    host = args[args.index("-v") + 1].rsplit(":/model", 1)[0]
    image = next(i for i, a in enumerate(args) if a.startswith("nvcr.io/"))
    os.execvpe(args[image + 1], args[image + 1 :], {{**os.environ, "FAKE_MODEL_DIR": host}})
    """
)
FAKE_TRTEXEC = textwrap.dedent(
    """\
    #!{python}
    import os, sys
    host = lambda p: os.environ["FAKE_MODEL_DIR"] + p[len("/model"):]
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
    assert os.path.isfile(host(opts["onnx"])), opts["onnx"]
    open(host(opts["saveEngine"]), "wb").write(b"plan of " + open(host(opts["onnx"]), "rb").read()[:8])
    """
)


def fake_tools(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("docker", FAKE_DOCKER), ("trtexec", FAKE_TRTEXEC)):
        (bin_dir / name).write_text(text.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(tmp_path / "log")}


def test_triton_plan_writes_the_source_and_a_build_script(tiny_bundle, tmp_path):
    manifest = load_manifest(tiny_bundle)
    out = write_repository(tiny_bundle, tmp_path / "r", RepositoryOptions(plan=True))
    model = out / "stp_encoder"
    enc = parse(model / "config.pbtxt")
    assert enc.platform == "tensorrt_plan" and enc.default_model_filename == "model.plan"
    assert params(enc)[P_ROLE] == "encoder_fp16" and served_encoder_problems(as_json(enc), manifest) == []
    assert list((model / "1").iterdir()) == []  # built on the server: TensorRT version and GPU bound
    assert graph_io(model / "model.source.onnx")[0][0][0] == "pixels"  # model.pre.onnx fused in front
    script = model / "build_plan.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    text = script.read_text()
    assert f"nvcr.io/nvidia/tensorrt:{RELEASE}-py3" in text and "docker run --gpus all" in text
    assert "trtexec --onnx=/model/model.source.onnx" in text and "--stronglyTyped" in text
    assert "--minShapes=pixels:1x224x224x3 --optShapes=pixels:50x224x224x3 --maxShapes=pixels:256x224x224x3" in text
    assert "--noTF32" not in text  # fp16 from the fp16 graph (strongly typed), no precision flags
    assert "build_plan.sh" in (out / "README.md").read_text()
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0

    fp32 = write_repository(tiny_bundle, tmp_path / "r32", RepositoryOptions(plan=True, precision="fp32", max_batch=64,
                                                                             input="images"))  # fmt: skip
    text = (fp32 / "stp_encoder" / "build_plan.sh").read_text()
    assert "--maxShapes=images:64x3x224x224" in text and "--noTF32" in text
    assert (fp32 / "stp_encoder" / "model.source.onnx").read_bytes() == manifest.file("encoder").read_bytes()
    assert params(parse(fp32 / "stp_encoder" / "config.pbtxt"))[P_ROLE] == "encoder"


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils' sha256sum")
def test_triton_build_script_checks_the_source_and_moves_the_plan_into_place(tiny_bundle, tmp_path):
    out = write_repository(tiny_bundle, tmp_path / "r", RepositoryOptions(plan=True, head=False))
    model, env = out / "stp_encoder", fake_tools(tmp_path)
    done = subprocess.run(["sh", str(model / "build_plan.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (model / "1" / "model.plan").read_bytes().startswith(b"plan of ")
    assert not (model / "model.plan.partial").exists()
    (argv,) = [json.loads(line) for line in Path(env["FAKE_LOG"]).read_text().splitlines()]
    assert argv[argv.index("-v") + 1] == f"{model}:/model"
    (model / "1" / "model.plan").unlink()
    with open(model / "model.source.onnx", "ab") as fh:
        fh.write(b"tampered")
    done = subprocess.run(["sh", str(model / "build_plan.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "not the export's encoder_fp16 graph" in done.stderr
    assert not (model / "1" / "model.plan").exists()


# --- the CLI: what it prints and what it refuses ----------------------------------------------------------------------


def test_triton_cli_prints_what_it_wrote(tiny_bundle, tmp_path, capsys):
    assert cli.main([str(tiny_bundle), "--out", str(tmp_path / "r"), "--max-batch", "128"]) == 0
    err = stderr_lines(capsys)
    assert err[0] == f"stp-triton: wrote {tmp_path / 'r'}"
    sha = load_manifest(tiny_bundle).raw["files"]["encoder_fp16"]["sha256"]
    assert any(line.startswith("stp-triton: stp_encoder: onnxruntime_onnx, encoder_fp16") and sha[:12] in line
               for line in err)  # fmt: skip
    assert any("docker run --gpus all" in line and "tritonserver --model-repository=/models" in line for line in err)
    assert parse(tmp_path / "r" / "stp_encoder" / "config.pbtxt").max_batch_size == 128
    assert cli.main([str(tiny_bundle), "--out", str(tmp_path / "q"), "--quiet", "--no-head"]) == 0
    assert capsys.readouterr().err == ""
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["README.md", "stp_encoder"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-batch", "49"], "--max-batch 49 is below one sampled frame's 50 crops"),
        (["--plan", "--precision", "int8"], "--plan builds fp32 or fp16 engines"),
        (["--queue-delay-us", "-1"], "--queue-delay-us must be in [0, 1000000]"),
        (["--queue-delay-us", "1000001"], "--queue-delay-us must be in [0, 1000000]"),
        (["--instances", "0"], "--instances must be at least 1"),
        (["--name", "a/b"], "--name 'a/b'"),
        (["--release", "latest"], "--release 'latest'"),
        (["--accelerator", "tensorrt", "--kind", "cpu"], "--accelerator tensorrt runs on a GPU"),
        (["--accelerator", "tensorrt", "--precision", "int8"], "--accelerator tensorrt cannot run the int8 graph"),
        (["--plan", "--kind", "cpu"], "--plan hosts a TensorRT engine on a GPU"),
    ],
)
def test_triton_cli_refuses_bad_options_in_one_line(flags, message, tiny_bundle, tmp_path, capsys):
    assert cli.main([str(tiny_bundle), "--out", str(tmp_path / "r"), *flags]) == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and err[0].startswith("stp-triton: error: ") and message in err[0], err
    assert not (tmp_path / "r").exists() and [p.name for p in tmp_path.iterdir()] == []  # nothing left behind


def test_triton_cli_refuses_missing_or_modified_bundles_and_missing_graphs(tiny_bundle, tmp_path, capsys):
    assert cli.main([str(tmp_path / "nope.json"), "--out", str(tmp_path / "r")]) == 2
    assert stderr_lines(capsys) == [f"stp-triton: error: bundle manifest not found: {tmp_path / 'nope.json'}"]
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    with open(bundle.with_name("model.fp16.onnx"), "ab") as fh:
        fh.write(b"x")
    assert cli.main([str(bundle), "--out", str(tmp_path / "r")]) == 2
    assert stderr_lines(capsys) == ["stp-triton: error: model.fp16.onnx: sha256 mismatch (bundle modified or corrupt)"]
    shutil.rmtree(bundle.parent)
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    edit_manifest(bundle, lambda doc: doc["files"].pop("encoder_int8"))
    assert cli.main([str(bundle), "--out", str(tmp_path / "r"), "--precision", "int8"]) == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and "the bundle has no int8 encoder graph" in err[0]
    assert not (tmp_path / "r").exists()


def test_triton_existing_out_is_refused_without_force_and_replaced_with_it(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()  # an empty folder is fine
    assert cli.main([str(tiny_bundle), "--out", str(out), "--quiet"]) == 0
    (out / "stale.txt").write_text("from before")
    config = (out / "stp_encoder" / "config.pbtxt").read_text()
    assert cli.main([str(tiny_bundle), "--out", str(out), "--max-batch", "64"]) == 2
    assert stderr_lines(capsys) == [f"stp-triton: error: --out {out} exists and is not empty (--force replaces it)"]
    assert (out / "stp_encoder" / "config.pbtxt").read_text() == config and (out / "stale.txt").exists()
    assert cli.main([str(tiny_bundle), "--out", str(out), "--max-batch", "64", "--force", "--quiet"]) == 0
    assert not (out / "stale.txt").exists()
    assert parse(out / "stp_encoder" / "config.pbtxt").max_batch_size == 64
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no temporary folders left beside it


def test_triton_head_is_skipped_when_the_bundle_has_none(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    edit_manifest(bundle, lambda doc: doc["files"].pop("head_features"))
    lines: list[str] = []
    out = write_repository(bundle, tmp_path / "r", RepositoryOptions(), log=lines.append)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "stp_encoder"]
    assert "stp_head: skipped, the bundle has no head_features graph (model.head_as.onnx)" in lines
    with pytest.raises(UserError, match="no head_features graph"):
        head_config(load_manifest(bundle), RepositoryOptions())
