"""`stp-run --metrics [HOST:]PORT`: Prometheus metrics and a health check of a running pipeline.

`Metrics` is a `pipeline.RunObserver` with its own CollectorRegistry (never the process-wide one, so a host
application's metrics and two pipelines never mix) served by a small threaded HTTP server on a daemon thread:

- `GET /metrics`: the Prometheus text format (`prometheus_client.exposition.generate_latest`)
- `GET /healthz`: 200 `ok` once the engine is loaded (and up: a remote encoder's `engine` down events count) and
  at least one source has delivered a frame; 503 with a one-line reason before that

Counters the pipeline, its sources, the detector and its motion gate already keep are read when Prometheus scrapes
(never counted twice, so at the end of a run they equal `Pipeline.stats`, `report()` and stp-run's summary); what
nothing else counts per source (snippets, alarms, last score, latency) is counted from the events the sinks get.
The run's hot path pays one call per frame read (its read time, for the latency histogram) and one per batch of
events. The server lives as long as the Metrics: `Pipeline.close()` (or leaving its `with` block) stops it, so
the Python API can scrape a finished run until then; stp-run closes it when it exits.

prometheus-client is imported when a Metrics is made (`pip install 'stprompt[metrics]'`), never by stp-run itself.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import UserError, first_line
from .pipeline import RunObserver

if TYPE_CHECKING:
    from .pipeline import Pipeline

DEFAULT_HOST = "127.0.0.1"  # 0.0.0.0 (every interface) only when asked for: metrics name cameras and alarms
INSTALL = "pip install 'stprompt[metrics]'"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)  # seconds: live lookahead ~4 s
ALARM_STARTS = ("start", "new")  # an alarm event in one of these states is a new alarm (today's and the next format)
PENDING_MAX = 100_000  # frame read times kept per source while their snippet waits for its score (lookahead)

HELP = {
    "engine_up": "1 while the engine is loaded and reachable, 0 before it loads and while a remote encoder is down",
    "build_info": "Always 1: the stprompt version, bundle (sha256 of its model.json), backend and encoder precision",
    "start_time_seconds": "Unix time the pipeline's run started",
    "uptime_seconds": "Seconds the pipeline has been running (stops growing when the run ends)",
    "source_info": "Always 1: each source label's event id (the `source` field of the events) and whether it is live",
    "source_up": "1 while the source delivers (a file until it ends; a live source between its up and down events)",
    "frames_read": "Frames read from the source",
    "sampled_frames": "Frames the detector sampled (one in the bundle's stride) and encoded",
    "dropped_frames": "Frames a live source dropped because the pipeline was slower than the camera (0 for files)",
    "skipped_images": "Unreadable images an image folder skipped (0 for other sources)",
    "reconnects": "Times a live source came back after going down",
    "gate_windows": "Scale-A windows of sampled frames the motion gate looked at",
    "gated_windows": "Scale-A windows the motion gate skipped (unchanged: their cached embedding reused)",
    "snippets": "Snippets scored (frame events)",
    "alarms": "Alarms started",
    "last_score": "Anomaly score of the source's latest scored snippet",
    "events": "Events written to the outputs (every type, all sources)",
    "unencoded_frames": "Frames read while a remote encoder was unreachable and never scored",
    "encoder_batch_crops": "Crops per encoder call (all streams together, split at the backend's max batch)",
    "event_latency_seconds": "Seconds from reading a sampled frame to its frame event reaching the outputs",
}


def require_prometheus() -> Any:
    """prometheus_client, or one line saying how to install it."""
    try:
        import prometheus_client
        import prometheus_client.exposition  # noqa: F401 - generate_latest, CONTENT_TYPE_LATEST
    except ImportError:
        raise UserError(f"--metrics needs prometheus-client, which is not installed: {INSTALL}") from None
    return prometheus_client


def parse_address(text: str) -> tuple[str, int]:
    """`PORT`, `HOST:PORT` or `[IPv6]:PORT` -> (host, port); the host defaults to 127.0.0.1 (every interface only
    when given: 0.0.0.0 or [::]); port 0 takes a free one."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UserError(f"--metrics {text}: write an IPv6 host in brackets, [::1]:9108")
    if sep and not host:
        raise UserError(f"--metrics {text}: no host before the port; give PORT alone for {DEFAULT_HOST}, or "
                        "0.0.0.0:PORT for every interface")  # fmt: skip
    if not port.isdigit() or int(port) > 65535:
        raise UserError(f"--metrics {text}: expected [HOST:]PORT with PORT a number from 0 to 65535 (e.g. 9108 or "
                        "0.0.0.0:9108)")  # fmt: skip
    return host or DEFAULT_HOST, int(port)


