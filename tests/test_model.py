"""Each SPEC formula against a small hand-computed case, plus padding invariance."""

import math

import numpy as np
import pytest
import torch

from stprompt.model import losses
from stprompt.model.adapter import distance_attention, distance_kernel
from stprompt.model.config import HeadConfig
from stprompt.model.head import STPromptHead
from stprompt.model.sa2 import motion_magnitude, sa2


def toy_patches() -> torch.Tensor:
    # [B=1, T=3, W=3, D=1]: window w's values over the three snippets
    w0, w1, w2 = [0.0, 0.5, 5.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.5]
    return torch.tensor([w0, w1, w2]).t().reshape(1, 3, 3, 1)


def test_sa2_motion_with_replicate_ends():
    mo = motion_magnitude(toy_patches())[0]
    # i=0: prev := x[0]; i=2: next := x[2]
    expected = [[0.5, 1.0, 0.0], [4.0, 2.0, 2.5], [4.5, 1.0, 2.5]]
    np.testing.assert_allclose(mo.numpy(), expected, atol=1e-6)


def test_sa2_topk_softmax_aggregation():
    x_as = sa2(toy_patches(), k=2)[0, :, 0].numpy()

    def soft(a, b):
        return math.exp(a) / (math.exp(a) + math.exp(b))

    expected = [
        soft(1.0, 0.5) * 0.0 + soft(0.5, 1.0) * 0.0,  # windows 1 then 0 at snippet 0
        soft(4.0, 2.5) * 0.5 + soft(2.5, 4.0) * 1.0,  # windows 0 then 2
        soft(4.5, 2.5) * 5.0 + soft(2.5, 4.5) * 3.5,
    ]
    np.testing.assert_allclose(x_as, expected, rtol=1e-6)


def test_sa2_uses_each_videos_own_last_snippet():
    x = torch.randn(1, 5, 49, 8)
    padded = torch.cat([x, torch.randn(1, 3, 49, 8) * 100], dim=1)
    alone = sa2(x, k=12)
    batched = sa2(padded, torch.tensor([5]), k=12)[:, :5]
    torch.testing.assert_close(batched, alone)


def test_adapter_weights_are_distance_softmax_over_valid_snippets():
    t = 4
    eye = torch.eye(t)[None]  # x[t] = e_t, so W x = W
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = distance_attention(eye, mask, distance_kernel(1.0, 20))[0].numpy()
    row0 = np.array([1, math.exp(-1), math.exp(-2), 0.0])
    row1 = np.array([math.exp(-1), 1, math.exp(-1), 0.0])
    np.testing.assert_allclose(w[0], row0 / row0.sum(), rtol=1e-6)
    np.testing.assert_allclose(w[1], row1 / row1.sum(), rtol=1e-6)
    assert np.isfinite(w).all()


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_banded_adapter_equals_dense_softmax(sigma):
    t, d = 90, 6
    x = torch.randn(2, t, d, dtype=torch.float64)
    mask = torch.ones(2, t, dtype=torch.float64)
    mask[1, 70:] = 0
    radius = math.ceil(sigma * 20)
    band = distance_attention(x, mask, distance_kernel(sigma, radius).double())
    idx = torch.arange(t, dtype=torch.float64)
    logits = -(idx[:, None] - idx[None]).abs() / sigma
    for b in range(2):
        dense = torch.softmax(logits.masked_fill(mask[b][None] == 0, -math.inf), dim=1) @ x[b]
        n = int(mask[b].sum())
        torch.testing.assert_close(band[b, :n], dense[:n], rtol=1e-6, atol=1e-7)


def test_k_is_floor_t_over_16_plus_one():
    assert losses.topk_count(torch.tensor([1, 15, 16, 33, 256])).tolist() == [1, 1, 2, 3, 17]


def test_class_loss_uses_top_k_of_valid_snippets():
    a = torch.tensor([[0.9, 0.1, 0.5, 1.0]])  # last snippet is padding: never picked
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss = losses.class_loss(a, mask, torch.tensor([3]), torch.tensor([1.0]))
    assert loss.item() == pytest.approx(-math.log(0.9), rel=1e-5)
    loss0 = losses.class_loss(a, mask, torch.tensor([3]), torch.tensor([0.0]))
    assert loss0.item() == pytest.approx(-math.log(0.1), rel=1e-5)


