"""`stp-run --engine model.onnx SOURCE...`: streaming detection and localization on files and cameras."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from ..cliformat import HelpFormatter
from ..errors import UserError, cli_entry
from ..localize.heat import LocalizeSettings
from .gating import LIVE_DEFAULT


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stp-run",
        description="Score every sampled frame of each SOURCE and box what is anomalous; JSON Lines events.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="video file, image folder, camera0 / 0 / /dev/video0, "
                   "rtsp://..., csi://0, gst:<pipeline>")  # fmt: skip
    p.add_argument(
        "--engine", required=True, help="a bundle file: .onnx (ONNX Runtime), .plan (TensorRT), .pt (PyTorch)"
    )
    p.add_argument("--providers", help="ONNX Runtime providers, comma separated (e.g. CUDAExecutionProvider)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="where a .pt checkpoint runs (default cpu; cuda: fp16, "
                   "CUDA graphs, windows cut on the GPU)")  # fmt: skip
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="a .pt checkpoint's encoder precision "
                   "(default fp32 on cpu, fp16 on cuda)")  # fmt: skip
    p.add_argument("--events", default="-", help="JSON Lines events file ('-' = stdout)")
    p.add_argument("--video-out", help="annotated video of the sampled frames (one file per source when several)")
    p.add_argument(
        "--lookahead",
        type=int,
        default=None,
        help="snippets to wait for before scoring one; default: the bundle's exact value (scores equal stp-eval's)",
    )
    p.add_argument(
        "--alarm-on", type=float, default=None, help="alarm start score (default: the bundle's alarm threshold)"
    )
    p.add_argument("--alarm-off", type=float, default=None, help="alarm end score (default: min(0.4, alarm-on))")
    p.add_argument(
        "--alarm-min", type=int, default=1, help="consecutive snippets above alarm-on before an alarm starts"
    )
    p.add_argument("--heat-threshold", type=float, default=None, help="box threshold on the heat map (bundle's)")
    p.add_argument("--min-box-area", type=float, default=None, help="smallest box, fraction of the frame (bundle's)")
    p.add_argument(
        "--gate",
        type=_gate_value,
        default="auto",
        metavar="GREY|auto",
        help="motion gating: re-encode a scale-A window only when its pixels changed by at least this mean absolute "
        "difference (grey levels) since it was last encoded; 0 = off (scores equal stp-eval's); auto = "
        f"{LIVE_DEFAULT:g} for live sources (cameras, rtsp, csi, gst), 0 for files and folders. README: gating table",
    )
    p.add_argument("--max-batch", type=int, default=256, help="most crops per encoder call (all streams together)")
    p.add_argument("--show", action="store_true", help="a live window with the annotated frames (needs a display)")
    p.add_argument(
        "--check",
        metavar="ENGINE",
        help="parity mode: run --engine and this engine on the first sampled frames of the first SOURCE, "
        "print their max errors as JSON, and exit",
    )
    p.add_argument("--check-frames", type=int, default=4, help="sampled frames compared by --check")
    p.add_argument("--quiet", action="store_true", help="no status line")
    return p


def _gate_value(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected grey levels (a number) or auto, got {text!r}") from None


def gate_thresholds(gate: float | str, sources) -> tuple[float, dict[str, float]]:
    """(default threshold, per-source thresholds) for --gate: 'auto' gates live sources only."""
    if gate != "auto":
        return float(gate), {}
    return 0.0, {s.id: LIVE_DEFAULT if s.live else 0.0 for s in sources}


def run_check(args, backend, manifest) -> int:
    """Compare two backends on the same crops and snippets (stp-run --check)."""
    import json

    import numpy as np

    from .. import windows
    from ..sampling import is_sampled
    from .backends import open_backend, parity
    from .sources import open_source

    other, _ = open_backend(args.check, max_batch=args.max_batch)
    src = open_source(args.sources[0])
    crops = []
    try:
        while len(crops) < args.check_frames and (frame := src.read()) is not None:
            if is_sampled(frame.index, manifest.stride, manifest.offset):
                crops.append(windows.encoder_batch(frame.image, pre=manifest.preprocess))
    finally:
        src.close()
    if not crops:
        raise UserError(f"{args.sources[0]}: no sampled frame to compare (shorter than one stride)")
    images = np.concatenate(crops)
    emb = other.encode(images).reshape(len(crops), windows.crops_per_frame(pre=manifest.preprocess), -1)
    report = parity(backend, other, images, np.ascontiguousarray(emb[:, 0]), np.ascontiguousarray(emb[:, 1:]))
    print(json.dumps(report, indent=1))
    return 0


class LiveView:
    """`--show`: the annotated sampled frames in a window; q or Esc stops the run."""

    def __init__(self, threshold: float):
        import cv2

        self.cv2, self.threshold = cv2, threshold
        try:
            cv2.namedWindow("stp-run", cv2.WINDOW_NORMAL)
        except cv2.error:
            raise UserError(
                "--show needs an OpenCV with GUI support and a display (pip's opencv-python-headless has none; "
                "install opencv-python, or use --video-out)"
            ) from None

    def __call__(self, snippet) -> None:
        from ..draw import RED, draw_boxes, draw_score_bar, overlay_heat

        img = snippet.image.copy() if snippet.heat is None else overlay_heat(snippet.image, snippet.heat)
        if snippet.boxes is not None:
            draw_boxes(img, snippet.boxes, RED)
        draw_score_bar(img, snippet.event["score"], self.threshold, f"{snippet.source} {snippet.event['score']:.2f}")
        self.cv2.imshow("stp-run", img)
        if self.cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            raise KeyboardInterrupt

    def close(self) -> None:
        self.cv2.destroyAllWindows()


def _settings(args, manifest):
    from .detector import AlarmSettings

    thr = manifest.thresholds
    alarm = AlarmSettings.from_thresholds(thr, args.alarm_on, args.alarm_off, args.alarm_min)
    return alarm, LocalizeSettings.from_thresholds(thr, args.heat_threshold, args.min_box_area)


def _terminate(signum, frame):  # SIGTERM behaves like Ctrl-C: stop cleanly
    raise KeyboardInterrupt


@cli_entry("stp-run")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..sampling import is_sampled
    from .backends import open_backend
    from .detector import Detector
    from .sinks import EventWriter, Status, VideoSink
    from .sources import open_source, redact

    providers = [p.strip() for p in args.providers.split(",")] if args.providers else None
    backend, manifest = open_backend(args.engine, providers=providers, max_batch=args.max_batch, device=args.device,
                                     precision=args.precision)  # fmt: skip
    if args.check:
        return run_check(args, backend, manifest)
    alarm, loc = _settings(args, manifest)
    sources = []
    try:
        for i, uri in enumerate(args.sources):
            sid = redact(uri) if len(args.sources) == 1 else f"{i}:{redact(uri)}"
            sources.append(open_source(uri, source_id=sid))
        events = EventWriter(args.events)
    except UserError:
        for s in sources:
            s.close()
        raise
    video = None
    if args.video_out:
        fps = (sources[0].fps or 25.0) / manifest.stride
        video = VideoSink(args.video_out, fps, alarm.on, manifest.classes, several=len(sources) > 1)
    view = LiveView(alarm.on) if args.show else None
    sinks = [sink for sink in (video, view) if sink is not None]

    def on_snippet(snippet) -> None:
        for sink in sinks:
            sink(snippet)

    gate, gate_per_source = gate_thresholds(args.gate, sources)
    detector = Detector(
        backend, manifest, lookahead=args.lookahead, alarm=alarm, localize=loc, max_batch=args.max_batch,
        gate=gate, gate_per_source=gate_per_source, on_snippet=on_snippet if sinks else None,
    )  # fmt: skip
    status = Status(args.quiet)
    previous = signal.signal(signal.SIGTERM, _terminate)
    per_batch = max(1, args.max_batch // 50)
    active = list(sources)
    interrupted = False
    try:
        while active:
            chunk, sampled, read, t0 = [], 0, 0, time.perf_counter()
            live = any(s.live for s in active)
            while active and (sampled < per_batch) and not (live and chunk):
                for src in list(active):
                    # a live source never blocks the others: wait briefly, then serve the next stream
                    frame = src.read(timeout=0.02) if src.live else src.read()
                    if frame is None and src.live and not src.ended:
                        continue
                    if frame is None:
                        if chunk:
                            events.write(detector.process(chunk))
                            chunk = []
                        events.write(detector.finish(src.id))
                        active.remove(src)
                        continue
                    chunk.append((src.id, frame))
                    read += 1
                    sampled += 1 if is_sampled(frame.index, manifest.stride, manifest.offset) else 0
            if chunk:
                events.write(detector.process(chunk))
            drops = sum(int(s.stats.get("dropped", 0)) for s in sources)
            status.update(read, detector.stats, time.perf_counter() - t0, drops)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        for s in sources:
            s.close()
        for sink in sinks:
            sink.close()
        events.close()
    drops = sum(int(s.stats.get("dropped", 0)) for s in sources)
    status.update(0, detector.stats, 0.0, drops, force=True)
    if interrupted:
        print(f"stp-run: interrupted; {events.count} events written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
