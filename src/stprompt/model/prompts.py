"""CoOp prompt learner: l learnable context vectors shared by all classes, through CLIP's frozen text encoder."""

from __future__ import annotations

import torch
from torch import nn

from ..clip.text import encode_token_embeddings, tokenize


class PromptLearner(nn.Module):
    """Prompt[c] = text_encoder([SOS] ctx_1..ctx_l  <class phrase> . [EOT]) -> (1 + C) x D.

    The CLIP model is held as a plain attribute, not a submodule: it is frozen, and neither saved in the
    checkpoint nor moved by `.to()` through this module. Only `ctx` is learned and saved.
    """

    def __init__(self, clip_model: nn.Module, class_phrases: list[str], n_ctx: int = 8, init_std: float = 0.02):
        super().__init__()
        width = clip_model.token_embedding.embedding_dim
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(torch.randn(n_ctx, width) * init_std)
        placeholder = " ".join(["X"] * n_ctx)
        tokens = tokenize([f"{placeholder} {phrase}." for phrase in class_phrases])
        self.register_buffer("tokens", tokens, persistent=False)
        with torch.no_grad():
            self.register_buffer("token_emb", clip_model.token_embedding(tokens).float(), persistent=False)
        object.__setattr__(self, "clip_model", clip_model)

    def forward(self) -> torch.Tensor:
        c = self.tokens.shape[0]
        emb = torch.cat([self.token_emb[:, :1], self.ctx.expand(c, -1, -1), self.token_emb[:, 1 + self.n_ctx :]], dim=1)
        return encode_token_embeddings(self.clip_model, emb, self.tokens)
