"""Frozen CLIP text encoding: plain texts (query banks) and token embeddings with learnable context (CoOp)."""

from __future__ import annotations

import torch


def tokenize(texts: list[str]) -> torch.Tensor:
    import open_clip

    return open_clip.tokenize(texts)


def encode_token_embeddings(
    clip_model: torch.nn.Module, embeddings: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """Run CLIP's text transformer on given token embeddings; pool at each sequence's EOT; project.

    This mirrors open_clip's `CLIP.encode_text` but starts after the token lookup, so that learnable
    context vectors can replace placeholder tokens. Gradients flow to `embeddings` only.
    """
    from open_clip.transformer import text_global_pool

    m = clip_model
    x = embeddings + m.positional_embedding.to(embeddings.dtype)
    x = m.transformer(x, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    x = text_global_pool(x, tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
    if m.text_projection is not None:
        x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
    return x


@torch.no_grad()
def encode_texts(clip_model: torch.nn.Module, texts: list[str]) -> torch.Tensor:
    """[len(texts), D] projected text features (not normalised)."""
    tokens = tokenize(texts)
    return encode_token_embeddings(clip_model, clip_model.token_embedding(tokens), tokens)
