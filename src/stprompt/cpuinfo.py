"""What this CPU is and can do, read once from Linux's /proc/cpuinfo: the benchmark stamp and the OpenVINO engine
key both need it (an engine built for AMX is not one for AVX-512 alone, and a benchmark number without its CPU's
features is not comparable)."""

from __future__ import annotations

import contextlib
import platform

# the CPU features that decide how CPU engines run bf16 and INT8 (matrix units, AVX-512, AVX2), /proc/cpuinfo names;
# the order is part of OpenVINO engine keys (stprompt.bundle.openvino_keys): append, never reorder
ISA_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def _cpuinfo_field(name: str) -> str | None:
    """The first `name` line's value of /proc/cpuinfo, None where it cannot be read."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo, else platform.processor())."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Which of `ISA_FLAGS` the CPU has, in that order; [] where /proc/cpuinfo cannot be read."""
    have = set((_cpuinfo_field("flags") or "").split())
    return [f for f in ISA_FLAGS if f in have]
