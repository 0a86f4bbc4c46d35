"""Batched CLIP image encoding in PyTorch (the reference backend for extraction and training)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..errors import UserError

PRECISIONS = ("fp32", "bf16")


class ImageEncoder:
    """Projected CLS embeddings (not L2-normalised) of CLIP-normalised 224x224 crops.

    `precision="bf16"` runs the encoder under CPU autocast (AMX/AVX-512 BF16 where present); outputs are
    returned as float32 either way.
    """

    def __init__(self, model: torch.nn.Module, precision: str = "fp32", batch: int = 256):
        if precision not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        if batch < 1:
            raise UserError(f"--batch must be at least 1, got {batch}")
        self.model = model
        self.precision = precision
        self.batch = batch

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """[N, 3, 224, 224] float32 -> [N, D] float32, in chunks of at most `batch` crops."""
        outs = []
        for start in range(0, len(images), self.batch):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch]))
            with self._autocast():
                emb = self.model.encode_image(chunk)
            outs.append(emb.float().numpy())
        if not outs:
            return np.zeros((0, int(self.model.visual.output_dim)), np.float32)
        return np.concatenate(outs, axis=0)