def batch_buckets(max_batch: int) -> tuple[float, ...]:
    """Powers of two from 1 to the first at or above `max_batch` (at least 256, stp-run's default)."""
    top, edges = max(256, int(max_batch)), [1]
    while edges[-1] < top:
        edges.append(edges[-1] * 2)
    return tuple(float(e) for e in edges)


def encoder_precision(backend: Any, manifest: Any) -> str:
    """What the encoder runs in: a checkpoint's --precision, a TensorRT plan's recorded precision, or the bundle
    graph it runs (model.onnx fp32, model.fp16.onnx fp16, model.int8.onnx int8; a Triton server's served role)."""
    roles = {"encoder": "fp32", "encoder_fp16": "fp16", "encoder_int8": "int8"}
    own = getattr(backend, "precision", None)
    if isinstance(own, str):
        return own
    if getattr(backend, "name", "") == "tensorrt":
        return str((manifest.engines.get("encoder") or {}).get("precision", "unknown"))
    role = getattr(backend, "role", None) or _file_role(getattr(backend, "path", None), manifest)
    return roles.get(role, role or "unknown")


def _file_role(path: Any, manifest: Any) -> str | None:
    if path is None:
        return None
    target = Path(path).resolve()
    files = manifest.raw.get("files") or {}
    return next((role for role, f in files.items() if (manifest.root / f["path"]).resolve() == target), None)


