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

from .cliformat import HelpFormatter
from .data.annotations import NORMAL, Video
from .data.features import FeatureStore
from .errors import UserError, cli_entry, warn
from .fileio import atomic_write_json, check_writable
from .localize.predict import VideoBoxes
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
    """Refuse features made with other CLIP weights or activation, classes or stride than the checkpoint."""
    from .clip.loader import check_same_activation, check_same_weights

    check_same_weights(ckpt.clip_sha256, store.index["clip_sha256"], "the checkpoint", f"features in {store.root}")
    check_same_activation(ckpt.clip_activation, store.clip_activation, "the checkpoint", f"features in {store.root}")
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _truth_caption(video: Video) -> str:
    return "normal video" if not video.is_anomalous else f"anomalous: {', '.join(video.labels)}"


def score_figure(p: VideoPrediction, stride: int, threshold: float = 0.5):
    """A video's score plot that reads on its own: both branches' scores over native frames, the ground-truth
    anomalous frames shaded and the alarm threshold drawn, every mark named in the legend, both axes labelled."""
    from matplotlib.patches import Patch

    n = len(p.scores) * stride
    fig, ax = _pyplot().subplots(figsize=(8, 3.2), dpi=100)
    for start, end in p.video.anomalies:
        ax.axvspan(start, min(end, n), color="tab:red", alpha=0.15, lw=0)
    x = np.arange(n)
    ax.plot(x, snippet_to_frames(p.scores, stride), color="tab:blue", label="score (A-branch: 1 - P(normal))")
    ax.plot(x, snippet_to_frames(p.scores_c, stride), color="tab:orange", alpha=0.8,
            label="C-branch (anomaly probability)")  # fmt: skip
    ax.axhline(threshold, color="black", ls="--", lw=1, label=f"alarm threshold {threshold:g}")
    truth = "ground truth: anomalous frames" + ("" if p.video.anomalies else " (none)")
    handles = [*ax.get_legend_handles_labels()[0], Patch(color="tab:red", alpha=0.15, label=truth)]
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, max(n - 1, 1))
    ax.set_xlabel("frame")
    ax.set_ylabel("anomaly score")
    ax.set_title(f"{p.video.path} ({_truth_caption(p.video)})", fontsize=10)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=8, frameon=False)
    return fig


def plot_predictions(preds: list[VideoPrediction], stride: int, out_dir: Path, threshold: float = 0.5) -> None:
    """One `score_figure` PNG per video."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in preds:
        fig = score_figure(p, stride, threshold)
        fig.savefig(out_dir / f"{p.video.id}.png", bbox_inches="tight")
        plt.close(fig)


def heat_colour_key():
    """The heat overlay's colours as a matplotlib colour map: draw.HEAT_COLORMAP's colours (turbo), each at the
    opacity the overlay gives that heat, so the colour bar beside a frame shows what the frame shows."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    from .draw import HEAT_ALPHA, HEAT_COLORMAP_NAME

    rgba = colormaps[HEAT_COLORMAP_NAME](np.linspace(0, 1, 256))
    rgba[:, 3] = HEAT_ALPHA * np.linspace(0, 1, 256)
    return ListedColormap(rgba, name="stp-heat")


