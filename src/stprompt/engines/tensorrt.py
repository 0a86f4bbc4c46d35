"""TensorRT 10 engines for a bundle, built on the target device and cached by a key that names what made them.

Plans are tied to the TensorRT version and the GPU, so bundles ship ONNX + manifest and engines are built
where they run (`stp-build model.json`, or `stp-export --trt` on the target). Which engines a bundle gets, their
profiles and cache keys are the bundle room's (`stprompt.bundle.engine_keys`): a plan is reused only when its key
and sha256 match the manifest's record; anything else is rebuilt, never loaded.

FP16 engines are built from the fp32 ONNX with normalisation, softmax and reduction layers constrained to
fp32 and the constraints obeyed (ViT LayerNorm overflows in fp16). The temporal head is always an fp32
engine, TF32 off. Timing caches persist beside the plans, one per TensorRT version and GPU architecture.

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
from ..bundle.graphs import FP32_OPS
from ..bundle.hashing import sha256_file
from ..bundle.manifest import Manifest, load_manifest, write_manifest
from ..errors import UserError
from ..fileio import atomic_write_bytes

TRT_MISSING = (
    'TensorRT is not installed: pip install "stprompt[trt]" (x86_64, CUDA 12) or, on Jetson, '
    "use JetPack 6's TensorRT (python3-libnvinfer)"
)


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
        plan = engine_path(manifest, role)
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
