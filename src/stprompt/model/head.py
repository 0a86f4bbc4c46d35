"""The STPrompt temporal detection head: SA2 -> distance adapter -> C-branch and A-branch (or a Table 5/6 ablation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .adapter import AdapterLayer, DistanceAdapterLayer, SelfAttentionAdapterLayer
from .config import HeadConfig
from .sa2 import spatial_aggregate


@dataclass
class HeadOutput:
    score_c: torch.Tensor  # [B, T] C-branch anomaly probability A
    logits: torch.Tensor  # [B, T, 1 + C] A-branch alignment logits M / tau
    probs: torch.Tensor  # [B, T, 1 + C] softmax(logits)
    score: torch.Tensor  # [B, T] 1 - probs[..., normal]


def adapter_layer(cfg: HeadConfig, index: int) -> AdapterLayer:
    """Layer `index` of the temporal variant: "transformer+distance" is self-attention first, distance after."""
    self_attention = cfg.temporal == "transformer" or (cfg.temporal == "transformer+distance" and index == 0)
    if self_attention:
        return SelfAttentionAdapterLayer(cfg.dim, cfg.attn_heads)
    return DistanceAdapterLayer(cfg.dim, cfg.sigma, cfg.radius)


class STPromptHead(nn.Module):
    """Everything after the frozen image encoder, given the (1 + C) x D prompt embeddings."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.adapter = nn.ModuleList([adapter_layer(cfg, i) for i in range(cfg.layers if cfg.use_adapter else 0)])
        self.c_branch = nn.Linear(cfg.dim, 1)

    def aggregate(self, x_patch: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x_AS from x_patch [B, T, 7, 7, D] by the configured spatial variant (zeros for "none")."""
        return spatial_aggregate(x_patch, lengths, self.cfg.topk_windows, self.cfg.spatial)

    def forward_features(
        self, x_clip: torch.Tensor, x_as: torch.Tensor, mask: torch.Tensor, prompts: torch.Tensor
    ) -> HeadOutput:
        """x_clip, x_as [B, T, D]; mask [B, T] (1 = valid snippet); prompts [1 + C, D]."""
        x = x_clip + x_as
        for layer in self.adapter:
            x = layer(x, mask)
        return self.outputs(x_clip, x, prompts)

    def outputs(self, x_clip: torch.Tensor, x: torch.Tensor, prompts: torch.Tensor) -> HeadOutput:
        """Both branches from the adapter's output x (snippet by snippet, like `AdapterLayer.pointwise`)."""
        score_c = torch.sigmoid(self.c_branch(x)).squeeze(-1)
        visual = nn.functional.normalize(x_clip + x, dim=-1)
        text = nn.functional.normalize(prompts, dim=-1)
        logits = visual @ text.t() / self.cfg.tau_align
        probs = torch.softmax(logits, dim=-1)
        # 1 - p_normal, summed over the anomaly classes so small scores keep their fp32 precision
        return HeadOutput(score_c=score_c, logits=logits, probs=probs, score=probs[..., 1:].sum(dim=-1))

    def forward(
        self, x_clip: torch.Tensor, x_patch: torch.Tensor, mask: torch.Tensor, prompts: torch.Tensor
    ) -> HeadOutput:
        lengths = mask.sum(dim=1).long()
        return self.forward_features(x_clip, self.aggregate(x_patch, lengths), mask, prompts)
