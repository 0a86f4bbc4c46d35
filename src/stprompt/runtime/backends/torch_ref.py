"""The PyTorch reference backend: CLIP from the manifest's ClipSpec, head and prompts from the checkpoint.

torch and open_clip are imported when the backend is opened, never at import (the runtime runs without them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...bundle.manifest import Manifest
from ...errors import UserError
from .base import BackendBase, as_float32, check_features_inputs, check_head_inputs, check_images

TORCH_MISSING = 'the PyTorch reference backend needs torch and open_clip ({}): pip install "stprompt[train]"'


def _require_torch():
    import importlib

    try:
        torch = importlib.import_module("torch")
        importlib.import_module("open_clip")  # load_clip needs it: fail here, naming the extra
    except ImportError as err:
        raise UserError(TORCH_MISSING.format(f"{err.name or 'a module'} is missing")) from None
    return torch


TORCH_DEVICES = ("cpu", "cuda")


class TorchBackend(BackendBase):
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
        from ...checkpoint import load_checkpoint
        from ...clip.image import ImageEncoder
        from ...clip.loader import check_same_activation, legacy_activation, load_clip

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
        exported = manifest.clip_activation or legacy_activation(
            manifest.clip, manifest.raw["versions"].get("open_clip")
        )
        check_same_activation(ckpt.clip_activation, exported, ckpt_path.name, f"bundle {manifest.path.name}")
        clip = load_clip(manifest.clip)
        check_same_activation(exported, clip.activation, f"bundle {manifest.path.name}", f"CLIP {manifest.clip}")
        if clip.sha256 != manifest.clip_sha256:
            raise UserError(
                f"CLIP {manifest.clip} loads weights sha256 {clip.sha256[:12]}..., but bundle {manifest.path.name} "
                f"was exported with {manifest.clip_sha256[:12]}..."
            )
        self._torch = torch
        self.manifest = manifest
        self.path = ckpt_path
        self.dim = manifest.dim
        self.preprocess = manifest.preprocess
        self.max_batch = max_batch
        self.max_window: int | None = None
        self.name = f"torch-{device}-{precision}"
        self.device, self.precision = device, precision
        self.host_encoder = device == "cpu"
        self.gpu_preprocessing = device == "cuda"  # the Detector then hands over uint8 frames (encode_frames)
        if device == "cuda":
            from ...clip.cuda_encoder import CudaImageEncoder

            self._encoder = CudaImageEncoder(clip.model, precision, max_batch=max_batch or 64)
        else:
            self._encoder = ImageEncoder(clip.model, precision=precision, batch=max_batch or (1 << 30))
        self._head = ckpt.build_head()
        self._prompts = ckpt.prompt_features.detach().float()

    def encode(self, images: np.ndarray) -> np.ndarray:
        images = check_images(images, self.preprocess.size)
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self._encoder(images), np.float32)

    def encode_frames(self, smalls: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
        """Crops built where the encoder runs: 224x224 uint8 frames + window masks -> embeddings (Detector order).

        On CUDA the frames go to the GPU as uint8 (150 KB each instead of 30 MB of float32 crops) and the windows
        are cut and normalised there (:mod:`stprompt.clip.torch_windows`, within one grey level of the CPU crops).
        """
        torch = self._torch
        from ...clip import torch_windows

        if not smalls:
            return np.zeros((0, self.dim), np.float32)
        frames = torch.from_numpy(np.stack(smalls))
        keep = torch.from_numpy(np.stack(masks))
        if self.device == "cuda":
            frames, keep = frames.to("cuda"), keep.to("cuda")
        with torch.inference_mode():
            batch = torch_windows.encoder_batch(frames, keep, pre=self.preprocess)
            if self.device == "cuda":
                return self._encoder.encode_tensor(batch).cpu().numpy()
            return np.asarray(self._encoder(batch.numpy()), np.float32)

    def head(self, x_clip: np.ndarray, x_patch: np.ndarray) -> dict[str, np.ndarray]:
        """Same call as the exported head graph: batch 1, every snippet valid."""
        x_clip, x_patch = check_head_inputs(x_clip, x_patch, self.dim)
        torch = self._torch
        with torch.inference_mode():
            xc = torch.from_numpy(x_clip)[None]
            xp = torch.from_numpy(x_patch)[None]
            out = self._head(xc, xp, torch.ones(xc.shape[:2]), self._prompts)
        return as_float32({"score": out.score[0].numpy(), "score_c": out.score_c[0].numpy(),
                            "probs": out.probs[0].numpy()})  # fmt: skip

    def head_features(self, x_clip: np.ndarray, x_as: np.ndarray) -> dict[str, np.ndarray] | None:
        x_clip, x_as = check_features_inputs(x_clip, x_as, self.dim)
        torch = self._torch
        with torch.inference_mode():
            xc, xa = torch.from_numpy(x_clip)[None], torch.from_numpy(x_as)[None]
            out = self._head.forward_features(xc, xa, torch.ones(xc.shape[:2]), self._prompts)
        return as_float32({"score": out.score[0].numpy(), "score_c": out.score_c[0].numpy(),
                            "probs": out.probs[0].numpy()})  # fmt: skip

    def close(self) -> None:
        self._encoder = self._head = None
