"""Where stp-run's results go: JSON Lines events, an annotated video per source, a status line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from ..draw import RED, draw_boxes, draw_score_bar, overlay_heat
from ..errors import UserError
from .detector import Snippet


class EventWriter:
    """One JSON object per line, flushed per line: the file stays valid JSON Lines whenever the run stops."""

    def __init__(self, path: str | None):
        self.path = path
        try:
            self.fh: IO[str] = open(path, "w", encoding="utf-8") if path and path != "-" else sys.stdout  # noqa: SIM115
        except OSError as err:
            raise UserError(f"cannot write events to {path}: {err.strerror}") from None
        self.count = 0

    def write(self, events: list[dict[str, Any]]) -> None:
        for e in events:
            self.fh.write(json.dumps(e, separators=(",", ":")) + "\n")
            self.count += 1
        if events:
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not sys.stdout:
            self.fh.close()


class VideoSink:
    """The annotated sampled frames of each source (score bar, heat overlay and boxes on alarms), mp4v."""

    def __init__(self, path: str, fps: float, threshold: float, classes: list[str], several: bool):
        self.path = Path(path)
        self.fps = max(fps, 1.0)
        self.threshold = threshold
        self.several = several
        self.writers: dict[str, cv2.VideoWriter] = {}
        self.size: dict[str, tuple[int, int]] = {}

    def _writer(self, source: str, image: np.ndarray) -> cv2.VideoWriter:
        if source not in self.writers:
            path = self.path
            if self.several:
                safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in source)
                path = self.path.with_name(f"{self.path.stem}.{safe}{self.path.suffix or '.mp4'}")
            h, w = image.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not writer.isOpened():
                raise UserError(f"cannot write video {path} (mp4v)")
            self.writers[source], self.size[source] = writer, (w, h)
        return self.writers[source]

    def __call__(self, snippet: Snippet) -> None:
        writer = self._writer(snippet.source, snippet.image)
        img = snippet.image.copy() if snippet.heat is None else overlay_heat(snippet.image, snippet.heat)
        if snippet.boxes is not None:
            draw_boxes(img, snippet.boxes, RED)
        e = snippet.event
        name = e["source"].rstrip("/").rsplit("/", 1)[-1]  # a file's name, not its whole path
        draw_score_bar(img, e["score"], self.threshold, f"{name} frame {e['frame']} {e['score']:.2f} {e['class']}")
        if (img.shape[1], img.shape[0]) != self.size[snippet.source]:
            img = cv2.resize(img, self.size[snippet.source])
        writer.write(img)

    def close(self) -> None:
        for w in self.writers.values():
            w.release()


class Status:
    """A one-line status on stderr, refreshed at most twice a second."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.start = time.perf_counter()
        self.last = 0.0
        self.frames = 0

    def update(self, frames: int, stats: dict[str, int], latency: float, drops: int, force: bool = False) -> None:
        self.frames += frames
        now = time.perf_counter()
        if self.quiet or (not force and now - self.last < 0.5):
            return
        self.last = now
        dt = max(now - self.start, 1e-9)
        batch = stats["crops"] / max(stats["encoder_calls"], 1)
        skipped = stats.get("gated_crops", 0)
        gated = f"gated {skipped / max(1, skipped + stats['crops']):.0%} | " if skipped else ""
        print(
            f"\rstp-run: {self.frames} frames {self.frames / dt:.1f} fps in | {stats['sampled'] / dt:.2f} sampled/s | "
            f"batch {batch:.0f} | {gated}latency {latency:.2f}s | alarms {stats['alarms']} | drops {drops}   ",
            end="\n" if force else "",
            file=sys.stderr,
            flush=True,
        )
