"""Load an open_clip model from a ClipSpec, with the activation its weights were trained with, and fingerprint them.

Nothing is downloaded unless the spec names a hub tag (e.g. `ViT-B-16:openai`). The sha256 of the loaded
state is written next to every feature file and checkpoint, so features, checkpoints and bundles made
with different weights can never be mixed silently.

The activation. OpenAI trained CLIP with QuickGELU, open_clip's own runs mostly with GELU, and open_clip 3 builds
`ViT-B-16` with GELU whatever weights are then loaded into it: they load with a library warning at most, and every
embedding is off. The same weights (same sha256) give other features under the other activation, so the activation
is decided from the weights and recorded beside the sha256 (`clip_activation`, with the architecture it amounts to
as `clip_arch`). `resolve_clip` decides, the first of these that speaks wins:

1. a hub tag: open_clip's pretrained registry (`openai`, and every tag it marks `quick_gelu`, is QuickGELU);
2. a local file with an `open_clip_config.json` beside it: its `model_cfg.quick_gelu` (absent: GELU, as open_clip
   reads it); the file must describe the architecture named in the spec, and its `preprocess_cfg` is honoured too;
3. a TorchScript archive (how OpenAI distributed its `.pt` files): the activation module its own code defines;
4. otherwise (a state dict alone, random weights): the architecture's config, `ARCH-quickgelu` for QuickGELU.

A file name or a state dict's key layout is no signal: open_clip's state dicts have OpenAI's layout. Weights that
say GELU in an architecture that fixes QuickGELU (`ViT-B-16-quickgelu`, `stp-tiny`) are refused; QuickGELU weights
in a GELU architecture (`ViT-B-16:openai`) are built with QuickGELU (open_clip's `force_quick_gelu`) and recorded
as the `-quickgelu` architecture where open_clip has one (`ViT-B-16-quickgelu`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..bundle.preprocess import Preprocess
from ..errors import UserError, first_line
from .spec import ClipSpec

_CONFIG_DIR = Path(__file__).with_name("configs")
_registered = False

QUICK_GELU, GELU = "quick_gelu", "gelu"
ACTIVATIONS = (QUICK_GELU, GELU)
CONFIG_NAME = "open_clip_config.json"  # open_clip's config file beside a checkpoint (its HF hub and local-dir form)
_DISPLAY = {QUICK_GELU: "QuickGELU", GELU: "GELU"}
# the fields of an open_clip model config that fix the shape of the weights (compared with a config beside a file)
_SHAPE_KEYS = {
    "": ("embed_dim",),
    "vision_cfg": ("image_size", "layers", "width", "head_width", "patch_size", "mlp_ratio"),
    "text_cfg": ("context_length", "vocab_size", "width", "heads", "layers"),
}
_ACTIVATION_CLASS = re.compile(r"^class (QuickGELU|GELU)\(Module\):", re.MULTILINE)
_TORCHSCRIPT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # OpenAI's archives carry these


def register_configs() -> None:
    """Make the package's model configs (stp-tiny) known to open_clip."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


def activation_name(activation: str | None) -> str:
    """How messages name an activation ("QuickGELU", "GELU"; None: recorded before stprompt recorded it)."""
    return _DISPLAY.get(activation or "", "an unrecorded activation (made before stprompt recorded it)")


@dataclass(frozen=True)
class ClipBuild:
    """How a ClipSpec is built: the architecture it amounts to, its activation and what decided it."""

    arch: str  # the open_clip architecture (ViT-B-16-quickgelu for ViT-B-16:openai; the spec's own otherwise)
    activation: str  # QUICK_GELU or GELU
    reason: str  # what decided the activation (a tag, a config file, the archive's code, the arch config)
    force_quick_gelu: bool  # the spec's architecture is GELU: build it with open_clip's force_quick_gelu
    preprocess_cfg: dict[str, Any] | None  # the hub tag's or the config file's; None: open_clip's defaults


@dataclass
class LoadedClip:
    model: torch.nn.Module  # an open_clip CLIP, eval mode, frozen, fp32, on CPU
    spec: ClipSpec
    sha256: str  # of the weights alone (state_sha256): the activation is `activation`
    arch: str  # the open_clip architecture built (ClipBuild.arch)
    activation: str  # the MLP activation the model runs: QUICK_GELU or GELU

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


def _arch_config(arch: str) -> dict[str, Any]:
    import open_clip

    register_configs()
    if arch not in open_clip.list_models():  # before get_model_config: it fetches `hf-hub:` names
        raise UserError(f"unknown CLIP architecture {arch!r}; open_clip knows e.g. ViT-B-16, ViT-L-14, stp-tiny")
    return open_clip.get_model_config(arch)


