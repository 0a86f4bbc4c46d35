"""Gates of an engine built on the target: the export's kind of check, with the bundle's fp32 graph as reference.

The minimum centred cosine of the engine's embeddings against the fp32 encoder graph on ONNX Runtime (itself gated
against PyTorch at export) over the export's probe crops, and over held-out footage when the engine was calibrated
on some; and the head's scores fed the engine's embeddings against the head fed the reference's. The records have
the export's format (`stprompt.bundle.gates`), so `describe` prints them alike. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..bundle.graphs import HEAD_OUTPUTS, X_PATCH
from ..bundle.manifest import Manifest
from ..bundle.ort import ort_session, run_encoder, run_head
from ..errors import UserError

CHUNK = 50  # crops per gate call: one sampled frame


def encode(compiled, images: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """[N, 3, S, S] -> [N, D] float32 through a compiled encoder, `chunk` crops per call."""
    outs = [np.asarray(compiled(np.ascontiguousarray(images[i : i + chunk]))[0], np.float32)
            for i in range(0, len(images), chunk)]  # fmt: skip
    return np.concatenate(outs, axis=0)


def head_scores_gate(reference: np.ndarray, candidate: np.ndarray, per_frame: int, head_session,
                     threshold: float) -> dict[str, Any]:  # fmt: skip
    """Max |head(candidate) - head(reference)| over score, score_c, probs, the crops taken as consecutive sampled
    frames (full frame then its windows) of one stream."""
    frames = len(reference) // per_frame

    def head(emb: np.ndarray) -> dict[str, np.ndarray]:
        e = emb[: frames * per_frame].reshape(frames, per_frame, -1)
        return run_head(head_session, np.ascontiguousarray(e[:, 0]), np.ascontiguousarray(e[:, 1:]), X_PATCH)

    ref, cand = head(reference), head(candidate)
    worst = max(float(np.abs(cand[k] - ref[k]).max()) for k in HEAD_OUTPUTS)
    return {
        "metric": "max abs difference of the head's score, score_c, probs fed the engine's embeddings vs fed the "
        "fp32 graph's (ONNX Runtime)",
        "max_abs": worst,
        "threshold": threshold,
        "passed": bool(worst <= threshold),
        "snippets": frames,
    }


def gate_engine(manifest: Manifest, compiled, thresholds: dict[str, float], provider: str,
                holdout: np.ndarray | None, log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """Gate records of a compiled engine (`provider` names it): probe crops as the export's gate, held-out footage,
    head scores; `thresholds`: {"cosine": min centred cosine, "scores": max abs}."""
    from ..bundle.gates import describe, encoder_gate
    from ..bundle.probe import PROBE_SEED, PROBE_SIZE, probe_batch
    from ..windows import crops_per_frame

    pre = manifest.preprocess
    frames = int(manifest.gates.get("probe", {}).get("frames", 2))
    probe = probe_batch(frames, pre)
    reference_session = ort_session(manifest.file("encoder"))
    gates: dict[str, Any] = {"probe": {
        "frames": frames, "crops": int(len(probe)),
        "scene": f"stprompt.bundle.probe seed {PROBE_SEED}, {PROBE_SIZE[0]}x{PROBE_SIZE[1]}",
        "reference": f"{manifest.file('encoder').name} (fp32) on ONNX Runtime CPU",
    }}  # fmt: skip
    sets = {"encoder": probe} if holdout is None else {"encoder": probe, "footage": holdout}
    head = ort_session(manifest.file("head"))
    per_frame = crops_per_frame(pre=pre)
    scores = []
    for name, crops in sets.items():
        reference = run_encoder(reference_session, crops, batch=CHUNK)
        candidate = encode(compiled, crops)
        gates[name] = encoder_gate(candidate, reference, thresholds["cosine"], provider=provider)
        if name == "footage":
            gates[name]["metric"] = gates[name]["metric"].replace("probe crops", "held-out footage crops")
        scores.append(head_scores_gate(reference, candidate, per_frame, head, thresholds["scores"]))
    gates["scores"] = max(scores, key=lambda g: g["max_abs"])
    for name, g in gates.items():
        if name != "probe":
            log(f"stp-build: {describe(name, g)}")
    return gates


def require_gates(name: str, gates: dict[str, Any], int8: bool) -> None:
    """One UserError naming every failed gate and what to try instead; nothing has been written then."""
    from ..bundle.gates import failed_gates

    failed = failed_gates(gates)
    if failed:
        instead = ("calibrate on other footage with --calibrate, or use the bf16 engine: stp-build --openvino" if int8
                   else "run the fp32 graph on ONNX Runtime: stp-run --engine model.onnx")  # fmt: skip
        raise UserError(f"{name}: accuracy gate failed: {'; '.join(failed)}; nothing written ({instead})")
