"""What a benchmark ran on: CPU model and cores, GPU and driver, TensorRT and library versions.

Every stp-bench result carries this stamp, because a number without its machine is the most disputed kind of
number in this field (DEPLOY-NOTES.md). Nothing here imports torch unless it is already installed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import platform
import shutil
import subprocess
from typing import Any

from ..runtime.parallel import usable_cores  # cores this process may run on (affinity / cgroup CPU sets)

_PACKAGES = ("stprompt", "numpy", "opencv-python-headless", "numba", "onnxruntime", "onnxruntime-gpu", "torch",
             "open_clip_torch", "tensorrt", "cuda-python", "openvino", "nncf")  # fmt: skip
# the CPU features that decide which CPU engine wins (bf16 / INT8 matrix units, AVX-512, AVX2)
_MATRIX_FLAGS = ("amx_tile", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo, else platform.processor())."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Which of the CPU's matrix and vector extensions (`_MATRIX_FLAGS`) it has, per Linux /proc/cpuinfo; [] where
    that cannot be read: CPU engines differ by several times between a CPU with AMX and one without."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in _MATRIX_FLAGS if f in have]
    return []


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def gpus() -> list[dict[str, str]]:
    """Name, driver and memory of each NVIDIA GPU (nvidia-smi), or [] where there is none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            rows.append({"name": parts[0], "driver": parts[1], "memory": parts[2], "compute_capability": parts[3]})
    return rows


def tensorrt_version() -> str | None:
    try:
        return str(importlib.import_module("tensorrt").__version__)
    except ImportError:
        return None


def machine_stamp() -> dict[str, Any]:
    """The machine and software a benchmark ran on, JSON-ready."""
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "cpu_flags": cpu_flags(),
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "gpus": gpus(),
        "tensorrt": tensorrt_version(),
        "versions": versions(),
    }


def describe(stamp: dict[str, Any]) -> str:
    """One line for the table header."""
    gpu = ", ".join(f"{g['name']} (driver {g['driver']})" for g in stamp["gpus"]) or "no GPU"
    trt = f"TensorRT {stamp['tensorrt']}" if stamp["tensorrt"] else "no TensorRT"
    flags = " ".join(stamp.get("cpu_flags") or []) or "no AMX / AVX-512 / AVX2 flag seen"
    return f"{stamp['cpu']}, {stamp['cores']} cores, {stamp['arch']} ({flags}) | {gpu} | {trt}"
