"""SA2: motion-prior spatial aggregation (SPEC.md, temporal head step 1). No parameters."""

from __future__ import annotations

import torch


def motion_magnitude(x_patch: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Mo[b, i, w] = || 2 x[i] - x[i-1] - x[i+1] ||_2 over channels; x_patch is [B, T, W, D]."""
    b, t, w, d = x_patch.shape
    if lengths is None:
        lengths = torch.full((b,), t, dtype=torch.long, device=x_patch.device)
    idx = torch.arange(t, device=x_patch.device)
    prev = (idx - 1).clamp(min=0).expand(b, t)
    nxt = torch.minimum(idx[None] + 1, (lengths - 1).clamp(min=0)[:, None])
    gather = lambda ix: x_patch.gather(1, ix[:, :, None, None].expand(b, t, w, d))  # noqa: E731
    return torch.linalg.vector_norm(2 * x_patch - gather(prev) - gather(nxt), dim=-1)


def sa2(x_patch: torch.Tensor, lengths: torch.Tensor | None = None, k: int = 12) -> torch.Tensor:
    """x_AS [B, T, D]: softmax(top-K motion) weighted sum of the K most moving windows.

    x_patch is [B, T, W, D] (or [B, T, 7, 7, D]); `lengths` gives each video's true length so that the
    replicate padding uses the video's own last snippet, not a padded one.
    """
    if x_patch.dim() == 5:
        x_patch = x_patch.flatten(2, 3)
    b, t, w, d = x_patch.shape
    mo = motion_magnitude(x_patch, lengths)
    # Ties (static scenes, reused window embeddings, T = 1) keep the lowest window index first: the rule of
    # ONNX TopK, which the exported graph uses; eagerly torch.topk leaves tie order to the implementation, so
    # a stable sort gives the same rule (the exporters cannot translate a stable sort).
    if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
        top, idx = mo.topk(k, dim=-1)
    else:
        order = torch.sort(mo, dim=-1, descending=True, stable=True)
        top, idx = order.values[..., :k], order.indices[..., :k]
    att = torch.softmax(top, dim=-1)
    sel = x_patch.gather(2, idx[..., None].expand(b, t, k, d))
    return (att[..., None] * sel).sum(dim=2)
