"""`stp-run --engine model.onnx SOURCE... [--output URI]...`: streaming detection and localization on files and cameras.

A thin shell: parse flags, open the backend, sources (`sources.open_source`) and outputs (`sinks.open_output`), and
run `pipeline.Pipeline`, the loop the Python API and stp-bench drive too; signals become a clean pipeline stop.
Imports at module level stay light (no NumPy, Numba, OpenCV): `stp-run --help` answers before they load.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..cliformat import HelpFormatter
from ..errors import UserError, cli_entry, inform, one_line
from .defaults import LIVE_DEFAULT, LIVE_LOOKAHEAD, REFRESH_DEFAULT  # what --help prints; the rest loads after parsing

if TYPE_CHECKING:
    from .metrics import Metrics
    from .pipeline import Pipeline
    from .sinks import Output


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
    p.add_argument(
        "--output",
        action="append",
        metavar="URI",
        help="where results go, repeatable: events.jsonl (.jsonl/.json/.ndjson) or - (stdout) for the JSON Lines "
        "events, a video (.mp4/.avi/.mkv/.mov) for the annotated sampled frames (one file per source when several), "
        "display://0 for a live window (q or Esc stops); events go to stdout when no JSON Lines output is given",
    )
    p.add_argument("--events", metavar="FILE", help="alias of --output FILE: JSON Lines events, whatever the suffix "
                   "('-' = stdout)")  # fmt: skip
    p.add_argument("--video-out", metavar="FILE", help="alias of --output FILE: the annotated video, whatever the "
                   "suffix")  # fmt: skip
    p.add_argument(
        "--lookahead",
        type=_lookahead_value,
        default="auto",
        metavar="N|exact|auto",
        help="snippets to wait for before scoring one; exact = the bundle's exact value (scores equal stp-eval's); "
        f"auto = exact for files and folders, {LIVE_LOOKAHEAD} for live sources (answers sooner, score error "
        "< 1e-4 measured: README)",
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
    p.add_argument(
        "--gate-refresh",
        type=int,
        default=REFRESH_DEFAULT,
        metavar="N",
        help="motion gating: re-encode every gated window at least every N sampled frames of its stream, changed "
        "or not (bounds how stale a cached embedding gets; staggered across windows); 0 = only on change",
    )
    p.add_argument("--max-batch", type=int, default=None, help="most crops per encoder call (all streams together); "
                   "default: one sampled frame's crops on the CPU (larger calls only cost memory there), 256 on a GPU "
                   "or a Triton server")  # fmt: skip
    p.add_argument("--show", action="store_true", help="alias of --output display://0 (a live window; needs a display)")
    p.add_argument(
        "--check",
        metavar="ENGINE",
        help="parity mode: run --engine and this engine on the first sampled frames of the first SOURCE, "
        "print their max errors as JSON, and exit",
    )
    p.add_argument("--check-frames", type=int, default=4, help="sampled frames compared by --check")
    p.add_argument(
        "--reconnect",
        type=_reconnect_value,
        default=None,
        metavar="forever|N",
        help="live sources (rtsp/rtmp/http, cameras, csi, gst) that fail or are not up yet at start-up reconnect "
        "with backoff (0.5 s doubling to 8 s): forever (default); N = give up after N failed attempts in a row "
        "(the source fails; exit 1 when every source failed); 0 = never (a source that cannot deliver now is "
        "refused, a stream that ends ends there). Files and folders: no effect",
    )
    p.add_argument(
        "--triton",
        metavar="grpc://HOST:PORT[/MODEL]",
        help="run the image encoder on this Triton Inference Server (a repository from stp-triton; model default "
        "stp_encoder) and the head here; its model config is checked against the bundle --engine names before the "
        "first frame and after every reconnect. An unreachable or restarting server is retried as --reconnect says "
        "(engine down / up events; files wait, live sources drop frames meanwhile)",
    )
    p.add_argument("--triton-timeout", type=float, default=30.0, metavar="S",
                   help="deadline of one encoder request to the Triton server, seconds")  # fmt: skip
    p.add_argument("--triton-in-flight", type=int, default=4, metavar="N",
                   help="encoder requests (one sampled frame's crops each) outstanding at once")  # fmt: skip
    p.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics and a health check at /healthz (200 once the "
        "engine is loaded and a source delivered a frame, 503 before) for as long as stp-run runs; HOST defaults to "
        "127.0.0.1 (0.0.0.0: every interface), port 0 picks a free one (printed). Needs pip install "
        "'stprompt[metrics]'. README: Integrations, Prometheus",
    )
    p.add_argument("--quiet", action="store_true", help="no status line and no summary (source state changes "
                   "and errors are still printed)")  # fmt: skip
    return p


def _gate_value(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected grey levels (a number) or auto, got {text!r}") from None


def _lookahead_value(text: str) -> int | str:
    if text in ("auto", "exact"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of snippets, exact or auto, got {text!r}") from None


def _in_range(value: float | None, flag: str, lowest: float, upper: float = math.inf, open_top: bool = False,
              also: str = "") -> None:  # fmt: skip
    """A flag's `value` (None: not given) in [lowest, upper] ([lowest, upper) with `open_top`); NaN, inf refused."""
    if value is None or (math.isfinite(value) and lowest <= value and (value < upper if open_top else value <= upper)):
        return
    rule = f">= {lowest:g}" if upper == math.inf else f"in [{lowest:g}, {upper:g}{')' if open_top else ']'}"
    raise UserError(f"{flag} must be {rule}{also}, got {value:g}")


