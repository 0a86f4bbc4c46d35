"""FLOPs and parameters per pipeline stage (paper Table 7 style): analytic counts, cross-checked by torch.

Why analytic: the count then follows from the model's shape alone (any open_clip ViT, the repo's `stp-tiny`,
a bundle manifest), needs no weights and no torch for the arithmetic, and names every term, so a number
in a report can be traced to a line here. `torch.utils.flop_counter.FlopCounterMode` checks it.

Convention (the paper's, fvcore-style tables' and DEPLOY-NOTES.md's): only contractions are counted,
as multiply-accumulates (MACs); FLOPs = 2 x MACs; bias adds are not counted.
- Encoder, per crop: the patch-embedding convolution, the QKV and output projections, the attention
  products Q K^T and A V, the MLP (both linears), the final projection of the pooled token.
- Head: the SA2 weighted sum (softmax(top-K) x K windows), the adapter's distance attention (a depthwise
  band convolution of radius R, plus the same band over the padding mask for the normaliser), the adapter
  FFN, the C-branch linear and the A-branch similarity with the (1 + C) prompt embeddings.
- Localization: the scale-B crops through the encoder and the window-query similarities.
- Not counted (elementwise or reductions without weights, O(elements) against O(elements x width)):
  LayerNorm, softmax, GELU / QuickGELU, sigmoid, residual and positional adds, attention scaling, the L2 and
  motion norms, top-k / sort, pooling, resizing, heat-map placement, fusion and box extraction.
With it ViT-B/16 at 224 x 224 is 17.56 GMAC = 35.13 GFLOP per crop with 86.19 M parameters (image tower
including its projection), the figures DEPLOY-NOTES.md records. (fvcore's default handles also count
LayerNorm and similar ops, which is why tables made with it can show a slightly larger ViT-B/16.)

Parameters are the weights a stage reads: counted from the modules (sum of numel) when a model is given,
from the shape otherwise (`VitShape.params`, equal to the module count; tested). The encoder's weights
serve the per-frame encoding and localization alike, so stage parameters must not be added across stages.
Constants are the fixed floats a bundle ships instead of running the text encoder (the (1 + C) x D prompt
matrix, the query bank); they are neither parameters nor per-snippet work.

The head is counted as implemented: the distance attention is an exact band (model/adapter.py), so its
cost per snippet does not depend on T (SPEC.md's dense T x T form would cost T x D MACs per snippet).

FlopCounterMode counts with the same convention (2 x MAC for mm, addmm, bmm, convolution and the SDPA
kernels it knows), but it has no formula for the eval-mode nn.MultiheadAttention fast path
(`_native_multi_head_attention`: projections and attention all vanish) nor for CPU's fused SDPA kernel
(attention vanishes). `counted_flops` switches the fast path off and forces the math SDPA backend, so
attention decomposes into counted matmuls; the encoder's counted and analytic FLOPs then agree exactly. The
head's SA2 weighted sum is written as multiply + sum, which the counter does not see: the counted head is
lower by exactly T x K x D MACs, reported as `CrossCheck.uncounted_flops`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..model.config import HeadConfig
from ..windows import SCALE_A, SCALE_B, crops_per_frame

if TYPE_CHECKING:
    from typing import TypeAlias

    import torch

    from ..clip.loader import LoadedClip

    # Anything `vit_shape` understands: a shape, an open_clip architecture or ClipSpec string ("ViT-B-16",
    # "ViT-B-16:openai", "stp-tiny"), an open_clip model config (or its vision_cfg with "embed_dim"), a
    # LoadedClip, an open_clip CLIP or its VisionTransformer.
    EncoderLike: TypeAlias = "VitShape | str | Mapping[str, Any] | LoadedClip | torch.nn.Module"

_UNSUPPORTED_VISION_KEYS = (
    "timm_model_name",
    "attentional_pool",
    "qk_norm",
    "scaled_cosine_attn",
    "scale_heads",
    "scale_attn_inner",
    "scale_attn",
    "scale_fc",
)


@dataclass(frozen=True)
class StageCost:
    """Cost of one pipeline stage for one unit of work (`per`): MACs, FLOPs = 2 x MACs, parameters read."""

    name: str
    per: str  # "crop", "sampled frame", "snippet", "alarm frame", or "T snippets"
    macs: int
    params: int
    parts: Mapping[str, int] = field(default_factory=dict)  # MACs by term; they sum to `macs`
    constants: int = 0  # fixed floats shipped with the bundle (prompt matrix, query bank)
    params_source: str = "analytic"  # "analytic" (from the shape) or "modules" (sum of numel)
    flops: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "flops", 2 * int(self.macs))

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    def times(self, n: int, per: str, name: str | None = None) -> StageCost:
        """The same stage run `n` times per larger unit (e.g. 50 crops per sampled frame); parameters unchanged."""
        parts = {k: n * v for k, v in self.parts.items()}
        return replace(self, name=name or self.name, per=per, macs=n * self.macs, parts=parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "per": self.per,
            "macs": self.macs,
            "flops": self.flops,
            "gmacs": self.gmacs,
            "gflops": self.gflops,
            "params": self.params,
            "mparams": self.params / 1e6,
            "params_source": self.params_source,
            "constants": self.constants,
            "parts": dict(self.parts),
        }


# ----------------------------------------------------------------------------------------------- encoder
@dataclass(frozen=True)
class VitShape:
    """What the counts of an open_clip ViT image tower depend on (class token, 'tok' or 'avg' pooling)."""

    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    width: int
    layers: int
    heads: int
    mlp_width: int
    output_dim: int  # 0 when the tower has no final projection (features are `width` wide)
    in_chans: int = 3
    ln_pre: bool = True
    layer_scale: bool = False

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by {self.heads} heads")

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per side (open_clip's strided convolution drops a remainder)."""
        return self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1]

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1] + 1  # patches + class token

    @property
    def feature_dim(self) -> int:
        return self.output_dim or self.width

    def mac_parts(self) -> dict[str, int]:
        """MACs per crop by term (see the module docstring for what is and is not counted)."""
        n, w, layers = self.tokens, self.width, self.layers
        patches = self.grid[0] * self.grid[1]
        return {
            "patch_embed": patches * w * self.in_chans * self.patch_size[0] * self.patch_size[1],
            "qkv_proj": layers * n * w * 3 * w,
            "attn_scores": layers * n * n * w,  # Q K^T: heads x (n x head_dim x n)
            "attn_values": layers * n * n * w,  # A V
            "attn_out_proj": layers * n * w * w,
            "mlp": layers * 2 * n * w * self.mlp_width,
            "projection": w * self.output_dim,  # the pooled token only
        }

    def macs(self) -> int:
        return sum(self.mac_parts().values())

    def params(self) -> int:
        """Parameters of open_clip's VisionTransformer with this shape (LayerNorms with weight and bias)."""
        w, m = self.width, self.mlp_width
        block = 2 * w + (3 * w * w + 3 * w) + (w * w + w) + 2 * w + (w * m + m) + (m * w + w)
        block += 2 * w if self.layer_scale else 0
        stem = w * self.in_chans * self.patch_size[0] * self.patch_size[1] + w + self.tokens * w
        stem += 2 * w if self.ln_pre else 0
        return stem + self.layers * block + 2 * w + w * self.output_dim

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> VitShape:
        """From an open_clip model config ({"embed_dim", "vision_cfg"}) or a vision_cfg carrying "embed_dim"."""
        vision = cfg.get("vision_cfg", cfg)
        output_dim = cfg.get("embed_dim", vision.get("embed_dim", vision.get("output_dim")))
        if output_dim is None:
            raise ValueError("the config names no output dimension (embed_dim)")
        bad = [k for k in _UNSUPPORTED_VISION_KEYS if vision.get(k)]
        if isinstance(vision.get("layers", 12), (list, tuple)):
            bad.append("layers (a ResNet tower)")
        if vision.get("pool_type", "tok") not in ("tok", "avg"):
            bad.append(f"pool_type={vision['pool_type']}")
        if bad:
            raise ValueError(f"the analytic count covers plain open_clip ViTs; this config sets {', '.join(bad)}")
        width = int(vision.get("width", 768))
        return cls(
            image_size=_pair(vision.get("image_size", 224)),
            patch_size=_pair(vision.get("patch_size", 16)),
            width=width,
            layers=int(vision.get("layers", 12)),
            heads=width // int(vision.get("head_width", 64)),
            mlp_width=int(width * float(vision.get("mlp_ratio", 4.0))),
            output_dim=int(output_dim),
            ln_pre=not vision.get("no_ln_pre", False),
            layer_scale=vision.get("ls_init_value") is not None,
        )

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> VitShape:
        """From an open_clip CLIP (its `.visual`) or VisionTransformer, by reading its layers."""
        from torch import nn

        visual = getattr(module, "visual", module)
        if not all(hasattr(visual, a) for a in ("conv1", "transformer", "class_embedding", "positional_embedding")):
            raise ValueError(f"{type(visual).__name__} is not an open_clip VisionTransformer")
        block = visual.transformer.resblocks[0]
        if getattr(visual, "attn_pool", None) is not None or not isinstance(block.attn, nn.MultiheadAttention):
            raise ValueError("the analytic count covers plain open_clip ViTs (no attentional pooler, no custom blocks)")
        if getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
            raise ValueError(f"pool_type {visual.pool_type!r} is not covered by the analytic count")
        conv = visual.conv1
        return cls(
            image_size=_pair(visual.image_size),
            patch_size=_pair(conv.kernel_size),
            width=int(visual.transformer.width),
            layers=int(visual.transformer.layers),
            heads=int(block.attn.num_heads),
            mlp_width=int(block.mlp.c_fc.out_features),
            output_dim=int(visual.proj.shape[1]) if visual.proj is not None else 0,
            in_chans=int(conv.in_channels),
            ln_pre=not isinstance(visual.ln_pre, nn.Identity),
            layer_scale=not isinstance(block.ls_1, nn.Identity),
        )

    @classmethod
    def named(cls, name: str) -> VitShape:
        """From an open_clip architecture or a ClipSpec string: reads the config only, loads no weights."""
        arch = name.strip().partition(":")[0]
        return cls.from_config(_open_clip_config(arch))


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


