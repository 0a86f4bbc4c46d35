"""Every console script that writes files checks its outputs before any work: an output it cannot write (under a
regular file, in a read-only folder) ends in exit 2 and one stderr line naming the flag, never in a traceback after
minutes of work (issue 18). Also: stp-export's default --out (the bundle beside the checkpoint) and stp-run's
message for a TensorRT plan not built yet.

Each script runs in-process through the function pyproject.toml names for it, with the cheapest valid inputs.
"""

from __future__ import annotations

import errno
import importlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CLASSES, make_checkpoint, write_video

from stprompt.clidoc import console_scripts
from stprompt.errors import UserError
from stprompt.fileio import check_writable

SCRIPTS = console_scripts()  # pyproject.toml [project.scripts]: {command: "module:function"}


def entry(script: str) -> Callable[[list[str]], int]:
    """The console script's function, as pyproject.toml names it (`module:function`)."""
    module, _, func = SCRIPTS[script].partition(":")
    return getattr(importlib.import_module(module), func)


# --- cheap valid inputs --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tiny_clip, tmp_path_factory, request):
    """Inputs built on first use: each case asks only for what it needs (a bundle takes seconds to export)."""
    base = tmp_path_factory.mktemp("inputs")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = MAKERS[name](base, tiny_clip, request)
        return made[name]

    return get


def _features(base: Path, clip, request) -> Path:
    """An empty feature folder of stp-tiny (no videos: the checks come before any is read)."""
    from stprompt.data.features import FeatureStore

    root = base / "features"
    FeatureStore.create(root, clip=str(clip.spec), clip_sha256=clip.sha256, clip_arch=clip.arch,
                        clip_activation=clip.activation, dim=clip.dim, stride=16, scale_b=False, classes=CLASSES,
                        fps=25.0)  # fmt: skip
    return root


def _ucf_root(base: Path, clip, request) -> Path:
    from test_importers import _ucf

    root = base / "ucf"
    _ucf(root)
    return root


def _video(base: Path, clip, request) -> Path:
    path = base / "v.mp4"
    write_video(path, 16)
    return path


MAKERS: dict[str, Callable[[Path, object, pytest.FixtureRequest], Path]] = {
    "ckpt": lambda base, clip, request: make_checkpoint(clip, base / "model.pt"),
    "features": _features,
    "ucf": _ucf_root,
    "video": _video,
    "dataset": lambda base, clip, request: request.getfixturevalue("tiny_dataset"),
    "bundle": lambda base, clip, request: request.getfixturevalue("tiny_bundle"),
}


# --- the cases: every writing console script -----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    script: str
    flag: str  # named in the error line
    argv: Callable[[Callable[[str], Path], Path], list[str]]  # (inputs, output path) -> argv


CASES: dict[str, Case] = {
    c.script + (f" {c.flag}" if c.flag not in ("--out", "OUT") else ""): c
    for c in [
        Case("stp-synth", "OUT", lambda i, out: [str(out), "--train", "1", "--test", "1"]),
        Case("stp-import", "--out", lambda i, out: ["ucf-crime", str(i("ucf")), "--out", str(out)]),
        Case("stp-extract", "--out", lambda i, out: [str(i("dataset")), "--out", str(out), "--clip", "stp-tiny",
                                                     "--quiet"]),  # fmt: skip
        Case("stp-train", "--out", lambda i, out: [str(i("features")), "--out", str(out / "model.pt"), "--quiet"]),
        Case("stp-eval", "--predictions", lambda i, out: [str(i("features")), "--ckpt", str(i("ckpt")),
                                                          "--predictions", str(out)]),  # fmt: skip
        Case("stp-eval", "--plots", lambda i, out: [str(i("features")), "--ckpt", str(i("ckpt")), "--plots",
                                                    str(out)]),  # fmt: skip
        Case("stp-demo", "--out", lambda i, out: ["--out", str(out)]),
        Case("stp-export", "--out", lambda i, out: ["--ckpt", str(i("ckpt")), "--out", str(out / "model")]),
        Case("stp-triton", "--out", lambda i, out: [str(i("bundle")), "--out", str(out)]),
        # stp-run's sinks check its outputs (runtime/sinks.py) and name the output's kind rather than the flag
        Case("stp-run", "events", lambda i, out: ["--engine", str(i("bundle").with_name("model.onnx")),
                                                    str(i("video")), "--output", str(out / "events.jsonl")]),
        Case("stp-bench", "--json", lambda i, out: ["--engine", str(i("bundle").with_name("model.onnx")), "--json",
                                                    str(out)]),  # fmt: skip
        Case("stp-bench", "--keep", lambda i, out: ["--clip", "stp-tiny", "--keep", str(out)]),
        Case("stp-appliance", "--cache", lambda i, out: ["--bundle", str(i("bundle").parent), "--cache", str(out),
                                                         "video.mp4"]),  # fmt: skip
    ]
}