def check_args(args: argparse.Namespace) -> None:
    """Every flag's value, right after parsing: a bad one is one line and exit 2 before the engine, a source or an
    output (an events file an earlier run left) is opened. Values from the bundle are checked when it loads."""
    _in_range(None if args.lookahead in ("auto", "exact") else args.lookahead, "--lookahead", 0)
    _in_range(None if args.gate == "auto" else args.gate, "--gate", 0, also=" grey levels (a finite number) or auto")
    _in_range(args.gate_refresh, "--gate-refresh", 0, also=" sampled frames")
    _in_range(args.alarm_on, "--alarm-on", 0, 1)
    _in_range(args.alarm_off, "--alarm-off", 0, 1)
    _in_range(args.alarm_min, "--alarm-min", 1)
    _in_range(args.heat_threshold, "--heat-threshold", 0, 1)
    _in_range(args.min_box_area, "--min-box-area", 0, 1, open_top=True)
    _in_range(args.max_batch, "--max-batch", 1)
    _in_range(args.check_frames, "--check-frames", 1)
    _in_range(args.triton_timeout, "--triton-timeout", 0.001)
    _in_range(args.triton_in_flight, "--triton-in-flight", 1)
    if args.alarm_on is not None and args.alarm_off is not None and args.alarm_off > args.alarm_on:
        raise UserError(f"--alarm-off {args.alarm_off:g} must be <= --alarm-on {args.alarm_on:g}")
    if args.metrics is not None:
        from .metrics import parse_address

        parse_address(args.metrics)


def run_check(args, backend, manifest) -> int:
    """Compare two backends on the same crops and snippets (stp-run --check)."""
    import json

    import numpy as np

    from .. import windows
    from ..sampling import is_sampled
    from .api import opened_batch
    from .backends import open_backend, parity
    from .sources import open_source

    other, _ = open_backend(args.check, max_batch=opened_batch(args.max_batch))
    src = open_source(args.sources[0], reconnect=0)  # frames now or a clear error, never a wait
    crops = []
    try:
        while len(crops) < args.check_frames and (frame := src.read()) is not None:
            if is_sampled(frame.index, manifest.stride, manifest.offset):  # uint8 crops: what stp-run cuts
                crops.append(windows.pixel_batch(frame.image, pre=manifest.preprocess))
    finally:
        src.close()
    if not crops:
        raise UserError(f"{args.sources[0]}: no sampled frame to compare (shorter than one stride)")
    images = np.concatenate(crops)
    emb = other.encode_pixels(images).reshape(len(crops), windows.crops_per_frame(pre=manifest.preprocess), -1)
    report = parity(backend, other, images, np.ascontiguousarray(emb[:, 0]), np.ascontiguousarray(emb[:, 1:]))
    report["gate"] = check_gate(report, manifest, [backend.path, other.path])
    print(json.dumps(report, indent=1))
    if not report["gate"]["passed"]:
        raise UserError(f"--check: {report['gate']['failed']} ({report['gate']['source']})")
    return 0


