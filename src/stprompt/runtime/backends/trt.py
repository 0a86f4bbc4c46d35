"""TensorRT plans built on this device by stp-build: the encoder plan given and the manifest's head plans.

Named-tensor I/O (`set_input_shape`, `set_tensor_address`, `execute_async_v3`), device buffers allocated once at
each profile's max shapes. A plan whose cache key or sha256 does not match the manifest is refused, never run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...bundle.engine_keys import engine_path, expected_key, plan_is_current
from ...bundle.graphs import ENCODER_INPUT, ENCODER_OUTPUT, PRE_INPUT, PRE_OUTPUT, X_AS, X_CLIP, X_PATCH
from ...bundle.manifest import Manifest
from ...engines import tensorrt as trt_engines
from ...errors import UserError
from .base import BackendBase, as_float32, check_features_inputs, check_head_inputs
from .cuda_memory import cuda_memory


class _TrtEngine:
    """One deserialized plan: named I/O tensors, device buffers allocated once at the profile's max shapes."""

    def __init__(self, trt, runtime, path: Path, mem):
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise UserError(f"{path.name}: TensorRT cannot deserialize this plan (see its log); rebuild: stp-build")
        self.path, self.engine, self.mem = path, engine, mem
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.max_shapes = {n: tuple(int(d) for d in engine.get_tensor_profile_shape(n, 0)[2]) for n in self.inputs}
        for n, shape in self.max_shapes.items():
            self.context.set_input_shape(n, shape)
        shapes = dict(self.max_shapes)
        shapes.update({n: tuple(int(d) for d in self.context.get_tensor_shape(n)) for n in self.outputs})
        self.buffers: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        for n in names:
            self.bytes[n] = int(np.prod(shapes[n])) * self.dtypes[n].itemsize
            self.buffers[n] = mem.malloc(self.bytes[n])
            self.context.set_tensor_address(n, self.buffers[n])
        self.borrowed: set[str] = set()  # outputs written into another engine's input buffer (not fetched, not freed)

    def write_into(self, output: str, other: _TrtEngine, input_: str) -> None:
        """Chain: this engine's `output` goes straight into `other`'s `input_` buffer on the device (same stream,
        so in order), never to the host."""
        if self.bytes[output] > other.bytes[input_]:
            raise UserError(f"{self.path.name}: its {output} does not fit {other.path.name}'s {input_} (rebuild both "
                            "with the same --max-batch: stp-build)")  # fmt: skip
        with self.mem.active():
            self.mem.free(self.buffers[output])
        self.buffers[output] = other.buffers[input_]
        self.context.set_tensor_address(output, self.buffers[output])
        self.borrowed.add(output)

    def run(self, feeds: dict[str, np.ndarray], then: tuple[_TrtEngine, str] | None = None) -> dict[str, np.ndarray]:
        """Copy `feeds` in, execute, copy the outputs out. `then` = (engine, input): a chained engine executed next
        on the device, its input already written by this one (`write_into`); the outputs are then its."""
        with self.mem.active():
            hosts = []
            for n in self.inputs:
                arr = np.ascontiguousarray(feeds[n], dtype=self.dtypes[n])
                if len(arr.shape) != len(self.max_shapes[n]) or any(
                    a > m for a, m in zip(arr.shape, self.max_shapes[n], strict=True)
                ):
                    raise UserError(
                        f"{self.path.name}: input {n} {list(arr.shape)} exceeds the engine's profile max "
                        f"{list(self.max_shapes[n])} (rebuild with stp-build --max-batch / --max-window)"
                    )
                if self.context.set_input_shape(n, arr.shape) is False:  # outside the profile's min..max
                    raise UserError(f"{self.path.name}: TensorRT refuses input {n} {list(arr.shape)} (profile "
                                    f"max {list(self.max_shapes[n])}); rebuild it with stp-build")  # fmt: skip
                self.mem.h2d(self.buffers[n], arr)
                hosts.append(arr)  # keep host memory alive until the stream is synchronized
            last = self._execute()
            if then is not None:
                engine, input_ = then
                (output,) = self.borrowed
                if engine.context.set_input_shape(input_, tuple(self.context.get_tensor_shape(output))) is False:
                    raise UserError(f"{engine.path.name}: TensorRT refuses input {input_} from {self.path.name}")
                last = engine._execute()
            outs = {n: np.empty(tuple(last.context.get_tensor_shape(n)), last.dtypes[n])
                    for n in last.outputs if n not in last.borrowed}  # fmt: skip
            for n, host in outs.items():
                self.mem.d2h(host, last.buffers[n])
            self.mem.sync()
        return outs

    def _execute(self) -> _TrtEngine:
        if not self.context.execute_async_v3(self.mem.handle):
            raise RuntimeError(f"{self.path.name}: TensorRT execute_async_v3 failed")
        return self

    def close(self) -> None:
        with self.mem.active():
            for n, ptr in self.buffers.items():
                if n not in self.borrowed:
                    self.mem.free(ptr)
        self.buffers.clear()
        self.context = self.engine = None


