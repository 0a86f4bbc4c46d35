"""`stp-run --engine model.onnx SOURCE...`: streaming detection and localization on files and cameras."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from ..errors import UserError, cli_entry
from ..localize.heat import LocalizeSettings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stp-run",
        description="Score every sampled frame of each SOURCE and box what is anomalous; JSON Lines events.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="video file, image folder, camera0 / 0 / /dev/video0, "
                   "rtsp://..., csi://0, gst:<pipeline>")  # fmt: skip
    p.add_argument(
        "--engine", required=True, help="a bundle file: .onnx (ONNX Runtime), .plan (TensorRT), .pt (PyTorch)"
    )
    p.add_argument("--providers", help="ONNX Runtime providers, comma separated (e.g. CUDAExecutionProvider)")
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
    p.add_argument("--max-batch", type=int, default=256, help="most crops per encoder call (all streams together)")
    p.add_argument("--quiet", action="store_true", help="no status line")
    return p


def _settings(args, manifest):
    from .detector import AlarmSettings

    thr = manifest.thresholds
    on = float(thr["alarm"]) if args.alarm_on is None else args.alarm_on
    off = min(0.4, on) if args.alarm_off is None else args.alarm_off
    alarm = AlarmSettings(on=on, off=off, min_snippets=args.alarm_min)
    loc = LocalizeSettings(
        tau_loc=float(thr["tau_loc"]),
        fusion_lambda=float(thr["fusion_lambda"]),
        heat_threshold=float(thr["heat"]) if args.heat_threshold is None else args.heat_threshold,
        min_box_area=float(thr["min_box_area"]) if args.min_box_area is None else args.min_box_area,
    )
    return alarm, loc


def _terminate(signum, frame):  # SIGTERM behaves like Ctrl-C: stop cleanly
    raise KeyboardInterrupt


@cli_entry("stp-run")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .backends import open_backend
    from .detector import Detector
    from .sinks import EventWriter, Status, VideoSink
    from .sources import open_source, redact

    providers = [p.strip() for p in args.providers.split(",")] if args.providers else None
    backend, manifest = open_backend(args.engine, providers=providers, max_batch=args.max_batch)
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
    detector = Detector(
        backend, manifest, lookahead=args.lookahead, alarm=alarm, localize=loc, max_batch=args.max_batch,
        on_snippet=video,
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
                    sampled += 1 if frame.index % manifest.stride == manifest.offset else 0
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
        if video is not None:
            video.close()
        events.close()
    drops = sum(int(s.stats.get("dropped", 0)) for s in sources)
    status.update(0, detector.stats, 0.0, drops, force=True)
    if interrupted:
        print(f"stp-run: interrupted; {events.count} events written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