def frame_figure(image_bgr: np.ndarray, title: str, truth, predicted, no_prediction: str):
    """A localization frame a person can read: `title` above, ground-truth boxes (green) and predicted boxes (red,
    with their scores) on the heat-overlaid frame, a legend naming both (`no_prediction` says why there is no red
    box), and the heat's colour key."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    from .draw import GREEN

    truth_colour = "#{:02x}{:02x}{:02x}".format(*GREEN[::-1])  # the runtime's BGR green, as matplotlib's RGB hex
    h, w = image_bgr.shape[:2]
    fig, ax = _pyplot().subplots(figsize=(4.2 * w / h + 1.6, 4.9), dpi=100)
    ax.imshow(image_bgr[..., ::-1])
    ax.set_axis_off()
    for colour, boxes in ((truth_colour, truth), ("red", predicted)):
        for b in boxes:
            ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, edgecolor=colour, lw=2))
            if colour == "red" and len(b) > 4:
                inside = b[1] < 0.06 * h  # a box at the top edge: its score inside it, clear of the title
                plate = {"facecolor": "red", "edgecolor": "none", "pad": 1}
                ax.text(b[0] + 2, b[1] + 2 if inside else b[1] - 2, f"{b[4]:.2f}", color="white", fontsize=8,
                        va="top" if inside else "bottom", bbox=plate)  # fmt: skip
    handles = [
        Line2D([], [], color=truth_colour, lw=2, label="ground truth box" + ("" if len(truth) else " (none here)")),
        Line2D([], [], color="red", lw=2, label="predicted box (score)" if len(predicted) else no_prediction),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=1, fontsize=8, frameon=False)
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), heat_colour_key()), ax=ax, fraction=0.046, pad=0.02)
    bar.set_label("heat: P(abnormal queries); opacity follows it", fontsize=8)
    ax.set_title(title, fontsize=9)
    return fig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stp-eval",
        description="Evaluate a checkpoint on the test videos of a feature folder; JSON metrics on stdout.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("features", help="feature folder written by stp-extract")
    p.add_argument("--ckpt", required=True, help="checkpoint written by stp-train")
    p.add_argument("--split", choices=("train", "test", "all"), default="test", help="videos to evaluate")
    p.add_argument("--predictions", help="write per-video frames, scores, scores_c and probs to this JSON file")
    p.add_argument("--plots", help="write a score-curve PNG per video (and localization frames) into this folder")
    loc = p.add_argument_group("localization (SPEC.md, training-free spatial localization)")
    loc.add_argument("--localize", action="store_true", help="boxes for alarmed snippets and TIoU (--scale-b features)")
    loc.add_argument("--queries", help="query bank JSON (default: built-in, the paper's examples)")
    loc.add_argument(
        "--heat-source",
        choices=("queries", "prompts"),
        default="queries",
        help="queries: the text query bank (STPrompt); prompts: the learned A-branch prompts (VadCLIP-style baseline)",
    )
    loc.add_argument("--tau-loc", type=float, default=0.01, help="softmax temperature over queries")
    loc.add_argument("--fusion-lambda", type=float, default=0.5, help="weight of scale A in the fused map")
    loc.add_argument("--heat-threshold", type=float, default=0.5, help="heat above which pixels form boxes")
    loc.add_argument("--min-box-area", type=float, default=0.001, help="smallest box, as a fraction of the frame")
    loc.add_argument("--alarm-threshold", type=float, default=0.5, help="snippet score that triggers localization")
    loc.add_argument("--tiou-theta", type=float, default=0.5, help="TIoU counts a frame only if its score >= theta")
    loc.add_argument(
        "--tiou-best", choices=("iou", "score"), default="iou", help="which predicted box is compared to the GT box"
    )
    loc.add_argument("--plot-frames", type=int, default=4, help="localization frames drawn per video with --plots")
    return p


def localization_settings(args: argparse.Namespace):
    from .localize.heat import LocalizeSettings

    if not 0 <= args.fusion_lambda <= 1 or args.tau_loc <= 0 or not 0 <= args.min_box_area < 1:
        raise UserError("need 0 <= --fusion-lambda <= 1, --tau-loc > 0 and 0 <= --min-box-area < 1")
    return LocalizeSettings(
        tau_loc=args.tau_loc,
        fusion_lambda=args.fusion_lambda,
        heat_threshold=args.heat_threshold,
        min_box_area=args.min_box_area,
    )


def load_queries(args: argparse.Namespace, ckpt):
    from .localize.queries import encode_bank, load_bank, prompt_queries

    if args.heat_source == "prompts":
        return prompt_queries(ckpt.prompt_features.numpy(), ckpt.classes)
    from .clip.loader import check_same_activation, check_same_weights, load_clip

    bank = load_bank(args.queries)
    clip = load_clip(ckpt.clip)
    check_same_weights(ckpt.clip_sha256, clip.sha256, "the checkpoint", ckpt.clip)
    check_same_activation(ckpt.clip_activation, clip.activation, "the checkpoint", ckpt.clip)
    return encode_bank(clip.model, bank, ckpt.classes)


def no_tiou_reason(preds: list[VideoPrediction], split: str) -> str:
    """Why a localization run has no TIoU terms, said on stderr and kept in the JSON beside `"tiou": null`: an
    import without boxes is the usual cause, and a bare null does not tell it from a model that localizes nothing."""
    n_gt = sum(len(b) for p in preds for b in p.video.boxes.values())
    if n_gt:
        return (f"the {n_gt} ground-truth boxes of the {split} videos all lie on frames past their last scored "
                "snippet")  # fmt: skip
    return (f"none of the {len(preds)} {split} videos has ground-truth boxes; import them (stp-import ucf-crime ROOT "
            "--boxes Test_annotation.pkl; shanghaitech and ubnormal read their own masks), then rerun stp-extract "
            "into this feature folder, which records them without encoding again")  # fmt: skip


def run_localization(args: argparse.Namespace, ckpt, store: FeatureStore, preds: list[VideoPrediction]):
    """Boxes for alarmed snippets of every video; TIoU over every ground-truth box frame."""
    from .localize.predict import localize_snippets, video_tiou_terms

    if not store.index.get("scale_b"):
        raise UserError(f"{store.root} has no scale-B windows; extract with stp-extract --scale-b for --localize")
    settings = localization_settings(args)
    queries = load_queries(args, ckpt)
    located: dict[str, VideoBoxes] = {}
    context = (queries, settings)
    terms: list[float] = []
    n_boxes = 0
    for p in preds:
        size = store.frame_size(p.video.id)
        if size is None:
            raise UserError(f"{store.root} does not record frame sizes; re-extract with this stp-extract")
        vb = localize_snippets(store.load(p.video.id), p.scores, size, queries, settings, args.alarm_threshold)
        located[p.video.path] = vb
        n_boxes += sum(len(b) for b in vb.boxes.values())
        terms += video_tiou_terms(p.video.boxes, vb, p.scores, store.stride, args.tiou_theta, args.tiou_best)
    n_alarm = sum(len(vb.boxes) for vb in located.values())
    reason = None if terms else no_tiou_reason(preds, args.split)
    if reason:
        warn(f"no TIoU: {reason}")
    return (
        located,
        context,
        {
            "tiou": float(np.mean(terms)) if terms else None,
            "tiou_reason": reason,
            "tiou_gt_boxes": len(terms),
            "alarm_snippets": n_alarm,
            "boxes_per_alarm_frame": n_boxes / n_alarm if n_alarm else 0.0,
            "heat_source": args.heat_source,
        },
    )


def plot_localization(
    store: FeatureStore,
    preds: list[VideoPrediction],
    located,
    queries,
    settings,
    per_video: int,
    out_dir: Path,
    threshold: float = 0.5,
) -> None:
    """Sampled frames of each video (those with ground-truth boxes first, else alarmed ones): the heat overlay,
    predicted (red) and ground-truth (green) boxes, a title, a legend and the heat's colour key."""
    import cv2

    from .draw import overlay_heat
    from .localize.heat import frame_heat

    plt = _pyplot()

    root = store.index.get("dataset")
    if not root or not Path(root).is_dir():
        print(f"stp-eval: note: dataset folder {root} not found; no localization frames drawn", file=sys.stderr)
        return
    for p in preds:
        vb = located[p.video.path]
        with_gt = [k for k, f in enumerate(p.frames) if int(f) in p.video.boxes]
        chosen = (with_gt or sorted(vb.boxes))[:per_video]
        if not chosen:
            continue
        arrays = store.load(p.video.id)
        cap = cv2.VideoCapture(str(Path(root) / p.video.path))
        for k in chosen:
            frame_index = int(p.frames[k])
            cap.set(cv2.CAP_PROP_POS_FRAMES, frame_index)
            ok, frame = cap.read()
            if not ok:
                continue
            h, w = frame.shape[:2]
            heat = frame_heat(
                arrays["x_patch"][k], arrays.get("x_patch_b", [None] * (k + 1))[k], queries.embeddings,
                queries.abnormal, w, h, settings,
            )  # fmt: skip
            score = float(p.scores[k])
            title = (f"{p.video.path} ({_truth_caption(p.video)})\nframe {frame_index}: score {score:.2f}, alarm "
                     f"threshold {threshold:g}; heat {heat.min():.2f} to {heat.max():.2f} here")  # fmt: skip
            why = ("predicted box: none (score below the alarm threshold)" if score < threshold
                   else "predicted box: none (no region above --heat-threshold and --min-box-area)")  # fmt: skip
            fig = frame_figure(overlay_heat(frame, heat), title, p.video.boxes.get(frame_index, []),
                               vb.boxes.get(k, []), why)  # fmt: skip
            fig.savefig(out_dir / f"{p.video.id}_f{frame_index:06d}.png", bbox_inches="tight")
            plt.close(fig)
        cap.release()


