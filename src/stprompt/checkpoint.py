"""The training checkpoint `model.pt`: a plain dict of tensors and primitives.

It loads with `torch.load(weights_only=True)` (no pickled objects) and fully determines the model: head
config, classes and their prompt phrases, ClipSpec and the sha256 of its weights, the activation and architecture
that CLIP ran with (`clip_activation`, `clip_arch`; a checkpoint from before they were recorded gets them inferred,
see stprompt.clip.loader.legacy_activation), feature stride, head weights, the learned prompt context and the prompt
embeddings it produces (so evaluation and export do not need to run the text encoder again).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .clip.loader import legacy_activation
from .errors import UserError, first_line
from .fileio import atomic_write_bytes
from .model.config import HeadConfig
from .model.head import STPromptHead

FORMAT = "stprompt-checkpoint/1"


@dataclass
class Checkpoint:
    config: HeadConfig
    classes: list[str]
    class_phrases: list[str]
    clip: str
    clip_sha256: str
    stride: int
    head_state: dict[str, torch.Tensor]
    prompt_ctx: torch.Tensor
    prompt_features: torch.Tensor  # [1 + C, D]
    epoch: int = 0
    train_args: dict[str, Any] | None = None
    optimizer_state: dict[str, Any] | None = None
    clip_arch: str | None = None  # the open_clip architecture built (LoadedClip.arch)
    clip_activation: str | None = None  # "quick_gelu" or "gelu" (LoadedClip.activation); None: unknown
    # stp-train's progress, so --resume continues it: step, steps, per-step losses, validation split and history
    training: dict[str, Any] | None = None

    def build_head(self) -> STPromptHead:
        head = STPromptHead(self.config)
        head.load_state_dict(self.head_state)
        return head.eval()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "classes": list(self.classes),
            "class_phrases": list(self.class_phrases),
            "clip": self.clip,
            "clip_sha256": self.clip_sha256,
            "clip_arch": self.clip_arch,
            "clip_activation": self.clip_activation,
            "stride": int(self.stride),
            "head": {k: v.detach().cpu() for k, v in self.head_state.items()},
            "prompt_ctx": self.prompt_ctx.detach().cpu(),
            "prompt_features": self.prompt_features.detach().cpu(),
            "epoch": int(self.epoch),
            "train_args": dict(self.train_args or {}),
            "optimizer": self.optimizer_state,
            "training": self.training,
            "versions": {"torch": str(torch.__version__)},
        }

    def save(self, path: str | os.PathLike) -> None:
        buf = io.BytesIO()
        torch.save(self.to_dict(), buf)
        atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}")
    try:
        d = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise UserError(f"{p} is not a loadable stprompt checkpoint: {first_line(err)}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise UserError(f"{p} is not an stprompt checkpoint (format {d.get('format') if isinstance(d, dict) else '?'})")
    return Checkpoint(
        config=HeadConfig.from_dict(d["config"]),
        classes=list(d["classes"]),
        class_phrases=list(d["class_phrases"]),
        clip=d["clip"],
        clip_sha256=d["clip_sha256"],
        stride=int(d["stride"]),
        head_state=d["head"],
        prompt_ctx=d["prompt_ctx"],
        prompt_features=d["prompt_features"],
        epoch=int(d.get("epoch", 0)),
        train_args=d.get("train_args"),
        optimizer_state=d.get("optimizer"),
        clip_arch=d.get("clip_arch"),
        clip_activation=d.get("clip_activation") or legacy_activation(d["clip"]),
        training=d.get("training"),
    )
