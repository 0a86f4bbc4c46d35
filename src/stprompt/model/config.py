"""Head settings (SPEC.md defaults). Stored in every checkpoint and bundle manifest."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import UserError

BRANCHES = ("both", "c", "a")
# Paper Table 5: how x_AS is made from the 49 scale-A windows (SPEC.md "Ablation switches"); "sa2" is the method.
SPATIAL = ("none", "average", "attention", "selection-average", "sa2")
MOTION_SPATIAL = ("attention", "selection-average", "sa2")  # the variants that use Mo, hence snippet i + 1
# Paper Table 6: the temporal adapter's attention; "distance" is the method.
TEMPORAL = ("none", "transformer", "transformer+distance", "distance")
BANDED_TEMPORAL = ("none", "distance")  # finite receptive field: these stream exactly


@dataclass
class HeadConfig:
    dim: int
    n_classes: int  # including "normal"
    sigma: float = 1.0  # distance-attention temperature
    layers: int = 2  # temporal adapter layers
    topk_windows: int = 12  # SA2: K windows with the largest motion
    tau_align: float = 0.07  # A-branch temperature
    n_ctx: int = 8  # CoOp context length
    # Older spellings, kept so old checkpoints and callers work: use_sa2=False means spatial "none",
    # use_adapter=False temporal "none". Once resolved, use_sa2 is True exactly for spatial "sa2" (the runtime
    # streams x_AS through the SA2 kernel only then) and use_adapter True for any temporal adapter.
    use_sa2: bool | None = None
    use_adapter: bool | None = None
    branches: str = "both"  # which branch losses train: both, c (C-branch only), a (A-branch only)
    spatial: str | None = None  # Table 5 variant (None: from use_sa2, i.e. "sa2" unless use_sa2=False)
    temporal: str | None = None  # Table 6 variant (None: from use_adapter, i.e. "distance" unless False)
    attn_heads: int = 8  # heads of the self-attention layers of the "transformer" variants

    def __post_init__(self) -> None:
        if self.branches not in BRANCHES:
            raise ValueError(f"branches must be one of {BRANCHES}, got {self.branches!r}")
        if self.sigma <= 0 or self.layers < 1 or not 1 <= self.topk_windows <= 49:
            raise ValueError(f"invalid head settings {self}")
        if self.spatial is None:
            self.spatial = "none" if self.use_sa2 is False else "sa2"
        if self.temporal is None:
            self.temporal = "none" if self.use_adapter is False else "distance"
        if self.spatial not in SPATIAL:
            raise ValueError(f"spatial must be one of {', '.join(SPATIAL)}, got {self.spatial!r}")
        if self.temporal not in TEMPORAL:
            raise ValueError(f"temporal must be one of {', '.join(TEMPORAL)}, got {self.temporal!r}")
        if self.use_sa2 is not None and bool(self.use_sa2) != (self.spatial == "sa2"):
            raise ValueError(f"use_sa2={self.use_sa2} contradicts spatial={self.spatial!r}")
        if self.use_adapter is not None and bool(self.use_adapter) != (self.temporal != "none"):
            raise ValueError(f"use_adapter={self.use_adapter} contradicts temporal={self.temporal!r}")
        self.use_sa2 = self.spatial == "sa2"
        self.use_adapter = self.temporal != "none"
        if self.temporal not in BANDED_TEMPORAL and (self.attn_heads < 1 or self.dim % self.attn_heads):
            raise ValueError(f"attn_heads ({self.attn_heads}) must divide dim ({self.dim}) for {self.temporal!r}")

    @property
    def radius(self) -> int:
        """Band radius R: weights beyond |i-j| > R are below fp32 precision (exp(-21) ~ 8e-10)."""
        return math.ceil(self.sigma * 20)

    @property
    def streaming_problem(self) -> str | None:
        """Why no finite lookahead reproduces this head's offline scores (None: it streams exactly)."""
        if self.temporal in BANDED_TEMPORAL:
            return None
        return (f"temporal modeling {self.temporal!r} is self-attention over the whole video, not a band: every "
                f"score depends on every snippet, so no finite lookahead streams it exactly; export a 'distance' or "
                f"'none' head (stp-eval scores this one offline)")  # fmt: skip

    @property
    def motion_lookahead(self) -> int:
        """1 when x_AS uses the motion Mo (snippet i + 1), else 0."""
        return 1 if self.spatial in MOTION_SPATIAL else 0

    @property
    def exact_lookahead(self) -> int:
        """Future snippets a stream must wait for to reproduce offline scores exactly (spatial + adapter band).

        Raises UserError for a head that is not banded: it has no such number.
        """
        problem = self.streaming_problem
        if problem:
            raise UserError(problem)
        return (self.layers * self.radius if self.temporal == "distance" else 0) + self.motion_lookahead

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
