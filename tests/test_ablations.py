"""The paper's Table 5 / 6 ablation switches (SPEC.md "Ablation switches").

Spatial variants against a hand reference; the Numba kernel against PyTorch for each; every streamable variant
exported and streamed the way the runtime streams it, equal to the offline head; the transformer variants
refused by stp-export in one line (their attention is not banded); old checkpoints load to the default.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import make_checkpoint

from stprompt.kernels.sa2 import SPATIAL as KERNEL_SPATIAL
from stprompt.kernels.sa2 import sa2_reference, sa2_sequence, sa2_step
from stprompt.model.config import SPATIAL, TEMPORAL, HeadConfig
from stprompt.model.head import STPromptHead
from stprompt.model.sa2 import spatial_aggregate
from stprompt.runtime.stream import StreamingFeatureHead, StreamingHead

TOL = {"rtol": 1e-5, "atol": 1e-6}


def hand_spatial(x: np.ndarray, k: int, spatial: str) -> np.ndarray:
    """SPEC.md's definitions written out with loops over snippets and windows (replicate padding at the ends)."""
    t, w, d = x.shape
    out = np.zeros((t, d))
    for i in range(t):
        prev, nxt = x[max(i - 1, 0)], x[min(i + 1, t - 1)]
        mo = [math.sqrt(sum((2.0 * x[i, j, c] - prev[j, c] - nxt[j, c]) ** 2 for c in range(d))) for j in range(w)]
        top = sorted(range(w), key=lambda j: (-mo[j], j))[:k]  # ties: lowest window index first
        if spatial == "none":
            weights = {}
        elif spatial == "average":
            weights = {j: 1.0 / w for j in range(w)}
        elif spatial == "attention":
            z = sum(math.exp(m) for m in mo)
            weights = {j: math.exp(mo[j]) / z for j in range(w)}
        elif spatial == "selection-average":
            weights = {j: 1.0 / k for j in top}
        else:
            z = sum(math.exp(mo[j]) for j in top)
            weights = {j: math.exp(mo[j]) / z for j in top}
        for j, a in weights.items():
            out[i] += a * x[i, j]
    return out


def torch_spatial(x: np.ndarray, k: int, spatial: str) -> np.ndarray:
    return spatial_aggregate(torch.from_numpy(np.ascontiguousarray(x, np.float32))[None], None, k, spatial)[0].numpy()


def test_the_kernel_knows_the_same_variants_as_the_model():
    assert KERNEL_SPATIAL == SPATIAL and SPATIAL[-1] == "sa2" and TEMPORAL[-1] == "distance"


def test_every_spatial_variant_on_a_hand_case():
    # snippets 0 and 2 are zero, snippet 1 has window values a = 0.5, 1, 0, 0.25 on channel 0, so for snippet 1
    # Mo = 2 |a| = 1, 2, 0, 0.5 and the top K = 2 are windows 1 (Mo 2) and 0 (Mo 1)
    x = np.zeros((3, 4, 2), np.float32)
    x[1, :, 0] = [0.5, 1.0, 0.0, 0.25]
    a, mo = np.array([0.5, 1.0, 0.0, 0.25]), np.array([1.0, 2.0, 0.0, 0.5])
    soft_all = np.exp(mo) / np.exp(mo).sum()
    expected = {
        "none": 0.0,
        "average": a.mean(),  # 0.4375
        "attention": (soft_all * a).sum(),
        "selection-average": (1.0 + 0.5) / 2,
        "sa2": (math.exp(2) * 1.0 + math.exp(1) * 0.5) / (math.exp(2) + math.exp(1)),
    }
    assert len({round(v, 6) for v in expected.values()}) == 5  # the five variants really differ here
    for spatial, value in expected.items():
        want = np.zeros((3, 2))
        want[1, 0] = value
        np.testing.assert_allclose(hand_spatial(x, 2, spatial), want, atol=1e-12, err_msg=spatial)
        np.testing.assert_allclose(torch_spatial(x, 2, spatial), want, **TOL, err_msg=spatial)
        np.testing.assert_allclose(sa2_reference(x, 2, spatial), want, **TOL, err_msg=spatial)
        np.testing.assert_allclose(sa2_sequence(x, 2, spatial), want, **TOL, err_msg=spatial)


