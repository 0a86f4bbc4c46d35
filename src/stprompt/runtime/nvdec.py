"""`nvdec:PATH`: a video file decoded on an NVIDIA GPU (NVDEC) through NVIDIA's PyNvVideoCodec (`pip install
PyNvVideoCodec`), for GPU appliances whose host cores are the bottleneck.

Decode is the one host stage that grows with every frame, sampled or not (one sampled frame in 16 still costs 16
decodes). NVDEC decodes on the GPU's own video engines; the host copies out only the frames the pipeline samples
(`read(retrieve=False)` asks the decoder for nothing). Frames come out of NVDEC as RGB and are turned into BGR
here: the pixels can differ from FFmpeg's by a level or two (another YUV -> RGB conversion), so scores stay close to
stp-eval's, not equal; use a plain path where equality matters. Files only (PyNvVideoCodec's SimpleDecoder needs a
seekable container). On Jetson, decode with NVIDIA's GStreamer element through the `gst:` source instead
(`nvv4l2decoder`, see README). PyNvVideoCodec is imported when such a source opens; without it, or without a GPU
it can use, opening is one UserError line.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError, first_line
from .frames import Frame
from .sources import DEFAULT_FILE_FPS, Source, _fps, _safe_id

SCHEME = "nvdec:"
INSTALL = "pip install PyNvVideoCodec (NVIDIA's NVDEC bindings; needs an NVIDIA GPU and driver)"


def parse_nvdec(uri: str) -> Path | None:
    """The file of an `nvdec:PATH` (or `nvdec://PATH`) URI, None when `uri` is not one; an empty or network one
    is a UserError."""
    if not uri.lower().startswith(SCHEME):
        return None
    rest = uri[len(SCHEME) :].removeprefix("//").strip()
    if not rest:
        raise UserError(f"{uri}: give the video file to decode on the GPU, nvdec:PATH")
    if "://" in rest:
        raise UserError(f"{uri}: nvdec: decodes video files only; for a camera stream on Jetson decode with "
                        "gst:... nvv4l2decoder ... appsink (README)")  # fmt: skip
    return Path(rest).expanduser()


def require_pynvvideocodec(uri: str) -> Any:
    """The PyNvVideoCodec module, or one UserError line saying how to get it."""
    try:
        return importlib.import_module("PyNvVideoCodec")
    except ImportError:
        raise UserError(f"{uri}: GPU decode needs PyNvVideoCodec, which is not installed here: {INSTALL}; or "
                        "drop the nvdec: prefix to decode on the CPU") from None  # fmt: skip


class NvdecFileSource(Source):
    """Every frame of a video file in order (index = decode position, time = index / fps), decoded by NVDEC; only
    the frames asked for with `read(retrieve=True)` are copied to the host."""

    skips_pixels = True  # read(retrieve=False) is supported (runtime.prefetch asks for pixels of sampled frames only)

    def __init__(self, path: Path, source_id: str | None = None, uri: str | None = None, gpu: int = 0):
        uri = uri or f"{SCHEME}{path}"
        if not path.is_file():
            raise UserError(f"video file not found: {path}")
        nvc = require_pynvvideocodec(uri)
        try:
            self._decoder = nvc.SimpleDecoder(str(path), gpu_id=gpu, use_device_memory=False,
                                              output_color_type=nvc.OutputColorType.RGB)  # fmt: skip
            self._count = len(self._decoder)
            meta = self._decoder.get_stream_metadata()
        except Exception as err:  # noqa: BLE001 - no GPU, no NVDEC for this codec, a damaged file: one line
            raise UserError(f"{uri}: PyNvVideoCodec cannot decode it on GPU {gpu}: {first_line(err)}") from None
        fps = _fps(float(getattr(meta, "average_fps", 0.0) or 0.0), DEFAULT_FILE_FPS)
        size = (int(getattr(meta, "width", 0)), int(getattr(meta, "height", 0)))
        super().__init__(uri, source_id or _safe_id(path.stem), False, fps, size)
        self.path = path
        self._next = 0

    @property
    def next_index(self) -> int:
        """The index of the frame the next read() returns."""
        return self._next

    def read(self, timeout: float | None = None, retrieve: bool = True) -> Frame | None:
        if self._done or self._next >= self._count:
            self.close()
            return None
        index = self._next
        image = _bgr(self._decoder[index]) if retrieve else None
        self._next += 1
        self.stats["frames"] += 1
        return Frame(image, index, index / self.fps)

    def close(self) -> None:
        self._decoder = None
        self._done = True


def _bgr(frame: Any) -> np.ndarray:
    """A host-memory RGB frame (HWC or CHW, through DLPack) as H x W x 3 uint8 BGR."""
    rgb = np.from_dlpack(frame) if hasattr(frame, "__dlpack__") else np.asarray(frame)
    if rgb.ndim == 3 and rgb.shape[0] == 3 and rgb.shape[-1] != 3:
        rgb = rgb.transpose(1, 2, 0)
    return np.ascontiguousarray(rgb[..., ::-1], dtype=np.uint8)