# writing scripts whose output cannot be put under a file, checked by the read-only cases instead
READ_ONLY_ONLY = {
    "stp-build": "writes its plans beside the bundle it reads, so its output folder is an existing input folder",
}
# console scripts that write no files at all (none today: name them here, with the reason, when one comes)
EXEMPT: dict[str, str] = {}


def test_every_console_script_is_covered():
    covered = {c.script for c in CASES.values()}
    assert covered | set(READ_ONLY_ONLY) | set(EXEMPT) == set(SCRIPTS), "a console script without an output check"
    assert not covered & set(EXEMPT) and not set(READ_ONLY_ONLY) & set(EXEMPT)


@pytest.fixture
def trt_target(monkeypatch):
    """stp-appliance on a machine with TensorRT and a GPU (probed): it then writes plans, into --cache."""
    from stprompt import appliance

    monkeypatch.setattr(appliance, "probe_tensorrt", lambda: appliance.TrtTarget("10.3.0", "8.7"))


def run_refused(script: str, argv: list[str], capsys) -> str:
    """Run the script; assert exit 2 and exactly one error line without a traceback; return that line."""
    capsys.readouterr()
    code = entry(script)(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"{script}: error: ") and lines[0].strip() != f"{script}: error:", lines
    return lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_output_under_a_file_is_one_line_before_any_work(name, inputs, tmp_path, capsys, trt_target):
    case = CASES[name]
    afile = tmp_path / "afile"
    afile.write_text("a regular file\n")
    argv = case.argv(inputs, afile / "out")
    before = sorted(p.name for p in tmp_path.iterdir())
    line = run_refused(case.script, argv, capsys)
    assert case.flag in line and str(afile) in line, line
    assert afile.read_text() == "a regular file\n" and sorted(p.name for p in tmp_path.iterdir()) == before


def _bundle_copy(inputs, folder: Path) -> Path:
    for f in inputs("bundle").parent.iterdir():
        shutil.copy(f, folder / f.name)
    return folder / "model.json"


READ_ONLY_CASES = {
    **CASES,
    "stp-build": Case("stp-build", "manifest", lambda i, out: [str(_bundle_copy(i, out.parent))]),
}


@pytest.mark.parametrize("name", list(READ_ONLY_CASES))
def test_output_in_a_read_only_folder_is_one_line(name, inputs, tmp_path, capsys, trt_target):
    case = READ_ONLY_CASES[name]
    folder = tmp_path / "ro"
    folder.mkdir()
    argv = case.argv(inputs, folder / "out")
    before = sorted(p.name for p in folder.iterdir())
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this user writes into read-only folders (root)")
        line = run_refused(case.script, argv, capsys)
        assert case.flag in line and str(folder) in line, line
        assert sorted(p.name for p in folder.iterdir()) == before  # no probe or partial file left
    finally:
        folder.chmod(0o700)


