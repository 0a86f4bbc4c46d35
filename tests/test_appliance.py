"""stp-appliance, the container entrypoint: build / rebuild / reuse / fallback, plans kept out of the bundle, the
user's stp-run arguments passed on unchanged, and an .onnx bundle served without torch.

TensorRT is faked: the probe is monkeypatched to name a TensorRT version and GPU, and the real
`engines.tensorrt.build_bundle_engines` (wrapped to count calls) drives the shared stand-in (tests/fake_tensorrt.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import write_video
from fake_tensorrt import FakeCudart, fake_tensorrt, install_cuda, read_plan

from stprompt import appliance
from stprompt.bundle import engine_keys
from stprompt.bundle.hashing import sha256_file
from stprompt.bundle.manifest import load_manifest
from stprompt.engines import tensorrt as trt_build
from stprompt.errors import UserError
from stprompt.runtime.backends import trt as trt_backend  # noqa: F401 - imported now, not under the patches below

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


class Execed(Exception):
    """Raised by the stand-in os.execv: carries the argv stp-run would have been started with."""

    def __init__(self, argv: list[str]):
        super().__init__(argv)
        self.argv = argv


@pytest.fixture
def no_exec(monkeypatch):
    def execv(path, argv):
        assert path == sys.executable
        raise Execed(list(argv))

    monkeypatch.setattr(appliance.os, "execv", execv)


@pytest.fixture
def trt(monkeypatch):
    """TensorRT present on an sm 8.7 GPU (faked); `use(version)` swaps the TensorRT version; `builds` counts calls."""

    class Fake:
        builds: list[dict] = []

        def use(self, version: str) -> None:
            monkeypatch.setattr(appliance, "probe_tensorrt", lambda: appliance.TrtTarget(version, "8.7"))
            monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, FakeCudart("8.7")))

    fake = Fake()
    fake.builds = []
    fake.use("10.3.0")
    monkeypatch.setattr(trt_build, "gpu_compute_capability", lambda device=0: "8.7")
    real = trt_build.build_bundle_engines

    def spy(manifest_file, **kwargs):
        fake.builds.append({"manifest": Path(manifest_file), **kwargs})
        return real(manifest_file, **kwargs)

    monkeypatch.setattr(trt_build, "build_bundle_engines", spy)
    return fake


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def stderr_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


# --- errors ----------------------------------------------------------------------------------------------------------


def test_missing_bundle_is_one_line_exit_2(tmp_path, capsys):
    assert appliance.main(["--bundle", str(tmp_path / "nope"), "video.mp4"]) == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and err[0].startswith(f"stp-appliance: error: bundle not found: {tmp_path / 'nope'}")
    assert appliance.main(["--bundle", str(tmp_path), "video.mp4"]) == 2  # a folder without a manifest
    err = stderr_lines(capsys)
    assert err == [f"stp-appliance: error: no bundle manifest (model.json from stp-export) in {tmp_path}"]


def test_user_mistakes_before_any_build_are_one_line(tiny_bundle, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(appliance.ENV_BUNDLE, raising=False)
    assert appliance.main(["video.mp4"]) == 2
    assert stderr_lines(capsys) == [
        "stp-appliance: error: no bundle: give --bundle DIR or set STP_BUNDLE (the image sets /bundle)"
    ]
    assert appliance.main(["--bundle", str(tiny_bundle)]) == 2
    assert stderr_lines(capsys)[0].startswith("stp-appliance: error: no stp-run arguments")
    for engine_flag in (["--engine", "x.onnx"], ["--eng=x.onnx"]):  # argparse abbreviations count too
        assert appliance.main(["--bundle", str(tiny_bundle), "video.mp4", *engine_flag]) == 2
        err = stderr_lines(capsys)
        assert len(err) == 1 and "--engine is chosen by the appliance" in err[0]


# --- fallback --------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_probe_without_tensorrt_says_so():
    assert appliance.probe_tensorrt() == "TensorRT is not installed"


def test_probe_with_tensorrt_but_no_gpu(monkeypatch):
    monkeypatch.setattr(trt_build, "tensorrt_available", lambda: True)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.3.0"))

    def no_gpu(device=0):
        raise UserError("cannot read the GPU's compute capability")

    monkeypatch.setattr(trt_build, "gpu_compute_capability", no_gpu)
    assert appliance.probe_tensorrt() == appliance.NO_GPU and "--gpus all" in appliance.NO_GPU
    monkeypatch.setattr(trt_build, "gpu_compute_capability", lambda device=0: "8.7")
    assert appliance.probe_tensorrt() == appliance.TrtTarget("10.3.0", "8.7")


def test_no_tensorrt_falls_back_to_the_onnx_encoder(tiny_bundle, tmp_path, capsys, monkeypatch, no_exec):
    monkeypatch.setattr(appliance, "probe_tensorrt", lambda: "TensorRT is not installed")
    monkeypatch.setattr(appliance, "probe_openvino", lambda: "OpenVINO is not installed")  # tests/test_openvino.py
    cache = tmp_path / "cache"
    with pytest.raises(Execed) as run:  # the bundle's folder is accepted as --bundle
        appliance.main(["--bundle", str(tiny_bundle.parent), "--cache", str(cache), "--", "video.mp4", "--quiet"])
    engine = tiny_bundle.with_name("model.onnx")
    assert run.value.argv == [sys.executable, "-m", "stprompt.runtime.cli", "--engine", str(engine), "video.mp4",
                              "--quiet"]  # fmt: skip
    assert stderr_lines(capsys) == [
        f"stp-appliance: fallback to ONNX Runtime: TensorRT is not installed; OpenVINO is not installed; stp-run gets "
        f"{engine}"
    ]
    assert not cache.exists()  # nothing to build, nothing written


def test_triton_client_builds_nothing_and_hands_over_the_onnx(tiny_bundle, tmp_path, capsys, no_exec, trt):
    """--triton among stp-run's arguments: the encoder runs on the server, so no plan is built even where TensorRT
    and a GPU are present; stp-run gets model.onnx (it names the bundle; the heads run here)."""
    cache = tmp_path / "cache"
    args = ["--bundle", str(tiny_bundle), "--cache", str(cache), "rtsp://cam/1", "--triton", "grpc://gpu-pool:8001"]
    with pytest.raises(Execed) as run:
        appliance.main(args)
    engine = tiny_bundle.with_name("model.onnx")
    assert run.value.argv[3:] == ["--engine", str(engine), "rtsp://cam/1", "--triton", "grpc://gpu-pool:8001"]
    assert stderr_lines(capsys) == [f"stp-appliance: remote: the encoder runs on Triton (grpc://gpu-pool:8001), "
                                    f"nothing to build; stp-run gets {engine}"]  # fmt: skip
    assert trt.builds == [] and not cache.exists()


# --- build, reuse, rebuild -------------------------------------------------------------------------------------------


def test_first_start_builds_into_the_cache_and_leaves_the_bundle_alone(tiny_bundle, tmp_path, capsys, trt):
    before = snapshot(tiny_bundle.parent)
    cache = tmp_path / "cache"
    decision = appliance.prepare_engine(tiny_bundle, cache)
    assert decision.action == "build" and decision.engine == cache / "model.plan" and len(trt.builds) == 1
    assert trt.builds[0]["manifest"] == cache / "model.json" and trt.builds[0]["force"] is False
    err = stderr_lines(capsys)
    assert err[0] == decision.message and err[0].startswith(
        "stp-appliance: build: no plans for this bundle yet (first start); building into "
    )
    assert all(line.startswith("stp-build: ") or line.startswith("  trtexec ") for line in err[1:])
    assert snapshot(tiny_bundle.parent) == before  # the bundle volume can stay read-only
    staged = load_manifest(cache / "model.json")  # verifies every file through its symlink
    source = load_manifest(tiny_bundle)
    assert staged.raw["files"] == source.raw["files"]
    for entry in source.raw["files"].values():
        assert os.readlink(cache / entry["path"]) == str(tiny_bundle.parent / entry["path"])
    for role in ("encoder", "head", "head_features"):
        key = engine_keys.expected_key(staged, role, "10.3.0", "8.7")
        assert staged.engines[role]["key"] == key and engine_keys.plan_is_current(staged, role, key)
    assert (cache / "model.timing-trt10.3.0-sm87.cache").is_file()


def test_the_engine_handed_to_stp_run_opens_with_the_staged_bundle(tiny_bundle, tmp_path, trt, monkeypatch):
    """stp-run --engine CACHE/model.plan: the plan names the staged ONNX, the staged manifest verifies through the
    symlinks, and the TensorRT backend runs the plans (fake TensorRT: ONNX Runtime) like the bundle's ONNX."""
    import numpy as np

    from stprompt.runtime.backends import open_backend, parity

    cache = tmp_path / "cache"
    decision = appliance.prepare_engine(tiny_bundle, cache, build_args=["--quiet", "--max-batch", "3",
                                                                          "--max-window", "8"])  # fmt: skip
    assert read_plan(decision.engine.read_bytes())["onnx"] == str(cache / "model.fp16.onnx")  # an fp16 bundle
    install_cuda(monkeypatch, sys.modules["tensorrt"].cudart)  # the backend reads the GPU (sm 8.7) through it
    backend, manifest = open_backend(decision.engine)
    assert manifest.path == (cache / "model.json").resolve() and (backend.max_batch, backend.max_window) == (3, 8)
    reference, _ = open_backend(tiny_bundle.with_name("model.fp16.onnx"))  # the graph the plan is built from
    rng = np.random.default_rng(1)
    d = manifest.dim
    images = rng.standard_normal((4, 3, 224, 224)).astype(np.float32)
    x_clip, x_patch = rng.standard_normal((5, d)).astype(np.float32), rng.standard_normal((5, 49, d)).astype(np.float32)
    report = parity(backend, reference, images, x_clip, x_patch)
    assert all(report[k]["max_abs"] == 0.0 for k in ("embeddings", "score", "score_c", "probs"))
    backend.close()