class Metrics(RunObserver):
    """Prometheus metrics of one pipeline on a dedicated registry, served at http://HOST:PORT/metrics and
    /healthz from the moment it is made (so a port in use fails before any work), until close().

    `address`: `[HOST:]PORT` or (host, port); None serves nothing (`registry` is still there for a host
    application's own exporter). Hand it to `build_pipeline(..., observer=...)` or `Pipeline(..., observer=...)`.
    """

    def __init__(self, address: str | tuple[str, int] | None = None):
        prom = require_prometheus()
        self.registry = prom.CollectorRegistry(auto_describe=False)
        self._prom = prom
        self._pipeline: Pipeline | None = None
        self._labels: dict[str, str] = {}  # source id -> its `source` label
        self._pending: dict[str, deque[tuple[int, float]]] = {}  # source id -> (frame index, read time) not scored
        self._snippets: dict[str, int] = {}
        self._alarms: dict[str, int] = {}
        self._scores: dict[str, float] = {}
        self._states: dict[str, str] = {}  # label -> the live source's last state (up / down)
        self._engine: tuple[bool, str] = (False, "engine not loaded yet")
        self._delivered = False
        self._started: tuple[float, float] | None = None  # (unix time, perf_counter) of the run's start
        self._ended: float | None = None
        self._latency_of: dict[str, Any] = {}
        self._latency = prom.Histogram("stprompt_event_latency_seconds", HELP["event_latency_seconds"], ["source"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self._batch: Any = None
        self._build: dict[str, str] = {}
        self.registry.register(_Collector(self))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        if address is not None:
            self._serve(parse_address(address) if isinstance(address, str) else address)

    # -- the server -----------------------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) served (the port the system chose for port 0); None when not serving."""
        return None if self._server is None else self._server.server_address[:2]  # type: ignore[return-value]

    @property
    def url(self) -> str | None:
        """http://HOST:PORT (add /metrics or /healthz); None when not serving."""
        if self.address is None:
            return None
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def _serve(self, address: tuple[str, int]) -> None:
        host, port = address
        try:
            self._server = _Server((host, port), self)
        except OSError as err:  # in use, an address not on this machine, a host that does not resolve
            why = getattr(err, "strerror", None) or first_line(err)
            raise UserError(f"--metrics {host}:{port}: cannot listen there: {why}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="stp-metrics", daemon=True)  # fmt: skip
        self._thread.start()

    def close(self) -> None:
        """Stop serving (idempotent); the registry keeps its last values."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def health(self) -> tuple[bool, str]:
        """(healthy, one line): the engine loaded and up, and a frame delivered by some source."""
        up, why = self._engine
        if not up:
            return False, why
        if not self._delivered:
            return False, "no frame from any source yet"
        return True, "ok"

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) of a GET of `path`."""
        if path == "/metrics":
            exposition = self._prom.exposition
            return 200, exposition.CONTENT_TYPE_LATEST, exposition.generate_latest(self.registry)
        if path == "/healthz":
            ok, why = self.health()
            return (200 if ok else 503), "text/plain; charset=utf-8", f"{why}\n".encode()
        return 404, "text/plain; charset=utf-8", b"not found: /metrics or /healthz\n"

    # -- RunObserver ----------------------------------------------------------------------------------
    def attach(self, pipeline: Pipeline) -> None:
        """Label the sources, hook the detector's encoder counts, and take the engine as up (it is loaded)."""
        from .sinks import short_ids

        if self._pipeline is not None:
            raise RuntimeError("a Metrics watches one pipeline")
        ids = [s.id for s in pipeline.sources]
        labels = short_ids([getattr(s, "uri", None) or s.id for s in pipeline.sources])
        self._labels = dict(zip(ids, labels, strict=True))
        self._pending = {sid: deque(maxlen=PENDING_MAX) for sid in ids}
        self._snippets, self._alarms = dict.fromkeys(labels, 0), dict.fromkeys(labels, 0)
        self._latency_of = {label: self._latency.labels(label) for label in labels}
        self._build = self._build_labels(pipeline)
        detector = pipeline.detector
        self._batch = self._prom.Histogram(
            "stprompt_encoder_batch_crops",
            HELP["encoder_batch_crops"],
            buckets=batch_buckets(detector.max_batch),
            registry=self.registry,
        )
        self._pipeline = pipeline
        detector.encode_observers.append(self._encoder_request)
        self._engine = (True, "ok")

    def started(self) -> None:
        self._started = (time.time(), time.perf_counter())

    def frame(self, source: str, index: int) -> None:
        self._pending[source].append((index, time.perf_counter()))
        self._delivered = True

    def write(self, events: list[dict[str, Any]]) -> None:
        now = time.perf_counter()
        for event in events:
            kind = event.get("type")
            if kind == "frame":
                self._scored(event, now)
            elif kind == "alarm" and event.get("state") in ALARM_STARTS and event.get("source") in self._labels:
                self._alarms[self._labels[event["source"]]] += 1
            elif kind == "source" and event.get("source") in self._labels:
                self._states[self._labels[event["source"]]] = str(event.get("state"))
            elif kind == "engine":
                down = event.get("state") == "down"
                self._engine = (not down, f"engine down: {event.get('reason')}" if down else "ok")

    def ended(self) -> None:
        self._ended = time.perf_counter()

    # -- internals ------------------------------------------------------------------------------------
    def _scored(self, event: dict[str, Any], now: float) -> None:
        """A frame event: the source's snippets and last score, and the latency since its frame was read."""
        sid = event.get("source")
        label = self._labels.get(sid)  # type: ignore[arg-type]
        if label is None:
            return
        self._snippets[label] += 1
        self._scores[label] = float(event.get("score", float("nan")))
        pending, index = self._pending[sid], event.get("frame")  # type: ignore[index]
        while pending and pending[0][0] < index:  # frames not sampled, or an unscored tail of an ended stream
            pending.popleft()
        if pending and pending[0][0] == index:
            self._latency_of[label].observe(now - pending.popleft()[1])

    def _encoder_request(self, crops: int) -> None:
        """One encoder request of `crops`, as calls of at most the Detector's limit (as it counts them)."""
        if crops <= 0 or self._pipeline is None:
            return
        detector = self._pipeline.detector
        limit = min(detector.max_batch, detector.backend.max_batch or detector.max_batch)
        full, rest = divmod(crops, limit)
        for _ in range(full):
            self._batch.observe(limit)
        if rest:
            self._batch.observe(rest)

    @staticmethod
    def _build_labels(pipeline: Pipeline) -> dict[str, str]:
        from .. import __version__
        from ..bundle.hashing import sha256_file

        detector = pipeline.detector
        manifest = detector.manifest
        return {"version": __version__, "bundle_sha256": sha256_file(manifest.path),
                "backend": str(getattr(detector.backend, "name", "unknown")),
                "precision": encoder_precision(detector.backend, manifest)}  # fmt: skip

    def families(self) -> Iterator[Any]:
        """The metrics read at scrape time (the histograms are the registry's own)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily("stprompt_engine_up", HELP["engine_up"], value=float(self._engine[0]))
        pipeline = self._pipeline
        if pipeline is None:
            return
        info = GaugeMetricFamily("stprompt_build_info", HELP["build_info"], labels=list(self._build))
        info.add_metric(list(self._build.values()), 1.0)
        yield info
        if self._started is not None:
            end = self._ended if self._ended is not None else time.perf_counter()
            yield GaugeMetricFamily("stprompt_start_time_seconds", HELP["start_time_seconds"], value=self._started[0])
            yield GaugeMetricFamily("stprompt_uptime_seconds", HELP["uptime_seconds"], value=end - self._started[1])
        yield from self._source_families(pipeline, CounterMetricFamily, GaugeMetricFamily)
        stats = pipeline.stats
        yield CounterMetricFamily("stprompt_events", HELP["events"], value=stats["events"])
        yield CounterMetricFamily("stprompt_unencoded_frames", HELP["unencoded_frames"], value=stats["unencoded"])

    def _source_families(self, pipeline: Pipeline, counter: Any, gauge: Any) -> Iterator[Any]:
        """Per source, labelled `source`: what the sources, the pipeline's report and the gate count, and ours."""
        gate = pipeline.detector.gate.source_stats
        rows = []
        for s, r in zip(pipeline.sources, pipeline.report(), strict=True):
            label, own = self._labels[s.id], gate.get(s.id) or {}
            up = r["end"] == "running" and (not s.live or self._states.get(label) == "up")
            rows.append((label, s, {
                "frames_read": r["frames"], "sampled_frames": own.get("frames", 0), "dropped_frames": r["dropped"],
                "skipped_images": int(s.stats.get("skipped", 0)), "reconnects": r["reconnects"],
                "gate_windows": own.get("windows", 0), "gated_windows": own.get("skipped", 0),
                "snippets": self._snippets[label], "alarms": self._alarms[label], "source_up": int(up),
            }))  # fmt: skip
        info = gauge("stprompt_source_info", HELP["source_info"], labels=["source", "id", "live"])
        for label, s, _ in rows:
            info.add_metric([label, s.id, str(bool(s.live)).lower()], 1.0)
        yield info
        for key in ("frames_read", "sampled_frames", "dropped_frames", "skipped_images", "reconnects",
                    "gate_windows", "gated_windows", "snippets", "alarms", "source_up"):  # fmt: skip
            kind = gauge if key == "source_up" else counter
            family = kind(f"stprompt_{key}", HELP[key], labels=["source"])
            for label, _, values in rows:
                family.add_metric([label], float(values[key]))
            yield family
        score = gauge("stprompt_last_score", HELP["last_score"], labels=["source"])
        for label, _, _ in rows:
            if label in self._scores:
                score.add_metric([label], self._scores[label])
        yield score


class _Collector:
    """The registry's view of a Metrics: its families, computed when scraped."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        return self._metrics.families()


class _Server(ThreadingHTTPServer):
    """/metrics and /healthz on daemon threads; IPv6 when the host is one; no reverse DNS lookup at start."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: Metrics):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.metrics = metrics
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        try:
            status, kind, body = self.server.metrics.respond(urlsplit(self.path).path)
        except Exception as err:  # noqa: BLE001 - a scrape must never take the run down: say why, 500
            status, kind, body = 500, "text/plain; charset=utf-8", f"error: {first_line(err)}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        """No access log: stderr is the run's status line and events."""
