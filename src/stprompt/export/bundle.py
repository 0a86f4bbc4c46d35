"""`stp-export`'s work: a checkpoint becomes a self-describing, gated bundle of files sharing one stem.

Files are written under temporary names, checked (onnx checker, accuracy gates, TensorRT op report) and only
then renamed into place; the manifest comes last. A failed gate leaves no new file and no manifest behind.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..clip.constants import IMAGE_SIZE, MEAN_RGB, STD_RGB
from ..errors import UserError
from ..localize.heat import LocalizeSettings
from ..windows import RESAMPLER, SCALE_A, SCALE_B, crops_per_frame
from . import gates as gate_mod
from .manifest import FORMAT, ROLE_SUFFIXES, file_entry, manifest_path, write_manifest
from .trt_build import (
    DEFAULT_MAX_BATCH,
    DEFAULT_OPT_BATCH,
    DEFAULT_WORKSPACE_GB,
    default_max_window,
    default_opt_window,
)
from .trt_ops import check_graph

PRECISIONS = ("fp32", "fp16")
HEAD_GATE_LENGTHS = (1, 2, 17)  # plus the engine's opt and max window


@dataclass
class ExportOptions:
    """Everything `stp-export` decides besides the checkpoint and the output stem."""

    precision: str = "fp32"  # encoder precision the engines are built for; fp16 also writes model.fp16.onnx
    int8_cpu: bool = False  # also write model.int8.onnx (ONNX Runtime dynamic int8, CPU)
    queries: str | None = None  # query bank JSON (localize.queries format); None = the default bank
    max_batch: int = DEFAULT_MAX_BATCH
    opt_batch: int = DEFAULT_OPT_BATCH
    max_window: int | None = None  # None = 256 + 2 * exact_lookahead
    opt_window: int | None = None  # None = 2 * exact_lookahead + 1
    workspace_gb: float = DEFAULT_WORKSPACE_GB
    probe_frames: int = 2
    encoder_gate: float = 0.999  # fp32 and fp16 encoder: min centered cosine
    int8_gate: float = 0.99
    head_gate: float = 1e-3  # max abs difference
    int8_per_channel: bool = False
    strict_ops: bool = False  # refuse graphs TensorRT 10 cannot parse (set when building engines right away)
    thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.max_batch < 1 or self.opt_batch < 1 or self.probe_frames < 1 or self.workspace_gb <= 0:
            raise UserError("need --max-batch, --opt-batch, --probe-frames >= 1 and --workspace-gb > 0")
        if self.max_window is not None and self.max_window < 1:
            raise UserError(f"--max-window must be at least 1, got {self.max_window}")
        if not all(0 < g <= 1 for g in (self.encoder_gate, self.int8_gate)) or self.head_gate <= 0:
            raise UserError("gates need 0 < --encoder-gate, --int8-gate <= 1 and --head-gate > 0")


def default_thresholds() -> dict[str, float]:
    s = LocalizeSettings()
    return {
        "alarm": 0.5,
        "heat": s.heat_threshold,
        "min_box_area": s.min_box_area,
        "tau_loc": s.tau_loc,
        "fusion_lambda": s.fusion_lambda,
    }


def resolve_stem(out: str | os.PathLike) -> Path:
    """--out DIR/model (or DIR/model.json, or an existing DIR -> DIR/model) -> the bundle stem."""
    p = Path(out)
    if p.is_dir():
        p = p / "model"
    if p.name.endswith(".json"):
        p = p.with_name(p.name[: -len(".json")])
    if not p.name or p.name in (".", ".."):
        raise UserError(f"--out {out!r} does not name a bundle stem such as out/model")
    return p


def head_gate_inputs(x_ref: np.ndarray, dim: int, lengths: list[int], seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """(x_clip [T, D], x_patch [T, 49, D]) drawn with the probe embeddings' per-channel mean and spread.

    Ties in SA2's top-k (T = 1, static scenes) resolve to the lowest window index in PyTorch and ONNX alike.
    """
    rng = np.random.default_rng(seed)
    mu, sd = x_ref.mean(axis=0), x_ref.std(axis=0) + 1e-3
    out = []
    for t in lengths:
        x_clip = (mu + sd * rng.standard_normal((t, dim))).astype(np.float32)
        x_patch = (mu + sd * rng.standard_normal((t, 49, dim))).astype(np.float32)
        out.append((x_clip, x_patch))
    return out


def torch_head_outputs(head, prompts, x_clip: np.ndarray, x_patch: np.ndarray) -> dict[str, np.ndarray]:
    """PyTorch reference of the head graph (batch 1, all snippets valid)."""
    import torch

    with torch.inference_mode():
        xc = torch.from_numpy(x_clip)[None]
        xp = torch.from_numpy(x_patch)[None]
        o = head(xc, xp, torch.ones(xc.shape[:2]), prompts.float())
    return {"score": o.score[0].numpy(), "score_c": o.score_c[0].numpy(), "probs": o.probs[0].numpy()}


class _Staging:
    """Bundle files under temporary names until every check passed; `commit` renames them into place."""

    def __init__(self, stem: Path):
        self.stem = stem
        self.paths: dict[str, Path] = {}

    def path(self, role: str) -> Path:
        final = self.final(role)
        self.paths[role] = final.with_name(f".{final.name}.partial-{os.getpid()}")
        return self.paths[role]

    def final(self, role: str) -> Path:
        return self.stem.with_name(self.stem.name + ROLE_SUFFIXES[role])

    def commit(self) -> dict[str, Path]:
        manifest_path(self.stem).unlink(missing_ok=True)  # never leave an old manifest beside new files
        done = {}
        for role, tmp in self.paths.items():
            os.replace(tmp, self.final(role))
            done[role] = self.final(role)
        self.paths.clear()
        return done

    def discard(self) -> None:
        for tmp in self.paths.values():
            tmp.unlink(missing_ok=True)
        self.paths.clear()


def _check_onnx(path: Path) -> None:
    import onnx

    onnx.checker.check_model(os.fspath(path))


def _write_queries(path: Path, queries) -> None:
    buf = io.BytesIO()
    np.savez(
        buf,
        embeddings=np.asarray(queries.embeddings, np.float32),
        abnormal=np.asarray(queries.abnormal, bool),
        texts=np.asarray(queries.texts, dtype=str),  # unicode array: loads with allow_pickle=False
    )
    path.write_bytes(buf.getvalue())


def export_bundle(
    ckpt_path: str | os.PathLike, out: str | os.PathLike, opts: ExportOptions, log: Callable[[str], None] = print
) -> Path:
    """Write the bundle for `ckpt_path` at stem `out`; returns the manifest path. Raises UserError on any gate."""
    import torch

    from ..checkpoint import load_checkpoint
    from ..clip.image import ImageEncoder
    from ..clip.loader import check_same_weights, load_clip
    from ..localize.queries import encode_bank, load_bank
    from .onnx_graphs import ENCODER_OPSET, HEAD_INPUTS, HEAD_OPSET, HEAD_OUTPUTS, export_encoder, export_head
    from .precision import FP32_OPS, INT8_OPS, convert_fp16, quantize_int8
    from .probe import PROBE_SEED, PROBE_SIZE, probe_batch

    ckpt = load_checkpoint(ckpt_path)
    bank = load_bank(opts.queries)
    stem = resolve_stem(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    cfg = ckpt.config
    max_window = opts.max_window or default_max_window(cfg.exact_lookahead)
    opt_window = min(opts.opt_window or default_opt_window(cfg.exact_lookahead, max_window), max_window)
    opt_batch = min(opts.opt_batch, opts.max_batch)
    thresholds = {**default_thresholds(), **opts.thresholds}

    clip = load_clip(ckpt.clip)
    check_same_weights(ckpt.clip_sha256, clip.sha256, "the checkpoint", ckpt.clip)
    if clip.dim != cfg.dim:
        raise UserError(f"checkpoint head expects D={cfg.dim}, CLIP {ckpt.clip} gives D={clip.dim}")
    head = ckpt.build_head()
    prompts = ckpt.prompt_features.float()

    stage = _Staging(stem)
    timings: dict[str, float] = {}
    try:
        t = time.perf_counter()
        export_encoder(clip.model, stage.path("encoder"))
        _check_onnx(stage.paths["encoder"])
        timings["encoder_onnx"] = time.perf_counter() - t
        t = time.perf_counter()
        export_head(head, prompts, stage.path("head"))
        _check_onnx(stage.paths["head"])
        export_head(head, prompts, stage.path("head_features"), after_sa2=True)
        _check_onnx(stage.paths["head_features"])
        timings["head_onnx"] = time.perf_counter() - t
        if opts.precision == "fp16":
            t = time.perf_counter()
            convert_fp16(stage.paths["encoder"], stage.path("encoder_fp16"))
            _check_onnx(stage.paths["encoder_fp16"])
            timings["fp16"] = time.perf_counter() - t
        if opts.int8_cpu:
            t = time.perf_counter()
            quantize_int8(stage.paths["encoder"], stage.path("encoder_int8"), per_channel=opts.int8_per_channel)
            _check_onnx(stage.paths["encoder_int8"])
            timings["int8"] = time.perf_counter() - t
        queries = encode_bank(clip.model, bank, ckpt.classes)
        _write_queries(stage.path("queries"), queries)

        t = time.perf_counter()
        probe = probe_batch(opts.probe_frames)
        reference = ImageEncoder(clip.model, batch=64)(probe)
        gates: dict[str, Any] = {
            "probe": {
                "frames": opts.probe_frames,
                "crops": int(len(probe)),
                "scene": f"stprompt.export.probe seed {PROBE_SEED}, {PROBE_SIZE[0]}x{PROBE_SIZE[1]}",
                "reference": "PyTorch fp32 encode_image on CPU",
            }
        }
        variants = [("encoder_fp32", "encoder", opts.encoder_gate, False)]
        if opts.precision == "fp16":
            variants.append(("encoder_fp16", "encoder_fp16", opts.encoder_gate, True))
        if opts.int8_cpu:
            variants.append(("encoder_int8", "encoder_int8", opts.int8_gate, False))
        for name, role, threshold, fp16 in variants:
            emb = gate_mod.run_encoder_checked(stage.paths[role], probe, fp16=fp16, name=stage.final(role).name)
            gates[name] = gate_mod.encoder_gate(emb, reference, threshold)
            if fp16:
                gates[name]["ort_disabled_optimizers"] = list(gate_mod.FP16_DISABLED_OPTIMIZERS)
        lengths = sorted({*HEAD_GATE_LENGTHS, opt_window, max_window})
        session = gate_mod.ort_session(stage.paths["head"])
        outs, refs = [], []
        for x_clip, x_patch in head_gate_inputs(reference, cfg.dim, lengths):
            outs.append(gate_mod.run_head(session, x_clip, x_patch))
            refs.append(torch_head_outputs(head, prompts, x_clip, x_patch))
        gates["head_fp32"] = gate_mod.head_gate(outs, refs, lengths, opts.head_gate)
        session = gate_mod.ort_session(stage.paths["head_features"])
        outs = []
        for x_clip, x_patch in head_gate_inputs(reference, cfg.dim, lengths):
            x_as = head.aggregate(torch.from_numpy(x_patch)[None].reshape(1, len(x_patch), 7, 7, -1))[0].numpy()
            outs.append(gate_mod.run_head(session, x_clip, x_as, second="x_as"))
        gates["head_features_fp32"] = gate_mod.head_gate(outs, refs, lengths, opts.head_gate)
        timings["gates"] = time.perf_counter() - t
        for name, g in gates.items():
            if name != "probe":
                value = f"min centered cosine {g['min']:.6f}" if "min" in g else f"max abs {g['max_abs']:.2e}"
                log(f"stp-export: gate {name}: {value} ({'pass' if g['passed'] else 'FAIL'}, limit {g['threshold']})")
        gate_mod.require_passed(gates)

        reports = [check_graph(stage.paths[r], name=stage.final(r).name) for r in ("encoder", "head", "head_features")]
        for report in reports:
            for line in report.lines():
                log(f"stp-export: {line}")
        if opts.strict_ops and not all(r.ok for r in reports):
            bad = ", ".join(r.name for r in reports if not r.ok)
            raise UserError(f"{bad}: uses ONNX ops or forms TensorRT 10 does not take (see the op report above)")
        files = stage.commit()
    finally:
        stage.discard()

    doc = {
        "format": FORMAT,
        "clip": str(clip.spec),
        "clip_sha256": clip.sha256,
        "dim": cfg.dim,
        "preprocess": {
            "size": IMAGE_SIZE,
            "mean": list(MEAN_RGB),
            "std": list(STD_RGB),
            "resampler": RESAMPLER,
            "colour_order": "BGR->RGB",
            "scale": 1.0 / 255.0,
            "resize": "whole frame to 224x224, aspect not kept",
            "layout": "NCHW float32: (pixel / 255 - mean) / std per RGB channel",
        },
        "sampling": {"stride": ckpt.stride, "offset": ckpt.stride // 2},
        "windows": {
            "A": {"size": SCALE_A.size, "stride": SCALE_A.stride, "grid": SCALE_A.grid},
            "B": {"size": SCALE_B.size, "stride": SCALE_B.stride, "grid": SCALE_B.grid},
            "order": "row-major",
            "crops_per_frame": crops_per_frame(),
            "batch_order": "full frame, scale-A windows, then scale-B windows on flagged frames",
            "window_resize": f"each window of the 224x224 uint8 frame to 224x224, {RESAMPLER}",
        },
        "classes": list(ckpt.classes),
        "class_phrases": list(ckpt.class_phrases),
        "queries": {
            "texts": list(queries.texts),
            "n_normal": int((~np.asarray(queries.abnormal)).sum()),
            "source": os.fspath(opts.queries) if opts.queries else "default bank (stprompt.localize.queries)",
        },
        "head": {
            **cfg.to_dict(),
            "radius": cfg.radius,
            "exact_lookahead": cfg.exact_lookahead,
            "inputs": {"x_clip": ["T", cfg.dim], "x_patch": ["T", 49, cfg.dim]},
            "input_names": list(HEAD_INPUTS),
            "outputs": list(HEAD_OUTPUTS),
            "sa2_ties": "top-k over tied motion keeps the lowest window indices (ONNX TopK rule)",
            "features_inputs": {"x_clip": ["T", cfg.dim], "x_as": ["T", cfg.dim]},
        },
        "thresholds": thresholds,
        "files": {role: file_entry(path) for role, path in files.items()},
        "precision": {
            "encoder": opts.precision,
            "head": "fp32",
            "int8_cpu": bool(opts.int8_cpu),
            "fp32_ops": list(FP32_OPS),
            "int8_ops": list(INT8_OPS) if opts.int8_cpu else [],
        },
        "gates": gates,
        "build": {
            "max_batch": opts.max_batch,
            "opt_batch": opt_batch,
            "max_window": max_window,
            "opt_window": opt_window,
            "workspace_gb": opts.workspace_gb,
        },
        "engines": {},
        "op_check": {
            r.name: {"ok": r.ok, "unsupported": r.unsupported, "restrictions": r.restrictions} for r in reports
        },
        "versions": _versions(ENCODER_OPSET, HEAD_OPSET),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = write_manifest(manifest_path(stem), doc)
    log("stp-export: timings " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    return path


def _versions(encoder_opset: int, head_opset: int) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import open_clip
    import torch

    return {
        "stprompt": __version__,
        "torch": str(torch.__version__),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "open_clip": getattr(open_clip, "__version__", "?"),
        "opset": {"encoder": encoder_opset, "head": head_opset},
    }