def test_matching_key_reuses_without_building_and_passes_arguments_unchanged(
    tiny_bundle, tmp_path, capsys, trt, no_exec
):
    cache = tmp_path / "cache"
    appliance.prepare_engine(tiny_bundle, cache)
    capsys.readouterr()
    run_args = ["camera0", "rtsp://user:secret@cam-2/stream", "--events", "/out/events.jsonl", "--lookahead", "8",
                "--alarm-on=0.7", "--quiet", "--video-out", "/out/annotated.mp4"]  # fmt: skip
    with pytest.raises(Execed) as run:
        appliance.main(["--bundle", str(tiny_bundle), "--cache", str(cache), *run_args])
    assert len(trt.builds) == 1  # the builder was not called again
    assert run.value.argv == [sys.executable, "-m", "stprompt.runtime.cli", "--engine", str(cache / "model.plan"),
                              *run_args]  # fmt: skip
    err = stderr_lines(capsys)
    assert len(err) == 1 and err[0].startswith(f"stp-appliance: reuse: {cache / 'model.plan'} and its head plans")
    assert "TensorRT 10.3.0, GPU sm 8.7" in err[0]


@pytest.mark.parametrize("change", ["tensorrt", "settings", "plan"])
def test_stale_key_rebuilds(tiny_bundle, tmp_path, capsys, trt, change):
    cache = tmp_path / "cache"
    appliance.prepare_engine(tiny_bundle, cache)
    build_args: list[str] = []
    if change == "tensorrt":
        trt.use("10.7.0")  # a JetPack / container upgrade
    elif change == "settings":
        build_args = ["--max-batch", "64"]
    else:
        (cache / "model.head.plan").write_bytes(b"tampered")
    capsys.readouterr()
    decision = appliance.prepare_engine(tiny_bundle, cache, build_args=build_args)
    assert decision.action == "rebuild" and len(trt.builds) == 2
    assert stderr_lines(capsys)[0].startswith("stp-appliance: rebuild: cached ")
    staged = load_manifest(cache / "model.json")
    version = "10.7.0" if change == "tensorrt" else "10.3.0"
    settings = engine_keys.BuildSettings.from_manifest(staged, max_batch=64 if change == "settings" else None)
    for role in ("encoder", "head", "head_features"):
        key = engine_keys.expected_key(staged, role, version, "8.7", settings)
        assert engine_keys.plan_is_current(staged, role, key)
    again = appliance.prepare_engine(tiny_bundle, cache, build_args=build_args)
    assert again.action == "reuse" and len(trt.builds) == 2  # the rebuilt plans are reused from then on