def check_gate(report: dict, manifest, engines) -> dict:
    """The export's accuracy gates applied to a parity report: the encoders' min centred cosine against the bundle's
    encoder gate (its int8 gate when an int8 graph is compared) and the head outputs' max abs difference against
    its head gate; an OpenVINO engine compared is held to the gates stp-build built it to (model.json: engines).
    Polygraphy-style: the verdict says which comparison failed and by how much."""
    from pathlib import Path

    from ..bundle.manifest import ROLE_SUFFIXES
    from ..bundle.openvino_keys import recorded_thresholds

    int8 = any(str(e).endswith(ROLE_SUFFIXES["encoder_int8"]) for e in engines)  # the int8 graph is the bundle's
    encoder = manifest.gates["encoder_int8" if int8 else "encoder_fp32"]["threshold"]  # the export recorded these
    head = manifest.gates["head_fp32"]["threshold"]
    source = "the export's accuracy gates, model.json: gates"
    for engine in engines:
        if built := recorded_thresholds(manifest, engine):
            encoder, head = min(encoder, built.get("cosine", encoder)), max(head, built.get("scores", head))
            name = Path(engine).name
            source = f"the gates stp-build built {name} to, model.json: engines"
            if "int8" in name:
                source += "; INT8 calibrated on other footage: stp-build --openvino --int8 --calibrate VIDEO"
    cosine = report["embeddings"].get("centered_cosine_min", 1.0)
    worst = max(report[k]["max_abs"] for k in ("score", "score_c", "probs"))
    failed = []
    if cosine < encoder:
        failed.append(f"embeddings min centred cosine {cosine:.6g} < {encoder}")
    if worst > head:
        failed.append(f"head outputs max abs {worst:.3g} > {head}")
    return {"encoder_threshold": encoder, "head_threshold": head, "passed": not failed, "failed": "; ".join(failed),
            "source": source}


def _settings(args, manifest):
    from ..localize.heat import LocalizeSettings
    from .detector import AlarmSettings

    thr = manifest.thresholds
    if args.alarm_on is None and args.alarm_off is not None and args.alarm_off > thr.alarm:
        raise UserError(f"--alarm-off {args.alarm_off:g} must be <= the bundle's alarm threshold {thr.alarm:g} "
                        f"({manifest.path.name}: thresholds.alarm); set --alarm-on too")  # fmt: skip
    alarm = AlarmSettings.from_thresholds(thr, args.alarm_on, args.alarm_off, args.alarm_min)
    return alarm, LocalizeSettings.from_thresholds(thr, args.heat_threshold, args.min_box_area)


def _outputs(args: argparse.Namespace) -> list[Output]:
    """--output URIs in order, then the aliases, each bound to its kind and named by its flag in errors."""
    from .sinks import DisplaySink, JsonLinesSink, Output, VideoSink

    outputs: list[Output] = [Output(uri) for uri in args.output or ()]
    if args.events is not None:
        outputs.append(Output(args.events, JsonLinesSink, "--events"))
    if args.video_out:
        outputs.append(Output(args.video_out, VideoSink, "--video-out"))
    if args.show:
        outputs.append(Output("display://0", DisplaySink, "--show"))
    return outputs


def _reconnect_value(text: str) -> int | None:
    if text.strip().lower() == "forever":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected forever or a whole number of attempts, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be forever or >= 0, got {value}")
    return value