def test_build_on_a_read_only_file_system_is_one_line_even_as_root(inputs, tmp_path, capsys, monkeypatch):
    """The probe catches what permission bits do not (a read-only mount; root): simulated by failing the probe."""
    manifest = _bundle_copy(inputs, tmp_path)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("stprompt.fileio.tempfile.mkstemp", read_only)
    line = run_refused("stp-build", [str(manifest)], capsys)
    assert line == (
        f"stp-build: error: manifest {manifest}: cannot write into {tmp_path}: {os.strerror(errno.EROFS)} (stp-build "
        "writes the plans beside it: copy the bundle to a writable folder, or let stp-appliance build them into its "
        "--cache)"
    )


# --- the helper ----------------------------------------------------------------------------------------------------


def test_check_writable_creates_missing_folders_and_leaves_nothing_else(tmp_path):
    check_writable(tmp_path / "a" / "b" / "out.json", "--json")
    check_writable(tmp_path / "c" / "d", "OUT", folder=True)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["a", "a/b", "c"]
    (tmp_path / "c" / "d").mkdir()
    check_writable(tmp_path / "c" / "d", "OUT", folder=True)  # an existing folder: written into
    assert list((tmp_path / "c" / "d").iterdir()) == []


def test_check_writable_refuses_the_wrong_kind_in_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    cases = [
        ((tmp_path, "--json"), {}, f"--json {tmp_path} is a folder; name a file"),
        ((tmp_path / "f", "OUT"), {"folder": True}, f"OUT {tmp_path / 'f'} is a file, not a folder"),
        ((tmp_path / "f/x/y", "--out"), {"hint": "h"}, f"--out {tmp_path / 'f/x/y'}: {tmp_path / 'f'} is a file, "
                                                       "not a folder (h)"),  # fmt: skip
    ]
    for args, kwargs, message in cases:
        with pytest.raises(UserError) as err:
            check_writable(*args, **kwargs)
        assert str(err.value) == message


# --- item 1: usage lines work as written ---------------------------------------------------------------------------


def test_export_with_only_ckpt_writes_the_bundle_beside_it(inputs, tmp_path, capsys):
    from stprompt.runtime.backends import open_backend

    ckpt = tmp_path / "runs" / "model.pt"
    ckpt.parent.mkdir()
    shutil.copy(inputs("ckpt"), ckpt)
    assert entry("stp-export")(["--ckpt", str(ckpt)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(ckpt.with_name("model.json"))
    written = {p.name for p in ckpt.parent.iterdir()}
    assert {"model.json", "model.onnx", "model.head.onnx", "model.queries.npz"} <= written
    backend, manifest = open_backend(ckpt.with_name("model.onnx"))  # what stp-run --engine runs/model.onnx opens
    assert manifest.path == ckpt.with_name("model.json")


def test_export_default_out_refuses_a_checkpoint_named_like_a_bundle_file(inputs, tmp_path, capsys):
    ckpt = tmp_path / "model.head.pt"
    shutil.copy(inputs("ckpt"), ckpt)
    line = run_refused("stp-export", ["--ckpt", str(ckpt)], capsys)
    assert "--ckpt" in line and "--out DIR/model" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.head.pt"]


def test_missing_plan_says_how_plans_are_built(inputs, tmp_path, capsys):
    bundle = inputs("bundle")
    plan = bundle.with_name("model.plan")
    assert not plan.exists()
    line = run_refused("stp-run", ["--engine", str(plan), "camera0"], capsys)
    assert line == (
        f"stp-run: error: TensorRT plan not found: {plan}; plans are built on the target GPU, not by stp-export: "
        f"stp-build {bundle} (or let the container / stp-appliance build them on its first start)"
    )
    lone = tmp_path / "model.engine"
    line = run_refused("stp-run", ["--engine", str(lone), "camera0"], capsys)
    assert f"TensorRT plan not found: {lone}" in line and "stp-build BUNDLE/model.json" in line
