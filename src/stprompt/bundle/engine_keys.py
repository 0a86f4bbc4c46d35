"""What a target engine is built from and the cache key it must carry: shared by builders and runtimes.

Plans are tied to the TensorRT version and the GPU, so bundles ship ONNX + manifest and engines are built where
they run. An engine is reused only if its cache key - sha256 of (the sha256 of the ONNX it is built from,
TensorRT version, compute capability, precision, profiles) - equals the key recorded in the manifest and the
plan's own sha256 matches; anything else is rebuilt, never loaded. The build settings (largest batch and head
window, the shapes tuned for, workspace) are written by stp-export into the manifest's `build` section and may be
overridden on the target. Pure data: no TensorRT import here (see `stprompt.engines.tensorrt` for the builder).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import UserError
from .graphs import ENCODER_INPUT, PRE_INPUT, X_AS, X_CLIP, X_PATCH
from .hashing import sha256_file
from .manifest import ENGINE_SUFFIXES, Manifest

DEFAULT_MAX_BATCH = 256  # crops per encoder call at most (5 sampled frames of 50 crops + scale-B windows)
DEFAULT_OPT_BATCH = 50  # 1 frame + 49 scale-A windows: one sampled frame per call is the common case
DEFAULT_WORKSPACE_GB = 4.0
HISTORY = 256  # snippets of past context the default head window holds beyond the exact receptive field


def default_max_window(exact_lookahead: int) -> int:
    """256 snippets plus the head's exact receptive field on both sides (past context and lookahead)."""
    return HISTORY + 2 * exact_lookahead


def default_opt_window(exact_lookahead: int, max_window: int) -> int:
    """A streaming window: one snippet with its exact receptive field on both sides (83 at SPEC defaults)."""
    return max(1, min(max_window, 2 * exact_lookahead + 1))


@dataclass(frozen=True)
class InputProfile:
    """min / opt / max shape of one engine input (one optimization profile holds one per input)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def encoder_profiles(max_batch: int = DEFAULT_MAX_BATCH, opt_batch: int = DEFAULT_OPT_BATCH,
                     size: int = 224) -> list[InputProfile]:  # fmt: skip
    """images [N, 3, size, size], N from 1 to max_batch, tuned for opt_batch (crops per sampled frame)."""
    if not 1 <= opt_batch <= max_batch:
        raise UserError(f"need 1 <= opt batch ({opt_batch}) <= --max-batch ({max_batch})")
    img = (3, size, size)
    return [InputProfile(ENCODER_INPUT, (1, *img), (opt_batch, *img), (max_batch, *img))]


def pre_profiles(max_batch: int = DEFAULT_MAX_BATCH, opt_batch: int = DEFAULT_OPT_BATCH,
                 size: int = 224) -> list[InputProfile]:  # fmt: skip
    """pixels [N, size, size, 3] uint8 of the preprocessing plan: the encoder's batch range."""
    (enc,) = encoder_profiles(max_batch, opt_batch, size)
    return [InputProfile(PRE_INPUT, *((n, size, size, 3) for n in (enc.min[0], enc.opt[0], enc.max[0])))]


def head_profiles(dim: int, max_window: int, opt_window: int) -> list[InputProfile]:
    """x_clip [T, D] and x_patch [T, 49, D], T from 1 to max_window, tuned for opt_window."""
    if not 1 <= opt_window <= max_window:
        raise UserError(f"need 1 <= opt window ({opt_window}) <= --max-window ({max_window})")
    return [
        InputProfile(X_CLIP, (1, dim), (opt_window, dim), (max_window, dim)),
        InputProfile(X_PATCH, (1, 49, dim), (opt_window, 49, dim), (max_window, 49, dim)),
    ]


def head_features_profiles(dim: int, max_window: int, opt_window: int) -> list[InputProfile]:
    """x_clip [T, D] and x_as [T, D] of the head after SA2, T from 1 to max_window."""
    x_clip = head_profiles(dim, max_window, opt_window)[0]
    return [x_clip, InputProfile(X_AS, x_clip.min, x_clip.opt, x_clip.max)]