def test_topk_mean_with_k_two():
    v = torch.arange(20, dtype=torch.float32)[None]  # T = 20 -> k = 2
    mean = losses.masked_topk_mean(v, torch.ones(1, 20), losses.topk_count(torch.tensor([20])))
    assert mean.item() == pytest.approx((19 + 18) / 2)


def test_align_loss_is_cross_entropy_of_topk_class_scores():
    logits = torch.tensor([[[2.0, 0.0], [1.0, 3.0], [9.0, 9.0]]])  # third snippet padded
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    target = torch.tensor([[0.0, 1.0]])
    loss = losses.align_loss(logits, mask, torch.tensor([2]), target)
    s = np.array([2.0, 3.0])  # k = 1: max valid logit per class
    expected = -(s[1] - np.log(np.exp(s).sum()))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_const_loss_sums_positive_cosines_over_ordered_pairs():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # pairs (0,1) and (1,0) have cos 1; (0,3), (1,3) are -1 -> clipped; others 0
    assert losses.const_loss(p).item() == pytest.approx(2.0)


def test_score_is_one_minus_normal_probability():
    cfg = HeadConfig(dim=2, n_classes=2, use_adapter=False, use_sa2=False)
    head = STPromptHead(cfg)
    x_clip = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    prompts = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normal, anomaly (norms do not matter: cosine)
    out = head.forward_features(x_clip, torch.zeros_like(x_clip), torch.ones(1, 2), prompts)
    big = 1 / 0.07
    np.testing.assert_allclose(out.logits[0].detach().numpy(), [[big, 0.0], [0.0, big]], rtol=1e-6)
    expected = [1 / (1 + math.exp(big)), math.exp(big) / (1 + math.exp(big))]
    np.testing.assert_allclose(out.score[0].detach().numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("use_sa2,use_adapter", [(True, True), (False, True), (True, False)])
def test_padding_does_not_change_scores(use_sa2, use_adapter):
    torch.manual_seed(0)
    d = 16
    head = STPromptHead(HeadConfig(dim=d, n_classes=3, use_sa2=use_sa2, use_adapter=use_adapter)).eval()
    prompts = torch.randn(3, d)
    long_clip, long_patch = torch.randn(1, 40, d), torch.randn(1, 40, 7, 7, d)
    short_clip, short_patch = torch.randn(1, 25, d), torch.randn(1, 25, 7, 7, d)
    pad = 40 - 25
    x_clip = torch.cat([long_clip, torch.cat([short_clip, torch.full((1, pad, d), 50.0)], 1)])
    x_patch = torch.cat([long_patch, torch.cat([short_patch, torch.full((1, pad, 7, 7, d), -50.0)], 1)])
    mask = torch.ones(2, 40)
    mask[1, 25:] = 0
    with torch.no_grad():
        batched = head(x_clip, x_patch, mask, prompts)
        alone = head(short_clip, short_patch, torch.ones(1, 25), prompts)
        alone_long = head(long_clip, long_patch, torch.ones(1, 40), prompts)
    torch.testing.assert_close(batched.score[1, :25], alone.score[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched.score_c[1, :25], alone.score_c[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched.score[0], alone_long.score[0], rtol=1e-5, atol=1e-6)


def test_exact_lookahead_counts_adapter_band_and_sa2():
    cfg = HeadConfig(dim=8, n_classes=2)
    assert cfg.radius == 20
    assert cfg.exact_lookahead == 2 * 20 + 1
    assert HeadConfig(dim=8, n_classes=2, use_sa2=False, use_adapter=False).exact_lookahead == 0


def test_sa2_ties_keep_the_lowest_window_indices():
    # a static scene: every window's motion is 0, so the top-K is decided by the tie rule (ONNX TopK's)
    x = torch.arange(49, dtype=torch.float32).reshape(1, 1, 49, 1).expand(1, 3, 49, 1)
    x_as = sa2(x, k=12)
    assert torch.allclose(x_as[0, :, 0], torch.full((3,), sum(range(12)) / 12))
