"""Inference backends behind one small interface: the image encoder and the temporal head of a bundle.

The engine file's suffix picks the backend: `.onnx` -> ONNX Runtime, `.plan` / `.engine` -> TensorRT 10,
`.pt` -> the PyTorch reference (checkpoint + CLIP). Every backend is opened together with the bundle manifest
beside it (same stem), verified by sha256, so an engine can never be paired with another export's head,
prompts or thresholds. The inference library of each backend is imported only when that backend is opened:
the runtime imports and runs on appliances that ship numpy, cv2 and one inference library, without torch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import UserError
from ..export.manifest import ENGINE_SUFFIXES, ROLE_SUFFIXES, Manifest, load_manifest, manifest_path, sha256_file

HEAD_OUTPUTS = ("score", "score_c", "probs")
CPU = "CPUExecutionProvider"
# short names the CLI may pass for ONNX Runtime execution providers
PROVIDER_ALIASES = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
ORT_SUFFIXES = (".onnx",)
TRT_SUFFIXES = (".plan", ".engine")
TORCH_SUFFIXES = (".pt", ".pth")
# every name ending a bundle file that is not the manifest, longest first (out/model.fp16.onnx -> out/model)
_STEM_SUFFIXES = tuple(
    sorted(
        {*ROLE_SUFFIXES.values(), *ENGINE_SUFFIXES.values(), ".head.engine", *TRT_SUFFIXES, *TORCH_SUFFIXES},
        key=len,
        reverse=True,
    )
)

ORT_MISSING = 'ONNX Runtime is not installed: pip install "stprompt[ort]" (or onnxruntime-gpu for CUDA)'
TORCH_MISSING = 'the PyTorch reference backend needs torch and open_clip ({}): pip install "stprompt[train]"'
CUDA_MISSING = 'the TensorRT backend needs cuda-python (or pycuda) for device buffers: pip install "stprompt[trt]"'


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs from an inference library: encode crops, run the head, name itself."""

    name: str  # e.g. "onnxruntime[CPUExecutionProvider]", "tensorrt", "torch-cpu-fp32", "torch-cuda-fp16"
    dim: int
    max_batch: int | None  # encoder calls larger than this are split inside encode(); None = unlimited
    max_window: int | None  # largest T head() takes (TensorRT profile max); None = unlimited

    def encode(self, images: np.ndarray) -> np.ndarray:
        """[N, 3, 224, 224] float32 (CLIP-normalised) -> [N, D] float32."""
        ...

    def head(self, x_clip: np.ndarray, x_patch: np.ndarray) -> dict[str, np.ndarray]:
        """x_clip [T, D], x_patch [T, 49, D] (or [T, 7, 7, D]) -> {"score", "score_c", "probs"} float32."""
        ...

    def head_features(self, x_clip: np.ndarray, x_as: np.ndarray) -> dict[str, np.ndarray] | None:
        """The head after SA2: x_clip, x_as [T, D] -> the same outputs; None when the bundle has no such graph."""
        ...

    def close(self) -> None:
        """Free sessions / device memory (the backend is unusable afterwards)."""
        ...


# --- shared helpers ----------------------------------------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (3, 224, 224):
        raise ValueError(f"encoder input must be [N, 3, 224, 224], got {list(images.shape)}")
    return np.ascontiguousarray(images, dtype=np.float32)


