"""Accuracy gates: an exported graph enters a bundle only if it reproduces the fp32 PyTorch reference.

Encoder metric: cosine similarity between candidate and reference embeddings after subtracting the mean
reference embedding, minimum over the probe batch. Plain cosine is near 1 even for a broken graph, because
CLIP embeddings of any two crops share a large common component; centring measures what tells crops apart.
Head metric: max absolute difference of score, score_c and probs. Torch-free (numpy + onnxruntime): the
references are computed by the caller.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import UserError

CPU = "CPUExecutionProvider"
# ONNX Runtime 1.32's NchwcTransformer (CPU, ORT_ENABLE_ALL) segfaults on the fp16 ViT graph; skip it there.
FP16_DISABLED_OPTIMIZERS = ("NchwcTransformer",)


def ort_session(path: str | os.PathLike, fp16: bool = False, threads: int = 0):
    """An ONNX Runtime CPU session for a bundle graph (fp16 graphs without the crashing CPU layout pass)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    kwargs: dict[str, Any] = {"disabled_optimizers": list(FP16_DISABLED_OPTIMIZERS)} if fp16 else {}
    return ort.InferenceSession(os.fspath(path), opts, providers=[CPU], **kwargs)


def run_encoder(session, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """[N, 3, 224, 224] -> [N, D] float32 through an encoder session, `batch` crops per call."""
    outs = [
        session.run(["embeddings"], {"images": np.ascontiguousarray(images[i : i + batch], np.float32)})[0]
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(outs, axis=0).astype(np.float32)


def run_encoder_checked(path: str | os.PathLike, images: np.ndarray, fp16: bool = False, name: str = "") -> np.ndarray:
    """`run_encoder` on a fresh CPU session; a graph ONNX Runtime cannot load or run is a UserError naming it."""
    try:
        return run_encoder(ort_session(path, fp16=fp16), images)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"{name or os.fspath(path)}: ONNX Runtime ({CPU}) cannot run it for the gate: {first}"
        ) from None


def centered_cosine(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-row cosine of (candidate - mu) and (reference - mu), mu = mean reference row."""
    ref = np.asarray(reference, np.float64)
    mu = ref.mean(axis=0, keepdims=True)
    return row_cosine(np.asarray(candidate, np.float64) - mu, ref - mu)


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def encoder_gate(candidate: np.ndarray, reference: np.ndarray, threshold: float, provider: str = CPU) -> dict:
    """Gate record for one encoder variant (fp32, fp16 or int8 ONNX) against the PyTorch embeddings."""
    cos = centered_cosine(candidate, reference)
    plain = row_cosine(candidate, reference)
    return {
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


def run_head(session, x_clip: np.ndarray, x_patch: np.ndarray, second: str = "x_patch") -> dict[str, np.ndarray]:
    """x_clip [T, D], x_patch [T, 49, D] (or x_as [T, D] with second="x_as") -> {score, score_c, probs}."""
    names = ["score", "score_c", "probs"]
    outs = session.run(names, {"x_clip": x_clip.astype(np.float32), second: x_patch.astype(np.float32)})
    return dict(zip(names, outs, strict=True))


def require_passed(gates: dict[str, dict]) -> None:
    """Raise one UserError naming every failed gate (the export then writes no manifest)."""
    failed = []
    for name, g in gates.items():
        if isinstance(g, dict) and g.get("passed") is False:
            value = g.get("min", g.get("max_abs"))
            op = ">=" if "min" in g else "<="
            failed.append(f"{name} {value:.6g} (needs {op} {g['threshold']})")
    if failed:
        raise UserError("accuracy gate failed: " + "; ".join(failed) + "; no manifest written")
