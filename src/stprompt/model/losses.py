"""The three STPrompt training losses (SPEC.md, Training), all honouring the padding mask."""

from __future__ import annotations

import torch
from torch import nn


def topk_count(lengths: torch.Tensor) -> torch.Tensor:
    """k = floor(T / 16) + 1 on each video's true length."""
    return torch.div(lengths, 16, rounding_mode="floor") + 1


def masked_topk_mean(values: torch.Tensor, mask: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Mean of the k[b] largest valid entries along T. values [B, T] or [B, T, C] -> [B] or [B, C]."""
    squeeze = values.dim() == 2
    if squeeze:
        values = values[..., None]
    valid = mask.bool()[..., None].expand_as(values)
    filled = values.masked_fill(~valid, float("-inf"))
    ordered, _ = filled.sort(dim=1, descending=True)
    rank = torch.arange(values.shape[1], device=values.device)[None, :, None]
    take = rank < k[:, None, None]
    total = torch.where(take, ordered, torch.zeros_like(ordered)).sum(dim=1)
    out = total / k[:, None].to(values.dtype)
    return out[..., 0] if squeeze else out


def class_loss(score_c: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L_class = BCE(mean(topk(A, k)), y_b)."""
    pooled = masked_topk_mean(score_c, mask, topk_count(lengths)).clamp(1e-6, 1 - 1e-6)
    return nn.functional.binary_cross_entropy(pooled, y.to(pooled.dtype))


def align_loss(logits: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_align: s_c = mean(topk(logits[:, c], k)); cross-entropy of softmax(s) with the (normalised) label."""
    s = masked_topk_mean(logits, mask, topk_count(lengths))
    target = target / target.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return -(target * torch.log_softmax(s, dim=1)).sum(dim=1).mean()


CONST_FORMS = ("sum", "mean")


def const_loss(prompts: torch.Tensor, form: str = "sum") -> torch.Tensor:
    """L_const over i != j of max(0, cos(Prompt_i, Prompt_j)): "sum" is Eq. 9 as printed; "mean" divides by the
    (1 + C) C ordered pairs, because the sum grows with the square of the class count and dominates the total
    loss at the start of training (the prompts share their context, so every cosine starts near 1)."""
    if form not in CONST_FORMS:
        raise ValueError(f"const_loss form must be one of {CONST_FORMS}, got {form!r}")
    p = nn.functional.normalize(prompts, dim=-1)
    cos = p @ p.t()
    off = ~torch.eye(cos.shape[0], dtype=torch.bool, device=cos.device)
    pairs = cos[off].clamp(min=0)
    return pairs.sum() if form == "sum" else pairs.mean()
