"""stp-run --metrics: Prometheus metrics and /healthz of a real pipeline, scraped over HTTP during and after a run."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from stprompt.errors import UserError
from stprompt.runtime import cli as run_cli
from stprompt.runtime.sinks import Sink

pytest.importorskip("prometheus_client")
from prometheus_client.exposition import CONTENT_TYPE_LATEST  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from stprompt.runtime.metrics import Metrics, batch_buckets, parse_address  # noqa: E402

TIMEOUT_S = 5.0  # every HTTP request; a run here takes a few seconds at most


@pytest.fixture(scope="module")
def video(blob_clip) -> Path:
    return blob_clip


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """An image folder of 40 frames and one unreadable image (skipped)."""
    root = tmp_path_factory.mktemp("metrics-folder") / "frames"
    root.mkdir()
    rng = np.random.default_rng(3)
    for i in range(40):
        cv2.imwrite(str(root / f"{i:03d}.png"), rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    (root / "020b.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def engine(tiny_bundle) -> str:
    return str(tiny_bundle.with_suffix(".onnx"))


def get(url: str) -> tuple[int, str]:
    """(status, body) of a GET, 4xx / 5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def scrape(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted labels): value}, parsed by prometheus_client's own parser."""
    status, text = get(f"{metrics.url}/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of a metric's samples over every label set matching `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def per_source(samples: dict, name: str) -> dict[str, float]:
    return {dict(ls)["source"]: v for (n, ls), v in samples.items() if n == name and "source" in dict(ls)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Scraper(Sink):
    """Scrapes /metrics and /healthz from inside the run, the first time the sinks get a frame event."""

    def __init__(self, metrics: Metrics):
        self.metrics, self.during, self.health = metrics, None, None

    def write(self, events):
        if self.during is None and any(e["type"] == "frame" for e in events):
            self.during, self.health = scrape(self.metrics), get(f"{self.metrics.url}/healthz")


def build(engine: str, sources, sinks, metrics: Metrics, **kw):
    from stprompt.runtime.backends import open_backend
    from stprompt.runtime.detector import AlarmSettings
    from stprompt.runtime.pipeline import build_pipeline

    backend, manifest = open_backend(engine)
    alarm = AlarmSettings(on=0.0, off=0.0)  # every snippet alarmed: boxes, so scale-B encoder calls too
    return build_pipeline(backend, manifest, sources, sinks, alarm=alarm, observer=metrics, **kw)


# --- a real run, scraped during and after ---------------------------------------------------------------------


def test_counters_during_and_after_a_run_equal_the_runs_own_counts(video, folder, engine, tiny_bundle):
    metrics = Metrics("127.0.0.1:0")
    assert get(f"{metrics.url}/healthz") == (503, "engine not loaded yet\n")
    assert total(scrape(metrics), "stprompt_engine_up") == 0
    scraper = Scraper(metrics)
    pipeline = build(engine, [str(video), str(folder)], [scraper], metrics, lookahead=0)  # scores early
    assert get(f"{metrics.url}/healthz") == (503, "no frame from any source yet\n")  # loaded, nothing read yet
    stats = pipeline.run()

    assert scraper.health == (200, "ok\n")  # during the run
    during = scraper.during
    assert total(during, "stprompt_engine_up") == 1 and 0 < total(during, "stprompt_frames_read_total") < 104
    assert set(per_source(during, "stprompt_source_up").values()) == {1.0}

    after = scrape(metrics)  # the run is over; the server lives until the pipeline is closed
    assert get(f"{metrics.url}/healthz") == (200, "ok\n")
    report = {r["source"]: r for r in pipeline.report()}
    labels = {dict(ls)["id"]: dict(ls)["source"] for (n, ls), _ in after.items() if n == "stprompt_source_info"}
    assert sorted(labels.values()) == ["clip", "frames"] and set(labels) == set(report)
    frames_read = per_source(after, "stprompt_frames_read_total")
    assert frames_read == {labels[sid]: r["frames"] for sid, r in report.items()} == {"clip": 64, "frames": 40}
    assert per_source(after, "stprompt_skipped_images_total") == {"clip": 0, "frames": 1}
    assert per_source(after, "stprompt_source_up") == {"clip": 0, "frames": 0}  # both ended
    for name, key in [("stprompt_frames_read_total", "frames"), ("stprompt_sampled_frames_total", "sampled"),
                      ("stprompt_dropped_frames_total", "dropped"), ("stprompt_skipped_images_total", "skipped"),
                      ("stprompt_snippets_total", "snippets"), ("stprompt_alarms_total", "alarms"),
                      ("stprompt_gated_windows_total", "gated_crops"), ("stprompt_events_total", "events"),
                      ("stprompt_unencoded_frames_total", "unencoded"),
                      ("stprompt_encoder_batch_crops_count", "encoder_calls"),
                      ("stprompt_encoder_batch_crops_sum", "crops"),
                      ("stprompt_event_latency_seconds_count", "snippets")]:  # fmt: skip
        assert total(after, name) == stats[key], name
    assert stats["snippets"] == 4 + 2 and stats["sampled"] == 4 + 3 and stats["alarms"] == 2
    assert stats["encoder_calls"] > 2
    assert per_source(after, "stprompt_alarms_total") == {"clip": 1, "frames": 1}
    assert total(after, "stprompt_gate_windows_total") == pipeline.detector.gate.stats["windows"] == 49 * 7
    assert total(after, "stprompt_reconnects_total") == 0
    assert 0 <= min(per_source(after, "stprompt_last_score").values()) <= 1
    assert total(after, "stprompt_encoder_batch_crops_bucket", le="+Inf") == stats["encoder_calls"]
    assert total(after, "stprompt_encoder_batch_crops_bucket", le="256.0") == stats["encoder_calls"]  # max batch
    assert total(after, "stprompt_event_latency_seconds_sum") > 0

    (build_info,) = [dict(ls) for (n, ls), _ in after.items() if n == "stprompt_build_info"]
    import stprompt

    assert build_info == {"version": stprompt.__version__, "backend": pipeline.detector.backend.name,
                          "bundle_sha256": hashlib.sha256(tiny_bundle.read_bytes()).hexdigest(),
                          "precision": "fp32"}  # fmt: skip
    uptime, start = total(after, "stprompt_uptime_seconds"), total(after, "stprompt_start_time_seconds")
    assert 0 < uptime < 600 and abs(start - time.time()) < 600
    time.sleep(0.05)
    assert total(scrape(metrics), "stprompt_uptime_seconds") == uptime  # the run's length, once it ended

    url = metrics.url
    pipeline.close()  # stops the server
    assert metrics.url is None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/healthz", timeout=TIMEOUT_S)


def test_a_live_source_counts_drops_reconnects_and_its_state(video, engine):
    """A static camera: up for 40 frames, down (one failed reconnect), up for 40 more, then gone for good."""
    from stprompt.runtime.sources import LiveSource

    plan = [StillCamera(video, 40), None, StillCamera(video, 40)]
    cam = LiveSource("rtsp://user:secret@cam-2/live", lambda: plan.pop(0) if plan else None, source_id="cam",
                     open_error="cam is off", reconnect=2, backoff=[0.01], jitter=0.0)  # fmt: skip
    metrics = Metrics(("127.0.0.1", 0))
    url, scraper = metrics.url, Scraper(metrics)
    with build(engine, [cam], [scraper], metrics, lookahead=0) as pipeline:
        stats = pipeline.run()
        assert per_source(scraper.during, "stprompt_source_up") == {"cam-2-live": 1}
        after = scrape(metrics)
        (report,) = pipeline.report()
    assert report["reconnects"] == 1 and report["end"] == "failed"
    assert per_source(after, "stprompt_reconnects_total") == {"cam-2-live": 1}
    assert per_source(after, "stprompt_dropped_frames_total") == {"cam-2-live": report["dropped"]}
    assert per_source(after, "stprompt_frames_read_total") == {"cam-2-live": report["frames"]}
    assert per_source(after, "stprompt_source_up") == {"cam-2-live": 0}
    assert [dict(ls)["id"] for (n, ls), _ in after.items() if n == "stprompt_source_info"] == ["cam"]
    assert total(after, "stprompt_sampled_frames_total") == stats["sampled"]
    assert total(after, "stprompt_snippets_total") == total(after, "stprompt_event_latency_seconds_count")
    assert total(after, "stprompt_snippets_total") == stats["snippets"] > 0
    assert total(after, "stprompt_gated_windows_total") == stats["gated_crops"] > 0  # gate auto: a still camera
    with pytest.raises(OSError):  # the with block closed the pipeline and its server
        urllib.request.urlopen(f"{url}/metrics", timeout=TIMEOUT_S)


class StillCamera:
    """A capture (what a LiveSource reads) showing a video's first frame `n` times, then failing: a lost stream."""

    def __init__(self, path: Path, n: int, period: float = 0.01):
        cap = cv2.VideoCapture(str(path))
        self.image, self.n, self.period = cap.read()[1], n, period
        cap.release()

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def read(self):
        time.sleep(self.period)
        if self.n <= 0:
            return False, None
        self.n -= 1
        return True, self.image.copy()

    def release(self) -> None:
        pass

    def get(self, prop: int) -> float:
        return 25.0


# --- health, without a run ------------------------------------------------------------------------------------


def test_health_follows_the_engine_events(video, engine):
    metrics = Metrics(None)  # no server: the registry alone, for a host application's own exporter
    assert metrics.url is None and metrics.health() == (False, "engine not loaded yet")
    with build(engine, [str(video)], [], metrics) as pipeline:
        assert metrics.health() == (False, "no frame from any source yet")
        metrics.frame(pipeline.sources[0].id, 0)
        assert metrics.health() == (True, "ok")
        metrics.write([{"type": "engine", "engine": "triton", "state": "down", "reason": "unreachable"}])
        assert metrics.health() == (False, "engine down: unreachable")
        metrics.write([{"type": "engine", "engine": "triton", "state": "up", "reason": "reconnected"}])
        assert metrics.health() == (True, "ok")
    from prometheus_client import generate_latest

    assert b"stprompt_engine_up 1.0" in generate_latest(metrics.registry)


def test_other_paths_are_404_and_metrics_have_the_text_format(engine):
    metrics = Metrics("127.0.0.1:0")
    try:
        assert get(f"{metrics.url}/nope")[0] == 404
        with urllib.request.urlopen(f"{metrics.url}/metrics", timeout=TIMEOUT_S) as response:
            assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    finally:
        metrics.close()
    metrics.close()  # once is enough


# --- the CLI --------------------------------------------------------------------------------------------------


def test_stp_run_serves_metrics_that_end_equal_to_its_events_and_summary(video, engine, capsys, monkeypatch):
    """Scraped at the end of the run (the server stops when stp-run exits): the counters equal what the run
    printed, its events on stdout and its summary on stderr."""
    seen: dict = {}
    original = Metrics.ended

    def ended(self):
        original(self)
        seen["samples"], seen["health"] = scrape(self), get(f"{self.url}/healthz")

    monkeypatch.setattr(Metrics, "ended", ended)
    port = free_port()
    assert run_cli.main([str(video), "--engine", engine, "--metrics", str(port), "--alarm-on", "0",
                         "--alarm-off", "0"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert f"stp-run: metrics on http://127.0.0.1:{port}/metrics, health on http://127.0.0.1:{port}/healthz" in err
    assert "summary: " in err and "64 frames; ended" in err
    samples = seen["samples"]
    assert seen["health"] == (200, "ok\n")
    assert total(samples, "stprompt_frames_read_total") == 64
    assert total(samples, "stprompt_snippets_total") == sum(e["type"] == "frame" for e in events) == 4
    assert total(samples, "stprompt_alarms_total") == sum(
        e["type"] == "alarm" and e["state"] in ("start", "new") for e in events) == 1  # fmt: skip
    assert total(samples, "stprompt_events_total") == len(events)
    with pytest.raises(OSError):  # stp-run exited: the server stopped with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT_S)


def test_port_in_use_is_one_line_and_exit_2_before_any_work(video, engine, capsys, monkeypatch):
    from stprompt.runtime import backends

    def no_engine(*a, **kw):
        raise AssertionError("the engine was loaded before the port was checked")

    monkeypatch.setattr(backends, "open_backend", no_engine)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run_cli.main([str(video), "--engine", engine, "--metrics", f"127.0.0.1:{port}"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        f"stp-run: error: --metrics 127.0.0.1:{port}: cannot listen there: Address already in use"
    ]


@pytest.mark.parametrize("value,needle", [
    ("99999", "PORT a number from 0 to 65535"), ("nine", "PORT a number"), (":9108", "no host before the port"),
    ("::1:9108", "IPv6 host in brackets"), ("host:", "PORT a number"),
])  # fmt: skip
def test_bad_addresses_are_one_line_and_exit_2(value, needle, video, engine, capsys):
    assert run_cli.main([str(video), "--engine", engine, "--metrics", value]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and needle in err and err.startswith("stp-run: error: --metrics")


def test_an_address_that_is_not_here_is_one_line(capsys):
    with pytest.raises(UserError, match=r"^--metrics 192\.0\.2\.1:9108: cannot listen there: "):
        Metrics("192.0.2.1:9108")  # TEST-NET-1: never an address of this machine


def test_missing_prometheus_client_is_one_line_naming_the_extra(video, engine, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # `import prometheus_client` raises ImportError
    assert run_cli.main([str(video), "--engine", engine, "--metrics", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        "stp-run: error: --metrics needs prometheus-client, which is not installed: pip install 'stprompt[metrics]'"
    ]


def test_stp_run_does_not_import_prometheus_client_unless_asked():
    code = "import sys, stprompt.runtime.cli, stprompt.runtime.metrics; print('prometheus_client' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_parse_address_and_buckets():
    assert parse_address("9108") == ("127.0.0.1", 9108)
    assert parse_address("0.0.0.0:9108") == ("0.0.0.0", 9108)
    assert parse_address("[::1]:0") == ("::1", 0) and parse_address("localhost:80") == ("localhost", 80)
    assert batch_buckets(256) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert batch_buckets(8)[-1] == 256 and batch_buckets(1000)[-1] == 1024
