"""Head settings (SPEC.md defaults). Stored in every checkpoint and bundle manifest."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

BRANCHES = ("both", "c", "a")


@dataclass
class HeadConfig:
    dim: int
    n_classes: int  # including "normal"
    sigma: float = 1.0  # distance-attention temperature
    layers: int = 2  # temporal adapter layers
    topk_windows: int = 12  # SA2: K windows with the largest motion
    tau_align: float = 0.07  # A-branch temperature
    n_ctx: int = 8  # CoOp context length
    use_sa2: bool = True
    use_adapter: bool = True
    branches: str = "both"  # which branch losses train: both, c (C-branch only), a (A-branch only)

    def __post_init__(self) -> None:
        if self.branches not in BRANCHES:
            raise ValueError(f"branches must be one of {BRANCHES}, got {self.branches!r}")
        if self.sigma <= 0 or self.layers < 1 or not 1 <= self.topk_windows <= 49:
            raise ValueError(f"invalid head settings {self}")

    @property
    def radius(self) -> int:
        """Band radius R: weights beyond |i-j| > R are below fp32 precision (exp(-21) ~ 8e-10)."""
        return math.ceil(self.sigma * 20)

    @property
    def exact_lookahead(self) -> int:
        """Future snippets a stream must wait for to reproduce offline scores exactly (SA2 + adapter)."""
        return (self.layers * self.radius if self.use_adapter else 0) + (1 if self.use_sa2 else 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
