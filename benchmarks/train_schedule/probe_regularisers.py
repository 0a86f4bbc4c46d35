"""Probe training-time regularisers on the hard controlled features before any becomes a stp-train flag (issue 16).

    [PRESET=hard|default] [STEPS=250] [SEEDS=0,1,2] [FEAT=/tmp/probe/feat] \
        python benchmarks/train_schedule/probe_regularisers.py NAME '{"clipdrop": 0.5}' ["--lr 2e-4"]

Each augmentation is applied to every training batch by wrapping stp-train's `collate` (test videos are never
touched): `noise` s (gaussian noise of std s on x_clip and x_AS), `clipnoise` s (on x_clip only), `drop` p
(elementwise dropout of both), `clipdrop` p (a video's whole x_clip zeroed with probability p: what became
`stp-train --clip-dropout`), `center` (x_clip minus its per-video mean). Per seed: `stp-train --steps STEPS --seed s
--clip-dropout 0` (the flag off, so only the probe's own augmentation acts) with SA2 on and `--no-sa2`, then
`stp-eval`; prints the mean +- std over seeds of the A-branch (A) and C-branch (C) test frame AUC and SA2 on's
per-seed A. Results of the runs that chose the small-set recipe: benchmarks/results/regulariser-probe-hard.txt.
"""

import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from stprompt import evaluate, train
from stprompt.clip.loader import load_clip
from stprompt.data.feature_synth import make_feature_dataset

plain_collate = train.collate
AUG: dict = {}


def augmented_collate(data, idx):
    """stp-train's batch, then the probe's augmentation of x_clip / x_AS (padding stays zero)."""
    x_clip, x_as, mask, lengths, target, y = plain_collate(data, idx)
    valid = mask[..., None]
    if AUG.get("noise"):
        x_clip = x_clip + AUG["noise"] * torch.randn_like(x_clip) * valid
        x_as = x_as + AUG["noise"] * torch.randn_like(x_as) * valid
    if AUG.get("clipnoise"):
        x_clip = x_clip + AUG["clipnoise"] * torch.randn_like(x_clip) * valid
    if AUG.get("drop"):
        keep = (torch.rand_like(x_clip) > AUG["drop"]).float() / (1 - AUG["drop"])
        x_clip, x_as = x_clip * keep, x_as * keep
    if AUG.get("clipdrop"):
        x_clip = x_clip * (torch.rand(x_clip.shape[0], 1, 1) > AUG["clipdrop"]).float()
    if AUG.get("center"):
        mean = (x_clip * valid).sum(1, keepdim=True) / valid.sum(1, keepdim=True)
        x_clip = (x_clip - mean) * valid
    return x_clip, x_as, mask, lengths, target, y


def evaluate_json(features: Path, ckpt: Path) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert evaluate.main([str(features), "--ckpt", str(ckpt)]) == 0
    return json.loads(buf.getvalue())


def spread(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.3f}±{statistics.stdev(xs) if len(xs) > 1 else 0:.3f}"


def main() -> None:
    name, aug, flags = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3].split() if len(sys.argv) > 3 else []
    AUG.update(aug)
    train.collate = augmented_collate
    torch.set_num_threads(1)
    preset = os.environ.get("PRESET", "hard")
    seeds = [int(s) for s in os.environ.get("SEEDS", "0,1,2").split(",")]
    steps = os.environ.get("STEPS", "250")
    clip = load_clip("stp-tiny")
    res: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
    base = Path(os.environ.get("FEAT", "/tmp/probe/feat"))
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            feat = base / f"{preset}-{seed}"
            if not feat.exists():
                make_feature_dataset(feat, preset=preset, dim=clip.dim, clip="stp-tiny", clip_sha256=clip.sha256,
                                     seed=seed)  # fmt: skip
            for sa2 in ("on", "off"):
                out = Path(tmp) / f"{seed}{sa2}" / "model.pt"
                argv = [str(feat), "--out", str(out), "--steps", steps, "--seed", str(seed), "--threads", "1",
                        "--quiet", "--clip-dropout", "0", *flags, *(["--no-sa2"] if sa2 == "off" else [])]  # fmt: skip
                err = io.StringIO()
                with contextlib.redirect_stderr(err):
                    assert train.main(argv) == 0, err.getvalue()
                r = evaluate_json(feat, out)
                res[sa2].append((r["auc"], r["auc_c"]))
    on_a, on_c = [a for a, _ in res["on"]], [c for _, c in res["on"]]
    off_a, off_c = [a for a, _ in res["off"]], [c for _, c in res["off"]]
    print(f"{name:28s} on A {spread(on_a)} C {spread(on_c)} | off A {spread(off_a)} C {spread(off_c)}  "
          f"{[round(a, 3) for a in on_a]}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
