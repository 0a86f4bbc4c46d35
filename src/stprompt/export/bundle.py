"""`stp-export`'s work: a checkpoint becomes a self-describing, gated bundle of files sharing one stem.

Three steps, one function each: `write_graphs` (ONNX encoder, heads, reduced-precision variants), `gate_graphs`
(every graph against the fp32 PyTorch reference on the bundle's own preprocessing) and `manifest_doc` (what the
bundle room's manifest records). Files are written under temporary names, checked (onnx checker, accuracy gates,
TensorRT op report) and only then renamed into place; the manifest comes last. A failed gate leaves no new file
and no manifest behind.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..bundle import gates as gate_mod
from ..bundle.engine_keys import BuildSettings
from ..bundle.graphs import HEAD_FEATURES_INPUTS, HEAD_INPUTS, HEAD_OUTPUTS, X_AS, X_PATCH, head_layer_role
from ..bundle.hashing import file_entry
from ..bundle.manifest import FORMAT, manifest_path, role_suffix, write_manifest
from ..bundle.ort import ort_session, run_head
from ..bundle.preprocess import Preprocess
from ..errors import UserError
from ..model.config import BANDED_TEMPORAL
from .options import ExportOptions, default_thresholds, resolve_stem
from .pre_graph import write_pre_graph
from .trt_ops import check_graph

HEAD_GATE_LENGTHS = (1, 2, 17)  # plus the engine's opt and max window
GRAPH_ROLES = ("encoder", "encoder_pre", "head", "head_features")  # the graphs a TensorRT target builds (op-checked)


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


class Staging:
    """Bundle files under temporary names until every check passed; `commit` renames them into place."""

    def __init__(self, stem: Path):
        self.stem = stem
        self.paths: dict[str, Path] = {}

    def path(self, role: str) -> Path:
        final = self.final(role)
        self.paths[role] = final.with_name(f".{final.name}.partial-{os.getpid()}")
        return self.paths[role]

    def final(self, role: str) -> Path:
        return self.stem.with_name(self.stem.name + role_suffix(role))

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


def write_graphs(stage: Staging, clip_model, head, prompts, opts: ExportOptions) -> dict[str, float]:
    """The ONNX graphs of the bundle under their staging names, each through onnx's checker; returns timings."""
    from .onnx_graphs import export_encoder, export_head, export_head_stages
    from .precision import convert_fp16, quantize_int8

    timings: dict[str, float] = {}
    t = time.perf_counter()
    export_encoder(clip_model, stage.path("encoder"))
    _check_onnx(stage.paths["encoder"])
    timings["encoder_onnx"] = time.perf_counter() - t
    t = time.perf_counter()
    export_head(head, prompts, stage.path("head"))
    _check_onnx(stage.paths["head"])
    export_head(head, prompts, stage.path("head_features"), after_sa2=True)
    _check_onnx(stage.paths["head_features"])
    if head.cfg.temporal in BANDED_TEMPORAL:  # streams compute each snippet's rows once (runtime.incremental)
        layers = [stage.path(head_layer_role(i)) for i in range(len(head.adapter))]
        export_head_stages(head, prompts, layers, stage.path("head_scores"))
        for path in (*layers, stage.paths["head_scores"]):
            _check_onnx(path)
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
    return timings


