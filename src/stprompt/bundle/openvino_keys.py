"""OpenVINO engines of a bundle: their roles, files and the cache key a built IR must carry. Pure data.

An OpenVINO engine is the bundle's fp32 encoder graph converted to IR on the target (`model.xml` + `model.bin`,
run with a bf16 or fp32 inference precision hint) or quantized there with NNCF (`model.int8.xml` + `.bin`). Like a
TensorRT plan it is gated on the target and reused only while its key still names what made it: the ONNX it came
from, the OpenVINO version and the CPU's capabilities (what runs bf16 / INT8 and how), the precision, the
performance hint, the calibration data, the NNCF version and the gate thresholds it passed. The builder is
`stprompt.engines.openvino`; the runtime's check is `ir_is_current` with `openvino_cache_key`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .hashing import sha256_file
from .manifest import ENGINE_SUFFIXES, Manifest

BF16_ROLE = "encoder_openvino"  # the fp32 graph as IR, run with the bf16 precision hint (fp32 without bf16)
INT8_ROLE = "encoder_openvino_int8"  # NNCF post-training INT8 (transformer mode), calibrated on crops
OPENVINO_ROLES = (BF16_ROLE, INT8_ROLE)
HINTS = ("latency", "throughput")  # OpenVINO's PERFORMANCE_HINT, lower case as stp-build takes it


def ir_path(manifest: Manifest, role: str) -> Path:
    """model.xml / model.int8.xml beside the manifest (the weights: the same name with .bin)."""
    return manifest.stem.with_name(manifest.stem.name + ENGINE_SUFFIXES[role])


def weights_path(xml: Path) -> Path:
    """The .bin OpenVINO reads beside an .xml of the same name."""
    return xml.with_suffix(".bin")


def openvino_cache_key(onnx_sha256: str, openvino_version: str, cpu: dict[str, Any], precision: str, hint: str,
                       calibration: dict[str, Any] | None, nncf_version: str | None,
                       thresholds: dict[str, float]) -> str:  # fmt: skip
    """sha256 over everything an OpenVINO engine's validity depends on: change any and it is rebuilt (and gated)."""
    payload = {
        "onnx_sha256": onnx_sha256,
        "openvino": openvino_version,
        "cpu": cpu,
        "precision": precision,
        "hint": hint,
        "calibration": calibration,
        "nncf": nncf_version,
        "thresholds": thresholds,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def recorded_key(manifest: Manifest, record: dict[str, Any], openvino_version: str, cpu: dict[str, Any]) -> str:
    """The key `record` must carry for this OpenVINO version and CPU (the runtime's check): the parts only the build
    knows (calibration, NNCF version, thresholds) come from the record, the rest from here and now."""
    onnx_sha = manifest.raw["files"]["encoder"]["sha256"]
    return openvino_cache_key(onnx_sha, openvino_version, cpu, record.get("precision", ""), record.get("hint", ""),
                              record.get("calibration"), record.get("nncf"), record.get("thresholds", {}))  # fmt: skip


def ir_is_current(manifest: Manifest, role: str, key: str) -> bool:
    """True only if the manifest records `key` for `role` and the IR's .xml and .bin still have their sha256."""
    record = manifest.engines.get(role)
    if not record or record.get("key") != key:
        return False
    xml = manifest.root / record.get("path", "")
    weights = record.get("weights") or {}
    bin_ = manifest.root / weights.get("path", "")
    return (xml.is_file() and bin_.is_file() and sha256_file(xml) == record.get("sha256")
            and sha256_file(bin_) == weights.get("sha256"))  # fmt: skip


def recorded_thresholds(manifest: Manifest, engine: str | Path) -> dict[str, float] | None:
    """The gates the OpenVINO engine `engine` (a path or file name) was built to ({"cosine": min centred cosine,
    "scores": head max abs}), None when it is not one of the manifest's OpenVINO engines: `stp-run --check` holds an
    engine to its own gate (bf16: cosine 0.995), not to the fp32 graph's."""
    name = Path(engine).name
    for role in OPENVINO_ROLES:
        record = manifest.engines.get(role)
        if record and record.get("path") == name and record.get("thresholds"):
            return {k: float(v) for k, v in record["thresholds"].items()}
    return None
