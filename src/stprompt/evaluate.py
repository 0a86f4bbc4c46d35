"""`stp-eval`: frame AUC of both branches on the test split, predictions and score plots.

Each test video is scored in one pass over its full length (the banded adapter is linear in T, so there
are no fixed-size chunks and no context lost at chunk borders). Snippet scores are repeated `stride` times
and the ground truth truncated to T*stride frames; one ROC AUC over all test frames (micro).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data.annotations import NORMAL, Video
from .data.features import FeatureStore
from .errors import UserError, cli_entry
from .fileio import atomic_write_json
from .metrics import frame_ap, frame_auc, snippet_to_frames


@dataclass
class VideoPrediction:
    video: Video
    frames: np.ndarray  # native frame index of each snippet
    scores: np.ndarray  # A-branch anomaly score per snippet
    scores_c: np.ndarray  # C-branch probability per snippet
    probs: np.ndarray  # [T, 1 + C] class probabilities

    def to_json(self) -> dict:
        return {
            "frames": self.frames.tolist(),
            "scores": self.scores.round(6).tolist(),
            "scores_c": self.scores_c.round(6).tolist(),
            "probs": self.probs.round(6).tolist(),
        }


def check_compatible(ckpt, store: FeatureStore) -> None:
    """Refuse features made with other CLIP weights, classes or stride than the checkpoint."""
    from .clip.loader import check_same_weights

    check_same_weights(ckpt.clip_sha256, store.index["clip_sha256"], "the checkpoint", f"features in {store.root}")
    if ckpt.classes != store.classes:
        raise UserError(f"checkpoint classes {ckpt.classes} differ from the features' {store.classes}")
    if ckpt.config.dim != store.dim:
        raise UserError(f"checkpoint expects D={ckpt.config.dim}, features have D={store.dim}")
    if ckpt.stride != store.stride:
        raise UserError(f"checkpoint was trained on stride {ckpt.stride}, features use stride {store.stride}")


def predict(ckpt, store: FeatureStore, videos: list[Video]) -> list[VideoPrediction]:
    import torch

    head = ckpt.build_head()
    prompts = ckpt.prompt_features.float()
    preds = []
    with torch.inference_mode():
        for video in videos:
            arrays = store.load(video.id)
            x_clip = torch.from_numpy(arrays["x_clip"].astype(np.float32))[None]
            x_patch = torch.from_numpy(arrays["x_patch"].astype(np.float32))[None]
            mask = torch.ones(x_clip.shape[:2])
            out = head(x_clip, x_patch, mask, prompts)
            preds.append(
                VideoPrediction(
                    video=video,
                    frames=arrays["frames"].astype(np.int64),
                    scores=out.score[0].numpy().astype(np.float64),
                    scores_c=out.score_c[0].numpy().astype(np.float64),
                    probs=out.probs[0].numpy().astype(np.float64),
                )
            )
    return preds


def summarize(preds: list[VideoPrediction], classes: list[str], stride: int) -> dict:
    """auc, auc_c, ap, per_class_auc (normal videos + that class's videos), n_videos, n_frames."""
    labels, scores, scores_c, owner = [], [], [], []
    for i, p in enumerate(preds):
        n = len(p.scores) * stride
        labels.append(p.video.frame_labels(n))
        scores.append(snippet_to_frames(p.scores, stride))
        scores_c.append(snippet_to_frames(p.scores_c, stride))
        owner.append(np.full(n, i))
    if not preds:
        raise UserError("no test videos in the feature folder")
    y, s, sc, who = map(np.concatenate, (labels, scores, scores_c, owner))
    per_class = {}
    for cls in classes:
        if cls == NORMAL:
            continue
        keep = [i for i, p in enumerate(preds) if not p.video.is_anomalous or cls in p.video.labels]
        if any(cls in preds[i].video.labels for i in keep):
            sel = np.isin(who, keep)
            per_class[cls] = frame_auc(y[sel], s[sel])
    return {
        "auc": frame_auc(y, s),
        "auc_c": frame_auc(y, sc),
        "ap": frame_ap(y, s),
        "ap_c": frame_ap(y, sc),
        "per_class_auc": per_class,
        "n_videos": len(preds),
        "n_anomalous_videos": sum(p.video.is_anomalous for p in preds),
        "n_frames": int(len(y)),
        "n_anomalous_frames": int(y.sum()),
    }


def plot_predictions(preds: list[VideoPrediction], stride: int, out_dir: Path) -> None:
    """One PNG per video: both branches' scores over native frames, ground truth shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    for p in preds:
        n = len(p.scores) * stride
        fig, ax = plt.subplots(figsize=(8, 2.6), dpi=100)
        for start, end in p.video.anomalies:
            ax.axvspan(start, min(end, n), color="tab:red", alpha=0.15, lw=0)
        x = np.arange(n)
        ax.plot(x, snippet_to_frames(p.scores, stride), label="score (A-branch)", color="tab:blue")
        ax.plot(x, snippet_to_frames(p.scores_c, stride), label="C-branch", color="tab:orange", alpha=0.7)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(0, max(n - 1, 1))
        ax.set_xlabel("frame")
        ax.set_title(f"{p.video.path} ({', '.join(p.video.labels)})", fontsize=9)
        ax.legend(loc="upper right", fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / f"{p.video.id}.png")
        plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stp-eval",
        description="Evaluate a checkpoint on the test videos of a feature folder; JSON metrics on stdout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("features", help="feature folder written by stp-extract")
    p.add_argument("--ckpt", required=True, help="checkpoint written by stp-train")
    p.add_argument("--split", choices=("train", "test", "all"), default="test", help="videos to evaluate")
    p.add_argument("--predictions", help="write per-video frames, scores, scores_c and probs to this JSON file")
    p.add_argument("--plots", help="write a score-curve PNG per video into this folder")
    return p


@cli_entry("stp-eval")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.ckpt)
    store = FeatureStore.open(args.features)
    check_compatible(ckpt, store)
    videos = store.videos(args.split)
    preds = predict(ckpt, store, videos)
    result = summarize(preds, ckpt.classes, store.stride)
    if args.predictions:
        atomic_write_json(args.predictions, {p.video.path: p.to_json() for p in preds})
    if args.plots:
        plot_predictions(preds, store.stride, Path(args.plots))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
