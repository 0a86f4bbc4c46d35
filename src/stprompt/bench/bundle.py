"""A random-weights bundle of any CLIP architecture, so stp-bench runs on a fresh machine with nothing trained.

Timing does not depend on weight values: a random ViT-B-16 costs what the trained one costs. The checkpoint gets
UCF-Crime's 1 + 13 classes (the paper's largest head) and random prompt embeddings (no text encoder run); the
bundle is written by the real stp-export, gates included.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from ..data.annotations import class_phrase
from ..data.importers import NORMAL, UCF_CRIME_CLASSES
from ..errors import UserError


def random_bundle(clip_spec: str, out_dir: Path, int8: bool = False, fp16: bool = False, log=print) -> Path:
    """Checkpoint (random head) + stp-export into `out_dir`; returns the bundle's model.json."""
    import torch

    from ..checkpoint import Checkpoint
    from ..clip.loader import load_clip
    from ..export import cli as export_cli
    from ..model.config import HeadConfig
    from ..model.head import STPromptHead

    out_dir.mkdir(parents=True, exist_ok=True)
    clip = load_clip(clip_spec)
    classes = [NORMAL, *UCF_CRIME_CLASSES]
    torch.manual_seed(0)
    cfg = HeadConfig(dim=clip.dim, n_classes=len(classes))
    ckpt = Checkpoint(cfg, classes, [class_phrase(c) for c in classes], str(clip.spec), clip.sha256, 16,
                      STPromptHead(cfg).state_dict(), torch.zeros(8, clip.dim),
                      torch.randn(len(classes), clip.dim))  # fmt: skip
    ckpt.save(out_dir / "model.pt")
    argv = ["--ckpt", str(out_dir / "model.pt"), "--out", str(out_dir / "model"), "--quiet", "--probe-frames", "1"]
    argv += ["--int8-cpu"] if int8 else []
    argv += ["--precision", "fp16"] if fp16 else []
    log(f"stp-bench: exporting a random-weights {clip_spec} bundle to {out_dir} (stp-export{' --int8-cpu' * int8})")
    with contextlib.redirect_stdout(sys.stderr):  # stp-export prints the manifest path
        if export_cli.main(argv) != 0:
            raise UserError(f"exporting the random {clip_spec} bundle failed (see above)")
    return out_dir / "model.json"