def gate_graphs(stage: Staging, clip_model, head, prompts, opts: ExportOptions, pre: Preprocess,
                lengths: list[int]) -> dict[str, Any]:  # fmt: skip
    """Gate records of every staged graph against PyTorch fp32 on CPU: the encoders on the probe scene cut into
    crops by `pre` (the bundle's own preprocessing), the heads at every length in `lengths`."""
    import torch

    from ..bundle.probe import PROBE_SEED, PROBE_SIZE, probe_batch, probe_pixels
    from ..clip.image import ImageEncoder

    probe = probe_batch(opts.probe_frames, pre)
    reference = ImageEncoder(clip_model, batch=64)(probe)
    gates: dict[str, Any] = {
        "probe": {
            "frames": opts.probe_frames,
            "crops": int(len(probe)),
            "scene": f"stprompt.bundle.probe seed {PROBE_SEED}, {PROBE_SIZE[0]}x{PROBE_SIZE[1]}",
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
        gates[name] = gate_mod.encoder_gate(emb, reference, threshold, fp16=fp16)
    gates["encoder_pre"] = gate_mod.pre_gate(ort_session(stage.paths["encoder_pre"]),
                                             probe_pixels(opts.probe_frames, pre), probe)  # fmt: skip
    dim = int(reference.shape[1])
    inputs = head_gate_inputs(reference, dim, lengths)
    refs = [torch_head_outputs(head, prompts, x_clip, x_patch) for x_clip, x_patch in inputs]
    session = ort_session(stage.paths["head"])
    outs = [run_head(session, x_clip, x_patch, X_PATCH) for x_clip, x_patch in inputs]
    gates["head_fp32"] = gate_mod.head_gate(outs, refs, lengths, opts.head_gate)
    session = ort_session(stage.paths["head_features"])
    outs = []
    for x_clip, x_patch in inputs:
        x_as = head.aggregate(torch.from_numpy(x_patch)[None].reshape(1, len(x_patch), 7, 7, -1))[0].numpy()
        outs.append(run_head(session, x_clip, x_as, X_AS))
    gates["head_features_fp32"] = gate_mod.head_gate(outs, refs, lengths, opts.head_gate)
    if "head_scores" in stage.paths:
        gates["head_stages_fp32"] = gate_mod.head_gate(stages_outputs(stage, head, inputs), refs, lengths,
                                                       opts.head_gate)  # fmt: skip
    return gates


def stages_outputs(stage: Staging, head, inputs: list[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The snippet-wise graphs over each gate input, layer by layer with the runtime's band attention."""
    import torch

    from ..bundle.ort import OrtHeadStages
    from ..runtime.incremental import band_kernel, score_by_stages

    stages = OrtHeadStages([stage.paths[head_layer_role(i)] for i in range(len(head.adapter))],
                           stage.paths["head_scores"])  # fmt: skip
    kernel = band_kernel(head.cfg.sigma, head.cfg.radius)
    outs = []
    for x_clip, x_patch in inputs:
        x_as = head.aggregate(torch.from_numpy(x_patch)[None].reshape(1, len(x_patch), 7, 7, -1))[0].numpy()
        outs.append(score_by_stages(stages, x_clip, x_as, kernel))
    return outs


def manifest_doc(ckpt, clip, queries, opts: ExportOptions, pre: Preprocess, settings: BuildSettings,
                 files: dict[str, Path], gates: dict[str, Any], reports) -> dict[str, Any]:  # fmt: skip
    """The manifest of a gated bundle: everything the runtime and the engine builders read (see bundle.manifest)."""
    from .onnx_graphs import ENCODER_OPSET, HEAD_OPSET
    from .precision import FP32_OPS, INT8_OPS

    cfg = ckpt.config
    return {
        "format": FORMAT,
        "clip": str(clip.spec),
        "clip_sha256": clip.sha256,
        "clip_arch": clip.arch,  # the open_clip architecture the encoder graph was exported from
        "clip_activation": clip.activation,  # its MLP activation (quick_gelu, gelu): part of what the encoder computes
        "dim": cfg.dim,
        **pre.manifest_sections(),
        "sampling": {"stride": ckpt.stride, "offset": ckpt.stride // 2},
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
            "features_input_names": list(HEAD_FEATURES_INPUTS),
        },
        "thresholds": {**default_thresholds(), **opts.thresholds},
        "files": {role: file_entry(path) for role, path in files.items()},
        "precision": {
            "encoder": opts.precision,
            "head": "fp32",
            "int8_cpu": bool(opts.int8_cpu),
            "fp32_ops": list(FP32_OPS),
            "int8_ops": list(INT8_OPS) if opts.int8_cpu else [],
        },
        "gates": gates,
        "build": settings.to_dict(),
        "engines": {},
        "op_check": {
            r.name: {"ok": r.ok, "unsupported": r.unsupported, "restrictions": r.restrictions} for r in reports
        },
        "versions": _versions(ENCODER_OPSET, HEAD_OPSET),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def export_bundle(
    ckpt_path: str | os.PathLike, out: str | os.PathLike, opts: ExportOptions, log: Callable[[str], None] = print
) -> Path:
    """Write the bundle for `ckpt_path` at stem `out`; returns the manifest path. Raises UserError on any gate."""
    from ..checkpoint import load_checkpoint
    from ..clip.loader import check_same_activation, check_same_weights, load_clip
    from ..localize.queries import encode_bank, load_bank

    ckpt = load_checkpoint(ckpt_path)
    bank = load_bank(opts.queries)
    stem = resolve_stem(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    cfg = ckpt.config
    clip = load_clip(ckpt.clip)
    check_same_weights(ckpt.clip_sha256, clip.sha256, "the checkpoint", ckpt.clip)
    check_same_activation(ckpt.clip_activation, clip.activation, "the checkpoint", ckpt.clip)
    if clip.dim != cfg.dim:
        raise UserError(f"checkpoint head expects D={cfg.dim}, CLIP {ckpt.clip} gives D={clip.dim}")
    pre = clip.preprocess  # the CLIP model's own size and mean / std: the runtime reads them from the manifest
    settings = BuildSettings.resolve(cfg.exact_lookahead, max_batch=opts.max_batch, opt_batch=opts.opt_batch,
                                     max_window=opts.max_window, opt_window=opts.opt_window,
                                     workspace_gb=opts.workspace_gb)  # fmt: skip
    head = ckpt.build_head()
    prompts = ckpt.prompt_features.float()

    stage = Staging(stem)
    try:
        timings = write_graphs(stage, clip.model, head, prompts, opts)
        write_pre_graph(stage.path("encoder_pre"), pre)  # a few hundred bytes: GPU engines normalise on the device
        queries = encode_bank(clip.model, bank, ckpt.classes)
        _write_queries(stage.path("queries"), queries)
        t = time.perf_counter()
        lengths = sorted({*HEAD_GATE_LENGTHS, settings.opt_window, settings.max_window})
        gates = gate_graphs(stage, clip.model, head, prompts, opts, pre, lengths)
        timings["gates"] = time.perf_counter() - t
        for name, g in gates.items():
            if name != "probe":
                log(f"stp-export: {gate_mod.describe(name, g)}")
        gate_mod.require_passed(gates)
        reports = [check_graph(stage.paths[r], name=stage.final(r).name) for r in GRAPH_ROLES]
        for report in reports:
            for line in report.lines():
                log(f"stp-export: {line}")
        if opts.strict_ops and not all(r.ok for r in reports):
            bad = ", ".join(r.name for r in reports if not r.ok)
            raise UserError(f"{bad}: uses ONNX ops or forms TensorRT 10 does not take (see the op report above)")
        files = stage.commit()
    finally:
        stage.discard()
    doc = manifest_doc(ckpt, clip, queries, opts, pre, settings, files, gates, reports)
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
