"""Device memory and one CUDA stream for the TensorRT backend: cuda-python's runtime API, else pycuda.

Both bind the device's primary context (shared with TensorRT and PyTorch): a second context in one process gives
invalid-handle errors and silent zeros.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ...errors import UserError

CUDA_MISSING = 'the TensorRT backend needs cuda-python (or pycuda) for device buffers: pip install "stprompt[trt]"'


class CudartMemory:
    """Device memory and one stream through cuda-python's runtime API, on the device's primary context.

    The runtime API binds the primary context (shared with TensorRT and PyTorch), so no second context is
    created: two contexts in one process give invalid-handle errors and silent zeros.
    """

    def __init__(self, cudart, device: int):
        self.rt = cudart
        self.device = device
        self._check(cudart.cudaSetDevice(device))
        self._check(cudart.cudaFree(0))  # initialise (retain) the primary context now, not on first copy
        self.stream = self._check(cudart.cudaStreamCreate())
        self.handle = int(self.stream)
        self._h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(getattr(err, "value", err)) != 0:
            name = self.rt.cudaGetErrorString(err)[1]
            raise RuntimeError(f"CUDA error {int(getattr(err, 'value', err))}: {name!r}")
        return rest[0] if len(rest) == 1 else rest

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self._check(self.rt.cudaSetDevice(self.device))  # the current device is per thread
        yield

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(nbytes, 1))))

    def h2d(self, ptr: int, host: np.ndarray) -> None:
        self._check(self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, self._h2d, self.stream))

    def d2h(self, host: np.ndarray, ptr: int) -> None:
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, self._d2h, self.stream))

    def sync(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream))

    def free(self, ptr: int) -> None:
        self.rt.cudaFree(ptr)

    def close(self) -> None:
        self.rt.cudaStreamDestroy(self.stream)


class PycudaMemory:
    """The same through pycuda, on the retained primary context (never pycuda.autoinit's own context)."""

    def __init__(self, cuda, device: int):
        cuda.init()
        self.cuda = cuda
        self.ctx = cuda.Device(device).retain_primary_context()
        self._allocs: dict[int, Any] = {}
        with self.active():
            self.stream = cuda.Stream()
        self.handle = self.stream.handle

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self.ctx.push()  # pycuda's current context is per thread: push on whichever thread calls
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def malloc(self, nbytes: int) -> int:
        alloc = self.cuda.mem_alloc(max(nbytes, 1))
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def h2d(self, ptr: int, host: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(ptr, host, self.stream)

    def d2h(self, host: np.ndarray, ptr: int) -> None:
        self.cuda.memcpy_dtoh_async(host, ptr, self.stream)

    def sync(self) -> None:
        self.stream.synchronize()

    def free(self, ptr: int) -> None:
        alloc = self._allocs.pop(ptr, None)
        if alloc is not None:
            alloc.free()

    def close(self) -> None:
        self.stream = None


def cuda_memory(device: int = 0):
    """cuda-python's runtime API where installed (stprompt[trt]), else pycuda (common on Jetson images)."""
    from ...engines.tensorrt import import_cudart

    cudart = import_cudart()
    if cudart is not None:
        return CudartMemory(cudart, device)
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise UserError(CUDA_MISSING) from None
    return PycudaMemory(cuda, device)
