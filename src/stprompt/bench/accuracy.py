"""The accuracy each measured backend was gated at, read from the bundle's manifest: speed is reported beside it.

A fast engine is only worth its speed at the accuracy it keeps, so stp-bench puts the minimum centred cosine each
engine's gate measured (stp-export's for the ONNX graphs, against PyTorch fp32; stp-build's for OpenVINO engines,
against the fp32 graph, on the probe crops and on held-out footage when calibrated on it) beside the timings.
"""

from __future__ import annotations

from typing import Any

from ..bundle.openvino_keys import BF16_ROLE, INT8_ROLE

_EXPORT_GATES = {"ort-fp32": "encoder_fp32", "ort-fp16": "encoder_fp16", "ort-int8": "encoder_int8"}
_ENGINE_ROLES = {"openvino-bf16": BF16_ROLE, "openvino-int8": INT8_ROLE}


def gated_accuracy(manifest, backends: list[str]) -> dict[str, dict[str, Any]]:
    """{backend: {"centered_cosine_min", "reference", ...}} for the backends whose gate the manifest records."""
    out: dict[str, dict[str, Any]] = {}
    gates = manifest.gates
    for name in backends:
        if name in _EXPORT_GATES and _EXPORT_GATES[name] in gates:
            g = gates[_EXPORT_GATES[name]]
            out[name] = {"centered_cosine_min": g["min"], "reference": "PyTorch fp32 (stp-export gate, probe crops)"}
        elif name in _ENGINE_ROLES and _ENGINE_ROLES[name] in manifest.engines:
            record = manifest.engines[_ENGINE_ROLES[name]]
            g = record.get("gates", {})
            row = {"centered_cosine_min": g.get("encoder", {}).get("min"),
                   "reference": "fp32 graph on ONNX Runtime (stp-build gate, probe crops)",
                   "head_scores_max_abs": g.get("scores", {}).get("max_abs"),
                   "calibration": record.get("calibration")}  # fmt: skip
            if "footage" in g:
                row["footage_centered_cosine_min"] = g["footage"]["min"]
            out[name] = row
    return out


def render(result: dict[str, Any]) -> list[str]:
    """Table lines: each backend's gated accuracy, and the load average the run started and ended with."""
    out = []
    if result.get("accuracy"):
        out += ["", f"{'accuracy':17}{'min centred cosine':>20}  reference"]
        for name, row in result["accuracy"].items():
            cos = row.get("centered_cosine_min")
            footage = row.get("footage_centered_cosine_min")
            extra = f" (held-out footage {footage:.4f})" if footage is not None else ""
            out.append(f"{name:17}{cos if cos is None else f'{cos:.4f}':>20}  {row['reference']}{extra}")
    if result.get("load_average"):
        load = result["load_average"]
        out += ["", f"load average     start {load['start']}, end {load['end']} (1, 5, 15 min)"]
    return out