def _open_clip_config(arch: str) -> dict[str, Any]:
    from ..clip.loader import register_configs

    register_configs()
    import open_clip

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise UserError(f"unknown CLIP architecture {arch!r}; open_clip knows e.g. ViT-B-16, ViT-L-14, stp-tiny")
    return cfg


def _module(obj: Any) -> torch.nn.Module | None:
    """The torch module inside `obj` (a LoadedClip's model, or the module itself), else None."""
    model = getattr(obj, "model", obj)
    try:
        from torch import nn
    except ImportError:  # a torch-free install can only hold shapes, names and configs
        return None
    return model if isinstance(model, nn.Module) else None


def vit_shape(obj: EncoderLike) -> VitShape:
    """The ViT shape of anything `EncoderLike`."""
    if isinstance(obj, VitShape):
        return obj
    if isinstance(obj, str):
        return VitShape.named(obj)
    if isinstance(obj, Mapping):
        return VitShape.from_config(obj)
    module = _module(obj)
    if module is None:
        raise TypeError(f"cannot read a ViT shape from {type(obj).__name__}")
    return VitShape.from_module(module)


def module_params(module: torch.nn.Module) -> int:
    """Parameters of a module's image tower (`.visual` when it is a whole CLIP): sum of numel."""
    visual = getattr(module, "visual", module)
    return sum(p.numel() for p in visual.parameters())


