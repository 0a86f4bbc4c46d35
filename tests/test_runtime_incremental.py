"""The incremental streaming head: the same scores as the window head at every lookahead, one row per layer per
snippet once the stream is under way, and the bundle's snippet-wise graphs equal to the PyTorch head."""

import json
import shutil

import numpy as np
import pytest
import torch

from stprompt.kernels.sa2 import sa2_step
from stprompt.model.config import HeadConfig
from stprompt.model.head import STPromptHead
from stprompt.runtime.incremental import IncrementalFeatureHead, band_attend, band_kernel
from stprompt.runtime.stream import StreamingFeatureHead

DIM = 16


class TorchStages:
    """HeadStages from the PyTorch head's own pointwise code; counts the rows each layer computes."""

    def __init__(self, head: STPromptHead, prompts: torch.Tensor):
        self.head, self.prompts = head, prompts
        self.layers = len(head.adapter)
        self.rows = [0] * self.layers

    def layer(self, index, attended):
        self.rows[index] += len(attended)
        with torch.no_grad():
            return self.head.adapter[index].pointwise(torch.from_numpy(attended)).numpy()

    def scores(self, x_clip, x_adapted):
        with torch.no_grad():
            out = self.head.outputs(torch.from_numpy(x_clip)[None], torch.from_numpy(x_adapted)[None], self.prompts)
        return {"score": out.score[0].numpy(), "score_c": out.score_c[0].numpy(), "probs": out.probs[0].numpy()}


def make_head(**overrides):
    torch.manual_seed(0)
    cfg = HeadConfig(dim=DIM, n_classes=3, sigma=0.5, **overrides)  # radius 10
    return cfg, STPromptHead(cfg).eval(), torch.randn(3, DIM)


def window_fn(head, prompts):
    def run(x_clip, x_as):
        with torch.no_grad():
            out = head.forward_features(torch.from_numpy(x_clip)[None], torch.from_numpy(x_as)[None],
                                        torch.ones(1, len(x_clip)), prompts)  # fmt: skip
        return {"score": out.score[0].numpy(), "score_c": out.score_c[0].numpy(), "probs": out.probs[0].numpy()}

    return run


def stream(head, x_clip, x_patch):
    results = []
    for i in range(len(x_clip)):
        results += head.push(x_clip[i], x_patch[i])
    return results + head.flush()


