"""The head's wiring on hand-computed cases (issue 15, item 5): one full adapter layer (distance attention, LN,
FFN, residual, LN), the C-branch input (x_TA) and the A-branch input (x_CLIP + x_TA), SPEC.md temporal head
steps 2, 3 and 5.

Weights are set by hand (torch.no_grad + copy_) and the expected values are computed here with plain Python
arithmetic from the SPEC formulas, never from the code under test. Each test also checks that the obvious wrong
wiring (x_TA alone for the A-branch, x_CLIP + x_TA for the C-branch, no residual, exact GELU) would give a
clearly different number, so the test can fail.
"""

import math

import pytest
import torch

from stprompt.model.adapter import DistanceAdapterLayer
from stprompt.model.config import HeadConfig
from stprompt.model.head import STPromptHead

EPS = 1e-5  # nn.LayerNorm's default
TAU = 0.07  # SPEC tau_align


# --- plain-Python reference arithmetic (lists of floats) -------------------------------------------------------


def layer_norm(v, weight=None, bias=None):
    n = len(v)
    mean = sum(v) / n
    var = sum((x - mean) ** 2 for x in v) / n
    weight = weight or [1.0] * n
    bias = bias or [0.0] * n
    return [(x - mean) / math.sqrt(var + EPS) * w + b for x, w, b in zip(v, weight, bias, strict=True)]


def quick_gelu(z):
    return z / (1 + math.exp(-1.702 * z))


def exact_gelu(z):
    return 0.5 * z * (1 + math.erf(z / math.sqrt(2)))


def cos(u, v):
    return sum(a * b for a, b in zip(u, v, strict=True)) / math.hypot(*u) / math.hypot(*v)


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


# The hand-set adapter layer (D = 3, FFN 3 -> 12 -> 3): only hidden units 0 and 1 are wired,
#   hidden_0 = u0 + 0.5,  hidden_1 = u1 - u2,
#   FFN(u) = qg(hidden_0) * [1, 0, -1] + qg(hidden_1) * [0, 2, 0] + [0, 0, 0.25].
# LN1 is the identity affine (weight 1, bias 0); LN2 has weight [2, 1, 1] and bias [0, 0, 0.5] so that a swap of
# the two norms, or a missing final norm, changes the output.
LN2_W, LN2_B = [2.0, 1.0, 1.0], [0.0, 0.0, 0.5]


def ffn(u, act=quick_gelu):
    h0, h1 = act(u[0] + 0.5), act(u[1] - u[2])
    return [h0, 2 * h1, -h0 + 0.25]


def set_layer(layer: DistanceAdapterLayer) -> None:
    w1, b1 = torch.zeros(12, 3), torch.zeros(12)
    w1[0] = torch.tensor([1.0, 0.0, 0.0])
    w1[1] = torch.tensor([0.0, 1.0, -1.0])
    b1[0] = 0.5
    w2, b2 = torch.zeros(3, 12), torch.tensor([0.0, 0.0, 0.25])
    w2[:, 0] = torch.tensor([1.0, 0.0, -1.0])
    w2[:, 1] = torch.tensor([0.0, 2.0, 0.0])
    with torch.no_grad():
        layer.ln1.weight.fill_(1.0)
        layer.ln1.bias.zero_()
        layer.ffn[0].weight.copy_(w1)
        layer.ffn[0].bias.copy_(b1)
        layer.ffn[2].weight.copy_(w2)
        layer.ffn[2].bias.copy_(b2)
        layer.ln2.weight.copy_(torch.tensor(LN2_W))
        layer.ln2.bias.copy_(torch.tensor(LN2_B))


def hand_adapter_rows(act=quick_gelu, residual=True):
    """x_TA for the valid rows x = [[1, 0, 0], [0, 1, 0]] (sigma = 1).

    Distance attention over the two valid snippets: W = [[1, e^-1], [e^-1, 1]] / (1 + e^-1), so
    W x = [[a, b, 0], [b, a, 0]] with a = 1 / (1 + e^-1) ~ 0.731059, b = e^-1 / (1 + e^-1) ~ 0.268941.
    Row 0: mean 1/3, deviations [0.397726, -0.064392, -0.333333], var 0.091148 -> x_TM ~ [1.3173, -0.2133, -1.1040].
    """
    a = 1 / (1 + math.exp(-1))
    b = math.exp(-1) / (1 + math.exp(-1))
    rows = []
    for wx in ([a, b, 0.0], [b, a, 0.0]):
        x_tm = layer_norm(wx)
        f = ffn(x_tm, act)
        h = [fi + xi for fi, xi in zip(f, x_tm, strict=True)] if residual else f
        rows.append(layer_norm(h, LN2_W, LN2_B))
    return rows


def assert_rows_far(a, b, gap=1e-2):
    assert max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)) > gap


# --- tests ---------------------------------------------------------------------------------------------------------