def meta_image_tower(arch: str) -> torch.nn.Module:
    """An open_clip image tower on the meta device: real modules and shapes, no memory, no weights, no download.

    Lets ViT-B/16's parameters be counted from its modules and its FLOPs by FlopCounterMode in about a second.
    """
    import torch

    name = arch.strip().partition(":")[0]
    _open_clip_config(name)  # registers stp-tiny, names an unknown architecture clearly
    import open_clip

    quiet = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip's "no pretrained weights loaded" notice
    try:
        with torch.device("meta"):
            model = open_clip.create_model(name, pretrained=None, device="meta")
    finally:
        logging.disable(quiet)
    return model.visual.eval()


def encoder_flops(clip_or_config: EncoderLike) -> StageCost:
    """Image encoder cost per crop (one 224 x 224 window or frame for ViT-B-16)."""
    shape = vit_shape(clip_or_config)
    module = None if isinstance(clip_or_config, (VitShape, str, Mapping)) else _module(clip_or_config)
    return StageCost(
        name="encoder",
        per="crop",
        macs=shape.macs(),
        params=module_params(module) if module is not None else shape.params(),
        parts=shape.mac_parts(),
        params_source="modules" if module is not None else "analytic",
    )


def frame_flops(clip_or_config: EncoderLike | StageCost, crops: int | None = None) -> StageCost:
    """Encoder cost per sampled frame: `crops` passes (default 1 + 49, windows.crops_per_frame())."""
    per_crop = clip_or_config if isinstance(clip_or_config, StageCost) else encoder_flops(clip_or_config)
    return per_crop.times(crops_per_frame() if crops is None else crops, per="sampled frame")