def engine_cache_key(
    onnx_sha256: str, trt_version: str, compute_capability: str, precision: str, profiles: Sequence[InputProfile]
) -> str:
    """sha256 over everything that makes a plan valid: change any input and the cached plan is rebuilt."""
    payload = {
        "onnx_sha256": onnx_sha256,
        "tensorrt": trt_version,
        "compute_capability": compute_capability,
        "precision": precision,
        "profiles": [p.to_dict() for p in profiles],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class BuildSettings:
    max_batch: int
    opt_batch: int
    max_window: int
    opt_window: int
    workspace_gb: float

    @classmethod
    def resolve(cls, exact_lookahead: int, base: dict[str, Any] | None = None, **overrides: Any) -> BuildSettings:
        """Settings from `base` (a manifest's `build` section; defaults where absent) with non-None overrides.
        A new max window without an opt window re-derives the opt window; opt values are capped at the max."""
        b = base or {}
        values = {
            "max_batch": b.get("max_batch", DEFAULT_MAX_BATCH),
            "opt_batch": b.get("opt_batch", DEFAULT_OPT_BATCH),
            "max_window": b.get("max_window", default_max_window(exact_lookahead)),
            "opt_window": b.get("opt_window"),
            "workspace_gb": b.get("workspace_gb", DEFAULT_WORKSPACE_GB),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if overrides.get("max_window") is not None and overrides.get("opt_window") is None:
            values["opt_window"] = None
        if values["opt_window"] is None:
            values["opt_window"] = default_opt_window(exact_lookahead, values["max_window"])
        values["opt_window"] = min(values["opt_window"], values["max_window"])
        values["opt_batch"] = min(values["opt_batch"], values["max_batch"])
        if values["max_batch"] < 1 or values["max_window"] < 1 or values["workspace_gb"] <= 0:
            raise UserError("need --max-batch >= 1, --max-window >= 1 and --workspace-gb > 0")
        return cls(
            max_batch=int(values["max_batch"]),
            opt_batch=int(values["opt_batch"]),
            max_window=int(values["max_window"]),
            opt_window=int(values["opt_window"]),
            workspace_gb=float(values["workspace_gb"]),
        )

    @classmethod
    def from_manifest(cls, manifest: Manifest, **overrides: Any) -> BuildSettings:
        """The export-time settings in `manifest['build']`, with any non-None override applied."""
        return cls.resolve(manifest.head_settings.exact_lookahead, manifest.build, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_batch": self.max_batch,
            "opt_batch": self.opt_batch,
            "max_window": self.max_window,
            "opt_window": self.opt_window,
            "workspace_gb": self.workspace_gb,
        }


class EngineJob(NamedTuple):
    """One engine a bundle gets on a target: which graph, at which precision, with which input profiles."""

    role: str  # encoder, head, head_features (the engine: its plan path and manifest record)
    precision: str
    profiles: list[InputProfile]
    source_role: str  # the manifest's `files` role of the ONNX it is built from (encoder_fp16 for fp16 encoders)


def encoder_source_role(manifest: Manifest, precision: str) -> str:
    """fp16 encoders are built strongly typed from model.fp16.onnx (its LayerNorm/Softmax/reductions already
    fp32) when the bundle has it; everything else from the fp32 graph."""
    return "encoder_fp16" if precision == "fp16" and manifest.has("encoder_fp16") else "encoder"


def engine_jobs(manifest: Manifest, settings: BuildSettings | None = None) -> list[EngineJob]:
    """Every engine of a bundle: the encoder at the bundle's precision (built from the graph of that precision),
    the heads in fp32. The builder, the runtime's staleness check, the appliance and stp-export's printed trtexec
    commands all list them from here."""
    settings = settings or BuildSettings.from_manifest(manifest)
    precision = manifest.precision.get("encoder", "fp32")
    jobs = [
        EngineJob("encoder", precision,
                  encoder_profiles(settings.max_batch, settings.opt_batch, manifest.preprocess.size),
                  encoder_source_role(manifest, precision)),
        EngineJob("head", "fp32", head_profiles(manifest.dim, settings.max_window, settings.opt_window), "head"),
    ]  # fmt: skip
    if manifest.has("head_features"):
        profiles = head_features_profiles(manifest.dim, settings.max_window, settings.opt_window)
        jobs.append(EngineJob("head_features", "fp32", profiles, "head_features"))
    if manifest.has("encoder_pre"):  # bundles exported before it have none: their crops are normalised on the host
        profiles = pre_profiles(settings.max_batch, settings.opt_batch, manifest.preprocess.size)
        jobs.append(EngineJob("encoder_pre", "fp32", profiles, "encoder_pre"))
    return jobs


def engine_path(manifest: Manifest, role: str) -> Path:
    """Where the plan of `role` is built: beside the manifest, same stem (model.plan, model.head.plan, ...)."""
    return manifest.stem.with_name(manifest.stem.name + ENGINE_SUFFIXES[role])


def expected_key(manifest: Manifest, role: str, trt_version: str, compute_capability: str,
                 settings: BuildSettings | None = None) -> str:  # fmt: skip
    """The cache key a plan for `role` must carry on this TensorRT version and GPU (runtime check)."""
    settings = settings or BuildSettings.from_manifest(manifest)
    for job in engine_jobs(manifest, settings):
        if job.role == role:
            onnx_sha = manifest.raw["files"][job.source_role]["sha256"]
            return engine_cache_key(onnx_sha, trt_version, compute_capability, job.precision, job.profiles)
    raise UserError(f"no engine role {role!r} (encoder, head, head_features, encoder_pre)")


def plan_is_current(manifest: Manifest, role: str, key: str) -> bool:
    """True only if the manifest records `key` for this plan and the plan file's sha256 is the recorded one."""
    record = manifest.engines.get(role)
    if not record or record.get("key") != key:
        return False
    plan = manifest.root / record.get("path", "")
    return plan.is_file() and sha256_file(plan) == record.get("sha256")


