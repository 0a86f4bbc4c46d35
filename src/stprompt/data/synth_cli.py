"""`stp-synth OUT`: write a synthetic surveillance dataset (videos + annotations.json) for demos and tests."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from ..cliformat import HelpFormatter
from ..errors import UserError, cli_entry
from ..fileio import check_writable
from .synth import generate, is_synth_output


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stp-synth",
        description="Write a synthetic surveillance dataset: OUT/videos/*.mp4 and OUT/annotations.json, with "
        "normal videos and small, boxed anomalies (Fighting, Arson, RoadAccidents, Explosion). "
        "The same seed gives the same dataset.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--train", type=int, default=16, help="number of training videos")
    p.add_argument("--test", type=int, default=8, help="number of test videos")
    p.add_argument("--frames", type=int, default=192, help="frames per video")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--width", type=int, default=320, help="frame width in pixels (rounded down to even)")
    p.add_argument("--height", type=int, default=240, help="frame height in pixels (rounded down to even)")
    p.add_argument("--fps", type=float, default=25.0, help="frames per second")
    p.add_argument("--scenes", type=int, default=3, help="number of camera scenes shared by train and test")
    p.add_argument("--anomaly-fraction", type=float, default=0.5, help="share of anomalous videos per split")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="render processes; None = one per CPU when the dataset is large",
    )
    p.add_argument("--force", action="store_true", help="write into a non-empty folder not made by stp-synth")
    return p


@cli_entry("stp-synth")
def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for user errors, via cli_entry)."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    check_writable(out, "OUT", folder=True)
    if out.is_dir() and any(out.iterdir()) and not is_synth_output(out) and not args.force:
        raise UserError(
            f"{out} is not empty and was not written by stp-synth; pick another OUT or use --force"
        )
    t0 = time.perf_counter()
    ann = generate(
        out,
        n_train=args.train,
        n_test=args.test,
        n_frames=args.frames,
        width=args.width,
        height=args.height,
        fps=args.fps,
        n_scenes=args.scenes,
        anomaly_fraction=args.anomaly_fraction,
        seed=args.seed,
        workers=args.workers,
    )
    counts = Counter(v.labels[0] for v in ann.videos)
    per_class = ", ".join(f"{c} {counts[c]}" for c in ann.classes if counts[c])
    n_train, n_test = len(ann.split("train")), len(ann.split("test"))
    print(
        f"stp-synth: wrote {len(ann.videos)} videos ({n_train} train, {n_test} test; {per_class}) "
        f"to {out} in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
