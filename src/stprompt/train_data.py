"""stp-train's training set: features loaded once per video (x_AS by SA2 at full resolution, then pooled), the
balanced half-normal / half-anomalous batches, their padding, clip dropout and the validation hold-out.

Kept apart from the loop (`stprompt.train`) so each can be read alone; torch is imported inside the functions
that need it, so `stp-train --help` stays free of it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np

from .data.features import FeatureStore
from .errors import UserError


@dataclass
class TrainSet:
    x_clip: list[np.ndarray]  # each [T_i, D], T_i <= max_snippets
    x_as: list[np.ndarray]
    targets: np.ndarray  # [N, 1 + C] multi-hot class labels
    anomalous: np.ndarray  # [N] bool
    ids: list[str] = field(default_factory=list)  # video ids, in the order above


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
    from tqdm import tqdm

    from .model.sa2 import spatial_aggregate

    videos = store.videos("train")
    if not videos:
        raise UserError(f"{store.root} has no training videos; extract with --split train or all")
    classes = store.classes
    xs_clip, xs_as, targets, anomalous, ids = [], [], [], [], []
    for video in tqdm(videos, desc="stp-train: loading", unit="video", disable=not progress, file=sys.stderr):
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
        ids.append(video.id)
    return TrainSet(xs_clip, xs_as, np.stack(targets), np.asarray(anomalous, bool), ids)


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


def batches_per_epoch(anomalous: np.ndarray, batch: int) -> int:
    """len(balanced_batches(anomalous, batch, rng)), known before any is drawn: the schedule is planned from it."""
    n_normal, n_anomalous = int((~anomalous).sum()), int(anomalous.sum())
    if n_normal == 0 or n_anomalous == 0:
        return math.ceil(len(anomalous) / batch)
    return math.ceil(max(n_normal, n_anomalous) / max(1, batch // 2))


def drop_clip(x_clip, p: float, seed: int, step: int):
    """Zero each video's x_clip [B, T, D] with probability p, drawn from (seed, step) so --resume redraws it."""
    import torch

    if p <= 0:
        return x_clip
    keep = np.random.default_rng([seed, step, 0x636C6970]).random(x_clip.shape[0]) >= p  # "clip"
    return x_clip * torch.from_numpy(keep.astype(np.float32))[:, None, None]


def split_validation(anomalous: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the training videos held out for validation: round(fraction x n) of the normal and of the
    anomalous ones separately (so the video-level AUC is defined: at least one of each held out and one kept)."""
    held = np.zeros(len(anomalous), bool)
    if fraction <= 0:
        return held
    rng = np.random.default_rng([seed, 0x76616C])  # "val": a stream apart from the batch order's [seed, epoch]
    for group in (np.flatnonzero(~anomalous), np.flatnonzero(anomalous)):
        if len(group) < 2:
            raise UserError(
                f"--val-fraction needs at least 2 normal and 2 anomalous training videos (one of each held out, one "
                f"kept); there are {int((~anomalous).sum())} normal and {int(anomalous.sum())} anomalous"
            )
        n = min(max(round(fraction * len(group)), 1), len(group) - 1)
        held[rng.choice(group, n, replace=False)] = True
    return held
