"""ClipSpec: which CLIP architecture and which weights, as one string `ARCH[:WEIGHTS]`.

- `ViT-B-16:openai` (or any open_clip pretrained tag): open_clip's hub loader, only when asked for.
- `ViT-B-16:/path/weights.pt|.safetensors|.bin`: a local file.
- `ViT-B-16:random[:SEED]` and `stp-tiny` (= `stp-tiny:random:0`): seeded random initialisation.

The activation (QuickGELU or GELU) is not part of the string: the weights decide it (`loader.resolve_clip`), and
an `ARCH-quickgelu` architecture asks for QuickGELU where the weights do not say.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin")


@dataclass(frozen=True)
class ClipSpec:
    arch: str
    source: str  # "random", "file" or "hub"
    value: str  # seed for random, path for file, pretrained tag for hub

    @classmethod
    def parse(cls, text: str) -> ClipSpec:
        text = text.strip()
        if not text:
            raise UserError("empty --clip spec; use e.g. stp-tiny, ViT-B-16:openai or ViT-B-16:/path/w.pt")
        arch, _, weights = text.partition(":")
        if not weights:
            if arch == "stp-tiny":
                return cls(arch, "random", "0")
            raise UserError(
                f"--clip {text!r} names no weights; use {arch}:openai (download), {arch}:/path/to/weights.pt "
                f"or {arch}:random[:SEED]"
            )
        if weights == "random" or weights.startswith("random:"):
            seed = weights.partition(":")[2] or "0"
            if not seed.isdigit():
                raise UserError(f"--clip {text!r}: random seed must be a whole number, got {seed!r}")
            return cls(arch, "random", str(int(seed)))
        if "/" in weights or "\\" in weights or weights.endswith(WEIGHT_SUFFIXES):
            return cls(arch, "file", weights)
        return cls(arch, "hub", weights)

    def __str__(self) -> str:
        if self.source == "random" and self.arch == "stp-tiny" and self.value == "0":
            return "stp-tiny"
        if self.source == "random":
            return f"{self.arch}:random:{self.value}"
        return f"{self.arch}:{self.value}"
