"""One stand-in for TensorRT 10 / 11 (and cuda-python's runtime API) so the engine chain runs on machines without a GPU.

Builder side (what `stprompt.engines.tensorrt` calls): `Builder`, `create_network`, `OnnxParser`,
`create_builder_config` (flags, memory pool, optimization profiles, timing cache) and `build_serialized_network`,
which writes a JSON "plan" naming the parsed ONNX file, the build flags ("strongly_typed" when the network is:
the STRONGLY_TYPED creation flag on 10.x, always on 11.x) and every input's (min, opt, max) profile shape. Each
build is recorded in `trt.builds` as (network, config). The network has no layers to pin.

Per version: the names tests/trt_api/tensorrt-<major.minor>.txt (NVIDIA's wheels, benchmarks/trt_api/
extract_names.py) records as absent are absent here too, so code that uses e.g. BuilderFlag.FP16 fails on 11.4.

Runtime side (what `stprompt.runtime.backends.trt` calls): `Runtime.deserialize_cuda_engine` reads such a plan
(None for anything else, or for a plan of another TensorRT version), the engine's named-tensor API, and an
execution context whose `execute_async_v3` runs the ONNX file with ONNX Runtime, reading inputs from and writing
outputs to the fake device memory of `FakeCudart`. Outputs go exactly where the backend pointed them and a buffer
too small for a tensor is an error, so buffer sizing, addresses and copies are really exercised.

`install(monkeypatch)` puts `tensorrt`, `cuda`, `cuda.bindings` and `cuda.bindings.runtime` in `sys.modules`, so
a plan built by the real `build_bundle_engines` runs in the real `TrtBackend`.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import json
import os
import sys
import types
from collections.abc import Mapping, Sequence

import numpy as np

PLAN_FORMAT = "fake-tensorrt-plan/1"
COMPUTE_CAPABILITY = "9.0"


# --- cuda-python's runtime API --------------------------------------------------------------------------------------


class FakeCudart:
    """`cuda.bindings.runtime` stand-in: device memory is numpy byte buffers keyed by fake pointers."""

    class cudaMemcpyKind:  # noqa: N801 - cuda-python's name
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def __init__(self, compute_capability: str = COMPUTE_CAPABILITY):
        self.major, self.minor = (int(v) for v in compute_capability.split("."))
        self.mem: dict[int, np.ndarray] = {}
        self.streams: set[int] = set()
        self.copies = {"h2d": 0, "d2h": 0}
        self._next_ptr, self._next_stream = 4096, 7

    def _buffer(self, ptr: int, n: int) -> np.ndarray:
        if ptr not in self.mem:
            raise RuntimeError(f"fake cudart: {ptr:#x} is not a device allocation")
        if n > self.mem[ptr].size:
            raise RuntimeError(f"fake cudart: copy of {n} bytes into a {self.mem[ptr].size}-byte allocation")
        return self.mem[ptr]

    def cudaSetDevice(self, device):  # noqa: N802
        return (0,)

    def cudaFree(self, ptr):  # noqa: N802
        self.mem.pop(int(ptr), None)
        return (0,)

    def cudaMalloc(self, n):  # noqa: N802
        ptr, self._next_ptr = self._next_ptr, self._next_ptr + n + 4096
        self.mem[ptr] = np.zeros(n, np.uint8)
        return 0, ptr

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):  # noqa: N802
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            self._buffer(dst, n)[:n] = np.frombuffer((ctypes.c_uint8 * n).from_address(src), np.uint8)
            self.copies["h2d"] += 1
        else:
            ctypes.memmove(dst, self._buffer(src, n).ctypes.data, n)
            self.copies["d2h"] += 1
        return (0,)

    def cudaStreamCreate(self):  # noqa: N802
        handle, self._next_stream = self._next_stream, self._next_stream + 1
        self.streams.add(handle)
        return 0, handle

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return (0,)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        self.streams.discard(int(stream))
        return (0,)

    def cudaGetErrorString(self, err):  # noqa: N802
        return 0, b"fake cuda error"

    def cudaGetDeviceProperties(self, device):  # noqa: N802
        return 0, types.SimpleNamespace(major=self.major, minor=self.minor)


# --- plans ------------------------------------------------------------------------------------------------------------


def plan_bytes(onnx: str | os.PathLike, profiles: Mapping[str, Sequence[Sequence[int]]], version: str = "10.3.0",
               flags: Sequence[str] = ()) -> bytes:  # fmt: skip
    """A fake plan: the ONNX file it runs and each input's profile. `profiles[name]` is (min, opt, max) shapes,
    or only the max shape (then min has 1 in the first, dynamic, dimension and opt is the max)."""
    prof = {}
    for name, shapes in profiles.items():
        if not isinstance(shapes[0], (list, tuple)):
            shapes = ([1, *shapes[1:]], shapes, shapes)
        prof[name] = [[int(d) for d in shape] for shape in shapes]
    doc = {"format": PLAN_FORMAT, "tensorrt": version, "onnx": os.path.abspath(onnx), "flags": sorted(flags),
           "profiles": prof}  # fmt: skip
    return json.dumps(doc, sort_keys=True).encode()


def read_plan(data: bytes) -> dict | None:
    """The plan document, or None for bytes that are not a fake plan (as TensorRT refuses a foreign plan)."""
    try:
        doc = json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == PLAN_FORMAT else None


# --- builder side ---------------------------------------------------------------------------------------------------


class Network:
    def __init__(self, flags: int = 0):
        self.flags = flags  # create_network's bit mask (1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        self.onnx: str | None = None  # set by the parser


class OnnxParser:
    def __init__(self, network: Network, logger):
        self.network, self.errors = network, []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]

    def parse_from_file(self, path) -> bool:
        if not os.path.isfile(path):
            self.errors.append(f"cannot open {path}")
            return False
        self.network.onnx = os.path.abspath(path)
        return True


class TimingCache:
    def __init__(self, data: bytes):
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+"  # each build extends the cache it loaded


class OptimizationProfile(dict):
    def set_shape(self, name, lo, opt, hi):
        self[name] = (tuple(lo), tuple(opt), tuple(hi))


class BuilderConfig:
    def __init__(self):
        self.flags, self.cleared, self.profiles, self.pool, self.cache = set(), set(), [], None, None

    def set_memory_pool_limit(self, pool, size):
        self.pool = (pool, size)

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.cleared.add(flag)

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data):
        return TimingCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


# --- runtime side ---------------------------------------------------------------------------------------------------


class Engine:
    """A deserialized plan: the ONNX file in an ONNX Runtime session, named I/O tensors, one profile."""

    def __init__(self, trt, spec: dict, cudart: FakeCudart):
        from stprompt.bundle.ort import ort_session

        self.trt, self.cudart, self.onnx = trt, cudart, spec["onnx"]
        self.session = ort_session(spec["onnx"], fp16=spec["onnx"].endswith(".fp16.onnx"))  # ORT's fp16 CPU crash
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.symbolic = {t.name: list(t.shape) for t in (*self.session.get_inputs(), *self.session.get_outputs())}
        # ONNX Runtime's "tensor(uint8)" -> numpy uint8: TensorRT types each I/O tensor as its ONNX graph does
        ort_types = {"tensor(float)": np.dtype(np.float32), "tensor(uint8)": np.dtype(np.uint8)}
        self.np_dtypes = {t.name: ort_types[t.type] for t in (*self.session.get_inputs(), *self.session.get_outputs())}
        self.profiles = {name: [tuple(s) for s in shapes] for name, shapes in spec["profiles"].items()}
        self.flags = list(spec["flags"])
        missing = [n for n in self.inputs if n not in self.profiles]
        if missing:
            raise ValueError(f"fake tensorrt: plan has no profile for inputs {missing}")
        self.num_io_tensors = len(self.inputs) + len(self.outputs)

    def get_tensor_name(self, i):
        return (self.inputs + self.outputs)[i]

    def get_tensor_mode(self, name):
        io = self.trt.TensorIOMode
        return io.INPUT if name in self.inputs else io.OUTPUT if name in self.outputs else io.NONE

    def get_tensor_dtype(self, name):
        return {"float32": self.trt.float32, "uint8": self.trt.uint8}[self.np_dtypes[name].name]

    def get_tensor_profile_shape(self, name, profile):
        if profile != 0 or name not in self.inputs:
            raise ValueError(f"fake tensorrt: no profile {profile} shape for {name!r}")
        return list(self.profiles[name])

    def create_execution_context(self):
        return ExecutionContext(self)


class ExecutionContext:
    def __init__(self, engine: Engine):
        self.engine, self.shapes, self.addresses = engine, {}, {}
        self.runs: list[dict[str, tuple[int, ...]]] = []  # input shapes of every execute_async_v3

    def set_input_shape(self, name, shape) -> bool:
        lo, _, hi = self.engine.profiles[name]
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(hi) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
            return False  # outside the optimization profile: TensorRT refuses the shape
        self.shapes[name] = shape
        return True

    def _output_shapes(self) -> dict[str, tuple[int, ...]]:
        """Output shapes from the inputs' (ONNX symbolic dims bound to the set input shapes); -1 where unknown."""
        bound: dict[str, int] = {}
        for name in self.engine.inputs:
            for dim, value in zip(self.engine.symbolic[name], self.shapes.get(name, ()), strict=False):
                if isinstance(dim, str):
                    bound[dim] = value if bound.setdefault(dim, value) == value else -1
        out = {}
        for name in self.engine.outputs:
            out[name] = tuple(d if isinstance(d, int) else bound.get(d, -1) for d in self.engine.symbolic[name])
        return out

    def get_tensor_shape(self, name):
        if name in self.engine.inputs:
            return self.shapes.get(name, tuple(-1 for _ in self.engine.profiles[name][2]))
        return self._output_shapes()[name]

    def set_tensor_address(self, name, ptr) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream_handle) -> bool:
        cudart = self.engine.cudart
        if stream_handle not in cudart.streams:
            return False
        feeds = {}
        for name in self.engine.inputs:
            shape, dtype = self.shapes[name], self.engine.np_dtypes[name]
            n = int(np.prod(shape)) * dtype.itemsize
            feeds[name] = cudart._buffer(self.addresses[name], n)[:n].view(dtype).reshape(shape).copy()
        self.runs.append({n: self.shapes[n] for n in self.engine.inputs})
        self.engine.trt.executions.append((os.path.basename(self.engine.onnx), dict(self.runs[-1])))
        outs = self.engine.session.run(self.engine.outputs, feeds)
        expected = self._output_shapes()
        for name, value in zip(self.engine.outputs, outs, strict=True):
            if tuple(value.shape) != expected[name]:
                raise RuntimeError(f"fake tensorrt: {name} {value.shape} differs from its shape {expected[name]}")
            raw = np.ascontiguousarray(value, self.engine.np_dtypes[name]).view(np.uint8).ravel()
            cudart._buffer(self.addresses[name], raw.size)[: raw.size] = raw
        return True