def test_rebuild_on_request(tiny_bundle, tmp_path, capsys, trt, monkeypatch, no_exec):
    cache = tmp_path / "cache"
    appliance.prepare_engine(tiny_bundle, cache)
    monkeypatch.setenv(appliance.ENV_REBUILD, "1")
    monkeypatch.setenv(appliance.ENV_BUNDLE, str(tiny_bundle))
    monkeypatch.setenv(appliance.ENV_CACHE, str(cache))
    capsys.readouterr()
    with pytest.raises(Execed):
        appliance.main(["video.mp4"])
    assert len(trt.builds) == 2 and trt.builds[1]["force"] is True
    assert stderr_lines(capsys)[0].startswith("stp-appliance: rebuild: asked for (--rebuild, STP_REBUILD=1")


def test_without_a_cache_plans_go_beside_the_bundle_like_stp_build(tiny_bundle, tmp_path, trt):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.parent, bundle)
    decision = appliance.prepare_engine(bundle / "model.json", None, build_args=["--quiet"])
    assert decision.action == "build" and decision.engine == bundle / "model.plan"
    assert load_manifest(bundle / "model.json").engines["encoder"]["path"] == "model.plan"
    assert appliance.prepare_engine(bundle, None).action == "reuse"


def test_a_new_bundle_at_the_same_mount_is_rebuilt(tiny_bundle, tmp_path, capsys, trt):
    bundle, cache = tmp_path / "bundle", tmp_path / "cache"
    shutil.copytree(tiny_bundle.parent, bundle)
    appliance.prepare_engine(bundle, cache)
    # another export mounted at the same place: here, the same graphs with a changed head file
    head = bundle / "model.head.onnx"
    head.write_bytes(head.read_bytes() + b"\0")
    doc = json.loads((bundle / "model.json").read_text())
    doc["files"]["head"]["sha256"] = sha256_file(head)
    (bundle / "model.json").write_text(json.dumps(doc))
    capsys.readouterr()
    decision = appliance.prepare_engine(bundle, cache)
    assert decision.action == "rebuild" and "head" in decision.message and len(trt.builds) == 2
    assert load_manifest(cache / "model.json").raw["files"]["head"]["sha256"] == doc["files"]["head"]["sha256"]