# -------------------------------------------------------------------------------------------------- head
def _layer_kinds(cfg: HeadConfig) -> tuple[int, int]:
    """(self-attention layers, distance layers) of the temporal variant (paper Table 6)."""
    if not cfg.use_adapter:
        return 0, 0
    if cfg.temporal == "transformer":
        return cfg.layers, 0
    if cfg.temporal == "transformer+distance":  # layer 1 self-attention, the others distance
        return 1, cfg.layers - 1
    return 0, cfg.layers


def _spatial_windows(cfg: HeadConfig) -> int:
    """Windows the spatial variant (paper Table 5) sums per snippet: the top-K or all 49, none without x_AS."""
    return {"sa2": cfg.topk_windows, "selection-average": cfg.topk_windows, "attention": SCALE_A.count,
            "average": SCALE_A.count}.get(cfg.spatial or ("sa2" if cfg.use_sa2 else "none"), 0)  # fmt: skip


def head_mac_parts(cfg: HeadConfig, t: int = 1) -> dict[str, int]:
    """MACs of STPromptHead over `t` snippets, by term: linear in t, but for self-attention layers (the
    `transformer` variants: projections per snippet, scores and weighted sums over all t x t pairs)."""
    d, c1 = cfg.dim, cfg.n_classes
    attention_layers, band_layers = _layer_kinds(cfg)
    band = 2 * cfg.radius + 1
    return {
        "spatial_weighted_sum": t * _spatial_windows(cfg) * d,
        "adapter_band_attention": band_layers * t * band * (d + 1),  # depthwise band over x (d) and over the mask
        "adapter_self_attention": attention_layers * (t * 4 * d * d + 2 * t * t * d),  # Q, K, V, out; QK^T and AV
        "adapter_ffn": (attention_layers + band_layers) * t * 2 * d * 4 * d,
        "c_branch": t * d,
        "a_branch_similarity": t * d * c1,
    }


def head_params(cfg: HeadConfig) -> int:
    """Trainable head parameters (adapter LayerNorms and FFN, self-attention projections, C-branch); prompts are
    shipped as constants."""
    d = cfg.dim
    layer = 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * d
    attention_layers, band_layers = _layer_kinds(cfg)
    return (attention_layers + band_layers) * layer + attention_layers * (4 * d * d + 4 * d) + d + 1


def head_flops(cfg: HeadConfig, t: int = 1) -> StageCost:
    """Temporal head cost for a sequence of `t` snippets (SA2 + adapter + C-branch + A-branch)."""
    if t < 1:
        raise ValueError(f"t must be at least 1, got {t}")
    return StageCost(
        name="head",
        per="snippet" if t == 1 else f"{t} snippets",
        macs=sum(head_mac_parts(cfg, t).values()),
        params=head_params(cfg),
        parts=head_mac_parts(cfg, t),
        constants=cfg.n_classes * cfg.dim,  # the (1 + C) x D prompt matrix
    )


# ---------------------------------------------------------------------------------------------- localize
def default_n_queries(classes: list[str]) -> int:
    """Size of the default query bank for a model's classes (normal first); 39 for UCF-Crime's 1 + 13."""
    from ..localize.queries import default_bank

    normal, abnormal = default_bank().texts_for(list(classes))
    return len(normal) + len(abnormal)


def localization_flops(clip_or_config: EncoderLike, n_queries: int, scale_b: bool = True) -> StageCost:
    """Localization cost per alarm frame: scale-B crops through the encoder + window-query similarities.

    Scale-A window features are reused from detection, so only their similarities are new work.
    """
    if n_queries < 1:
        raise ValueError(f"n_queries must be at least 1, got {n_queries}")
    enc = encoder_flops(clip_or_config)
    dim = vit_shape(clip_or_config).feature_dim
    crops = SCALE_B.count if scale_b else 0
    windows = SCALE_A.count + crops
    parts = {"encoder_scale_b": crops * enc.macs, "heat_similarity": windows * dim * n_queries}
    return StageCost(
        name="localization",
        per="alarm frame",
        macs=sum(parts.values()),
        params=enc.params,
        parts=parts,
        constants=n_queries * dim,
        params_source=enc.params_source,
    )