@pytest.mark.parametrize("spatial", SPATIAL)
def test_spatial_variants_match_the_loop_reference_on_random_input(spatial):
    x = np.random.default_rng(5).standard_normal((4, 49, 3)).astype(np.float32)
    want = hand_spatial(x.astype(np.float64), 12, spatial)
    np.testing.assert_allclose(torch_spatial(x, 12, spatial), want, **TOL)
    np.testing.assert_allclose(sa2_reference(x, 12, spatial), want, **TOL)


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("t", [1, 2, 17])
def test_kernel_equals_torch_for_every_variant(spatial, t):
    x = np.random.default_rng(t).standard_normal((t, 49, 16)).astype(np.float32)
    seq = sa2_sequence(x, 12, spatial)
    np.testing.assert_allclose(seq, torch_spatial(x, 12, spatial), **TOL)
    np.testing.assert_allclose(seq, sa2_reference(x, 12, spatial), **TOL)
    for i in range(t):
        step = sa2_step(x[max(i - 1, 0)], x[i], x[min(i + 1, t - 1)], 12, spatial=spatial)
        np.testing.assert_array_equal(step, seq[i])


def test_selection_average_ties_keep_the_lowest_windows_in_kernel_and_torch():
    x = np.repeat(np.arange(49, dtype=np.float32).reshape(1, 49, 1), 3, axis=0)  # static: every Mo is 0
    want = np.full((3, 1), sum(range(12)) / 12)
    np.testing.assert_allclose(sa2_sequence(x, 12, "selection-average"), want, **TOL)
    np.testing.assert_allclose(torch_spatial(x, 12, "selection-average"), want, **TOL)


# --- configuration -------------------------------------------------------------------------------------------------


def test_old_flags_are_aliases_and_contradictions_are_refused():
    assert (HeadConfig(dim=8, n_classes=2).spatial, HeadConfig(dim=8, n_classes=2).temporal) == ("sa2", "distance")
    off = HeadConfig(dim=8, n_classes=2, use_sa2=False, use_adapter=False)
    assert (off.spatial, off.temporal) == ("none", "none")
    avg = HeadConfig(dim=8, n_classes=2, spatial="average", temporal="transformer")
    assert avg.use_sa2 is False and avg.use_adapter is True  # use_sa2: x_AS is SA2's (the runtime's kernel rule)
    for bad in ({"use_sa2": True, "spatial": "average"}, {"use_adapter": False, "temporal": "distance"},
                {"spatial": "max"}, {"temporal": "lstm"}, {"temporal": "transformer", "attn_heads": 3}):  # fmt: skip
        with pytest.raises(ValueError):
            HeadConfig(dim=8, n_classes=2, **bad)


@pytest.mark.parametrize(
    "spatial,temporal,lookahead",
    [("sa2", "distance", 41), ("none", "distance", 40), ("average", "distance", 40), ("attention", "distance", 41),
     ("selection-average", "distance", 41), ("sa2", "none", 1), ("average", "none", 0)],
)  # fmt: skip
def test_exact_lookahead_counts_motion_only_where_a_variant_uses_it(spatial, temporal, lookahead):
    cfg = HeadConfig(dim=8, n_classes=2, spatial=spatial, temporal=temporal)
    assert cfg.streaming_problem is None and cfg.exact_lookahead == lookahead


