"""Streaming head: with lookahead >= the exact context, streamed scores equal one offline pass."""

import numpy as np
import pytest
import torch

from stprompt.model.config import HeadConfig
from stprompt.model.head import STPromptHead
from stprompt.runtime.stream import StreamingHead


@pytest.fixture(scope="module")
def head_fn():
    torch.manual_seed(0)
    cfg = HeadConfig(dim=16, n_classes=3, sigma=0.5)  # radius 10, exact context 2 * 10 + 1 = 21
    head = STPromptHead(cfg).eval()
    prompts = torch.randn(3, 16)

    def run(x_clip: np.ndarray, x_patch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            t = len(x_clip)
            out = head(torch.from_numpy(x_clip)[None], torch.from_numpy(x_patch)[None].reshape(1, t, 7, 7, -1),
                       torch.ones(1, t), prompts)  # fmt: skip
        return {"score": out.score[0].numpy(), "score_c": out.score_c[0].numpy(), "probs": out.probs[0].numpy()}

    run.context = cfg.exact_lookahead
    return run


def stream_all(head_fn, x_clip, x_patch, lookahead):
    s = StreamingHead(head_fn, 16, head_fn.context, lookahead)
    results = []
    for t in range(len(x_clip)):
        results += s.push(x_clip[t], x_patch[t])
    results += s.flush()
    return results


@pytest.mark.parametrize("t", [1, 5, 40, 130])
def test_exact_lookahead_reproduces_offline_scores(head_fn, t):
    rng = np.random.default_rng(t)
    x_clip = rng.standard_normal((t, 16)).astype(np.float32)
    x_patch = rng.standard_normal((t, 49, 16)).astype(np.float32)
    offline = head_fn(x_clip, x_patch)
    results = stream_all(head_fn, x_clip, x_patch, head_fn.context)
    assert [r.index for r in results] == list(range(t))
    np.testing.assert_allclose([r.score for r in results], offline["score"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([r.score_c for r in results], offline["score_c"], rtol=1e-5, atol=1e-6)


def test_small_lookahead_emits_early_and_is_an_approximation(head_fn):
    rng = np.random.default_rng(0)
    x_clip = rng.standard_normal((60, 16)).astype(np.float32)
    x_patch = rng.standard_normal((60, 49, 16)).astype(np.float32)
    s = StreamingHead(head_fn, 16, head_fn.context, lookahead=0)
    first = s.push(x_clip[0], x_patch[0])
    assert [r.index for r in first] == [0]  # no waiting at all
    streamed = stream_all(head_fn, x_clip, x_patch, 0)
    offline = head_fn(x_clip, x_patch)["score"]
    assert len(streamed) == 60
    assert streamed[-1].score == pytest.approx(float(offline[-1]), rel=1e-5)  # the last snippet knows the end
    assert not np.allclose([r.score for r in streamed], offline, atol=1e-6)


@pytest.mark.parametrize("t", [1, 2, 7, 90])
def test_sa2_kernel_stream_over_the_head_after_sa2_is_exact(head_fn, t):
    """x_AS from the Numba kernel, made final when the next snippet arrives, through forward_features."""
    from stprompt.kernels.sa2 import sa2_step
    from stprompt.runtime.stream import StreamingFeatureHead

    torch.manual_seed(0)
    cfg = HeadConfig(dim=16, n_classes=3, sigma=0.5)
    head = STPromptHead(cfg).eval()
    prompts = torch.randn(3, 16)

    def features_fn(x_clip, x_as):
        with torch.no_grad():
            out = head.forward_features(torch.from_numpy(x_clip)[None], torch.from_numpy(x_as)[None],
                                        torch.ones(1, len(x_clip)), prompts)  # fmt: skip
        return {"score": out.score[0].numpy(), "score_c": out.score_c[0].numpy(), "probs": out.probs[0].numpy()}

    rng = np.random.default_rng(t)
    x_clip = rng.standard_normal((t, 16)).astype(np.float32)
    x_patch = rng.standard_normal((t, 49, 16)).astype(np.float32)
    with torch.no_grad():
        offline = head(torch.from_numpy(x_clip)[None], torch.from_numpy(x_patch)[None].reshape(1, t, 7, 7, 16),
                       torch.ones(1, t), prompts).score[0].numpy()  # fmt: skip
    s = StreamingFeatureHead(features_fn, 16, cfg.exact_lookahead - 1, cfg.exact_lookahead, sa2_step, 12)
    results = []
    for i in range(t):
        results += s.push(x_clip[i], x_patch[i])
    results += s.flush()
    assert [r.index for r in results] == list(range(t))
    np.testing.assert_allclose([r.score for r in results], offline, rtol=1e-5, atol=1e-6)
