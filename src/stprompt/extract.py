"""`stp-extract`: videos -> x_CLIP [T, D] and x_PATCH [T, 7, 7, D] (and scale-B windows) per video.

Each video is decoded once; for every sampled frame the full frame plus its 49 scale-A windows (and 16
scale-B windows with --scale-b) are preprocessed in a background thread and encoded in batched calls.
Features are written atomically per video; a rerun skips finished videos; a video that cannot be read is
reported, skipped, and makes the exit code non-zero.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import windows
from .bundle.preprocess import DEFAULT, Preprocess
from .cliformat import HelpFormatter
from .data import annotations as ann_mod
from .data.features import FeatureStore
from .data.video import FRAME_COUNT_TOLERANCE, SampledFrames, prefetch
from .errors import UserError, cli_entry, one_line
from .fileio import check_writable
from .sampling import snippet_frame_indices

DEFAULT_CLIP = "stp-tiny"


@dataclass
class VideoFeatures:
    arrays: dict[str, np.ndarray]
    n_frames: int
    n_crops: int
    size: tuple[int, int]  # (width, height) of the source frames
    declared_frames: int | None = None  # the frame count the container declares (None: it declares none)

    def warnings(self, video: ann_mod.Video) -> list[str]:
        """What a user should know about this video: decoded short of its container's count, or annotated past
        its end (such intervals count clipped to the video)."""
        notes = []
        if self.declared_frames is not None and self.n_frames < self.declared_frames - FRAME_COUNT_TOLERANCE:
            notes.append(f"{video.path}: the video ends after {self.n_frames} of the {self.declared_frames} frames "
                         "its container declares (truncated or damaged)")  # fmt: skip
        if note := video.interval_warning(self.n_frames):
            notes.append(note)
        return notes


def extract_video(path: Path, encode, stride: int, scale_b: bool, batch: int,
                  pre: Preprocess = DEFAULT) -> VideoFeatures:  # fmt: skip
    """Decode `path` once and encode every sampled frame's crops (made as `pre` says) in batches of about `batch`."""
    per_frame = windows.crops_per_frame(scale_b, pre)
    frames = SampledFrames(path, stride)
    prepared = prefetch(frames, lambda item: (item[0], windows.encoder_batch(item[1], scale_b, pre=pre)))
    indices: list[int] = []
    pending: list[np.ndarray] = []
    outputs: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            outputs.append(encode(np.concatenate(pending, axis=0)))
            pending.clear()

    for index, crops in prepared:
        indices.append(index)
        pending.append(crops)
        if len(pending) * per_frame >= batch:
            flush()
    flush()
    t = frames.n_frames // stride
    if t == 0:
        raise UserError(f"{path}: {frames.n_frames} frames decoded, fewer than one snippet of {stride} frames")
    emb = np.concatenate(outputs, axis=0)[: t * per_frame].reshape(t, per_frame, -1)
    d = emb.shape[-1]
    n_a = windows.SCALE_A.count
    arrays = {
        "x_clip": np.ascontiguousarray(emb[:, 0]),
        "x_patch": np.ascontiguousarray(emb[:, 1 : 1 + n_a]).reshape(t, windows.SCALE_A.grid, windows.SCALE_A.grid, d),
        "frames": np.asarray(indices[:t], dtype=np.int64),
    }
    if scale_b:
        g = windows.SCALE_B.grid
        arrays["x_patch_b"] = np.ascontiguousarray(emb[:, 1 + n_a :]).reshape(t, g, g, d)
    expected = snippet_frame_indices(frames.n_frames, stride)
    if not np.array_equal(arrays["frames"], expected):
        raise UserError(f"{path}: decoder skipped frames (got {len(indices)} sampled frames, expected {t})")
    return VideoFeatures(arrays=arrays, n_frames=frames.n_frames, n_crops=t * per_frame, size=frames.size,
                         declared_frames=frames.declared_frames)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stp-extract",
        description="Extract frozen-CLIP features (x_clip, x_patch) for every video of an annotations.json.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("dataset", help="dataset folder holding annotations.json (or the file itself)")
    p.add_argument("--out", required=True, help="feature folder to write (index.json + one .npz per video)")
    p.add_argument(
        "--clip",
        default=DEFAULT_CLIP,
        help="ClipSpec ARCH[:WEIGHTS]: stp-tiny, ViT-B-16:openai (downloads), ViT-B-16:/path/w.pt, ARCH:random[:SEED]",
    )
    p.add_argument("--stride", type=int, default=16, help="sample one frame in STRIDE (16 UCF-Crime, 4 SHT/UBnormal)")
    p.add_argument("--split", choices=("train", "test", "all"), default="all", help="which videos to extract")
    p.add_argument("--batch", type=int, default=250, help="crops per encoder call")
    p.add_argument("--scale-b", action="store_true", help="also encode the 16 scale-B windows (for --localize)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="encoder precision on CPU")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@cli_entry("stp-extract")
def main(argv: list[str] | None = None) -> int:
    return extract_dataset(build_parser().parse_args(argv))


def extract_dataset(args: argparse.Namespace) -> int:
    """stp-extract's work for parsed options (`build_parser().parse_args(...)`): returns the exit status,
    1 when some videos could not be read (they are reported and skipped)."""
    if args.stride < 1:
        raise UserError(f"--stride must be at least 1, got {args.stride}")
    dataset = ann_mod.load(args.dataset)
    videos = dataset.split(args.split)
    if not videos:
        raise UserError(f"no {args.split} videos in {args.dataset}")
    check_writable(args.out, "--out", folder=True)  # before CLIP is loaded

    import torch
    from tqdm import tqdm

    from .clip.image import ImageEncoder
    from .clip.loader import load_clip

    if args.threads:
        torch.set_num_threads(args.threads)
    clip = load_clip(args.clip)
    if clip.spec.source == "random" and not args.quiet:
        print(f"stp-extract: note: {clip.spec} has random weights (tests, demo, benchmarks)", file=sys.stderr)
    encoder = ImageEncoder(clip.model, precision=args.precision, batch=args.batch)
    pre = clip.preprocess  # the model's own mean / std
    store = FeatureStore.create(
        args.out,
        clip=str(clip.spec),
        clip_sha256=clip.sha256,
        clip_arch=clip.arch,
        clip_activation=clip.activation,
        dim=clip.dim,
        stride=args.stride,
        scale_b=args.scale_b,
        classes=dataset.classes,
        fps=dataset.fps,
        dataset=str(dataset.root.resolve()) if dataset.root else None,
        preprocess=pre.manifest_sections(),
    )
    todo = [v for v in videos if not store.has(v.id)]
    refreshed = store.refresh_annotations([v for v in videos if store.has(v.id)])
    if refreshed and not args.quiet:
        print(f"stp-extract: annotations of {refreshed} already extracted videos updated from {args.dataset} "
              "(labels, anomalies, boxes)", file=sys.stderr)  # fmt: skip
    failed: list[str] = []
    crops = 0
    start = time.perf_counter()
    bar = tqdm(todo, desc="stp-extract", unit="video", disable=args.quiet, file=sys.stderr)
    for video in bar:
        try:
            feats = extract_video(dataset.video_path(video), encoder, args.stride, args.scale_b, args.batch,
                                  pre)
        except UserError as err:
            failed.append(video.path)
            tqdm.write(f"stp-extract: skipped {video.path}: {err}", file=sys.stderr)
            continue
        for note in feats.warnings(video):  # above the progress bar, one line each
            tqdm.write(f"stp-extract: warning: {one_line(note)}", file=sys.stderr)
        store.write(video, feats.arrays, feats.n_frames, size=feats.size)
        crops += feats.n_crops
        bar.set_postfix(crops_per_s=f"{crops / (time.perf_counter() - start):.0f}")
    done = len(todo) - len(failed)
    print(
        f"stp-extract: {done} extracted, {len(videos) - len(todo)} already there, {len(failed)} failed -> {args.out}",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