@cli_entry("stp-eval")
def main(argv: list[str] | None = None) -> int:
    print(json.dumps(evaluate(build_parser().parse_args(argv)), indent=1))
    return 0


def evaluate(args: argparse.Namespace) -> dict:
    """stp-eval's work for parsed options (`build_parser().parse_args(...)`): the metrics dict it prints, with the
    predictions and plots written where the options say."""
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.ckpt)
    store = FeatureStore.open(args.features)
    check_compatible(ckpt, store)
    if args.predictions:  # before any work: the outputs are written at the end
        check_writable(args.predictions, "--predictions")
    if args.plots:
        check_writable(args.plots, "--plots", folder=True)
    videos = store.videos(args.split)
    for video in videos:  # ground truth past a video's end: one line per video, the interval clipped
        n_frames = store.n_frames(video.id)
        if n_frames is not None and (note := video.interval_warning(n_frames)):
            warn(note)
    preds = predict(ckpt, store, videos)
    result = summarize(preds, ckpt.classes, store.stride)
    located: dict[str, VideoBoxes] = {}
    if args.localize:
        located, (queries, settings), loc_result = run_localization(args, ckpt, store, preds)
        result.update(loc_result)
    if args.predictions:
        out = {}
        for p in preds:
            entry = p.to_json()
            if p.video.path in located:
                entry["boxes"] = {
                    str(int(p.frames[k])): np.round(b, 2).tolist() for k, b in located[p.video.path].boxes.items()
                }
            out[p.video.path] = entry
        atomic_write_json(args.predictions, out)
    if args.plots:
        plot_predictions(preds, store.stride, Path(args.plots), args.alarm_threshold)
        if located:
            plot_localization(store, preds, located, queries, settings, args.plot_frames, Path(args.plots),
                              args.alarm_threshold)  # fmt: skip
    return result


if __name__ == "__main__":
    sys.exit(main())
