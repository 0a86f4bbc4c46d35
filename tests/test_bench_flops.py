"""FLOPs and parameters per stage: analytic counts against published figures, the modules and FlopCounterMode."""

from __future__ import annotations

import pytest

from stprompt.bench.flops import (
    StageCost,
    VitShape,
    counted_flops,
    default_n_queries,
    encoder_crosscheck,
    encoder_flops,
    frame_flops,
    head_crosscheck,
    head_flops,
    head_params,
    localization_flops,
    meta_image_tower,
    module_params,
    pipeline_costs,
    vit_shape,
)
from stprompt.errors import UserError
from stprompt.model.config import HeadConfig
from stprompt.windows import SCALE_A, SCALE_B, crops_per_frame

VIT_B16_PARAMS = 86_192_640  # open_clip ViT-B-16 image tower incl. its 768 x 512 projection


def test_vit_b16_per_crop_matches_the_published_figure():
    enc = encoder_flops("ViT-B-16")  # config only: no weights, no download
    assert (enc.name, enc.per, enc.params_source) == ("encoder", "crop", "analytic")
    assert round(enc.gmacs, 2) == 17.56
    assert round(enc.gflops, 2) == 35.13
    assert enc.flops == 2 * enc.macs == 2 * sum(enc.parts.values())
    assert enc.params == VIT_B16_PARAMS
    assert vit_shape("ViT-B-16:openai") == vit_shape("ViT-B-16")  # a ClipSpec names the same shape


def test_vit_b16_modules_and_flop_counter_agree_with_the_analytic_count():
    tower = meta_image_tower("ViT-B-16")  # real modules on the meta device: no memory, no weights
    assert VitShape.from_module(tower) == VitShape.named("ViT-B-16")
    assert module_params(tower) == VIT_B16_PARAMS
    check = encoder_crosscheck("ViT-B-16")
    assert check.counted_flops == check.analytic_flops == encoder_flops("ViT-B-16").flops
    assert check.rel_diff == 0.0


def test_tiny_encoder_counted_equals_analytic(tiny_clip):
    shape = vit_shape(tiny_clip)
    assert shape == VitShape.named("stp-tiny")  # the module and the registered config agree
    enc = encoder_flops(tiny_clip)
    assert enc.params_source == "modules"
    assert enc.params == shape.params() == module_params(tiny_clip.model)
    # Attention decomposed, both counts take exactly the same matmuls: no difference at all, any batch.
    for batch in (1, 3):
        check = encoder_crosscheck(tiny_clip, batch=batch)
        assert check.analytic_flops == batch * enc.flops
        assert check.counted_flops == check.analytic_flops
        assert check.unexplained_flops == 0
    assert 0 < enc.parts["attn_scores"] == enc.parts["attn_values"]  # the terms the fused kernels would hide


def test_counted_flops_restores_the_attention_fast_path(tiny_clip):
    import torch

    before = torch.backends.mha.get_fastpath_enabled()
    counted_flops(tiny_clip.model.visual, torch.zeros(1, 3, 224, 224))
    assert torch.backends.mha.get_fastpath_enabled() == before


def test_per_sampled_frame_is_crops_per_frame_times_per_crop():
    assert crops_per_frame() == 1 + SCALE_A.count == 50
    enc = encoder_flops("ViT-B-16")
    frame = frame_flops(enc)
    assert frame.per == "sampled frame"
    assert frame.macs == 50 * enc.macs and frame.flops == 50 * enc.flops
    assert frame.params == enc.params  # the same weights, run 50 times
    assert frame.parts == {k: 50 * v for k, v in enc.parts.items()}
    assert frame_flops("ViT-B-16") == frame
    assert frame_flops(enc, crops=20).macs == 20 * enc.macs  # e.g. after motion gating


def test_head_cost_is_linear_in_t_and_its_params_match_the_module():
    import torch

    from stprompt.model.head import STPromptHead

    cfg = HeadConfig(dim=512, n_classes=14)
    one = head_flops(cfg)
    assert one.per == "snippet"
    for t in (2, 7, 300):
        assert head_flops(cfg, t).macs == t * one.macs  # the band attention makes every term per snippet
    # SA2 (12 x 512) + 2 layers x (band 41 x 513 + FFN 8 x 512^2) + C-branch 512 + A-branch 14 x 512
    assert one.macs == 12 * 512 + 2 * (41 * 513 + 8 * 512**2) + 512 + 14 * 512
    assert one.constants == 14 * 512
    with torch.random.fork_rng(devices=[]):
        assert one.params == head_params(cfg) == sum(p.numel() for p in STPromptHead(cfg).parameters())
        for temporal in ("transformer", "transformer+distance", "none"):  # Table 6: Q/K/V/out projections counted
            variant = HeadConfig(dim=64, n_classes=3, temporal=temporal)
            assert head_params(variant) == sum(p.numel() for p in STPromptHead(variant).parameters())
    with pytest.raises(ValueError):
        head_flops(cfg, 0)


