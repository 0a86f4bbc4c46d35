"""What `stp-export` decides besides the checkpoint: precisions, gates, engine build settings, thresholds."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..bundle.engine_keys import DEFAULT_MAX_BATCH, DEFAULT_OPT_BATCH, DEFAULT_WORKSPACE_GB
from ..bundle.manifest import SUFFIX
from ..errors import UserError
from ..localize.heat import LocalizeSettings

PRECISIONS = ("fp32", "fp16")


@dataclass
class ExportOptions:
    """Everything `stp-export` decides besides the checkpoint and the output stem."""

    precision: str = "fp32"  # encoder precision the engines are built for; fp16 also writes model.fp16.onnx
    int8_cpu: bool = False  # also write model.int8.onnx (ONNX Runtime dynamic int8, CPU)
    queries: str | None = None  # query bank JSON (localize.queries format); None = the default bank
    max_batch: int = DEFAULT_MAX_BATCH
    opt_batch: int = DEFAULT_OPT_BATCH
    max_window: int | None = None  # None = 256 + 2 * exact_lookahead
    opt_window: int | None = None  # None = 2 * exact_lookahead + 1
    workspace_gb: float = DEFAULT_WORKSPACE_GB
    probe_frames: int = 2
    encoder_gate: float = 0.999  # fp32 and fp16 encoder: min centered cosine
    int8_gate: float = 0.99
    head_gate: float = 1e-3  # max abs difference
    int8_per_channel: bool = False
    strict_ops: bool = False  # refuse graphs TensorRT 10 cannot parse (set when building engines right away)
    thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.max_batch < 1 or self.opt_batch < 1 or self.probe_frames < 1 or self.workspace_gb <= 0:
            raise UserError("need --max-batch, --opt-batch, --probe-frames >= 1 and --workspace-gb > 0")
        if self.max_window is not None and self.max_window < 1:
            raise UserError(f"--max-window must be at least 1, got {self.max_window}")
        if not all(0 < g <= 1 for g in (self.encoder_gate, self.int8_gate)) or self.head_gate <= 0:
            raise UserError("gates need 0 < --encoder-gate, --int8-gate <= 1 and --head-gate > 0")


def default_thresholds() -> dict[str, float]:
    s = LocalizeSettings()
    return {
        "alarm": 0.5,
        "heat": s.heat_threshold,
        "min_box_area": s.min_box_area,
        "tau_loc": s.tau_loc,
        "fusion_lambda": s.fusion_lambda,
    }


def resolve_stem(out: str | os.PathLike) -> Path:
    """--out DIR/model (or DIR/model.json, or an existing DIR -> DIR/model) -> the bundle stem."""
    p = Path(out)
    if p.is_dir():
        p = p / "model"
    if p.name.endswith(SUFFIX):
        p = p.with_name(p.name[: -len(SUFFIX)])
    if not p.name or p.name in (".", ".."):
        raise UserError(f"--out {out!r} does not name a bundle stem such as out/model")
    from ..bundle.membership import bundle_manifest_for

    if bundle_manifest_for(p.with_name(p.name + ".onnx")) != p.with_name(p.name + SUFFIX):
        # out/model.head would write out/model.head.onnx, which stp-run reads as the head of bundle out/model
        raise UserError(f"--out {out}: the stem {p.name!r} ends like a bundle file's name; name it e.g. "
                        f"{p.parent / 'model'}")  # fmt: skip
    return p