class TrtBackend(BackendBase):
    """TensorRT 10 plans built on this device by stp-build: the encoder plan given and the manifest's head plan."""

    def __init__(self, plan: Path, manifest: Manifest, max_batch: int | None):
        trt = trt_engines.require_tensorrt()

        version, cc = str(trt.__version__), trt_engines.gpu_compute_capability()
        roles = ("encoder", "head") + tuple(r for r in ("head_features", "encoder_pre") if manifest.has(r))
        for role in roles:
            path = manifest.engine(role)
            if path is None or not plan_is_current(manifest, role, expected_key(manifest, role, version, cc)):
                raise UserError(
                    f"{(path or engine_path(manifest, role)).name} was not built for this bundle on TensorRT {version} "
                    f"/ GPU sm {cc} "
                    f"(stale or foreign plan); rebuild on this device: stp-build {manifest.path}"
                )
        self.manifest, self.path, self.dim, self.name = manifest, plan, manifest.dim, "tensorrt"
        self.preprocess = manifest.preprocess
        self._mem = cuda_memory()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._encoder = _TrtEngine(trt, self._runtime, plan, self._mem)
        self._head = _TrtEngine(trt, self._runtime, manifest.engine("head"), self._mem)
        self._head_features = (
            _TrtEngine(trt, self._runtime, manifest.engine("head_features"), self._mem)
            if "head_features" in roles
            else None
        )
        self._pre = None
        if "encoder_pre" in roles:  # uint8 crops in, normalised on the device straight into the encoder's input
            self._pre = _TrtEngine(trt, self._runtime, manifest.engine("encoder_pre"), self._mem)
            self._pre.write_into(PRE_OUTPUT, self._encoder, ENCODER_INPUT)
            self.input_format = "uint8"
        limit = self._encoder.max_shapes[ENCODER_INPUT][0]
        if self._pre is not None:  # built with the same settings; a smaller profile (built apart) bounds the calls
            limit = min(limit, self._pre.max_shapes[PRE_INPUT][0])
        self.max_batch = min(max_batch or limit, limit)  # larger calls are split at the profile's max, not refused
        self.max_window = self._head.max_shapes[X_CLIP][0]

    def _encode_batch(self, images: np.ndarray) -> np.ndarray:
        return self._encoder.run({ENCODER_INPUT: images})[ENCODER_OUTPUT]

    def _encode_pixel_batch(self, pixels: np.ndarray) -> np.ndarray:
        if self._pre is None:  # a bundle exported before model.pre.onnx: normalised on the host
            return super()._encode_pixel_batch(pixels)
        return self._pre.run({PRE_INPUT: pixels}, then=(self._encoder, ENCODER_INPUT))[ENCODER_OUTPUT]

    def head(self, x_clip: np.ndarray, x_patch: np.ndarray) -> dict[str, np.ndarray]:
        x_clip, x_patch = check_head_inputs(x_clip, x_patch, self.dim)
        return as_float32(self._head.run({X_CLIP: x_clip, X_PATCH: x_patch}))

    def head_features(self, x_clip: np.ndarray, x_as: np.ndarray) -> dict[str, np.ndarray] | None:
        if self._head_features is None:
            return None
        x_clip, x_as = check_features_inputs(x_clip, x_as, self.dim)
        return as_float32(self._head_features.run({X_CLIP: x_clip, X_AS: x_as}))

    def close(self) -> None:
        for engine in (self._pre, self._encoder, self._head, self._head_features):
            if engine is not None:
                engine.close()
        self._mem.close()