def test_old_checkpoint_dicts_load_to_the_default_with_identical_scores(tiny_clip, tmp_path):
    from stprompt.checkpoint import load_checkpoint

    new = make_checkpoint(tiny_clip, tmp_path / "new.pt")
    doc = torch.load(new, weights_only=True)
    for key in ("spatial", "temporal", "attn_heads"):
        del doc["config"][key]  # a checkpoint written before the switches existed
    torch.save(doc, tmp_path / "old.pt")
    old_ckpt, new_ckpt = load_checkpoint(tmp_path / "old.pt"), load_checkpoint(new)
    assert old_ckpt.config == new_ckpt.config == HeadConfig(dim=tiny_clip.dim, n_classes=3)
    rng = np.random.default_rng(0)
    x_clip = torch.from_numpy(rng.standard_normal((1, 30, tiny_clip.dim), np.float32))
    x_patch = torch.from_numpy(rng.standard_normal((1, 30, 49, tiny_clip.dim), np.float32))
    with torch.no_grad():
        a = old_ckpt.build_head()(x_clip, x_patch, torch.ones(1, 30), old_ckpt.prompt_features)
        b = new_ckpt.build_head()(x_clip, x_patch, torch.ones(1, 30), new_ckpt.prompt_features)
    torch.testing.assert_close(a.probs, b.probs, rtol=0, atol=0)
    old_off = HeadConfig.from_dict({k: v for k, v in doc["config"].items()} | {"use_sa2": False, "use_adapter": False})
    assert (old_off.spatial, old_off.temporal, old_off.exact_lookahead) == ("none", "none", 0)


# --- temporal variants ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temporal", ["transformer", "transformer+distance"])
def test_transformer_variants_mask_padding_and_see_the_whole_video(temporal):
    torch.manual_seed(0)
    d = 16
    head = STPromptHead(HeadConfig(dim=d, n_classes=3, sigma=0.5, temporal=temporal)).eval()
    kinds = [type(layer).__name__ for layer in head.adapter]
    first = "SelfAttentionAdapterLayer"
    assert kinds == ([first, first] if temporal == "transformer" else [first, "DistanceAdapterLayer"])
    prompts = torch.randn(3, d)
    x_clip, x_patch = torch.randn(1, 60, d), torch.randn(1, 60, 49, d)
    padded_clip = torch.cat([x_clip, torch.full((1, 9, d), 50.0)], 1)
    padded_patch = torch.cat([x_patch, torch.full((1, 9, 49, d), -50.0)], 1)
    mask = torch.ones(1, 69)
    mask[0, 60:] = 0
    with torch.no_grad():
        alone = head(x_clip, x_patch, torch.ones(1, 60), prompts).score[0]
        padded = head(padded_clip, padded_patch, mask, prompts).score[0, :60]
        changed_clip = x_clip.clone()
        changed_clip[0, -1] += 5.0  # the last snippet, 59 snippets (> any band here) after the first
        moved = head(changed_clip, x_patch, torch.ones(1, 60), prompts).score[0]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-6)
    assert abs(float(moved[0] - alone[0])) > 1e-6  # not banded: why no finite lookahead can stream it


def test_distance_adapter_is_banded_where_self_attention_is_not():
    torch.manual_seed(0)
    head = STPromptHead(HeadConfig(dim=16, n_classes=3, sigma=0.5)).eval()  # band radius 10, 2 layers
    x_clip, x_patch, prompts = torch.randn(1, 60, 16), torch.randn(1, 60, 49, 16), torch.randn(3, 16)
    changed = x_clip.clone()
    changed[0, -1] += 5.0
    with torch.no_grad():
        a = head(x_clip, x_patch, torch.ones(1, 60), prompts).score[0, 0]
        b = head(changed, x_patch, torch.ones(1, 60), prompts).score[0, 0]
    assert float(a) == float(b)