def test_split_argv_keeps_appliance_options_first():
    assert appliance.split_argv(["--cache", "/c", "--rebuild", "cam0", "--cache", "x"]) == (
        ["--cache", "/c", "--rebuild"],
        ["cam0", "--cache", "x"],
    )
    assert appliance.split_argv(["--build-args=--max-batch 64", "--", "--help"]) == (
        ["--build-args=--max-batch 64"],
        ["--help"],
    )
    assert appliance.split_argv(["video.mp4", "--"]) == ([], ["video.mp4", "--"])


# --- the ONNX Runtime path, end to end, without torch ----------------------------------------------------------------

BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, os, sys

    # what the image does not install: torch and everything only training and export need (and, named in
    # STP_TEST_BLOCK_MORE, what this test's image lacks besides)
    BLOCKED = {"torch", "torchvision", "open_clip", "onnx", "onnxscript", "sklearn", "matplotlib", "tensorrt"}
    BLOCKED |= set(filter(None, os.environ.get("STP_TEST_BLOCK_MORE", "").split(",")))
    with open(os.environ["STP_TEST_BLOCK_LOG"], "a") as log:
        log.write(f"{os.getpid()}\\n")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    """
)


def test_appliance_runs_an_onnx_bundle_without_torch(tiny_bundle, tmp_path):
    """With only the image's packages importable (no torch, no onnx, no TensorRT, no OpenVINO), stp-appliance falls
    back to ONNX Runtime and the stp-run it becomes streams a video to events."""
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCK_TORCH)  # loaded again after the exec
    video = tmp_path / "gate.mp4"
    write_video(video, 48, blob=(16, 40))
    events = tmp_path / "events.jsonl"
    path = os.pathsep.join([str(tmp_path / "block"), *(p for p in sys.path if p)])
    loads = tmp_path / "block.log"
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "NUMBA_CACHE_DIR": str(tmp_path / "numba"),
        "STP_TEST_BLOCK_LOG": str(loads),
        "STP_TEST_BLOCK_MORE": "openvino,nncf",
    }
    env.pop(appliance.ENV_BUNDLE, None)
    cmd = [sys.executable, "-m", "stprompt.appliance", "--bundle", str(tiny_bundle), "--cache", str(tmp_path / "c"),
           "--", str(video), "--events", str(events), "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    onnx = tiny_bundle.with_name("model.onnx")
    assert proc.stderr.splitlines()[0] == (
        "stp-appliance: fallback to ONNX Runtime: TensorRT is not installed; OpenVINO is not installed (pip install "
        f'"stprompt[openvino]"); stp-run gets {onnx}'
    )
    pids = loads.read_text().split()
    assert len(pids) == 2 and pids[0] == pids[1]  # stp-run replaced stp-appliance (exec, same pid), blocked too
    frames = [e for e in map(json.loads, events.read_text().splitlines()) if e["type"] == "frame"]
    assert [e["frame"] for e in frames] == [8, 24, 40] and all(0.0 <= e["score"] <= 1.0 for e in frames)