def pipeline_costs(
    clip: EncoderLike, head_config: HeadConfig, n_queries: int, crops: int | None = None
) -> list[StageCost]:
    """Table 7 rows: encoder per crop and per sampled frame, head per snippet, detection (the two) per snippet,
    localization per alarm frame. `crops` overrides the 1 + 49 crops per sampled frame (e.g. motion gating)."""
    enc = encoder_flops(clip)
    dim = vit_shape(clip).feature_dim
    if head_config.dim != dim:
        raise ValueError(f"head dim {head_config.dim} does not match the encoder's feature dim {dim}")
    frame = frame_flops(enc, crops)
    head = head_flops(head_config)
    detection = StageCost(
        name="detection",
        per="snippet",
        macs=frame.macs + head.macs,
        params=enc.params + head.params,
        parts={"encoder": frame.macs, "head": head.macs},
        constants=head.constants,
        params_source=enc.params_source,
    )
    return [enc, frame, head, detection, localization_flops(clip, n_queries)]


# ---------------------------------------------------------------------------------------- cross-checks
def counted_flops(module: torch.nn.Module, example_input: torch.Tensor | tuple[Any, ...]) -> int:
    """FLOPs FlopCounterMode counts for one `module(*example_input)` call (2 x MAC of mm/bmm/conv/SDPA).

    The MHA fast path is switched off and the math SDPA backend forced for the call, so that attention is
    decomposed into matmuls the counter has formulas for (it has none for the fused kernels). The fast-path
    switch is process-global: do not count while another thread runs attention.
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    args = example_input if isinstance(example_input, tuple) else (example_input,)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            module(*args)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class CrossCheck:
    """Analytic against counted FLOPs of one stage."""

    stage: str
    analytic_flops: int
    counted_flops: int
    uncounted_flops: int  # analytic FLOPs in ops the counter has no formula for (known by construction)
    note: str = ""

    @property
    def rel_diff(self) -> float:
        """(counted - analytic) / analytic."""
        return (self.counted_flops - self.analytic_flops) / self.analytic_flops

    @property
    def unexplained_flops(self) -> int:
        """What the known blind spots do not explain; 0 when both counts agree term by term."""
        return self.counted_flops - (self.analytic_flops - self.uncounted_flops)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "analytic_flops": self.analytic_flops,
            "counted_flops": self.counted_flops,
            "rel_diff": self.rel_diff,
            "uncounted_flops": self.uncounted_flops,
            "unexplained_flops": self.unexplained_flops,
            "note": self.note,
        }


def encoder_crosscheck(clip: LoadedClip | torch.nn.Module | str, batch: int = 1) -> CrossCheck:
    """Encoder FLOPs for `batch` crops: analytic vs FlopCounterMode. A string builds the tower on the meta
    device (ViT-B-16 in a second, no weights)."""
    import torch

    module = meta_image_tower(clip) if isinstance(clip, str) else _module(clip)
    if module is None:
        raise TypeError(f"cannot count FLOPs of {type(clip).__name__}")
    module = getattr(module, "visual", module)
    shape = VitShape.from_module(module)
    p = next(module.parameters())
    x = torch.zeros((batch, shape.in_chans, *shape.image_size), dtype=p.dtype, device=p.device)
    return CrossCheck(
        stage="encoder",
        analytic_flops=batch * 2 * shape.macs(),
        counted_flops=counted_flops(module, x),
        uncounted_flops=0,
        note="attention decomposed (MHA fast path off, math SDPA); norms, softmax and GELU excluded by both",
    )


def head_crosscheck(cfg: HeadConfig, t: int = 32, seed: int = 0) -> CrossCheck:
    """Head FLOPs over `t` snippets (random weights and inputs): analytic vs FlopCounterMode."""
    import torch

    from ..model.head import STPromptHead

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = STPromptHead(cfg).eval()
    d = cfg.dim
    args = (
        torch.randn(1, t, d, generator=gen),
        torch.randn(1, t, SCALE_A.grid, SCALE_A.grid, d, generator=gen),
        torch.ones(1, t),
        torch.randn(cfg.n_classes, d, generator=gen),
    )
    parts = head_mac_parts(cfg, t)
    return CrossCheck(
        stage="head",
        analytic_flops=2 * sum(parts.values()),
        counted_flops=counted_flops(head, args),
        uncounted_flops=2 * parts["spatial_weighted_sum"],
        note="the spatial weighted sum (SA2's, or a Table 5 variant's) is a multiply + sum, which FlopCounterMode "
        "does not count",
    )


__all__ = [
    "CrossCheck",
    "StageCost",
    "VitShape",
    "counted_flops",
    "default_n_queries",
    "encoder_crosscheck",
    "encoder_flops",
    "frame_flops",
    "head_crosscheck",
    "head_flops",
    "head_mac_parts",
    "head_params",
    "localization_flops",
    "meta_image_tower",
    "module_params",
    "pipeline_costs",
    "vit_shape",
]