@pytest.mark.parametrize("temporal", ["transformer", "transformer+distance"])
def test_stp_export_refuses_transformer_variants_in_one_line(temporal, tiny_clip, tmp_path, capsys):
    from stprompt.checkpoint import load_checkpoint
    from stprompt.errors import UserError
    from stprompt.export import cli

    path = make_variant_checkpoint(tiny_clip, tmp_path / "model.pt", temporal=temporal)
    out = tmp_path / "bundle" / "model"
    assert cli.main(["--ckpt", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stp-export: error: ")
    assert f"temporal modeling {temporal!r}" in err[0] and "not a band" in err[0] and "lookahead" in err[0]
    assert not out.parent.exists()  # nothing written
    with pytest.raises(UserError, match="not a band"):  # the Python API (export_bundle) asks the same question
        _ = load_checkpoint(path).config.exact_lookahead


# --- streaming: every streamable variant, as the runtime streams it ------------------------------------------------


def make_variant_checkpoint(clip, path, **fields):
    """tests/conftest.py's checkpoint with another head config (and random head weights to match)."""
    from stprompt.checkpoint import load_checkpoint

    ckpt = load_checkpoint(make_checkpoint(clip, path))
    cfg = HeadConfig(dim=clip.dim, n_classes=len(ckpt.classes), **fields)
    torch.manual_seed(1)
    dataclasses.replace(ckpt, config=cfg, head_state=STPromptHead(cfg).state_dict()).save(path)
    return path


def head_fn(head: STPromptHead, prompts: torch.Tensor, features: bool):
    """The PyTorch head over one video, as a stream's head function (x_patch or, `features`, x_AS input)."""

    def run(x_clip: np.ndarray, second: np.ndarray) -> dict[str, np.ndarray]:
        xc, xs = torch.from_numpy(x_clip)[None], torch.from_numpy(second)[None]
        with torch.no_grad():
            mask = torch.ones(xc.shape[:2])
            o = head.forward_features(xc, xs, mask, prompts) if features else head(xc, xs, mask, prompts)
        return {"score": o.score[0].numpy(), "score_c": o.score_c[0].numpy(), "probs": o.probs[0].numpy()}

    return run


def stream(s: StreamingHead, x_clip: np.ndarray, x_patch: np.ndarray) -> np.ndarray:
    results = []
    for i in range(len(x_clip)):
        results += s.push(x_clip[i], x_patch[i])
    results += s.flush()
    assert [r.index for r in results] == list(range(len(x_clip)))
    return np.array([r.score for r in results])


def features(t: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((t, d), np.float32), rng.standard_normal((t, 49, d), np.float32)


STREAMABLE = [(s, "distance") for s in SPATIAL] + [("sa2", "none"), ("average", "none")]


@pytest.mark.parametrize("spatial,temporal", STREAMABLE)
@pytest.mark.parametrize("t", [1, 2, 45])
def test_kernel_stream_of_every_variant_reproduces_the_offline_head(spatial, temporal, t):
    """The head after SA2 fed by the variant's kernel, context exact_lookahead - motion_lookahead."""
    torch.manual_seed(0)
    cfg = HeadConfig(dim=16, n_classes=3, sigma=0.5, spatial=spatial, temporal=temporal)
    head, prompts = STPromptHead(cfg).eval(), torch.randn(3, 16)
    x_clip, x_patch = features(t, 16, t)
    offline = head_fn(head, prompts, False)(x_clip, x_patch)["score"]
    context = cfg.exact_lookahead - cfg.motion_lookahead
    s = StreamingFeatureHead(head_fn(head, prompts, True), 16, context, cfg.exact_lookahead, sa2_step,
                             cfg.topk_windows, spatial=spatial)  # fmt: skip
    np.testing.assert_allclose(stream(s, x_clip, x_patch), offline, **TOL)


@pytest.mark.parametrize("spatial,temporal", [("average", "distance"), ("selection-average", "distance"),
                                              ("sa2", "none")])  # fmt: skip
def test_exported_head_of_each_variant_streams_like_the_offline_head(spatial, temporal, tmp_path):
    """The graph the runtime streams for this config (head_as + kernel when use_sa2, else head on x_patch).

    "attention" goes through a whole stp-export below, "none" through tests/test_export.py, "sa2" everywhere.
    """
    from stprompt.bundle.ort import ort_session, run_head
    from stprompt.export.onnx_graphs import export_head

    torch.manual_seed(0)
    cfg = HeadConfig(dim=16, n_classes=3, sigma=0.5, spatial=spatial, temporal=temporal)
    head, prompts = STPromptHead(cfg).eval(), torch.randn(3, 16)
    export_head(head, prompts, tmp_path / "h.onnx", after_sa2=cfg.use_sa2)
    session = ort_session(tmp_path / "h.onnx")
    x_clip, x_patch = features(50, 16, 3)
    offline = head_fn(head, prompts, False)(x_clip, x_patch)["score"]
    if cfg.use_sa2:
        s = StreamingFeatureHead(lambda a, b: run_head(session, a, b, "x_as"), 16, cfg.exact_lookahead - 1,
                                 cfg.exact_lookahead, sa2_step, cfg.topk_windows)  # fmt: skip
    else:
        s = StreamingHead(lambda a, b: run_head(session, a, b), 16, cfg.exact_lookahead, cfg.exact_lookahead)
    np.testing.assert_allclose(stream(s, x_clip, x_patch), offline, rtol=1e-4, atol=1e-5)


def test_stp_export_bundle_of_a_variant_streams_in_the_runtime_like_offline(tiny_clip, tmp_path):
    """stp-export of spatial "attention": the manifest carries the variant and the Detector streams it exactly."""
    from stprompt.bundle.manifest import load_manifest
    from stprompt.checkpoint import load_checkpoint
    from stprompt.export import cli
    from stprompt.runtime.backends import open_backend
    from stprompt.runtime.detector import Detector

    path = make_variant_checkpoint(tiny_clip, tmp_path / "model.pt", spatial="attention")
    assert cli.main(["--ckpt", str(path), "--out", str(tmp_path / "model"), "--quiet"]) == 0
    manifest = load_manifest(tmp_path / "model.json")
    head_doc = manifest.head
    assert (head_doc["spatial"], head_doc["temporal"], head_doc["use_sa2"]) == ("attention", "distance", False)
    assert head_doc["exact_lookahead"] == 41 and not manifest.streams_sa2_kernel  # SA2's kernel would be wrong
    backend, manifest = open_backend(tmp_path / "model.onnx")
    detector = Detector(backend, manifest)
    s = detector._state("cam").head
    assert type(s) is StreamingHead and s.context == s.lookahead == 41
    ckpt = load_checkpoint(path)
    x_clip, x_patch = features(60, tiny_clip.dim, 9)
    offline = head_fn(ckpt.build_head(), ckpt.prompt_features, False)(x_clip, x_patch)["score"]
    np.testing.assert_allclose(stream(s, x_clip, x_patch), offline, rtol=1e-4, atol=1e-5)


# --- training flags ------------------------------------------------------------------------------------------------


def test_train_flags_set_the_variant_and_old_flags_stay_aliases(tiny_clip, tmp_path, capsys):
    from stprompt import train
    from stprompt.checkpoint import load_checkpoint
    from stprompt.data.feature_synth import make_feature_dataset

    root = tmp_path / "features"
    make_feature_dataset(root, n_train=4, n_test=0, length=(8, 12), dim=tiny_clip.dim, clip="stp-tiny",
                         clip_sha256=tiny_clip.sha256)  # fmt: skip
    base = [str(root), "--epochs", "1", "--batch", "4", "--quiet"]
    assert train.main([*base, "--out", str(tmp_path / "x.pt"), "--no-sa2", "--spatial", "average"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["stp-train: error: --no-sa2 means --spatial none; it contradicts --spatial average"]
    assert train.main([*base, "--out", str(tmp_path / "a.pt"), "--spatial", "selection-average",
                       "--temporal", "transformer+distance"]) == 0  # fmt: skip
    cfg = load_checkpoint(tmp_path / "a.pt").config
    assert (cfg.spatial, cfg.temporal) == ("selection-average", "transformer+distance")
    assert train.main([*base, "--out", str(tmp_path / "b.pt"), "--no-sa2", "--no-adapter"]) == 0
    cfg = load_checkpoint(tmp_path / "b.pt").config
    assert (cfg.spatial, cfg.temporal, cfg.use_sa2, cfg.use_adapter) == ("none", "none", False, False)
