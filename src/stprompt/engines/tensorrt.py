"""TensorRT 10 / 11 engines for a bundle, built on the target device and cached by a key that names what made them.

Plans are tied to the TensorRT version and the GPU, so bundles ship ONNX + manifest and engines are built
where they run (`stp-build model.json`, or `stp-export --trt` on the target). Which engines a bundle gets, their
profiles and cache keys are the bundle room's (`stprompt.bundle.engine_keys`): a plan is reused only when its key
and sha256 match the manifest's record; anything else is rebuilt, never loaded.

Every network is strongly typed (TensorRT 10.x: `NetworkDefinitionCreationFlag.STRONGLY_TYPED`; 11.x: always), so
an engine's precision is its graph's: fp16 encoders are built from model.fp16.onnx, whose LayerNorm, softmax and
reductions are already fp32 (ViT LayerNorm overflows in fp16), fp32 engines from the fp32 graphs. No precision
builder flags (FP16 / OBEY_PRECISION_CONSTRAINTS are gone in 11.x) and no per-layer pinning. The temporal head is
always an fp32 engine, TF32 off where the flag exists. Timing caches persist beside the plans, one per TensorRT
version and GPU architecture.

Torch-free; `tensorrt` (and cuda-python, for the compute capability) are imported only when building.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..bundle.engine_keys import (
    BuildSettings,
    InputProfile,
    engine_cache_key,
    engine_jobs,
    engine_path,
    plan_is_current,
)
from ..bundle.hashing import sha256_file
from ..bundle.manifest import Manifest, load_manifest, write_manifest
from ..errors import UserError
from ..fileio import atomic_write_bytes

MODE = "strongly typed"  # the only build mode: precision comes from the ONNX graph, no precision flags
TRT_MISSING = (
    'TensorRT is not installed: pip install "stprompt[trt]" (x86_64, CUDA 12) or, on Jetson, '
    "use JetPack 6's TensorRT (python3-libnvinfer)"
)


def profile_shapes(profiles: Sequence[InputProfile], which: str) -> str:
    """`images:1x3x224x224` (which = min, opt or max): trtexec's and ONNX Runtime's TensorRT profile syntax."""
    return ",".join(f"{p.name}:{'x'.join(str(d) for d in getattr(p, which))}" for p in profiles)


def trtexec_command(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    profiles: Sequence[InputProfile],
    precision: str,
    workspace_gb: float,
    timing_cache: str | os.PathLike,
) -> list[str]:
    """The trtexec invocation equivalent to `build_engine` (argv list; `shlex.join` it to print): a strongly typed
    build, so precision comes from the ONNX given (model.fp16.onnx for fp16 encoders), no precision flags."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
    cmd = [
        "trtexec",
        f"--onnx={os.fspath(onnx_path)}",
        f"--saveEngine={os.fspath(plan_path)}",
        "--stronglyTyped",
        f"--minShapes={profile_shapes(profiles, 'min')}",
        f"--optShapes={profile_shapes(profiles, 'opt')}",
        f"--maxShapes={profile_shapes(profiles, 'max')}",
        f"--memPoolSize=workspace:{max(1, round(workspace_gb * 1024))}M",
        f"--timingCacheFile={os.fspath(timing_cache)}",
    ]
    if precision == "fp32":
        cmd.append("--noTF32")
    return cmd


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


def import_cudart():
    """cuda-python's CUDA runtime module (`cuda.bindings.runtime` from 12.6, `cuda.cudart` before), or None."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    return cudart


def gpu_compute_capability(device: int = 0) -> str:
    """'8.7' etc. of CUDA device `device`, through cuda-python, else nvidia-smi."""
    cudart = import_cudart()
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


def strongly_typed_flags(trt) -> int:
    """`create_network` flags: STRONGLY_TYPED where the enum has it (TensorRT 10.x; always on where it does not)."""
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    profiles: Sequence[InputProfile],
    precision: str,
    workspace_gb: float,
    timing_cache: Path,
    log: Callable[[str], None] = print,
) -> None:
    """Parse, configure, build and write one plan (atomically), strongly typed: every tensor keeps the type the
    ONNX gives it (`onnx_path` is model.fp16.onnx for fp16 encoders), no precision flags, nothing pinned."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise UserError(f"{onnx_path.name}: TensorRT cannot parse it: {errors[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
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
    log("  " + shlex.join(trtexec_command(onnx_path, plan_path, profiles, precision, workspace_gb, timing_cache)))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(
            f"TensorRT could not build {onnx_path.name} (see its log above); "
            "try a larger --workspace-gb or a smaller --max-batch / --max-window"
        )
    atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    atomic_write_bytes(plan_path, bytes(memoryview(serialized)))


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
    for role, precision, profiles, source in engine_jobs(manifest, settings):
        key = engine_cache_key(manifest.raw["files"][source]["sha256"], version, cc, precision, profiles)
        plan = engine_path(manifest, role)
        if not force and plan_is_current(manifest, role, key):
            log(f"stp-build: {plan.name} is current (key {key[:12]}), not rebuilt")
            continue
        onnx = manifest.file(source)
        log(f"stp-build: building {plan.name} from {onnx.name} ({precision}, {MODE}, TensorRT {version}, sm {cc}) ...")
        start = time.perf_counter()
        build_engine(onnx, plan, profiles, precision, settings.workspace_gb, cache, log)
        seconds = time.perf_counter() - start
        engines[role] = {
            "path": plan.name,
            "sha256": sha256_file(plan),
            "key": key,
            "tensorrt": version,
            "compute_capability": cc,
            "precision": precision,
            "mode": MODE,
            "onnx": onnx.name,
            "profiles": [p.to_dict() for p in profiles],
            "build_seconds": round(seconds, 1),
        }
        log(f"stp-build: wrote {plan.name} in {seconds:.1f} s")
    doc = dict(manifest.raw, engines=engines, build=settings.to_dict())
    write_manifest(manifest.path, doc)
    return Manifest(path=manifest.path, raw=doc)