def features(t, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((t, DIM)).astype(np.float32), rng.standard_normal((t, 49, DIM)).astype(np.float32)


def incremental(cfg, stages, lookahead):
    return IncrementalFeatureHead(stages, DIM, cfg.exact_lookahead - 1, lookahead, sa2_step, cfg.topk_windows,
                                  cfg.sigma, cfg.radius)  # fmt: skip


@pytest.mark.parametrize("t", [1, 2, 7, 30, 90])
@pytest.mark.parametrize("lookahead", [0, 1, 5, 20, 21, 24])
def test_same_scores_as_the_window_head_at_every_lookahead(t, lookahead):
    """Exact lookahead (21 here) and the approximations below it: the newest snippet stands for the end in both."""
    cfg, head, prompts = make_head()
    x_clip, x_patch = features(t, seed=t + 100 * lookahead)
    window = stream(StreamingFeatureHead(window_fn(head, prompts), DIM, cfg.exact_lookahead - 1, lookahead, sa2_step,
                                         cfg.topk_windows), x_clip, x_patch)  # fmt: skip
    rows = stream(incremental(cfg, TorchStages(head, prompts), lookahead), x_clip, x_patch)
    assert [r.index for r in rows] == [r.index for r in window] == list(range(t))
    np.testing.assert_allclose([r.score for r in rows], [r.score for r in window], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([r.score_c for r in rows], [r.score_c for r in window], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.stack([r.probs for r in rows]), np.stack([r.probs for r in window]), atol=1e-5)


@pytest.mark.parametrize("overrides", [{"layers": 1}, {"layers": 3}, {"temporal": "none"}])
def test_exact_stream_equals_one_offline_pass_for_other_depths(overrides):
    cfg, head, prompts = make_head(**overrides)
    x_clip, x_patch = features(70, seed=3)
    with torch.no_grad():
        offline = head(torch.from_numpy(x_clip)[None], torch.from_numpy(x_patch)[None].reshape(1, 70, 7, 7, DIM),
                       torch.ones(1, 70), prompts).score[0].numpy()  # fmt: skip
    rows = stream(incremental(cfg, TorchStages(head, prompts), cfg.exact_lookahead), x_clip, x_patch)
    np.testing.assert_allclose([r.score for r in rows], offline, rtol=1e-4, atol=1e-6)


def test_each_layer_computes_one_row_per_snippet_at_the_exact_lookahead():
    """The point of the incremental head: the window head runs 2 layers x (2 x 21 + 1) rows per snippet."""
    cfg, head, prompts = make_head()
    stages = TorchStages(head, prompts)
    s = incremental(cfg, stages, cfg.exact_lookahead)
    x_clip, x_patch = features(200, seed=1)
    for i in range(100):
        s.push(x_clip[i], x_patch[i])
    before = list(stages.rows)
    for i in range(100, 200):
        s.push(x_clip[i], x_patch[i])
    assert [after - b for after, b in zip(stages.rows, before, strict=True)] == [100, 100]
    s.flush()
    assert stages.rows == [200, 200]  # every row computed exactly once over the whole stream


def test_a_small_lookahead_recomputes_only_the_rows_that_are_not_final():
    cfg, head, prompts = make_head()
    stages = TorchStages(head, prompts)
    s = incremental(cfg, stages, 2)
    x_clip, x_patch = features(120, seed=2)
    for i in range(60):
        s.push(x_clip[i], x_patch[i])
    before = list(stages.rows)
    s.push(x_clip[60], x_patch[60])
    per_push = [after - b for after, b in zip(stages.rows, before, strict=True)]
    # scoring snippet 58 (newest 60): layer 2 only there, over layer-1 rows 48..60, of which 50..60 are not
    # final (their inputs reach the newest, provisional x_AS); plus each layer's one new final row
    assert per_push == [1 + (1 + cfg.radius), 1 + 1]
    # the window head: both layers over context + lookahead + 1 = 23 rows, every push


def test_band_attention_matches_the_adapters_convolution():
    from stprompt.model.adapter import distance_attention, distance_kernel

    x = np.random.default_rng(0).standard_normal((33, DIM)).astype(np.float32)
    mask = torch.ones(1, 33)
    expected = distance_attention(torch.from_numpy(x)[None], mask, distance_kernel(0.7, 14))[0].numpy()
    got = band_attend(x, 0, np.arange(33), 32, band_kernel(0.7, 14))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # rows 10..32 of the sequence, positions 24..32, valid up to 32: the same rows as the whole sequence's
    np.testing.assert_allclose(band_attend(x[10:], 10, np.arange(24, 33), 32, band_kernel(0.7, 14)), expected[24:],
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_bundle_has_gated_snippet_wise_graphs(tiny_bundle):
    from stprompt.bundle.manifest import load_manifest
    from stprompt.bundle.membership import bundle_manifest_for

    manifest = load_manifest(tiny_bundle)
    assert manifest.has_head_stages
    assert sorted(r for r in manifest.raw["files"] if r.startswith("head_")) == [
        "head_features", "head_layer0", "head_layer1", "head_scores"]  # fmt: skip
    gate = manifest.gates["head_stages_fp32"]
    assert gate["passed"] and gate["max_abs"] <= gate["threshold"] and 338 in gate["lengths"]
    assert bundle_manifest_for(manifest.file("head_layer1")) == tiny_bundle


def detector_scores(bundle, video, **kwargs):
    from stprompt.bench.stages import read_frames
    from stprompt.bundle.manifest import load_manifest
    from stprompt.runtime.backends import open_backend
    from stprompt.runtime.detector import Detector

    backend, _ = open_backend(str(bundle.with_suffix(".onnx")))
    det = Detector(backend, load_manifest(bundle), **kwargs)
    events = []
    for image in read_frames(video, 10**6):  # the whole clip
        events += det.feed(image, source="cam")
    head = type(det.streams["cam"].head)
    events += det.finish("cam")
    return head, [e["score"] for e in events if e["type"] == "frame"]


@pytest.mark.parametrize("lookahead", [None, 1])
def test_detector_streams_the_same_scores_with_and_without_the_stages(tiny_bundle, blob_clip, lookahead):
    """A file (exact lookahead) and a live camera's early scores (lookahead 1)."""
    head, rows = detector_scores(tiny_bundle, blob_clip, lookahead=lookahead)
    window_head, window = detector_scores(tiny_bundle, blob_clip, lookahead=lookahead, incremental_head=False)
    assert head is IncrementalFeatureHead and window_head is StreamingFeatureHead
    assert len(rows) == len(window) > 0
    np.testing.assert_allclose(rows, window, atol=2e-4)  # events round scores to 4 decimals


def test_a_bundle_without_the_stages_streams_with_the_window_head(tiny_bundle, blob_clip, tmp_path):
    """Bundles exported before the snippet-wise graphs keep working, through the window head."""
    from stprompt.bundle.manifest import load_manifest

    for f in tiny_bundle.parent.iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / f.name)
    doc = json.loads((tmp_path / "model.json").read_text())
    for role in ("head_layer0", "head_layer1", "head_scores"):
        (tmp_path / doc["files"].pop(role)["path"]).unlink()
    (tmp_path / "model.json").write_text(json.dumps(doc))
    assert not load_manifest(tmp_path / "model.json").has_head_stages
    head, scores = detector_scores(tmp_path / "model.json", blob_clip)
    assert head is StreamingFeatureHead and len(scores) > 0


@pytest.mark.parametrize("overrides", [{}, {"layers": 1}, {"temporal": "none"}])
def test_exported_stages_score_like_the_pytorch_head_at_several_lengths(overrides, tmp_path):
    """The snippet-wise graphs keep their rows dimension dynamic (the legacy exporter), for every depth."""
    from stprompt.bundle.ort import OrtHeadStages
    from stprompt.export.onnx_graphs import export_head_stages
    from stprompt.runtime.incremental import score_by_stages

    cfg, head, prompts = make_head(**overrides)
    layers = [tmp_path / f"l{i}.onnx" for i in range(len(head.adapter))]
    export_head_stages(head, prompts, layers, tmp_path / "scores.onnx")
    stages = OrtHeadStages(layers, tmp_path / "scores.onnx")
    assert stages.layers == (0 if overrides.get("temporal") == "none" else cfg.layers)
    for t in (1, 2, 9, 64):
        x_clip, x_patch = features(t, seed=t)
        x_as = head.aggregate(torch.from_numpy(x_patch)[None].reshape(1, t, 7, 7, DIM))[0].detach().numpy()
        got = score_by_stages(stages, x_clip, x_as, band_kernel(cfg.sigma, cfg.radius))
        with torch.no_grad():
            want = head.forward_features(torch.from_numpy(x_clip)[None], torch.from_numpy(x_as)[None],
                                         torch.ones(1, t), prompts)  # fmt: skip
        np.testing.assert_allclose(got["score"], want.score[0].numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got["probs"], want.probs[0].numpy(), atol=1e-5)