def _tag_config(spec: ClipSpec) -> dict[str, Any]:
    """open_clip's registry entry for a hub tag; an `ARCH-quickgelu` lists only QuickGELU tags, so a GELU tag of the
    base architecture is found there (and then refused as a mismatch rather than as unknown)."""
    from open_clip import pretrained

    cfg = pretrained.get_pretrained_cfg(spec.arch, spec.value)
    base = spec.arch.removesuffix("-quickgelu")
    if not cfg and base != spec.arch:
        cfg = pretrained.get_pretrained_cfg(base, spec.value)
    if not cfg:
        tags = pretrained.list_pretrained_tags_by_model(spec.arch)
        raise UserError(f"open_clip has no pretrained weights {spec.value!r} for {spec.arch} "
                        f"(it has: {', '.join(tags) or 'none'})")  # fmt: skip
    return cfg


def _shape(cfg: dict[str, Any]) -> dict[str, Any]:
    """The weight-shaping fields of an open_clip model config, flat (`vision_cfg.width`)."""
    out = {}
    for section, keys in _SHAPE_KEYS.items():
        part = cfg.get(section) if section else cfg
        if isinstance(part, dict):
            for key in keys:
                if key in part:
                    value = part[key]
                    if key == "image_size" and isinstance(value, int):
                        value = [value, value]
                    out[f"{section}.{key}" if section else key] = list(value) if isinstance(value, tuple) else value
    return out


