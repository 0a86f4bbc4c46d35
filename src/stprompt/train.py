"""`stp-train`: weakly supervised training of the STPrompt head and prompt context on extracted features.

SA2 has no parameters, so x_AS is computed once per video at full temporal resolution; videos longer than
`--max-snippets` are then average-pooled into that many uniform bins (x_clip and x_AS alike), shorter ones
padded, and every attention, top-k and loss honours the padding mask. Batches hold half normal and half
anomalous videos when both exist. The checkpoint is rewritten atomically after every epoch, so Ctrl-C
loses at most the running epoch and `--resume` continues from the last one. No test data is looked at.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass

import numpy as np

from .cliformat import HelpFormatter
from .data.annotations import NORMAL, class_phrase
from .data.features import FeatureStore
from .errors import UserError, cli_entry
from .model.config import SPATIAL, TEMPORAL


@dataclass
class TrainSet:
    x_clip: list[np.ndarray]  # each [T_i, D], T_i <= max_snippets
    x_as: list[np.ndarray]
    targets: np.ndarray  # [N, 1 + C] multi-hot class labels
    anomalous: np.ndarray  # [N] bool


def pool_snippets(x: np.ndarray, bins: int) -> np.ndarray:
    """Average-pool [T, ...] into `bins` uniform bins when T > bins (training only)."""
    t = x.shape[0]
    if t <= bins:
        return x
    edges = np.linspace(0, t, bins + 1).round().astype(int)
    sums = np.add.reduceat(x, edges[:-1], axis=0)
    return (sums / np.diff(edges).reshape((-1,) + (1,) * (x.ndim - 1))).astype(x.dtype)


def load_train_set(store: FeatureStore, head_cfg, max_snippets: int, progress: bool = True) -> TrainSet:
    import torch

    from .model.sa2 import spatial_aggregate

    videos = store.videos("train")
    if not videos:
        raise UserError(f"{store.root} has no training videos; extract with --split train or all")
    classes = store.classes
    xs_clip, xs_as, targets, anomalous = [], [], [], []
    for i, video in enumerate(videos):
        if progress:
            print(f"\rstp-train: loading features {i + 1}/{len(videos)}", end="", file=sys.stderr)
        arrays = store.load(video.id)
        x_clip = arrays["x_clip"].astype(np.float32)
        if head_cfg.spatial != "none":
            with torch.no_grad():
                xp = torch.from_numpy(arrays["x_patch"].astype(np.float32))[None]
                x_as = spatial_aggregate(xp, None, head_cfg.topk_windows, head_cfg.spatial)[0].numpy()
        else:
            x_as = np.zeros_like(x_clip)
        xs_clip.append(pool_snippets(x_clip, max_snippets))
        xs_as.append(pool_snippets(x_as, max_snippets))
        target = np.zeros(len(classes), np.float32)
        for lab in video.labels:
            target[classes.index(lab)] = 1.0
        targets.append(target)
        anomalous.append(video.is_anomalous)
    if progress:
        print(file=sys.stderr)
    return TrainSet(xs_clip, xs_as, np.stack(targets), np.asarray(anomalous, bool))


def balanced_batches(anomalous: np.ndarray, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches: half normal, half anomalous when both exist (the smaller side cycles)."""
    normal_idx = np.flatnonzero(~anomalous)
    anomal_idx = np.flatnonzero(anomalous)
    if len(normal_idx) == 0 or len(anomal_idx) == 0:
        order = rng.permutation(len(anomalous))
        return [order[i : i + batch] for i in range(0, len(order), batch)]
    half = max(1, batch // 2)
    steps = math.ceil(max(len(normal_idx), len(anomal_idx)) / half)

    def stream(idx: np.ndarray) -> np.ndarray:
        reps = math.ceil(steps * half / len(idx))
        return np.concatenate([rng.permutation(idx) for _ in range(reps)])

    n_stream, a_stream = stream(normal_idx), stream(anomal_idx)
    take = min(half, len(normal_idx)), min(half, len(anomal_idx))
    return [
        np.concatenate([n_stream[s * take[0] : (s + 1) * take[0]], a_stream[s * take[1] : (s + 1) * take[1]]])
        for s in range(steps)
    ]


def collate(data: TrainSet, idx: np.ndarray):
    """Pad a batch to its longest video: x_clip, x_as [B, T, D], mask [B, T], lengths, targets, y."""
    import torch

    lengths = np.array([len(data.x_clip[i]) for i in idx])
    t, d = int(lengths.max()), data.x_clip[idx[0]].shape[1]
    x_clip = np.zeros((len(idx), t, d), np.float32)
    x_as = np.zeros((len(idx), t, d), np.float32)
    mask = np.zeros((len(idx), t), np.float32)
    for row, i in enumerate(idx):
        x_clip[row, : lengths[row]] = data.x_clip[i]
        x_as[row, : lengths[row]] = data.x_as[i]
        mask[row, : lengths[row]] = 1.0
    return (
        torch.from_numpy(x_clip),
        torch.from_numpy(x_as),
        torch.from_numpy(mask),
        torch.from_numpy(lengths),
        torch.from_numpy(data.targets[idx]),
        torch.from_numpy(data.anomalous[idx].astype(np.float32)),
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stp-train",
        description="Train the STPrompt head (SA2 + distance adapter + C/A branches + CoOp prompts) on features.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("features", help="feature folder written by stp-extract")
    p.add_argument("--out", required=True, help="checkpoint to write (model.pt)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training videos (the last is kept)")
    p.add_argument("--batch", type=int, default=64, help="videos per batch (half normal, half anomalous)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--alpha", type=float, default=0.9, help="L_align weight (1.0 for UBnormal)")
    p.add_argument("--beta", type=float, default=2.0, help="L_const weight")
    p.add_argument("--sigma", type=float, default=1.0, help="distance-attention temperature")
    p.add_argument("--layers", type=int, default=2, help="temporal adapter layers")
    p.add_argument("--topk-windows", type=int, default=12, help="SA2: windows kept by motion (K)")
    p.add_argument("--tau-align", type=float, default=0.07, help="A-branch temperature")
    p.add_argument("--n-ctx", type=int, default=8, help="learnable prompt context vectors")
    p.add_argument("--max-snippets", type=int, default=256, help="longer training videos are pooled to this")
    p.add_argument(
        "--spatial",
        choices=SPATIAL,
        default=None,
        help="x_AS from the 49 windows (paper Table 5): none, mean of all, softmax(motion) over all, mean of the "
        "top-K by motion, or sa2 = softmax over the top-K (default)",
    )
    p.add_argument(
        "--temporal",
        choices=TEMPORAL,
        default=None,
        help="temporal adapter (paper Table 6): none, 8-head self-attention without positions, self-attention "
        "then distance, or distance (default); the transformer ones do not stream (stp-export refuses them)",
    )
    p.add_argument("--no-sa2", action="store_true", help="ablation: no motion-prior aggregation (= --spatial none)")
    p.add_argument("--no-adapter", action="store_true", help="ablation: no temporal adapter (= --temporal none)")
    p.add_argument("--branches", choices=("both", "c", "a"), default="both", help="which branch losses train")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and batch order (runs repeat exactly)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--resume", action="store_true", help="continue from the epoch stored in --out")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _alias(value: str | None, off: bool, off_flag: str, flag: str, off_value: str, default: str) -> str:
    """--no-sa2 / --no-adapter are the older spellings of --spatial none / --temporal none."""
    if off and value not in (None, off_value):
        raise UserError(f"{off_flag} means {flag} {off_value}; it contradicts {flag} {value}")
    return off_value if off else value or default


@cli_entry("stp-train")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("epochs", "batch", "max_snippets", "layers", "n_ctx"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    store = FeatureStore.open(args.features)
    train(store, args)
    return 0


def train(store: FeatureStore, args: argparse.Namespace) -> None:
    import torch

    from .checkpoint import Checkpoint, load_checkpoint
    from .clip.loader import check_same_activation, check_same_weights, load_clip
    from .model import losses
    from .model.config import HeadConfig
    from .model.head import STPromptHead
    from .model.prompts import PromptLearner

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        cfg = HeadConfig(
            dim=store.dim,
            n_classes=len(store.classes),
            sigma=args.sigma,
            layers=args.layers,
            topk_windows=args.topk_windows,
            tau_align=args.tau_align,
            n_ctx=args.n_ctx,
            branches=args.branches,
            spatial=_alias(args.spatial, args.no_sa2, "--no-sa2", "--spatial", "none", "sa2"),
            temporal=_alias(args.temporal, args.no_adapter, "--no-adapter", "--temporal", "none", "distance"),
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    if store.classes[0] != NORMAL:
        raise UserError(f"{store.root}: first class must be {NORMAL!r}")
    clip = load_clip(store.index["clip"])
    check_same_weights(store.index["clip_sha256"], clip.sha256, f"features in {store.root}", store.index["clip"])
    check_same_activation(store.clip_activation, clip.activation, f"features in {store.root}", store.index["clip"])
    if clip.dim != store.dim:
        raise UserError(f"features have D={store.dim} but {clip.spec} embeds to D={clip.dim}")
    phrases = [class_phrase(c) for c in store.classes]
    data = load_train_set(store, cfg, args.max_snippets, progress=not args.quiet)

    head = STPromptHead(cfg)
    prompt = PromptLearner(clip.model, phrases, n_ctx=cfg.n_ctx)
    params = list(head.parameters()) + [prompt.ctx]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    start_epoch = 0
    if args.resume:
        prev = load_checkpoint(args.out)
        if prev.config != cfg or prev.classes != store.classes:
            raise UserError(f"{args.out} was trained with other settings or classes; drop --resume")
        check_same_activation(prev.clip_activation, clip.activation, str(args.out), store.index["clip"])
        head.load_state_dict(prev.head_state)
        with torch.no_grad():
            prompt.ctx.copy_(prev.prompt_ctx)
        if prev.optimizer_state:
            opt.load_state_dict(prev.optimizer_state)
        start_epoch = prev.epoch
        if start_epoch >= args.epochs and not args.quiet:
            print(f"stp-train: {args.out} already has {start_epoch} epochs", file=sys.stderr)

    use_c = cfg.branches in ("both", "c")
    use_a = cfg.branches in ("both", "a")
    train_args = {k: v for k, v in vars(args).items() if k not in ("resume", "quiet", "threads")}
    for epoch in range(start_epoch, args.epochs):
        t0 = time.perf_counter()
        head.train()
        rng = np.random.default_rng([args.seed, epoch])
        sums = {"loss": 0.0, "class": 0.0, "align": 0.0, "const": 0.0}
        batches = balanced_batches(data.anomalous, args.batch, rng)
        for idx in batches:
            x_clip, x_as, mask, lengths, target, y = collate(data, idx)
            prompts = prompt()
            out = head.forward_features(x_clip, x_as, mask, prompts)
            loss = torch.zeros(())
            if use_c:
                l_class = losses.class_loss(out.score_c, mask, lengths, y)
                loss = loss + l_class
                sums["class"] += l_class.item()
            if use_a:
                l_align = losses.align_loss(out.logits, mask, lengths, target)
                l_const = losses.const_loss(prompts)
                loss = loss + args.alpha * l_align + args.beta * l_const
                sums["align"] += l_align.item()
                sums["const"] += l_const.item()
            if not torch.isfinite(loss):
                raise UserError(f"loss became {loss.item()} in epoch {epoch + 1}; lower --lr or check the features")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums["loss"] += loss.item()
        head.eval()
        with torch.no_grad():
            prompt_features = prompt()
        Checkpoint(
            config=cfg,
            classes=store.classes,
            class_phrases=phrases,
            clip=store.index["clip"],
            clip_sha256=store.index["clip_sha256"],
            clip_arch=clip.arch,
            clip_activation=clip.activation,
            stride=store.stride,
            head_state=head.state_dict(),
            prompt_ctx=prompt.ctx.detach().clone(),
            prompt_features=prompt_features,
            epoch=epoch + 1,
            train_args=train_args,
            optimizer_state=opt.state_dict(),
        ).save(args.out)
        if not args.quiet:
            n = len(batches)
            parts = " ".join(f"{k}={v / n:.4f}" for k, v in sums.items() if v)
            print(
                f"stp-train: epoch {epoch + 1}/{args.epochs} {parts} ({n} batches, "
                f"{time.perf_counter() - t0:.1f}s) -> {args.out}",
                file=sys.stderr,
            )


if __name__ == "__main__":
    sys.exit(main())
