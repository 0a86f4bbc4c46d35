"""Accuracy gates: an exported graph enters a bundle only if it reproduces the fp32 PyTorch reference.

Encoder metric: the minimum over the probe batch of the centred cosine (`stprompt.bundle.compare`). Head metric:
max absolute difference of score, score_c and probs. Torch-free (numpy + onnxruntime through the bundle room's
session factory): the references are computed by the caller.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import UserError, first_line
from .compare import centered_cosine, row_cosine
from .ort import CPU, FP16_DISABLED_OPTIMIZERS, ort_session, run_encoder


def run_encoder_checked(path: str | os.PathLike, images: np.ndarray, fp16: bool = False, name: str = "") -> np.ndarray:
    """`run_encoder` on a fresh CPU session; a graph ONNX Runtime cannot load or run is a UserError naming it."""
    session = ort_session(path, fp16=fp16)
    try:
        return run_encoder(session, images)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise UserError(
            f"{name or os.fspath(path)}: ONNX Runtime ({CPU}) cannot run it for the gate: {first_line(err)}"
        ) from None


def encoder_gate(candidate: np.ndarray, reference: np.ndarray, threshold: float, provider: str = CPU,
                 fp16: bool = False) -> dict:  # fmt: skip
    """Gate record for one encoder variant (fp32, fp16 or int8 ONNX) against the PyTorch embeddings."""
    cos = centered_cosine(candidate, reference)
    plain = row_cosine(candidate, reference)
    record = {
        "metric": "min over probe crops of cosine(candidate - mu, reference - mu), mu = mean reference",
        "min": round(float(cos.min()), 7),
        "mean": round(float(cos.mean()), 7),
        "max_abs": float(np.abs(candidate - reference).max()),
        "plain_cosine_min": round(float(plain.min()), 7),
        "threshold": threshold,
        "passed": bool(cos.min() >= threshold),
        "crops": int(len(reference)),
        "provider": provider,
    }
    if fp16:
        record["ort_disabled_optimizers"] = list(FP16_DISABLED_OPTIMIZERS)
    return record


def head_gate(outputs: list[dict[str, np.ndarray]], references: list[dict[str, np.ndarray]], lengths: list[int],
              threshold: float, provider: str = CPU) -> dict:  # fmt: skip
    """Gate record for the head ONNX: max |ONNX - PyTorch| over score, score_c, probs at every length."""
    worst = max(float(np.abs(o[k] - r[k]).max()) for o, r in zip(outputs, references, strict=True) for k in r)
    return {
        "metric": "max abs difference of score, score_c, probs vs PyTorch fp32",
        "max_abs": worst,
        "threshold": threshold,
        "passed": bool(worst <= threshold),
        "lengths": list(lengths),
        "provider": provider,
    }


PRE_GATE = 1e-6  # the device preprocessing graph computes the host kernels' float32 arithmetic: equal, up to FMA


def pre_gate(session, pixels: np.ndarray, expected: np.ndarray, threshold: float = PRE_GATE) -> dict:
    """Gate record of the preprocessing graph (`model.pre.onnx`) on ONNX Runtime: its output for the probe's uint8
    crops against the host's normalised crops of the same pixels (`windows.normalize`)."""
    from .graphs import PRE_INPUT

    out = session.run(None, {PRE_INPUT: np.ascontiguousarray(pixels)})[0]
    worst = float(np.abs(np.asarray(out, np.float32) - expected).max()) if out.shape == expected.shape else float("inf")
    return {"metric": "max abs difference of the graph's normalised crops vs the host kernels' (ONNX Runtime)",
            "max_abs": worst, "threshold": threshold, "passed": bool(worst <= threshold), "crops": int(len(pixels))}


def describe(name: str, gate: dict) -> str:
    """One log line for a gate record."""
    value = f"min centered cosine {gate['min']:.6f}" if "min" in gate else f"max abs {gate['max_abs']:.2e}"
    return f"gate {name}: {value} ({'pass' if gate['passed'] else 'FAIL'}, limit {gate['threshold']})"


def failed_gates(gates: dict[str, Any]) -> list[str]:
    """"name value (needs op threshold)" for every gate record that did not pass (export and engine gates alike)."""
    failed = []
    for name, g in gates.items():
        if isinstance(g, dict) and g.get("passed") is False:
            value = g.get("min", g.get("max_abs"))
            op = ">=" if "min" in g else "<="
            failed.append(f"{name} {value:.6g} (needs {op} {g['threshold']})")
    return failed


def require_passed(gates: dict[str, dict]) -> None:
    """Raise one UserError naming every failed gate (the export then writes no manifest)."""
    failed = failed_gates(gates)
    if failed:
        raise UserError("accuracy gate failed: " + "; ".join(failed) + "; no manifest written")