@contextlib.contextmanager
def stop_on_signals(pipeline: Pipeline) -> Iterator[list[int]]:
    """Ctrl-C (SIGINT) and SIGTERM stop the pipeline cleanly (the snippets already read are scored and written);
    a second one aborts at once. A SIGINT that was ignored (a background job) or handled by a host stays so.
    Yields the list of the signals received (the first one decides stp-run's exit status)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        received.append(signum)
        if pipeline.stopping:
            raise KeyboardInterrupt
        pipeline.stop()

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if sig == signal.SIGINT and signal.getsignal(sig) is not signal.default_int_handler:
            continue
        previous[sig] = signal.signal(sig, handler)
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@cli_entry("stp-run")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    metrics = serve_metrics(args.metrics)
    try:
        return run(args, metrics)
    finally:
        if metrics is not None:  # the pipeline closes it too; here for a failure before the pipeline exists
            metrics.close()


def serve_metrics(address: str | None) -> Metrics | None:
    """--metrics: the server listening before any work (a port in use or a missing prometheus-client is one line
    and exit 2 before the engine loads), its address on one line."""
    if address is None:
        return None
    from .metrics import Metrics

    metrics = Metrics(address)
    inform(f"metrics on {metrics.url}/metrics, health on {metrics.url}/healthz")
    return metrics


def run(args: argparse.Namespace, metrics: Metrics | None = None) -> int:
    """The engine, then the --check comparison or the pipeline run; stp-run's exit status."""
    from .api import default_max_batch, opened_batch
    from .backends import open_backend
    from .backends.base import EncoderUnavailable
    from .pipeline import build_pipeline
    from .sinks import Status

    providers = [p.strip() for p in args.providers.split(",")] if args.providers else None
    triton = {"timeout_s": args.triton_timeout, "in_flight": args.triton_in_flight, "reconnect": args.reconnect}
    backend, manifest = open_backend(args.engine, providers=providers, max_batch=opened_batch(args.max_batch),
                                     device=args.device, precision=args.precision, triton=args.triton,
                                     triton_options=triton)  # fmt: skip
    if args.check:
        return run_check(args, backend, manifest)
    alarm, loc = _settings(args, manifest)
    max_batch = default_max_batch(backend) if args.max_batch is None else args.max_batch
    pipeline = build_pipeline(backend, manifest, args.sources, _outputs(args), lookahead=args.lookahead, alarm=alarm,
                              localize=loc, max_batch=max_batch, gate=args.gate,
                              gate_refresh=args.gate_refresh, status=Status(args.quiet),
                              default_events="-", reconnect=args.reconnect, observer=metrics)  # fmt: skip
    with stop_on_signals(pipeline) as received:
        try:
            pipeline.run()
        except KeyboardInterrupt:  # a second Ctrl-C: the events written so far stay valid JSON Lines
            pass
        except EncoderUnavailable as err:  # the Triton server stayed down past --reconnect: what was encoded is
            print(f"stp-run: error: {one_line(str(err))}", file=sys.stderr)  # scored and written, then exit 1
            return 1
        finally:
            pipeline.close()
    return exit_status(pipeline, received)


def exit_status(pipeline: Pipeline, signals: list[int]) -> int:
    """0: every source ended (or some failed, others ended); 1: every source failed (live sources that gave
    up), named on one line; 130 / 143: stopped by SIGINT / SIGTERM (130 too for the live window's q), after
    scoring what was read."""
    if signals or pipeline.interrupted:
        how = f" by {signal.Signals(signals[0]).name}" if signals else ""
        print(f"stp-run: interrupted{how}; {pipeline.events_out} events written", file=sys.stderr)
        return 128 + signals[0] if signals else 130
    report = pipeline.report()
    failed = [r for r in report if r["end"] == "failed"]
    if failed and len(failed) == len(report):
        reasons = "; ".join(f"{r['source']}: {r['error']}" for r in failed)
        print(f"stp-run: error: every source failed: {one_line(reasons)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
