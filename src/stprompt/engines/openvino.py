"""OpenVINO engines of a bundle's image encoder: converted, quantized and gated on the target CPU, cached by key.

OpenVINO is Intel's runtime for its CPUs: matrix work runs on AMX (bf16, INT8) or AVX-512 VNNI where the CPU has
them. Two engines, each built on request (`stp-build --openvino [--int8]`), beside the manifest:

- `model.xml` (+ .bin): the bundle's fp32 encoder graph as IR (fp32 weights), run with the bf16 inference precision
  hint where the CPU has bf16 and fp32 where it has not;
- `model.int8.xml` (+ .bin): that graph quantized by NNCF post-training quantization in transformer mode, on
  calibration crops (`stprompt.engines.calibration`: the site's footage with --calibrate, else the probe scene).

Each passes the export's kind of gate before it is written: the minimum centred cosine of its embeddings against
the bundle's fp32 graph on ONNX Runtime over the export's probe crops (and over held-out frames of the footage when
calibrated on it), and the head's scores fed its embeddings against the head fed the reference's. A failed gate
writes nothing. The manifest records the engine with its key (`stprompt.bundle.openvino_keys`) and the compile
settings the runtime must use (the gated precision hint, the performance hint). The temporal head stays on ONNX
Runtime. Torch-free: openvino and nncf are imported only here, when building or compiling.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import io
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.hashing import sha256_file
from ..bundle.manifest import Manifest, load_manifest, write_manifest
from ..bundle.openvino_keys import (
    BF16_ROLE,
    HINTS,
    INT8_ROLE,
    ir_is_current,
    ir_path,
    openvino_cache_key,
    weights_path,
)
from ..cpuinfo import cpu_flags
from ..errors import UserError, first_line
from .gates import gate_engine, require_gates

DEFAULT_FRAMES = 6  # calibration frames (50 crops each): 300 crops, NNCF's default subset size

OPENVINO_MISSING = 'OpenVINO is not installed: pip install "stprompt[openvino]"'
NNCF_MISSING = 'INT8 engines are quantized with NNCF, which is not installed: pip install "stprompt[openvino]"'
BF16_GATE = 0.995  # bf16 keeps 8 mantissa bits (fp16: 11), so below the export's 0.999 fp16 gate
INT8_GATE = 0.99  # the export's int8 gate (a bundle's own gates.encoder_int8 threshold wins)
FP32_GATE = 0.999  # the export's fp32 encoder gate, for CPUs without bf16 (a bundle's own threshold wins)
SCORE_GATE = 0.02  # head outputs (score, score_c, probs): max abs difference, engine vs reference embeddings
DEFAULT_HINT = "throughput"  # 2 streams on 2 vCPUs, each call split over them: +3-6 % over latency (ViT-B-16)


@contextlib.contextmanager
def _no_usage_telemetry():
    """`import openvino` sends a usage event to Intel's analytics (openvino.tools.ovc, on every import) and leaves a
    client id under ~/intel, and so does `import nncf`, unless the process looks like a CI job: both decide once,
    at import. An appliance must not reach out, so the imports run with CI=true (and NNCF_CI=1), put back after."""
    saved = {name: os.environ.get(name) for name in ("CI", "NNCF_CI")}
    os.environ.update(CI="true", NNCF_CI="1")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def require_openvino():
    """The openvino module (pyproject.toml pins the versions we test), imported with its usage telemetry off, or
    one UserError naming the extra."""
    try:
        with _no_usage_telemetry():
            import openvino as ov
    except ImportError:
        raise UserError(OPENVINO_MISSING) from None
    return ov


@functools.cache
def shared_core():
    """The process's one `openvino.Core`. Each Core loads its own CPU plugin, which sets an alternate signal stack
    on the thread that loads it and puts the previous one back when it is destroyed: two Cores destroyed in the order
    they were made leave that thread on a freed stack, and the next signal it takes (SIGTERM, Ctrl-C) kills the
    process with SIGSEGV (OpenVINO 2026.4). One Core, never destroyed, never nests."""
    return require_openvino().Core()


def openvino_available() -> bool:
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):  # blocked or half installed
        return False


def require_nncf():
    """nncf with its log quiet (INFO lines and progress bars are not stp-build's) and its usage telemetry off, or
    one UserError."""
    # importing nncf imports torch where installed, which warns about CUDA on CPU machines: not ours to print
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        with _no_usage_telemetry():
            import nncf
    except ImportError:
        raise UserError(NNCF_MISSING) from None
    nncf.set_log_level(logging.ERROR)
    return nncf


def nncf_version() -> str:
    try:
        return importlib.metadata.version("nncf")
    except importlib.metadata.PackageNotFoundError:
        raise UserError(NNCF_MISSING) from None


def openvino_version(ov) -> str:
    """The full build string (2026.4.1-22982-...): part of the key."""
    return str(ov.get_version())


def short_version(version: str) -> str:
    """2026.4.1 of a build string, for messages."""
    return version.split("-")[0]


def cpu_target(core) -> dict[str, Any]:
    """What OpenVINO's CPU plugin can do here (its OPTIMIZATION_CAPABILITIES) and the ISA features behind it."""
    caps = sorted(str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return {"capabilities": caps, "isa": cpu_flags()}


def float_precision(cpu: dict[str, Any]) -> str:
    """bf16 where the CPU plugin offers it (AMX, AVX512_BF16), else fp32."""
    return "bf16" if "BF16" in cpu["capabilities"] else "fp32"


def compile_properties(inference_precision: str, hint: str) -> dict[str, str]:
    """The properties an engine is compiled with: the gated precision hint and the performance hint."""
    return {"INFERENCE_PRECISION_HINT": "bf16" if inference_precision == "bf16" else "f32",
            "PERFORMANCE_HINT": hint.upper()}  # fmt: skip


@dataclass(frozen=True)
class OpenVinoOptions:
    """What `stp-build --openvino` was asked for."""

    int8: bool = False
    calibrate: tuple[str, ...] = ()  # videos of the site; empty = the probe scene
    calibration_frames: int = DEFAULT_FRAMES
    hint: str = DEFAULT_HINT
    gate: float | None = None  # min centred cosine; None = by precision (BF16_GATE, the bundle's fp32 / int8 gates)
    score_gate: float = SCORE_GATE

    def __post_init__(self) -> None:
        if self.calibrate and not self.int8:
            raise UserError("--calibrate sets INT8 ranges: add --int8")
        if self.calibration_frames < 1:
            raise UserError(f"--calibration-frames must be at least 1, got {self.calibration_frames}")
        if self.hint not in HINTS:
            raise UserError(f"--hint must be one of {', '.join(HINTS)}, got {self.hint!r}")
        if self.gate is not None and not 0 < self.gate <= 1:
            raise UserError(f"--gate must be in (0, 1], got {self.gate}")
        if not self.score_gate > 0:
            raise UserError(f"--score-gate must be > 0, got {self.score_gate}")


@dataclass(frozen=True)
class OpenVinoJob:
    """The engine these options give on this OpenVINO and CPU, with the key it must carry."""

    role: str
    precision: str  # the record's: bf16, fp32 or int8
    inference_precision: str  # bf16 or fp32: the hint ops that are not quantized run at
    hint: str
    calibration: dict[str, Any] | None
    nncf: str | None
    thresholds: dict[str, float]
    openvino: str
    cpu: dict[str, Any] = field(repr=False)
    key: str = ""


def plan_job(manifest: Manifest, opts: OpenVinoOptions, openvino: str, cpu: dict[str, Any]) -> OpenVinoJob:
    """The job (role, precision, calibration identity, thresholds) and its key; hashes --calibrate videos."""
    floats = float_precision(cpu)
    gates = manifest.gates
    if opts.int8:
        role, precision = INT8_ROLE, "int8"
        default = float(gates.get("encoder_int8", {}).get("threshold", INT8_GATE))
        from . import calibration as calib

        identity = (calib.video_identity(opts.calibrate, opts.calibration_frames) if opts.calibrate
                    else calib.probe_identity(opts.calibration_frames))  # fmt: skip
        nncf = nncf_version()
    else:
        role, precision, identity, nncf = BF16_ROLE, floats, None, None
        default = BF16_GATE if floats == "bf16" else float(gates.get("encoder_fp32", {}).get("threshold", FP32_GATE))
    thresholds = {"cosine": opts.gate if opts.gate is not None else default, "scores": opts.score_gate}
    onnx_sha = manifest.raw["files"]["encoder"]["sha256"]
    key = openvino_cache_key(onnx_sha, openvino, cpu, precision, opts.hint, identity, nncf, thresholds)
    return OpenVinoJob(role, precision, floats, opts.hint, identity, nncf, thresholds, openvino, cpu, key)


def target(ov=None) -> tuple[str, dict[str, Any]]:
    """(OpenVINO version, CPU target) here."""
    ov = ov or require_openvino()
    return openvino_version(ov), cpu_target(shared_core())


def quantize(model, crops: np.ndarray, progress: bool = True):
    """NNCF post-training quantization in transformer mode (SmoothQuant, no quantized softmax / LayerNorm), one
    calibration crop per sample, every crop used. NNCF's progress bars go to stderr (`progress`) or nowhere: stdout
    is not stp-build's to fill."""
    nncf = require_nncf()
    dataset = nncf.Dataset([crops[i : i + 1] for i in range(len(crops))])
    with contextlib.redirect_stdout(sys.stderr if progress else io.StringIO()):
        try:
            return nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(crops))
        except Exception as err:  # noqa: BLE001 - NNCF raises its own and the backend's types
            raise UserError(f"NNCF could not quantize the encoder: {first_line(err)}") from None


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial-{os.getpid()}.xml")


def build_openvino_engine(
    manifest_file: str | os.PathLike,
    opts: OpenVinoOptions,
    force: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> Manifest:
    """Build (or reuse) the OpenVINO engine `opts` asks for, gate it, and record it in the manifest. `progress`:
    NNCF's progress bars on stderr."""
    manifest = load_manifest(manifest_file)
    ov = require_openvino()
    if opts.int8:
        require_nncf()
    version, cpu = target(ov)
    job = plan_job(manifest, opts, version, cpu)
    xml = ir_path(manifest, job.role)
    if not force and ir_is_current(manifest, job.role, job.key):
        log(f"stp-build: {xml.name} is current (key {job.key[:12]}), not rebuilt")
        return manifest
    isa = " ".join(cpu["isa"]) or "no AMX / AVX-512 / AVX2 flag seen"
    what = f"{job.precision}, {job.hint} hint, OpenVINO {short_version(version)}, CPU {isa}"
    log(f"stp-build: building {xml.name} from {manifest.file('encoder').name} ({what}) ...")
    start = time.perf_counter()
    core = shared_core()
    try:
        # the converter, not Core.read_model: it folds constants and shape subgraphs (ViT-B-16: a 0.48 MB xml against
        # read_model's 1.26 MB), the graph NNCF, the gates and the measurements saw; it sends a usage event of its own
        # when called, hence the guard
        with _no_usage_telemetry():
            model = ov.convert_model(os.fspath(manifest.file("encoder")))
    except Exception as err:  # noqa: BLE001 - the converter raises its own types
        raise UserError(f"{manifest.file('encoder').name}: OpenVINO cannot convert it: {first_line(err)}") from None
    holdout = None
    if opts.int8:
        from . import calibration as calib

        pre = manifest.preprocess
        if opts.calibrate:
            data = calib.video_calibration(opts.calibrate, manifest.stride, manifest.offset, pre,
                                           opts.calibration_frames, job.calibration)  # fmt: skip
        else:
            data = calib.probe_calibration(pre, opts.calibration_frames)
        what = "the probe scene" if data.holdout is None else "site footage and the probe scene"
        log(f"stp-build: calibrating INT8 on {len(data.crops)} crops of {what} (NNCF, transformer mode) ...")
        model = quantize(model, data.crops, progress)
        holdout = data.holdout
    staged = _partial(xml)
    try:
        try:
            ov.save_model(model, os.fspath(staged), compress_to_fp16=False)
            compiled = core.compile_model(core.read_model(os.fspath(staged)), "CPU",
                                          compile_properties(job.inference_precision, job.hint))  # fmt: skip
        except RuntimeError as err:  # OpenVINO's own errors: one line, and the appliance falls back to ONNX Runtime
            raise UserError(f"{xml.name}: OpenVINO cannot save or compile it: {first_line(err)}") from None
        provider = f"OpenVINO CPU ({job.precision}, {job.inference_precision} hint)"
        gates = gate_engine(manifest, compiled, job.thresholds, provider, holdout, log)
        require_gates(xml.name, gates, opts.int8)
        os.replace(weights_path(staged), weights_path(xml))
        os.replace(staged, xml)
    finally:
        staged.unlink(missing_ok=True)
        weights_path(staged).unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    record = engine_record(manifest, job, xml, gates, seconds)
    doc = dict(manifest.raw, engines={**manifest.engines, job.role: record})
    write_manifest(manifest.path, doc)
    log(f"stp-build: wrote {xml.name} and {weights_path(xml).name} in {seconds:.1f} s")
    return Manifest(path=manifest.path, raw=doc)


def engine_record(manifest: Manifest, job: OpenVinoJob, xml: Path, gates: dict[str, Any],
                  seconds: float) -> dict[str, Any]:  # fmt: skip
    """The manifest's `engines` entry: files and hashes, the key and what it was made of, the gates it passed."""
    weights = weights_path(xml)
    return {
        "path": xml.name,
        "sha256": sha256_file(xml),
        "weights": {"path": weights.name, "sha256": sha256_file(weights), "bytes": weights.stat().st_size},
        "key": job.key,
        "openvino": job.openvino,
        "cpu": job.cpu,
        "precision": job.precision,
        "inference_precision": job.inference_precision,
        "hint": job.hint,
        "calibration": job.calibration,
        "nncf": job.nncf,
        "thresholds": job.thresholds,
        "onnx": manifest.file("encoder").name,
        "gates": gates,
        "build_seconds": round(seconds, 1),
    }

