"""What a benchmark ran on: CPU model and cores, GPU and driver, TensorRT and library versions.

Every stp-bench result carries this stamp, because a number without its machine is the most disputed kind of
number in this field (DEPLOY-NOTES.md). Nothing here imports torch unless it is already installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
from typing import Any

from ..cpuinfo import cpu_flags, cpu_model
from ..runtime.parallel import usable_cores  # cores this process may run on (affinity / cgroup CPU sets)

_PACKAGES = ("stprompt", "numpy", "opencv-python-headless", "numba", "onnxruntime", "onnxruntime-gpu", "torch",
             "open_clip_torch", "tensorrt", "cuda-python", "openvino", "nncf")  # fmt: skip


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none): what else the machine was running."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


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