# --- the module -----------------------------------------------------------------------------------------------------


def fake_tensorrt(version: str = "10.3.0", cudart: FakeCudart | None = None) -> types.ModuleType:
    """A `tensorrt` module of `version`; its runtime moves data through `cudart` (a new FakeCudart by default,
    available as `trt.cudart`). `trt.builds` lists (network, config) of every build."""
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # importlib.util.find_spec finds it
    trt.__version__ = version
    trt.cudart = cudart or FakeCudart()
    trt.builds = []
    trt.executions = []  # (ONNX file name, input shapes) of every execute_async_v3, in order
    trt.DataType = types.SimpleNamespace(FLOAT="float32", HALF="float16", INT32="int32", UINT8="uint8")
    trt.float32, trt.float16, trt.int32 = trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.INT32
    trt.uint8 = trt.DataType.UINT8
    trt.nptype = lambda dtype: np.dtype(dtype).type
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16", BF16="bf16", INT8="int8", TF32="tf32",
                                            OBEY_PRECISION_CONSTRAINTS="obey", PREFER_PRECISION_CONSTRAINTS="prefer")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.TensorIOMode = types.SimpleNamespace(NONE="none", INPUT="input", OUTPUT="output")
    trt.Logger = type("Logger", (), {"ERROR": 1, "WARNING": 2, "INFO": 3,
                                     "__init__": lambda self, level=2: None})  # fmt: skip
    trt.OnnxParser = OnnxParser

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            return Network(int(flags))

        def create_builder_config(self):
            return BuilderConfig()

        def create_optimization_profile(self):
            return OptimizationProfile()

        def build_serialized_network(self, network, config):
            trt.builds.append((network, config))
            if network.onnx is None or len(config.profiles) != 1:
                return None
            flags = set(config.flags)
            strongly = network.flags & (1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            if strongly or not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # 11.x: always on
                flags = {*config.flags, "strongly_typed"}
            return plan_bytes(network.onnx, config.profiles[0], trt.__version__, flags)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            spec = read_plan(data)
            if spec is None or spec["tensorrt"] != trt.__version__:
                return None  # not a plan, or one built by another TensorRT version
            return Engine(trt, spec, trt.cudart)

    trt.Builder, trt.Runtime = Builder, Runtime
    for name in api_names(version)["absent"]:  # what the real version lacks, the fake lacks too
        owner, _, member = name.rpartition(".")
        if owner and not isinstance(getattr(trt, owner, None), types.SimpleNamespace):
            raise NotImplementedError(f"fake tensorrt {version}: cannot remove {name}; extend the fake")
        delattr(getattr(trt, owner) if owner else trt, member)
    return trt


API_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trt_api")


def api_versions() -> list[str]:
    """The TensorRT versions whose API names are recorded in tests/trt_api (major.minor: 10.3, 10.6, 11.4)."""
    names = [f[len("tensorrt-"):-len(".txt")] for f in os.listdir(API_DIR) if f.startswith("tensorrt-")]
    return sorted(names, key=lambda v: tuple(int(p) for p in v.split(".")))


def api_names(version: str) -> dict[str, list[str]]:
    """{"present": [...], "absent": [...]} of the recorded version for `version`: the same major.minor, else the
    newest recorded one of the same major below it (10.7 -> 10.6), else the oldest of that major."""
    key = tuple(int(p) for p in version.split(".")[:2])
    same = [v for v in api_versions() if int(v.split(".")[0]) == key[0]]
    if not same:
        raise ValueError(f"fake tensorrt: no recorded API names for TensorRT {version} (tests/trt_api)")
    below = [v for v in same if tuple(int(p) for p in v.split(".")) <= key]
    chosen = below[-1] if below else same[0]
    out: dict[str, list[str]] = {"present": [], "absent": []}
    with open(os.path.join(API_DIR, f"tensorrt-{chosen}.txt")) as fh:
        for line in fh:
            if line.strip() and not line.startswith("#"):
                state, name = line.split()[:2]
                out[state].append(name)
    return out


def install_cuda(monkeypatch, cudart: FakeCudart) -> None:
    """Make `from cuda.bindings import runtime` give `cudart` (for this test only)."""
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.runtime, cuda.bindings = cudart, bindings
    for name, module in {"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": cudart}.items():
        monkeypatch.setitem(sys.modules, name, module)


def install(monkeypatch, version: str = "10.3.0", compute_capability: str = COMPUTE_CAPABILITY) -> types.ModuleType:
    """Make `import tensorrt` and `from cuda.bindings import runtime` give the fakes (for this test only);
    returns the tensorrt module (its device memory: `trt.cudart`)."""
    trt = fake_tensorrt(version, FakeCudart(compute_capability))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    install_cuda(monkeypatch, trt.cudart)
    return trt
