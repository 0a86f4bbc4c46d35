"""`stp-import`: turn a public benchmark folder into the annotations.json every other verb reads."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..cliformat import HelpFormatter
from ..errors import UserError, cli_entry
from ..fileio import check_writable
from .annotations import Annotations
from .importers import DEFAULT_FPS, IMPORTERS, import_shanghaitech, import_ubnormal, import_ucf_crime


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stp-import",
        description="Import UCF-Crime, ShanghaiTech (weak split) or UBnormal into annotations.json. "
        "Only list and annotation files are read; videos are not decoded.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("dataset", choices=list(IMPORTERS), help="which benchmark layout ROOT holds")
    p.add_argument("root", metavar="ROOT", type=Path, help="dataset root folder")
    p.add_argument(
        "--out",
        metavar="FILE",
        type=Path,
        default=None,
        help="output file (default: ROOT/annotations.json; elsewhere, video paths are written "
        "relative to its folder)",
    )
    p.add_argument(
        "--boxes",
        metavar="PATH",
        type=Path,
        default=None,
        help="ucf-crime only: the test videos' boxes (TIoU's ground truth): Liu & Ma's Test_annotation.pkl "
        "(github.com/xuzero/UCFCrime_BoundingBox_Annotation) or a folder holding it, or a folder of "
        "<VideoStem>.txt files with 'frame x1 y1 x2 y2' lines; shanghaitech and ubnormal read their own "
        "masks",
    )
    p.add_argument(
        "--fps",
        metavar="F",
        type=float,
        default=None,
        help="frame rate (default: the dataset's own, "
        + ", ".join(f"{k} {v:g}" for k, v in sorted(DEFAULT_FPS.items()))
        + ")",
    )
    p.add_argument("--missing-ok", action="store_true", help="skip listed videos that are not found (warn)")
    p.add_argument(
        "--include-validation",
        action="store_true",
        help="ubnormal only: add the validation lists to the training split",
    )
    return p


def _rebase(ann: Annotations, folder: Path) -> None:
    """Make video paths relative to the output's folder, which is what `annotations.load` assumes."""
    root = ann.root
    if root is None or folder.resolve() == root.resolve():
        return
    for v in ann.videos:
        v.path = Path(os.path.relpath(root / v.path, folder.resolve())).as_posix()
    ann.root = folder


@cli_entry("stp-import")
def main(argv: list[str] | None = None) -> int:
    """Import a dataset and write annotations.json; prints a one-line summary to stderr."""
    args = build_parser().parse_args(argv)
    if args.boxes is not None and args.dataset != "ucf-crime":
        raise UserError("--boxes is only for ucf-crime")
    if args.include_validation and args.dataset != "ubnormal":
        raise UserError("--include-validation is only for ubnormal")
    fps = DEFAULT_FPS[args.dataset] if args.fps is None else args.fps
    if not fps > 0:
        raise UserError(f"--fps must be positive, got {args.fps}")
    out = args.out if args.out is not None else args.root / "annotations.json"
    if out.is_dir():
        out = out / "annotations.json"
    if args.out is not None or args.root.is_dir():  # before reading masks; a missing ROOT is the importer's to say
        check_writable(out, "--out" if args.out is not None else "--out (default: ROOT/annotations.json)")
    if args.dataset == "ucf-crime":
        ann = import_ucf_crime(args.root, boxes_dir=args.boxes, fps=fps, missing_ok=args.missing_ok)
    elif args.dataset == "shanghaitech":
        ann = import_shanghaitech(args.root, fps=fps, missing_ok=args.missing_ok)
    else:
        ann = import_ubnormal(
            args.root, fps=fps, include_validation=args.include_validation, missing_ok=args.missing_ok
        )
    _rebase(ann, out.parent)
    try:
        ann.save(out)
    except OSError as err:
        raise UserError(f"cannot write {out}: {err}") from None
    print(f"stp-import: wrote {out}: {summary(ann, args.dataset)}", file=sys.stderr)
    return 0


# where each dataset's test boxes come from, named when an import ends without them
BOX_SOURCES = {
    "ucf-crime": "pass --boxes Test_annotation.pkl from github.com/xuzero/UCFCrime_BoundingBox_Annotation",
    "shanghaitech": "they come from testing/test_pixel_mask/<video>.npy",
    "ubnormal": "they come from the <video>_annotations/<video>_<frame>_gt.png object masks",
}


def summary(ann: Annotations, dataset: str) -> str:
    """Videos per split and how many anomalous test videos have boxes: without boxes there is no TIoU, which
    `stp-eval --localize` would otherwise only show as a null."""
    parts = []
    for split in ("train", "test"):
        vids = ann.split(split)
        parts.append(f"{split} {len(vids)} videos ({sum(v.is_anomalous for v in vids)} anomalous)")
    tests = [v for v in ann.split("test") if v.is_anomalous]
    n_boxed = sum(1 for v in tests if v.boxes)
    text = "; ".join(parts)
    if n_boxed:
        text += f", {n_boxed} with boxes"
    elif tests:
        text += f", none with boxes, so stp-eval --localize reports no TIoU ({BOX_SOURCES[dataset]})"
    return text