def read_config_beside(config: Path, arch: str, arch_cfg: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    """(quick_gelu, preprocess_cfg) of the open_clip_config.json beside a weights file; it must describe `arch`."""
    try:
        doc = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{config}: not a readable open_clip config ({first_line(err)})") from None
    model_cfg = doc.get("model_cfg", doc) if isinstance(doc, dict) else None
    if not isinstance(model_cfg, dict):
        raise UserError(f"{config}: 'model_cfg' must be a JSON object")
    ours, theirs = _shape(arch_cfg), _shape(model_cfg)
    for key in sorted(ours.keys() & theirs.keys()):
        if ours[key] != theirs[key]:
            raise UserError(f"{config} describes another architecture than {arch} ({key} {theirs[key]} there, "
                            f"{ours[key]} in {arch}); name its architecture in --clip")  # fmt: skip
    pre = doc.get("preprocess_cfg") if isinstance(doc, dict) else None
    return bool(model_cfg.get("quick_gelu", False)), pre if isinstance(pre, dict) else None


def torchscript_activation(path: Path) -> tuple[bool, str | None]:
    """(is a TorchScript archive, the activation its code defines) for a weights file: OpenAI's archives define
    `class QuickGELU(Module)`, nn.GELU is serialised as `class GELU(Module)`; None when neither or both appear."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in names):
                return False, None  # a torch.save zip (state dict) or another zip
            found = set()
            for name in names:
                if name.endswith(".py") and "/code/" in f"/{name}":
                    found.update(_ACTIVATION_CLASS.findall(archive.read(name).decode("utf-8", "replace")))
    except (OSError, zipfile.BadZipFile):
        return False, None
    return True, {"QuickGELU": QUICK_GELU, "GELU": GELU}[found.pop()] if len(found) == 1 else None


def resolve_clip(spec: ClipSpec | str) -> ClipBuild:
    """Decide the architecture and activation of `spec` (rules in the module docstring) without building the model or
    downloading: open_clip's registries, a config file beside a weights file, a TorchScript archive's code."""
    if isinstance(spec, str):
        spec = ClipSpec.parse(spec)
    arch_cfg = _arch_config(spec.arch)
    arch_quick = bool(arch_cfg.get("quick_gelu", False))
    said: str | None = None  # what the weights say
    reason, preprocess = "", None
    if spec.source == "hub":
        tag = _tag_config(spec)
        said = QUICK_GELU if tag.get("quick_gelu") else GELU
        reason, preprocess = f"open_clip's pretrained tag {spec.value!r}", tag
    elif spec.source == "file":
        path = Path(spec.value).expanduser()
        if not path.is_file():
            raise UserError(f"CLIP weights file not found: {path}")
        config = path.with_name(CONFIG_NAME)
        if config.is_file():
            quick, preprocess = read_config_beside(config, spec.arch, arch_cfg)
            said, reason = (QUICK_GELU if quick else GELU), str(config)
        else:
            _, said = torchscript_activation(path)
            reason = f"the TorchScript code in {path.name}"
    if said is None:
        activation, reason = (QUICK_GELU if arch_quick else GELU), f"{spec.arch}'s config"
    elif said == GELU and arch_quick:
        base = spec.arch.removesuffix("-quickgelu")
        fix = f"use {base}:{spec.value}" if base != spec.arch else "name a GELU architecture"
        raise UserError(f"--clip {spec}: {reason} says these weights were trained with GELU, but {spec.arch} builds "
                        f"QuickGELU; {fix}")  # fmt: skip
    else:
        activation = said
    force = activation == QUICK_GELU and not arch_quick
    arch = spec.arch
    if force:
        import open_clip

        twin = f"{spec.arch}-quickgelu"
        if twin in open_clip.list_models() and open_clip.get_model_config(twin) == {**arch_cfg, "quick_gelu": True}:
            arch = twin
    return ClipBuild(arch=arch, activation=activation, reason=reason, force_quick_gelu=force, preprocess_cfg=preprocess)


def model_activation(model: torch.nn.Module) -> str | None:
    """The activation in the transformer MLPs of a built open_clip model (None: it has none, e.g. timm towers)."""
    from open_clip.transformer import QuickGELU

    found = {
        QUICK_GELU if isinstance(module, QuickGELU) else GELU
        for name, module in model.named_modules()
        if name.endswith("mlp.gelu") and isinstance(module, (QuickGELU, torch.nn.GELU))
    }
    return found.pop() if len(found) == 1 else None


def _load_torchscript(model: torch.nn.Module, path: Path) -> None:
    """Load the weights of a TorchScript archive (torch.load(weights_only=True) refuses those) into `model`."""
    state = torch.jit.load(str(path), map_location="cpu").state_dict()
    unsaved = {name for name, _ in model.named_buffers()} - set(model.state_dict())  # a scripted model saves them
    for key in (*_TORCHSCRIPT_EXTRA_KEYS, *unsaved):
        state.pop(key, None)
    model.load_state_dict(state, strict=True)


def load_clip(spec: ClipSpec | str) -> LoadedClip:
    """Build the open_clip model of `spec` with the activation its weights were trained with (`resolve_clip`), load
    or initialise its weights, freeze it."""
    if isinstance(spec, str):
        spec = ClipSpec.parse(spec)
    build = resolve_clip(spec)
    import open_clip
    from open_clip import pretrained

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # silence "no weights" notice
    options = {"force_quick_gelu": build.force_quick_gelu, "force_preprocess_cfg": build.preprocess_cfg}
    if spec.source == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(spec.value))
            model = open_clip.create_model(spec.arch, pretrained=None, **options)
    else:
        if spec.source == "file":
            path = Path(spec.value).expanduser()
        else:
            try:
                path = Path(pretrained.download_pretrained(_tag_config(spec)))
            except Exception as err:  # noqa: BLE001 - network, hub and cache failures alike are the user's to fix
                raise UserError(f"cannot get pretrained weights {spec}: {first_line(err)}") from None
        try:
            if torchscript_activation(path)[0]:
                model = open_clip.create_model(spec.arch, pretrained=None, **options)
                _load_torchscript(model, path)
            else:
                model = open_clip.create_model(spec.arch, pretrained=str(path), **options)
        except Exception as err:  # noqa: BLE001 - any failure to read the user's file is their error to fix
            raise UserError(f"cannot load {path} into {spec.arch}: {first_line(err)}") from None
    built = model_activation(model)
    if built not in (None, build.activation):
        raise RuntimeError(f"open_clip built {spec.arch} with {built}, not {build.activation} ({build.reason})")
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedClip(model=model, spec=spec, sha256=state_sha256(model), arch=build.arch, activation=build.activation)


def legacy_activation(clip: str, open_clip_version: str | None = None) -> str | None:
    """The activation of an artefact recorded without one (stprompt before it recorded `clip_activation`): the
    loader then built the architecture's config as it was, except for the `openai` tag, which open_clip 2 built with
    QuickGELU and open_clip 3 with GELU. None where that is unknown (no `open_clip_version`) or `clip` unreadable."""
    try:
        spec = ClipSpec.parse(clip)
        cfg = _arch_config(spec.arch)
    except UserError:
        return None
    if cfg.get("quick_gelu", False):
        return QUICK_GELU
    if spec.source == "hub" and spec.value.lower() == "openai":
        major = re.match(r"\s*(\d+)\.", open_clip_version or "")
        return None if major is None else (GELU if int(major.group(1)) >= 3 else QUICK_GELU)
    return GELU


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


def check_same_activation(expected: str | None, actual: str | None, what: str, other: str) -> None:
    """Refuse to combine artefacts whose CLIP ran with different activations: same weights (sha256), other features.
    None (made before stprompt recorded it and not inferable, see legacy_activation) matches only None."""
    if expected != actual:
        raise UserError(
            f"{what} was made with CLIP running {activation_name(expected)}, but {other} runs "
            f"{activation_name(actual)}; extract, train and export again with this stprompt"
        )
