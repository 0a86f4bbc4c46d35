"""SA2: motion-prior spatial aggregation (SPEC.md, temporal head step 1), and its Table 5 ablations. No parameters."""

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


def _top_windows(mo: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest motions and their window indices, ties to the lowest index."""
    # Ties (static scenes, reused window embeddings, T = 1) keep the lowest window index first: the rule of
    # ONNX TopK, which the exported graph uses; eagerly torch.topk leaves tie order to the implementation, so
    # a stable sort gives the same rule (the exporters cannot translate a stable sort).
    if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
        return mo.topk(k, dim=-1)
    order = torch.sort(mo, dim=-1, descending=True, stable=True)
    return order.values[..., :k], order.indices[..., :k]


def sa2(x_patch: torch.Tensor, lengths: torch.Tensor | None = None, k: int = 12) -> torch.Tensor:
    """x_AS [B, T, D]: softmax(top-K motion) weighted sum of the K most moving windows.

    x_patch is [B, T, W, D] (or [B, T, 7, 7, D]); `lengths` gives each video's true length so that the
    replicate padding uses the video's own last snippet, not a padded one.
    """
    return spatial_aggregate(x_patch, lengths, k, "sa2")


def spatial_aggregate(
    x_patch: torch.Tensor, lengths: torch.Tensor | None = None, k: int = 12, spatial: str = "sa2"
) -> torch.Tensor:
    """x_AS [B, T, D] by a paper Table 5 variant (SPEC.md "Ablation switches"), over the W windows of snippet i.

    none: zeros; average: mean of all W; attention: softmax(Mo) over all W; selection-average: mean of the
    top-K by Mo; sa2: softmax(Mo) over the top-K (the method).
    """
    if x_patch.dim() == 5:
        x_patch = x_patch.flatten(2, 3)
    b, t, w, d = x_patch.shape
    if spatial == "none":
        return torch.zeros((b, t, d), dtype=x_patch.dtype, device=x_patch.device)
    if spatial == "average":
        return x_patch.mean(dim=2)
    mo = motion_magnitude(x_patch, lengths)
    if spatial == "attention":
        return (torch.softmax(mo, dim=-1)[..., None] * x_patch).sum(dim=2)
    if spatial not in ("selection-average", "sa2"):
        raise ValueError(f"unknown spatial variant {spatial!r}")
    top, idx = _top_windows(mo, k)
    sel = x_patch.gather(2, idx[..., None].expand(b, t, k, d))
    if spatial == "selection-average":
        return sel.mean(dim=2)
    att = torch.softmax(top, dim=-1)
    return (att[..., None] * sel).sum(dim=2)
