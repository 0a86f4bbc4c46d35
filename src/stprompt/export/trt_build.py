"""TensorRT 10 engines for a bundle, built on the target device and cached by a key that names what made them.

Plans are tied to the TensorRT version and the GPU, so bundles ship ONNX + manifest and engines are built
where they run (`stp-build model.json`, or `stp-export --trt` on the target). An engine is reused only if
its cache key - sha256 of (ONNX sha256, TensorRT version, compute capability, precision, profiles) - equals
the key recorded in the manifest and the plan's own sha256 matches; anything else is rebuilt, never loaded.

FP16 engines are built from the fp32 ONNX with normalisation, softmax and reduction layers constrained to
fp32 and the constraints obeyed (ViT LayerNorm overflows in fp16). The temporal head is always an fp32
engine, TF32 off. Timing caches persist beside the plans, one per TensorRT version and GPU architecture.

Torch-free; `tensorrt` (and cuda-python, for the compute capability) are imported only when building.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fileio import atomic_write_bytes
from .manifest import ENGINE_SUFFIXES, Manifest, load_manifest, sha256_file, write_manifest
from .precision import FP32_OPS

TRT_MISSING = (
    'TensorRT is not installed: pip install "stprompt[trt]" (x86_64, CUDA 12) or, on Jetson, '
    "use JetPack 6's TensorRT (python3-libnvinfer)"
)
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


def encoder_profiles(max_batch: int = DEFAULT_MAX_BATCH, opt_batch: int = DEFAULT_OPT_BATCH) -> list[InputProfile]:
    """images [N, 3, 224, 224], N from 1 to max_batch, tuned for opt_batch (crops per sampled frame)."""
    if not 1 <= opt_batch <= max_batch:
        raise UserError(f"need 1 <= opt batch ({opt_batch}) <= --max-batch ({max_batch})")
    img = (3, 224, 224)
    return [InputProfile("images", (1, *img), (opt_batch, *img), (max_batch, *img))]


def head_profiles(dim: int, max_window: int, opt_window: int) -> list[InputProfile]:
    """x_clip [T, D] and x_patch [T, 49, D], T from 1 to max_window, tuned for opt_window."""
    if not 1 <= opt_window <= max_window:
        raise UserError(f"need 1 <= opt window ({opt_window}) <= --max-window ({max_window})")
    return [
        InputProfile("x_clip", (1, dim), (opt_window, dim), (max_window, dim)),
        InputProfile("x_patch", (1, 49, dim), (opt_window, 49, dim), (max_window, 49, dim)),
    ]


def head_features_profiles(dim: int, max_window: int, opt_window: int) -> list[InputProfile]:
    """x_clip [T, D] and x_as [T, D] of the head after SA2, T from 1 to max_window."""
    x_clip = head_profiles(dim, max_window, opt_window)[0]
    return [x_clip, InputProfile("x_as", x_clip.min, x_clip.opt, x_clip.max)]


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


def _shapes(profiles: Sequence[InputProfile], which: str) -> str:
    return ",".join(f"{p.name}:{'x'.join(str(d) for d in getattr(p, which))}" for p in profiles)


def trtexec_command(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    profiles: Sequence[InputProfile],
    precision: str,
    workspace_gb: float,
    timing_cache: str | os.PathLike,
    fp32_layers: Sequence[str] = (),
) -> list[str]:
    """The trtexec invocation equivalent to `build_engine` (argv list; `shlex.join` it to print).

    `fp32_layers` are TensorRT layer names to pin to fp32 in fp16 builds: the parsed network's names when
    known, else the ONNX node names of the fp32 ops (the parser names a node's layer after the node).
    """
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
    cmd = [
        "trtexec",
        f"--onnx={os.fspath(onnx_path)}",
        f"--saveEngine={os.fspath(plan_path)}",
        f"--minShapes={_shapes(profiles, 'min')}",
        f"--optShapes={_shapes(profiles, 'opt')}",
        f"--maxShapes={_shapes(profiles, 'max')}",
        f"--memPoolSize=workspace:{max(1, round(workspace_gb * 1024))}M",
        f"--timingCacheFile={os.fspath(timing_cache)}",
    ]
    if precision == "fp16":
        cmd += ["--fp16", "--precisionConstraints=obey"]
        if fp32_layers:
            cmd.append("--layerPrecisions=" + ",".join(f"{name}:fp32" for name in fp32_layers))
            cmd.append("--layerOutputTypes=" + ",".join(f"{name}:fp32" for name in fp32_layers))
    else:
        cmd.append("--noTF32")
    return cmd


def onnx_fp32_layer_names(onnx_path: str | os.PathLike) -> list[str]:
    """ONNX node names of the ops kept in fp32 (for the printed trtexec command when TensorRT is absent)."""
    import onnx

    model = onnx.load(os.fspath(onnx_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in FP32_OPS and n.name]


def require_tensorrt():
    """The tensorrt module, or one clear UserError naming the missing extra."""
    try:
        import tensorrt as trt
    except ImportError:
        raise UserError(TRT_MISSING) from None
    if int(str(trt.__version__).split(".")[0]) < 10:
        raise UserError(f"TensorRT {trt.__version__} found, stprompt needs TensorRT 10 or newer")
    return trt


def tensorrt_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def gpu_compute_capability(device: int = 0) -> str:
    """'8.7' etc. of CUDA device `device`, through cuda-python, else nvidia-smi."""
    cudart = None
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            cudart = None
    if cudart is not None:
        err, props = cudart.cudaGetDeviceProperties(device)
        if int(getattr(err, "value", err)) == 0:
            return f"{props.major}.{props.minor}"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={device}", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        raise UserError("cannot read the GPU's compute capability: install cuda-python (stprompt[trt])") from None


def timing_cache_path(stem: Path, trt_version: str, compute_capability: str) -> Path:
    return stem.with_name(f"{stem.name}.timing-trt{trt_version}-sm{compute_capability.replace('.', '')}.cache")


def _constrain_fp32(trt, network) -> list[str]:
    """Pin normalisation, softmax, reduction, pow/sqrt/exp layers (float outputs) to fp32; returns their names.

    The same op families `precision.FP32_OPS` keeps in fp32 in the fp16 ONNX; GELU's Erf stays fp16 (fusable).
    """
    unary = {trt.UnaryOperation.SQRT, trt.UnaryOperation.EXP}
    floats = {trt.float32, trt.float16}
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        keep = layer.type in (trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE)
        if layer.type == trt.LayerType.ELEMENTWISE:
            layer.__class__ = trt.IElementWiseLayer  # the Python API hands out the base class
            keep = layer.op == trt.ElementWiseOperation.POW
        elif layer.type == trt.LayerType.UNARY:
            layer.__class__ = trt.IUnaryLayer
            keep = layer.op in unary
        if not keep or not all(layer.get_output(j).dtype in floats for j in range(layer.num_outputs)):
            continue
        if layer.type == trt.LayerType.NORMALIZATION:
            layer.__class__ = trt.INormalizationLayer
            if hasattr(layer, "compute_precision"):
                layer.compute_precision = trt.float32  # accumulate mean/variance in fp32 as well
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    return pinned


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    profiles: Sequence[InputProfile],
    precision: str,
    workspace_gb: float,
    timing_cache: Path,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Parse, configure, build and write one plan (atomically); returns the layers pinned to fp32."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise UserError(f"{onnx_path.name}: TensorRT cannot parse it: {errors[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    pinned: list[str] = []
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        pinned = _constrain_fp32(trt, network)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for p in profiles:
        profile.set_shape(p.name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache.is_file():
        try:
            cache = config.create_timing_cache(timing_cache.read_bytes())
        except Exception:  # noqa: BLE001 - a damaged cache only costs time: start a new one
            log(f"stp-build: ignoring unreadable timing cache {timing_cache.name}")
    cache = cache or config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    log(
        "  "
        + shlex.join(trtexec_command(onnx_path, plan_path, profiles, precision, workspace_gb, timing_cache, pinned))
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(
            f"TensorRT could not build {onnx_path.name} (see its log above); "
            "try a larger --workspace-gb or a smaller --max-batch / --max-window"
        )
    atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    atomic_write_bytes(plan_path, bytes(memoryview(serialized)))
    return pinned


@dataclass(frozen=True)
class BuildSettings:
    max_batch: int
    opt_batch: int
    max_window: int
    opt_window: int
    workspace_gb: float

    @classmethod
    def from_manifest(cls, manifest: Manifest, **overrides: Any) -> BuildSettings:
        """The export-time settings in `manifest['build']`, with any non-None override applied."""
        lookahead = int(manifest.head.get("exact_lookahead", 0))
        b = manifest.build
        values = {
            "max_batch": b.get("max_batch", DEFAULT_MAX_BATCH),
            "opt_batch": b.get("opt_batch", DEFAULT_OPT_BATCH),
            "max_window": b.get("max_window", default_max_window(lookahead)),
            "opt_window": b.get("opt_window"),
            "workspace_gb": b.get("workspace_gb", DEFAULT_WORKSPACE_GB),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if overrides.get("max_window") is not None and overrides.get("opt_window") is None:
            values["opt_window"] = None
        if values["opt_window"] is None:
            values["opt_window"] = default_opt_window(lookahead, values["max_window"])
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_batch": self.max_batch,
            "opt_batch": self.opt_batch,
            "max_window": self.max_window,
            "opt_window": self.opt_window,
            "workspace_gb": self.workspace_gb,
        }


def engine_jobs(manifest: Manifest, settings: BuildSettings) -> list[tuple[str, str, list[InputProfile]]]:
    """(role, precision, profiles) of each engine of a bundle: the encoder at the bundle's precision, the head fp32."""
    return [
        (
            "encoder",
            manifest.precision.get("encoder", "fp32"),
            encoder_profiles(settings.max_batch, settings.opt_batch),
        ),
        ("head", "fp32", head_profiles(manifest.dim, settings.max_window, settings.opt_window)),
    ] + (
        [("head_features", "fp32", head_features_profiles(manifest.dim, settings.max_window, settings.opt_window))]
        if manifest.has("head_features")
        else []
    )


def expected_key(manifest: Manifest, role: str, trt_version: str, compute_capability: str,
                 settings: BuildSettings | None = None) -> str:  # fmt: skip
    """The cache key a plan for `role` must carry on this TensorRT version and GPU (runtime check)."""
    settings = settings or BuildSettings.from_manifest(manifest)
    for job_role, precision, profiles in engine_jobs(manifest, settings):
        if job_role == role:
            onnx_sha = manifest.raw["files"][role]["sha256"]
            return engine_cache_key(onnx_sha, trt_version, compute_capability, precision, profiles)
    raise UserError(f"no engine role {role!r} (encoder, head, head_features)")


def plan_is_current(manifest: Manifest, role: str, key: str) -> bool:
    """True only if the manifest records `key` for this plan and the plan file's sha256 is the recorded one."""
    record = manifest.engines.get(role)
    if not record or record.get("key") != key:
        return False
    plan = manifest.root / record.get("path", "")
    return plan.is_file() and sha256_file(plan) == record.get("sha256")


def build_bundle_engines(
    manifest_file: str | os.PathLike,
    force: bool = False,
    log: Callable[[str], None] = print,
    **overrides: Any,
) -> Manifest:
    """Build (or reuse) the encoder and head plans of a bundle and record their keys in the manifest."""
    manifest = load_manifest(manifest_file)
    trt = require_tensorrt()
    version = str(trt.__version__)
    cc = gpu_compute_capability()
    settings = BuildSettings.from_manifest(manifest, **overrides)
    cache = timing_cache_path(manifest.stem, version, cc)
    engines = manifest.engines
    for role, precision, profiles in engine_jobs(manifest, settings):
        key = engine_cache_key(manifest.raw["files"][role]["sha256"], version, cc, precision, profiles)
        plan = manifest.stem.with_name(manifest.stem.name + ENGINE_SUFFIXES[role])
        if not force and plan_is_current(manifest, role, key):
            log(f"stp-build: {plan.name} is current (key {key[:12]}), not rebuilt")
            continue
        log(f"stp-build: building {plan.name} ({precision}, TensorRT {version}, sm {cc}) ...")
        start = time.perf_counter()
        pinned = build_engine(manifest.file(role), plan, profiles, precision, settings.workspace_gb, cache, log)
        seconds = time.perf_counter() - start
        engines[role] = {
            "path": plan.name,
            "sha256": sha256_file(plan),
            "key": key,
            "tensorrt": version,
            "compute_capability": cc,
            "precision": precision,
            "profiles": [p.to_dict() for p in profiles],
            "fp32_layers": len(pinned),
            "build_seconds": round(seconds, 1),
        }
        log(f"stp-build: wrote {plan.name} in {seconds:.1f} s")
    doc = dict(manifest.raw, engines=engines, build=settings.to_dict())
    write_manifest(manifest.path, doc)
    return Manifest(path=manifest.path, raw=doc)
