"""The temporal adapter (SPEC.md, temporal head step 2): distance attention as an exact band, and Table 6's
self-attention ablation.

W[i, j] = softmax_j(-|i-j| / sigma) over valid j equals exp(-|i-j|/sigma) / sum_valid exp(-|i-j|/sigma),
so W x is a fixed depthwise 1-D convolution of the masked sequence divided by the same convolution of
the mask. With the kernel cut at radius R = ceil(20 sigma) this is exact to fp32, O(T R D) in time,
O(T D) in memory, has no T x T matrix, and exports to ONNX with T symbolic (a Conv node).
"""

from __future__ import annotations

import torch
from torch import nn


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def distance_kernel(sigma: float, radius: int) -> torch.Tensor:
    d = torch.arange(-radius, radius + 1, dtype=torch.float32)
    return torch.exp(-d.abs() / sigma)


def distance_attention(x: torch.Tensor, mask: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """W x for x [B, T, D] and a 0/1 float mask [B, T]; rows of padded positions come out finite."""
    b, t, d = x.shape
    radius = (kernel.shape[0] - 1) // 2
    m = mask.to(x.dtype)
    weight = kernel.to(x.dtype)
    num = nn.functional.conv1d((x * m[..., None]).transpose(1, 2), weight.expand(d, 1, -1), padding=radius, groups=d)
    den = nn.functional.conv1d(m[:, None], weight.view(1, 1, -1), padding=radius)
    return (num / den.clamp(min=1e-6)).transpose(1, 2)


class AdapterLayer(nn.Module):
    """x_TM = LN(attention(x)); x_TA = LN(FFN(x_TM) + x_TM), FFN = D -> 4D -> D with QuickGELU.

    Every Table 6 variant shares this block, so an ablation changes the attention and nothing else; each
    subclass defines `attend(x, mask)`.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), QuickGELU(), nn.Linear(4 * dim, dim))
        self.ln2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.attend(x, mask))

    def pointwise(self, attended: torch.Tensor) -> torch.Tensor:
        """Everything after the attention, snippet by snippet: a streaming head computes each snippet's layer
        output once (runtime.incremental) by running this on the attended rows it needs."""
        x_tm = self.ln1(attended)
        return self.ln2(self.ffn(x_tm) + x_tm)


class DistanceAdapterLayer(AdapterLayer):
    """The method's layer: attention = W x, the banded distance attention (no parameters)."""

    def __init__(self, dim: int, sigma: float, radius: int):
        super().__init__(dim)
        self.register_buffer("kernel", distance_kernel(sigma, radius), persistent=False)

    def attend(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return distance_attention(x, mask, self.kernel)


class SelfAttentionAdapterLayer(AdapterLayer):
    """Table 6 ablation: multi-head self-attention with Q/K/V projections and no positional encoding.

    It attends over every valid snippet of the video (padded keys masked out): not a band, so it cannot stream
    exactly with a finite lookahead (HeadConfig.streaming_problem).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def attend(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, key_padding_mask=~mask.bool(), need_weights=False)[0]