def _check_head_inputs(x_clip: np.ndarray, x_patch: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    x_clip = np.ascontiguousarray(x_clip, dtype=np.float32)
    x_patch = np.asarray(x_patch, dtype=np.float32)
    t = len(x_clip)
    if x_clip.shape != (t, dim) or t < 1 or x_patch.shape[0] != t or x_patch.size != t * 49 * dim:
        raise ValueError(
            f"head inputs must be x_clip [T, {dim}] and x_patch [T, 49, {dim}] with T >= 1, "
            f"got {list(x_clip.shape)} and {list(x_patch.shape)}"
        )
    return x_clip, np.ascontiguousarray(x_patch.reshape(t, 49, dim))


def _check_features_inputs(x_clip: np.ndarray, x_as: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    x_clip = np.ascontiguousarray(x_clip, dtype=np.float32)
    x_as = np.ascontiguousarray(x_as, dtype=np.float32)
    if x_clip.ndim != 2 or x_clip.shape != x_as.shape or x_clip.shape[1] != dim or len(x_clip) < 1:
        raise ValueError(f"head_features inputs must be x_clip and x_as [T, {dim}], got {x_clip.shape}, {x_as.shape}")
    return x_clip, x_as


def _encode_split(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, max_batch: int | None,
                  dim: int) -> np.ndarray:  # fmt: skip
    """Run `run` on chunks of at most `max_batch` crops (engines have a largest profile shape)."""
    images = _check_images(images)
    if len(images) == 0:
        return np.zeros((0, dim), np.float32)
    step = max_batch or len(images)
    outs = [run(images[i : i + step]) for i in range(0, len(images), step)]
    return np.concatenate(outs, axis=0).astype(np.float32, copy=False)


def _as_float32(out: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(out[k], dtype=np.float32) for k in HEAD_OUTPUTS}


def bundle_manifest_for(engine: str | os.PathLike) -> Path:
    """The manifest of an engine's bundle: `out/model.onnx`, `out/model.int8.onnx`, `out/model.plan`,
    `out/model.head.onnx`, `out/model.pt` all -> `out/model.json` (same stem)."""
    p = Path(engine)
    for suffix in _STEM_SUFFIXES:
        if p.name.endswith(suffix) and len(p.name) > len(suffix):
            return manifest_path(p.with_name(p.name[: -len(suffix)]))
    return manifest_path(p.with_suffix(""))


def _bundle_role(path: Path, manifest: Manifest, section: str) -> str:
    """The role (encoder, encoder_fp16, head, ...) under which `path` is recorded in the manifest's `section`.

    Files listed in `files` were hash-verified by `load_manifest`, so a path match suffices there; anything
    else is hashed and compared, so a stale plan or a graph from another export is refused, never run.
    """
    entries = manifest.raw.get(section) or {}
    resolved = path.resolve()
    for role, entry in entries.items():
        if section == "files" and (manifest.root / entry["path"]).resolve() == resolved:
            return role
    digest = sha256_file(path)
    for role, entry in entries.items():
        if entry.get("sha256") == digest:
            return role
    raise UserError(
        f"{path} is not part of bundle {manifest.path} (engine from another export?); "
        f"use the files that stp-export / stp-build wrote beside {manifest.path.name}"
    )


def _refuse_head(path: Path, role: str, manifest: Manifest) -> None:
    if role == "head":
        raise UserError(
            f"{path.name} is the bundle's temporal head; pass the image encoder engine instead "
            f"(e.g. {manifest.stem.name}.onnx or {manifest.stem.name}.plan): the head is found through the manifest"
        )
    if not role.startswith("encoder"):
        raise UserError(f"{path.name} is the bundle's {role!r} file, not an image encoder engine")


# --- ONNX Runtime ------------------------------------------------------------------------------------------------


def _require_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError(ORT_MISSING) from None
    return ort


def resolve_providers(providers: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Full provider names (aliases cpu/cuda/tensorrt expanded); an unavailable one is a UserError listing the rest."""
    wanted = [PROVIDER_ALIASES.get(p.lower(), p) for p in (providers or [CPU])]
    missing = [p for p in wanted if p not in available]
    if missing:
        hint = ""
        if any(p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in missing):
            hint = " (CUDA and TensorRT providers need the onnxruntime-gpu package and matching CUDA libraries)"
        raise UserError(
            f"ONNX Runtime execution provider {', '.join(missing)} is not available here{hint}; "
            f"available: {', '.join(available)}"
        )
    return wanted


class OrtBackend:
    """ONNX Runtime: the chosen encoder graph (fp32, fp16 or int8) and the bundle's fp32 head graph."""

    def __init__(self, encoder: Path, manifest: Manifest, role: str, providers: Sequence[str] | None,
                 max_batch: int | None):  # fmt: skip
        ort = _require_ort()
        self.manifest = manifest
        self.path = encoder
        self.dim = manifest.dim
        self.max_batch = max_batch
        self.max_window: int | None = None  # head length limit (TensorRT profiles only)
        self.providers = resolve_providers(providers, ort.get_available_providers())
        self._encoder = self._session(ort, encoder, self.providers, fp16=role == "encoder_fp16")
        active = self._encoder.get_providers()
        if self.providers[0] not in active:
            raise UserError(
                f"ONNX Runtime could not start {self.providers[0]} for {encoder.name} and fell back to "
                f"{', '.join(active)} (missing CUDA / cuDNN / TensorRT libraries?)"
            )
        # the head's T changes every call: TensorRT EP would rebuild an engine per new length, so it runs elsewhere
        head_providers = [p for p in self.providers if p != "TensorrtExecutionProvider"] or [CPU]
        self._head = self._session(ort, manifest.file("head"), head_providers, fp16=False)
        self._head_features = (
            self._session(ort, manifest.file("head_features"), head_providers, fp16=False)
            if manifest.has("head_features")
            else None
        )
        self.name = f"onnxruntime[{','.join(active)}]"

    @staticmethod
    def _session(ort, path: Path, providers: list[str], fp16: bool):
        try:
            if providers == [CPU]:
                from ..export.gates import ort_session  # fp16 graphs skip ORT's crashing CPU layout pass

                return ort_session(path, fp16=fp16)
            from ..export.gates import FP16_DISABLED_OPTIMIZERS

            kwargs: dict[str, Any] = {"disabled_optimizers": list(FP16_DISABLED_OPTIMIZERS)} if fp16 else {}
            return ort.InferenceSession(os.fspath(path), ort.SessionOptions(), providers=providers, **kwargs)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise UserError(
                f"{path.name}: ONNX Runtime ({', '.join(providers)}) cannot load it: {_first_line(err)}"
            ) from None

    def _encode_batch(self, images: np.ndarray) -> np.ndarray:
        return self._encoder.run(["embeddings"], {"images": images})[0]

    def encode(self, images: np.ndarray) -> np.ndarray:
        return _encode_split(self._encode_batch, images, self.max_batch, self.dim)

    def head(self, x_clip: np.ndarray, x_patch: np.ndarray) -> dict[str, np.ndarray]:
        x_clip, x_patch = _check_head_inputs(x_clip, x_patch, self.dim)
        outs = self._head.run(list(HEAD_OUTPUTS), {"x_clip": x_clip, "x_patch": x_patch})
        return _as_float32(dict(zip(HEAD_OUTPUTS, outs, strict=True)))

    def head_features(self, x_clip: np.ndarray, x_as: np.ndarray) -> dict[str, np.ndarray] | None:
        if self._head_features is None:
            return None
        x_clip, x_as = _check_features_inputs(x_clip, x_as, self.dim)
        outs = self._head_features.run(list(HEAD_OUTPUTS), {"x_clip": x_clip, "x_as": x_as})
        return _as_float32(dict(zip(HEAD_OUTPUTS, outs, strict=True)))

    def close(self) -> None:
        self._encoder = self._head = self._head_features = None


# --- PyTorch reference -------------------------------------------------------------------------------------------


def _require_torch():
    import importlib

    try:
        torch = importlib.import_module("torch")
        importlib.import_module("open_clip")  # load_clip needs it: fail here, naming the extra
    except ImportError as err:
        raise UserError(TORCH_MISSING.format(f"{err.name or 'a module'} is missing")) from None
    return torch


TORCH_DEVICES = ("cpu", "cuda")


class TorchBackend:
    """PyTorch: CLIP from the manifest's ClipSpec and the checkpoint's head and prompts.

    `device="cpu"` with fp32 is the reference (bf16 = CPU autocast, AMX where present). `device="cuda"` encodes in
    fp16 autocast with CUDA graphs (:class:`stprompt.clip.cuda_encoder.CudaImageEncoder`) and builds the window
    crops on the GPU (:meth:`encode_frames`); the small temporal head stays in fp32 on the CPU either way.
    """

    def __init__(self, ckpt_path: Path, manifest: Manifest, max_batch: int | None, device: str = "cpu",
                 precision: str | None = None):  # fmt: skip
        if device not in TORCH_DEVICES:
            raise UserError(f"unknown --device {device!r}; choose from {', '.join(TORCH_DEVICES)}")
        precision = precision or ("fp16" if device == "cuda" else "fp32")
        torch = _require_torch()
        from ..checkpoint import load_checkpoint
        from ..clip.image import ImageEncoder
        from ..clip.loader import load_clip

        ckpt = load_checkpoint(ckpt_path)
        if ckpt.clip_sha256 != manifest.clip_sha256:
            raise UserError(
                f"{ckpt_path.name} was trained on CLIP weights sha256 {ckpt.clip_sha256[:12]}..., but bundle "
                f"{manifest.path.name} has {manifest.clip_sha256[:12]}...: checkpoint and bundle are different models"
            )
        if list(ckpt.classes) != manifest.classes or ckpt.config.dim != manifest.dim:
            raise UserError(
                f"{ckpt_path.name} (classes {ckpt.classes}, D={ckpt.config.dim}) does not match bundle "
                f"{manifest.path.name} (classes {manifest.classes}, D={manifest.dim})"
            )
        clip = load_clip(manifest.clip)
        if clip.sha256 != manifest.clip_sha256:
            raise UserError(
                f"CLIP {manifest.clip} loads weights sha256 {clip.sha256[:12]}..., but bundle {manifest.path.name} "
                f"was exported with {manifest.clip_sha256[:12]}..."
            )
        self._torch = torch
        self.manifest = manifest
        self.path = ckpt_path
        self.dim = manifest.dim
        self.max_batch = max_batch
        self.max_window: int | None = None
        self.name = f"torch-{device}-{precision}"
        self.device, self.precision = device, precision
        self.gpu_preprocessing = device == "cuda"  # the Detector then hands over uint8 frames (encode_frames)
        if device == "cuda":
            from ..clip.cuda_encoder import CudaImageEncoder

            self._encoder = CudaImageEncoder(clip.model, precision, max_batch=max_batch or 64)
        else:
            self._encoder = ImageEncoder(clip.model, precision=precision, batch=max_batch or (1 << 30))
        self._head = ckpt.build_head()
        self._prompts = ckpt.prompt_features.detach().float()

    def encode(self, images: np.ndarray) -> np.ndarray:
        images = _check_images(images)
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self._encoder(images), np.float32)

    def encode_frames(self, smalls: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
        """Crops built where the encoder runs: 224x224 uint8 frames + window masks -> embeddings (Detector order).

        On CUDA the frames go to the GPU as uint8 (150 KB each instead of 30 MB of float32 crops) and the windows
        are cut and normalised there (:mod:`stprompt.clip.torch_windows`, within one grey level of the CPU crops).
        """
        torch = self._torch
        from ..clip import torch_windows

        if not smalls:
            return np.zeros((0, self.dim), np.float32)
        frames = torch.from_numpy(np.stack(smalls))
        keep = torch.from_numpy(np.stack(masks))
        if self.device == "cuda":
            frames, keep = frames.to("cuda"), keep.to("cuda")
        with torch.inference_mode():
            batch = torch_windows.encoder_batch(frames, keep)
            if self.device == "cuda":
                return self._encoder.encode_tensor(batch).cpu().numpy()
            return np.asarray(self._encoder(batch.numpy()), np.float32)

    def head(self, x_clip: np.ndarray, x_patch: np.ndarray) -> dict[str, np.ndarray]:
        """Same call as the exported head graph: batch 1, every snippet valid."""
        x_clip, x_patch = _check_head_inputs(x_clip, x_patch, self.dim)
        torch = self._torch
        with torch.inference_mode():
            xc = torch.from_numpy(x_clip)[None]
            xp = torch.from_numpy(x_patch)[None]
            out = self._head(xc, xp, torch.ones(xc.shape[:2]), self._prompts)
        return _as_float32({"score": out.score[0].numpy(), "score_c": out.score_c[0].numpy(),
                            "probs": out.probs[0].numpy()})  # fmt: skip

    def head_features(self, x_clip: np.ndarray, x_as: np.ndarray) -> dict[str, np.ndarray] | None:
        x_clip, x_as = _check_features_inputs(x_clip, x_as, self.dim)
        torch = self._torch
        with torch.inference_mode():
            xc, xa = torch.from_numpy(x_clip)[None], torch.from_numpy(x_as)[None]
            out = self._head.forward_features(xc, xa, torch.ones(xc.shape[:2]), self._prompts)
        return _as_float32({"score": out.score[0].numpy(), "score_c": out.score_c[0].numpy(),
                            "probs": out.probs[0].numpy()})  # fmt: skip

    def close(self) -> None:
        self._encoder = self._head = None


# --- TensorRT 10 -------------------------------------------------------------------------------------------------


def _require_trt():
    from ..export.trt_build import require_tensorrt

    return require_tensorrt()


class _Cudart:
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


class _Pycuda:
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


def _cuda_memory(device: int = 0):
    """cuda-python's runtime API where installed (stprompt[trt]), else pycuda (common on Jetson images)."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            cudart = None
    if cudart is not None:
        return _Cudart(cudart, device)
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise UserError(CUDA_MISSING) from None
    return _Pycuda(cuda, device)


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
        for n in names:
            self.buffers[n] = mem.malloc(int(np.prod(shapes[n])) * self.dtypes[n].itemsize)
            self.context.set_tensor_address(n, self.buffers[n])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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
                self.context.set_input_shape(n, arr.shape)
                self.mem.h2d(self.buffers[n], arr)
                hosts.append(arr)  # keep host memory alive until the stream is synchronized
            outs = {n: np.empty(tuple(self.context.get_tensor_shape(n)), self.dtypes[n]) for n in self.outputs}
            if not self.context.execute_async_v3(self.mem.handle):
                raise RuntimeError(f"{self.path.name}: TensorRT execute_async_v3 failed")
            for n, host in outs.items():
                self.mem.d2h(host, self.buffers[n])
            self.mem.sync()
        return outs

    def close(self) -> None:
        with self.mem.active():
            for ptr in self.buffers.values():
                self.mem.free(ptr)
        self.buffers.clear()
        self.context = self.engine = None


class TrtBackend:
    """TensorRT 10 plans built on this device by stp-build: the encoder plan given and the manifest's head plan."""

    def __init__(self, plan: Path, manifest: Manifest, max_batch: int | None):
        trt = _require_trt()
        from ..export.trt_build import expected_key, gpu_compute_capability, plan_is_current

        version, cc = str(trt.__version__), gpu_compute_capability()
        roles = ("encoder", "head") + (("head_features",) if manifest.has("head_features") else ())
        for role in roles:
            path = manifest.engine(role)
            if path is None or not plan_is_current(manifest, role, expected_key(manifest, role, version, cc)):
                raise UserError(
                    f"{(path or plan).name} was not built for this bundle on TensorRT {version} / GPU sm {cc} "
                    f"(stale or foreign plan); rebuild on this device: stp-build {manifest.path}"
                )
        self.manifest, self.path, self.dim, self.name = manifest, plan, manifest.dim, "tensorrt"
        self._mem = _cuda_memory()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._encoder = _TrtEngine(trt, self._runtime, plan, self._mem)
        self._head = _TrtEngine(trt, self._runtime, manifest.engine("head"), self._mem)
        self._head_features = (
            _TrtEngine(trt, self._runtime, manifest.engine("head_features"), self._mem)
            if "head_features" in roles
            else None
        )
        limit = self._encoder.max_shapes["images"][0]
        self.max_batch = min(max_batch or limit, limit)  # larger calls are split at the profile's max, not refused
        self.max_window = self._head.max_shapes["x_clip"][0]

    def encode(self, images: np.ndarray) -> np.ndarray:
        return _encode_split(lambda x: self._encoder.run({"images": x})["embeddings"], images, self.max_batch,
                             self.dim)  # fmt: skip

    def head(self, x_clip: np.ndarray, x_patch: np.ndarray) -> dict[str, np.ndarray]:
        x_clip, x_patch = _check_head_inputs(x_clip, x_patch, self.dim)
        return _as_float32(self._head.run({"x_clip": x_clip, "x_patch": x_patch}))

    def head_features(self, x_clip: np.ndarray, x_as: np.ndarray) -> dict[str, np.ndarray] | None:
        if self._head_features is None:
            return None
        x_clip, x_as = _check_features_inputs(x_clip, x_as, self.dim)
        return _as_float32(self._head_features.run({"x_clip": x_clip, "x_as": x_as}))

    def close(self) -> None:
        for engine in (self._encoder, self._head, self._head_features):
            if engine is not None:
                engine.close()
        self._mem.close()


# --- opening and comparing ---------------------------------------------------------------------------------------


def open_backend(engine: str | os.PathLike, *, providers: list[str] | None = None, max_batch: int | None = None,
                 manifest: str | os.PathLike | None = None, device: str | None = None,
                 precision: str | None = None) -> tuple[Backend, Manifest]:  # fmt: skip
    """Open the backend the engine file's suffix names, with its verified bundle manifest.

    `providers`: ONNX Runtime execution providers in priority order (default CPU; aliases cpu, cuda, tensorrt).
    `max_batch`: largest encoder call; larger calls are split (TensorRT: capped at, and by default, the plan's
    profile max).
    `manifest`: the bundle's model.json when the engine (typically a `.pt` checkpoint) is not beside it.
    `device` / `precision`: the PyTorch backend's (cpu fp32 / bf16, cuda fp16 / bf16 / fp32); other engines carry
    their precision in the file.
    """
    path = Path(engine)
    suffix = path.suffix.lower()
    if suffix not in (*ORT_SUFFIXES, *TRT_SUFFIXES, *TORCH_SUFFIXES):
        raise UserError(
            f"{path.name}: unknown engine type {suffix or '(no suffix)'!r}; use model.onnx (ONNX Runtime), "
            "model.plan (TensorRT) or model.pt (PyTorch reference)"
        )
    if not path.is_file():
        raise UserError(f"engine file not found: {path}")
    if max_batch is not None and max_batch < 1:
        raise UserError(f"--max-batch must be at least 1, got {max_batch}")
    mpath = manifest_path(manifest) if manifest is not None else bundle_manifest_for(path)
    if not mpath.is_file():
        raise UserError(
            f"{path.name}: bundle manifest {mpath} not found; an engine is used with the model.json stp-export "
            "wrote beside it (copy the whole bundle, same stem)"
        )
    m = load_manifest(mpath, verify=True)
    if (device or precision) and suffix not in TORCH_SUFFIXES:
        raise UserError(f"--device / --precision choose how a .pt checkpoint runs; {path.name} carries its own "
                        "(use model.fp16.onnx / model.int8.onnx, or a TensorRT plan)")  # fmt: skip
    backend: Backend
    if suffix in TORCH_SUFFIXES:
        backend = TorchBackend(path, m, max_batch, device or "cpu", precision)
    elif suffix in ORT_SUFFIXES:
        role = _bundle_role(path, m, "files")
        _refuse_head(path, role, m)
        backend = OrtBackend(path, m, role, providers, max_batch)
    else:
        role = _bundle_role(path, m, "engines")
        _refuse_head(path, role, m)
        backend = TrtBackend(path, m, max_batch)
    return backend, m


def _diff(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        raise ValueError(f"shapes differ: {list(a64.shape)} vs {list(b64.shape)}")
    err = float(np.abs(a64 - b64).max()) if a64.size else 0.0
    scale = float(np.abs(b64).max()) if b64.size else 0.0
    return {"max_abs": err, "max_rel": err / max(scale, 1e-12)}


def parity(a: Backend, b: Backend, images: np.ndarray, x_clip: np.ndarray, x_patch: np.ndarray) -> dict[str, Any]:
    """Differences of backend `a` against reference `b` on the same inputs (for `stp-run --check`).

    `max_rel` is the largest absolute error over the reference's largest magnitude (element-wise relative
    error explodes near zero); embeddings also get the gates' metric, the minimum centred cosine.
    """
    from ..export.gates import centered_cosine

    ea, eb = a.encode(images), b.encode(images)
    ha, hb = a.head(x_clip, x_patch), b.head(x_clip, x_patch)
    report: dict[str, Any] = {"a": a.name, "b": b.name, "crops": int(len(images)), "snippets": int(len(x_clip))}
    report["embeddings"] = _diff(ea, eb)
    if len(eb) > 1:
        report["embeddings"]["centered_cosine_min"] = float(centered_cosine(ea, eb).min())
    for key in HEAD_OUTPUTS:
        report[key] = _diff(ha[key], hb[key])
    return report
