"""Load an open_clip model from a ClipSpec and fingerprint its weights.

Nothing is downloaded unless the spec names a hub tag (e.g. `ViT-B-16:openai`). The sha256 of the loaded
state is written next to every feature file and checkpoint, so features, checkpoints and bundles made
with different weights can never be mixed silently.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..bundle.preprocess import Preprocess
from ..errors import UserError, first_line
from .spec import ClipSpec

_CONFIG_DIR = Path(__file__).with_name("configs")
_registered = False


def register_configs() -> None:
    """Make the package's model configs (stp-tiny) known to open_clip."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


@dataclass
class LoadedClip:
    model: torch.nn.Module  # an open_clip CLIP, eval mode, frozen, fp32, on CPU
    spec: ClipSpec
    sha256: str

    @property
    def preprocess(self) -> Preprocess:
        return clip_preprocess(self.model)

    @property
    def dim(self) -> int:
        return (
            int(self.model.text_projection.shape[1])
            if self.model.text_projection is not None
            else int(self.model.transformer.width)
        )


def state_sha256(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes and fp32 bytes, in name order (independent of file format)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        if t.is_floating_point():
            t = t.float()
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def load_clip(spec: ClipSpec | str) -> LoadedClip:
    """Build the open_clip model of `spec`, load or initialise its weights, freeze it."""
    if isinstance(spec, str):
        spec = ClipSpec.parse(spec)
    register_configs()
    import open_clip

    if spec.arch not in open_clip.list_models():
        raise UserError(f"unknown CLIP architecture {spec.arch!r}; open_clip knows e.g. ViT-B-16, ViT-L-14, stp-tiny")
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # silence "no weights" notice
    if spec.source == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(spec.value))
            model = open_clip.create_model(spec.arch, pretrained=None)
    elif spec.source == "file":
        path = Path(spec.value).expanduser()
        if not path.is_file():
            raise UserError(f"CLIP weights file not found: {path}")
        try:
            model = open_clip.create_model(spec.arch, pretrained=str(path))
        except Exception as err:  # noqa: BLE001 - any failure to read the user's file is their error to fix
            raise UserError(f"cannot load {path} into {spec.arch}: {first_line(err)}") from None
    else:
        try:
            model = open_clip.create_model(spec.arch, pretrained=spec.value)
        except (RuntimeError, OSError, ValueError) as err:
            raise UserError(f"cannot get pretrained weights {spec}: {first_line(err)}") from None
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedClip(model=model, spec=spec, sha256=state_sha256(model))


def clip_preprocess(model: torch.nn.Module) -> Preprocess:
    """The input size and mean / std this CLIP model was trained with (open_clip's `visual.preprocess_cfg`: from the
    pretrained tag, an open_clip_config.json, or open_clip's OpenAI defaults), checked to be honourable."""
    visual = getattr(model, "visual", None)
    cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
    size = cfg.get("size", getattr(visual, "image_size", 224))
    pre = Preprocess.from_clip_config(size, cfg.get("mean"), cfg.get("std"))
    return pre.check_supported("CLIP preprocessing")


def check_same_weights(expected: str, actual: str, what: str, other: str) -> None:
    """Refuse to combine artefacts made with different CLIP weights."""
    if expected != actual:
        raise UserError(
            f"{what} was made with CLIP weights sha256 {expected[:12]}..., but {other} has {actual[:12]}...; "
            "extract, train and export with the same --clip"
        )