def test_adapter_layer_distance_attention_ln_ffn_residual_ln_on_a_hand_case():
    layer = DistanceAdapterLayer(dim=3, sigma=1.0, radius=20)
    set_layer(layer)
    # T = 3, the third snippet is padding holding large values: it must not enter the attention of rows 0 and 1
    x = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [50.0, -50.0, 7.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    with torch.no_grad():
        out = layer(x, mask)[0]
    expected = hand_adapter_rows()
    torch.testing.assert_close(out[:2], torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(out).all()
    # the case tells the SPEC layer from plausible wrong ones
    assert_rows_far(expected, hand_adapter_rows(residual=False))  # x_TA = LN(FFN(x_TM)), no residual
    assert_rows_far(expected, hand_adapter_rows(act=exact_gelu), gap=1e-3)  # erf GELU instead of QuickGELU


def test_c_branch_reads_x_ta_not_x_clip_plus_x_ta():
    # One adapter layer whose final LN has weight 0 and bias [0, 1]: x_TA = [0, 1] for every snippet, exactly.
    head = STPromptHead(HeadConfig(dim=2, n_classes=2, layers=1, use_sa2=False))
    with torch.no_grad():
        head.adapter[0].ln2.weight.zero_()
        head.adapter[0].ln2.bias.copy_(torch.tensor([0.0, 1.0]))
        head.c_branch.weight.copy_(torch.tensor([[1.0, 2.0]]))
        head.c_branch.bias.fill_(-1.0)
    x_clip = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    x_as = torch.tensor([[[0.0, 3.0], [2.0, 0.0]]])
    prompts = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    with torch.no_grad():
        out = head.forward_features(x_clip, x_as, torch.ones(1, 2), prompts)
    # A = sigmoid(w . x_TA + b) = sigmoid(1*0 + 2*1 - 1) = sigmoid(1) for both snippets
    expected = sigmoid(1.0)
    assert out.score_c[0].tolist() == pytest.approx([expected, expected], rel=1e-6)
    # x_CLIP + x_TA would give sigmoid(2) and sigmoid(0); the adapter input x_CLIP + x_AS sigmoid(6) and sigmoid(0)
    assert abs(sigmoid(1 + 2 - 1) - expected) > 0.1 and abs(sigmoid(-1 + 2 - 1) - expected) > 0.2


def test_a_branch_aligns_x_clip_plus_x_ta_with_the_prompts():
    # x_TA = [0, 1] exactly (final LN weight 0, bias [0, 1]); x_CLIP differs per snippet.
    head = STPromptHead(HeadConfig(dim=2, n_classes=2, layers=1, use_sa2=False))
    with torch.no_grad():
        head.adapter[0].ln2.weight.zero_()
        head.adapter[0].ln2.bias.copy_(torch.tensor([0.0, 1.0]))
    x_clip = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    prompts = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # normal, anomaly (unit norm)
    with torch.no_grad():
        out = head.forward_features(x_clip, torch.zeros_like(x_clip), torch.ones(1, 2), prompts)
    # x_CLIP + x_TA = [1, 1] and [-1, 1]; cosines with [1, 0] and [0.6, 0.8]:
    r = 1 / math.sqrt(2)
    cosines = [[r, 1.4 * r], [-r, 0.2 * r]]
    expected_logits = [[c / TAU for c in row] for row in cosines]  # [[10.1015, 14.1421], [-10.1015, 2.0203]]
    torch.testing.assert_close(out.logits[0], torch.tensor(expected_logits), rtol=1e-5, atol=1e-5)
    # score = 1 - softmax(logits)[normal] = sigmoid(l_anomaly - l_normal)
    expected_score = [sigmoid((row[1] - row[0]) / TAU) for row in cosines]  # sigmoid(4.0406), sigmoid(12.1218)
    assert out.score[0].tolist() == pytest.approx(expected_score, rel=1e-5)
    assert out.probs[0, :, 0].tolist() == pytest.approx([1 - s for s in expected_score], rel=1e-4, abs=1e-7)
    # x_TA alone ([0, 1] for both) would give logits [0, 0.8 / tau] = [0, 11.43] on both rows;
    # x_CLIP alone [1 / tau, 0.6 / tau] = [14.29, 8.57] and [-14.29, -8.57]
    for wrong in ([[0.0, 0.8 / TAU]] * 2, [[1 / TAU, 0.6 / TAU], [-1 / TAU, -0.6 / TAU]]):
        assert_rows_far(expected_logits, wrong, gap=1.0)


def test_full_head_branches_on_a_hand_computed_adapter():
    """x_CLIP + x_AS -> one hand-set adapter layer -> x_TA; C-branch on x_TA, A-branch on x_CLIP + x_TA."""
    head = STPromptHead(HeadConfig(dim=3, n_classes=2, layers=1))
    set_layer(head.adapter[0])
    with torch.no_grad():
        head.c_branch.weight.copy_(torch.tensor([[1.0, -1.0, 0.5]]))
        head.c_branch.bias.fill_(0.2)
    # x_CLIP + x_AS = [[1, 0, 0], [0, 1, 0]]: the adapter input of hand_adapter_rows
    x_clip = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]])
    x_as = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 1.0, 1.0]]])
    prompts = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    with torch.no_grad():
        out = head.forward_features(x_clip, x_as, torch.ones(1, 2), prompts)
    x_ta = hand_adapter_rows()
    clip_rows = [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]
    expected_c = [sigmoid(t[0] - t[1] + 0.5 * t[2] + 0.2) for t in x_ta]
    assert out.score_c[0].tolist() == pytest.approx(expected_c, rel=1e-5)
    visual = [[c + t for c, t in zip(cr, tr, strict=True)] for cr, tr in zip(clip_rows, x_ta, strict=True)]
    expected_logits = [[cos(v, p) / TAU for p in ([1.0, 0.0, 0.0], [0.0, 1.0, 1.0])] for v in visual]
    torch.testing.assert_close(out.logits[0], torch.tensor(expected_logits), rtol=1e-4, atol=1e-4)
    expected_score = [sigmoid(row[1] - row[0]) for row in expected_logits]
    assert out.score[0].tolist() == pytest.approx(expected_score, rel=1e-4)
    # the same case with x_TA alone in the A-branch gives other logits
    alone = [[cos(t, p) / TAU for p in ([1.0, 0.0, 0.0], [0.0, 1.0, 1.0])] for t in x_ta]
    assert_rows_far(expected_logits, alone, gap=1.0)
