"""OpenVINO on the CPU: the encoder IR stp-build converted (bf16 hint) or quantized (INT8) here, the heads on ONNX
Runtime.

The engine is compiled with what its manifest record says was gated (the inference precision hint) and the
performance hint chosen at build. LATENCY: one stream using every core, one synchronous request per encoder call.
THROUGHPUT: OpenVINO compiles several streams (2 on 2 vCPUs) and a single synchronous request would keep only one of
them busy, so each encoder call is cut into as many parts as OpenVINO's optimal number of requests, one infer
request each, all started together. An engine whose key no longer matches (another OpenVINO version or CPU, another
export) is refused, never run.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ...bundle.manifest import Manifest
from ...bundle.membership import bundle_role
from ...bundle.openvino_keys import OPENVINO_ROLES, ir_is_current, recorded_key
from ...bundle.ort import CPU
from ...engines import openvino as ov_engines
from ...errors import UserError, first_line
from .ort import HostHeadsBackend


def open_openvino(xml: Path, manifest: Manifest, max_batch: int | None) -> OpenVinoBackend:
    """The backend for an IR the manifest records (by sha256) as one of its OpenVINO engines."""
    role = bundle_role(xml, manifest, "engines")
    if role not in OPENVINO_ROLES:
        raise UserError(f"{xml.name} is the bundle's {role!r} engine, not an OpenVINO encoder")
    return OpenVinoBackend(xml, manifest, role, max_batch)


def missing_ir(xml: Path, bundle: Path | str) -> str:
    """Why an OpenVINO engine named on the command line is absent, and how to build it."""
    int8 = " --int8" if xml.name.endswith(".int8.xml") else ""
    return (f"OpenVINO engine not found: {xml}; it is built on the target CPU, not by stp-export: stp-build "
            f"--openvino{int8} {bundle} (or let the CPU container / stp-appliance build it on its first start)")


class OpenVinoBackend(HostHeadsBackend):
    """An OpenVINO IR built by `stp-build --openvino` for this bundle, OpenVINO version and CPU."""

    def __init__(self, xml: Path, manifest: Manifest, role: str, max_batch: int | None):
        ov = ov_engines.require_openvino()
        core = ov_engines.shared_core()  # one per process: see its docstring (signal stacks)
        version, cpu = ov_engines.openvino_version(ov), ov_engines.cpu_target(core)
        record: dict[str, Any] = manifest.engines[role]
        if not ir_is_current(manifest, role, recorded_key(manifest, record, version, cpu)):
            int8 = " --int8" if record.get("precision") == "int8" else ""
            raise UserError(
                f"{xml.name} was not built for this bundle on OpenVINO {ov_engines.short_version(version)} and this "
                f"CPU (stale or foreign engine); rebuild it here: stp-build --openvino{int8} {manifest.path}"
            )
        properties = ov_engines.compile_properties(record["inference_precision"], record["hint"])
        try:
            self._compiled = core.compile_model(core.read_model(str(xml)), "CPU", properties)
        except Exception as err:  # noqa: BLE001 - OpenVINO raises its own types
            raise UserError(f"{xml.name}: OpenVINO cannot compile it: {first_line(err)}") from None
        n = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        # plain requests, no Python callbacks: a callback would need the GIL on OpenVINO's stream threads, and the
        # compiled model's destructor joins those threads while holding it (a deadlock at close, seen with
        # AsyncInferQueue)
        self._infer_requests = [self._compiled.create_infer_request() for _ in range(max(1, n))]
        self.manifest, self.path, self.dim, self.max_batch = manifest, xml, manifest.dim, max_batch
        self.preprocess = manifest.preprocess
        self.precision, self.hint = record["precision"], record["hint"]
        self.host_encoder = True
        self.name = f"openvino[CPU,{self.precision},{self.hint},{len(self._infer_requests)} requests]"
        self._open_heads(manifest, [CPU])
        self._lock = threading.Lock()  # one request set: calls from several threads take turns

    def _encode_batch(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._infer(images)

    def _infer(self, images: np.ndarray) -> np.ndarray:
        """One part of the call per request, all in flight at once (one request: a plain synchronous call)."""
        requests = self._infer_requests[: min(len(self._infer_requests), len(images))]
        if len(requests) == 1:
            return np.array(requests[0].infer({0: images})[0], np.float32)
        parts = np.array_split(images, len(requests))
        for request, part in zip(requests, parts, strict=True):
            request.start_async({0: np.ascontiguousarray(part)})
        for request in requests:
            request.wait()
        return np.concatenate([np.array(r.get_output_tensor(0).data, np.float32) for r in requests], axis=0)

    def close(self) -> None:
        self._infer_requests = []
        self._compiled = None
        super().close()
