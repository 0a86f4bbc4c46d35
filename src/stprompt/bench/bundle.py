"""A random-weights bundle of any CLIP architecture, so stp-bench runs on a fresh machine with nothing trained.

Timing does not depend on weight values: a random ViT-B-16 costs what the trained one costs. The checkpoint gets
UCF-Crime's 1 + 13 classes (the paper's largest head) and random prompt embeddings (no text encoder run); the
bundle is written by the real stp-export, gates included.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..data.annotations import class_phrase
from ..data.importers import NORMAL, UCF_CRIME_CLASSES


def random_bundle(clip_spec: str, out_dir: Path, int8: bool = False, fp16: bool = False, log=print) -> Path:
    """Checkpoint (random head) + stp-export into `out_dir`; returns the bundle's model.json."""
    import torch

    from ..checkpoint import Checkpoint
    from ..clip.loader import load_clip
    from ..export.bundle import export_bundle
    from ..export.options import ExportOptions
    from ..model.config import HeadConfig
    from ..model.head import STPromptHead

    out_dir.mkdir(parents=True, exist_ok=True)
    clip = load_clip(clip_spec)
    classes = [NORMAL, *UCF_CRIME_CLASSES]
    torch.manual_seed(0)
    cfg = HeadConfig(dim=clip.dim, n_classes=len(classes))
    ckpt = Checkpoint(cfg, classes, [class_phrase(c) for c in classes], str(clip.spec), clip.sha256, 16,
                      STPromptHead(cfg).state_dict(), torch.zeros(8, clip.dim),
                      torch.randn(len(classes), clip.dim), clip_arch=clip.arch,
                      clip_activation=clip.activation)  # fmt: skip
    ckpt.save(out_dir / "model.pt")
    opts = ExportOptions(precision="fp16" if fp16 else "fp32", int8_cpu=int8, probe_frames=1)
    log(f"stp-bench: exporting a random-weights {clip_spec} bundle to {out_dir} (stp-export{' --int8-cpu' * int8})")
    return export_bundle(out_dir / "model.pt", out_dir / "model", opts, log=lambda _msg: None)


def openvino_engines(manifest: Path, wanted: set[str], log: Callable[[str], None] = print) -> None:
    """The OpenVINO engines a --clip run wants, built as `stp-build --openvino [--int8]` builds them (INT8 calibrated
    on the probe scene); none where OpenVINO (or, for INT8, NNCF) is not installed or an engine fails its gate: those
    backends are then skipped."""
    import importlib.util

    from ..engines.openvino import OpenVinoOptions, build_openvino_engine, openvino_available
    from ..errors import UserError

    if not openvino_available():
        return
    for name, int8 in (("openvino-bf16", False), ("openvino-int8", True)):
        if name in wanted and (not int8 or importlib.util.find_spec("nncf") is not None):
            log(f"stp-bench: building the {name} engine (stp-build --openvino{' --int8' * int8})")
            try:
                build_openvino_engine(manifest, OpenVinoOptions(int8=int8), log=lambda _msg: None, progress=False)
            except UserError as err:  # a failed gate: the backend is then skipped (no engine file), saying why here
                log(f"stp-bench: {name} not built: {err}")