@pytest.mark.parametrize(
    "cfg",
    [
        HeadConfig(dim=64, n_classes=3),
        HeadConfig(dim=512, n_classes=14),
        HeadConfig(dim=64, n_classes=3, sigma=2.5, layers=1, topk_windows=5),
        HeadConfig(dim=64, n_classes=2, use_sa2=False, use_adapter=False),
        HeadConfig(dim=64, n_classes=3, spatial="average"),
        HeadConfig(dim=64, n_classes=3, spatial="attention"),
        HeadConfig(dim=64, n_classes=3, spatial="selection-average"),
        HeadConfig(dim=64, n_classes=3, temporal="transformer"),
        HeadConfig(dim=64, n_classes=3, temporal="transformer+distance"),
    ],
)
def test_head_counted_matches_analytic_up_to_the_sa2_weighted_sum(cfg):
    """FlopCounterMode sees the band convolutions, FFN and both branches exactly; SA2's weighted sum is a
    multiply + sum it does not count, so the counted head is lower by exactly T x K x D MACs (~1% at D = 64,
    0.14% at D = 512)."""
    t = 24
    check = head_crosscheck(cfg, t=t)
    assert check.analytic_flops == head_flops(cfg, t).flops
    windows = {"sa2": cfg.topk_windows, "selection-average": cfg.topk_windows, "attention": 49, "average": 49}
    assert check.uncounted_flops == 2 * t * windows.get(cfg.spatial, 0) * cfg.dim
    assert check.unexplained_flops == 0
    assert abs(check.rel_diff) < 0.05
    if cfg.temporal in ("distance", "none"):  # self-attention's scores grow with T x T
        assert head_crosscheck(cfg, t=2 * t).counted_flops == 2 * check.counted_flops  # counted is linear in T too


def test_localization_is_scale_b_crops_plus_heat(tiny_clip):
    for clip, dim in (("ViT-B-16", 512), (tiny_clip, tiny_clip.dim)):
        enc = encoder_flops(clip)
        loc = localization_flops(clip, n_queries=39)
        assert (loc.name, loc.per) == ("localization", "alarm frame")
        assert SCALE_B.count == 16
        assert loc.parts["encoder_scale_b"] == 16 * enc.macs
        assert loc.parts["heat_similarity"] == (49 + 16) * dim * 39  # scale-A features are reused
        assert loc.macs == 16 * enc.macs + 65 * dim * 39
        assert loc.params == enc.params and loc.constants == 39 * dim
        only_a = localization_flops(clip, n_queries=39, scale_b=False)
        assert only_a.macs == 49 * dim * 39
    with pytest.raises(ValueError):
        localization_flops("ViT-B-16", n_queries=0)


def test_default_query_bank_size():
    from stprompt.data.importers import UCF_CRIME_CLASSES

    # 13 normal backgrounds + per class its phrase and one paraphrase
    assert default_n_queries(["normal", *UCF_CRIME_CLASSES]) == 13 + 2 * 13
    assert default_n_queries(["normal", "Fighting"]) == 15


def test_pipeline_costs_table(tiny_clip):
    cfg = HeadConfig(dim=512, n_classes=14)
    rows = pipeline_costs("ViT-B-16", cfg, n_queries=39)
    assert [(r.name, r.per) for r in rows] == [
        ("encoder", "crop"),
        ("encoder", "sampled frame"),
        ("head", "snippet"),
        ("detection", "snippet"),
        ("localization", "alarm frame"),
    ]
    enc, frame, head, detection, loc = rows
    assert frame.macs == 50 * enc.macs
    assert detection.macs == frame.macs + head.macs and detection.params == enc.params + head.params
    assert loc == localization_flops("ViT-B-16", 39)
    d = detection.as_dict()
    assert d["flops"] == 2 * d["macs"] and d["gflops"] == pytest.approx(d["flops"] / 1e9)
    assert set(d) >= {"name", "per", "macs", "flops", "gmacs", "gflops", "params", "mparams", "parts"}
    with pytest.raises(ValueError, match="dim"):
        pipeline_costs(tiny_clip, cfg, n_queries=39)  # stp-tiny features are 64 wide
    tiny_rows = pipeline_costs(tiny_clip, HeadConfig(dim=tiny_clip.dim, n_classes=3), n_queries=15)
    assert tiny_rows[0].params_source == "modules"


def test_stage_cost_flops_are_derived():
    s = StageCost("x", "crop", macs=5, params=1)
    assert s.flops == 10
    assert s.times(3, per="frame").flops == 30


def test_unsupported_or_unknown_towers_are_refused():
    with pytest.raises(ValueError, match="timm_model_name"):
        VitShape.from_config({"embed_dim": 512, "vision_cfg": {"timm_model_name": "vit_base_patch16_224"}})
    with pytest.raises(ValueError, match="ResNet"):
        VitShape.from_config({"embed_dim": 1024, "vision_cfg": {"layers": [3, 4, 6, 3], "width": 64}})
    with pytest.raises(ValueError, match="embed_dim"):
        VitShape.from_config({"width": 768})
    with pytest.raises(UserError, match="unknown CLIP architecture"):
        encoder_flops("no-such-arch")
