"""stp-run against a real RTSP server on 127.0.0.1 (GStreamer's, run by tests/rtsp_server.py under the system
Python): a camera that vanishes and comes back, one not up yet at start-up, one gone for good, --reconnect N.

Every wait is bounded; the server and stp-run are killed by the fixtures whatever happens.
"""

from __future__ import annotations

import json
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import pytest

from stprompt.runtime import cli as run_cli

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = Path(__file__).with_name("rtsp_server.py")
PROBE = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
    "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
    "missing = [e for e in ('videotestsrc', 'x264enc', 'rtph264pay') if Gst.ElementFactory.find(e) is None]; "
    "print(' '.join(missing))"
)
APT = ("python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
       "gstreamer1.0-plugins-ugly gstreamer1.0-rtsp")  # fmt: skip


def _why_no_server() -> str | None:
    """None when tests/rtsp_server.py can run here, else why not (the skip reason)."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found (the RTSP test server runs under the system Python with python3-gi)"
    try:
        probe = subprocess.run([SYSTEM_PYTHON, "-c", PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{SYSTEM_PYTHON} cannot probe GStreamer: {err}"
    if probe.returncode != 0:
        return f"{SYSTEM_PYTHON} cannot import GstRtspServer (apt-get install {APT})"
    if probe.stdout.strip():
        return f"GStreamer elements missing: {probe.stdout.strip()} (apt-get install {APT})"
    if not re.search(r"FFMPEG:\s*YES", cv2.getBuildInformation()):
        return "this OpenCV has no FFmpeg to read RTSP"
    return None


WHY_NO_SERVER = _why_no_server()
needs_server = pytest.mark.skipif(WHY_NO_SERVER is not None, reason=WHY_NO_SERVER or "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspServer:
    """tests/rtsp_server.py on one port: start() (again after kill() to bring the camera back), kill() (-9)."""

    def __init__(self, port: int):
        self.port = port
        self.uri = f"rtsp://127.0.0.1:{port}/test"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(SERVER), str(self.port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith("ready"):
                    return
            if self.proc.poll() is not None:
                break
        err = self.proc.stderr.read() if self.proc.poll() is not None else ""
        self.kill()
        pytest.fail(f"the RTSP server did not start on port {self.port} within {timeout} s: {err[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # a camera that vanishes: no teardown, no goodbye
            self.proc.wait(timeout=10)
        self.proc = None


class StpRun:
    """stp-run as a subprocess (what an appliance runs), its events file and stderr read while it runs."""

    def __init__(self, tmp_path: Path, engine: str, uri: str, *flags: str):
        self.events_path, self.err_path = tmp_path / "events.jsonl", tmp_path / "stderr.txt"
        self._err = open(self.err_path, "w")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "stprompt.runtime.cli", uri, "--engine", engine, "--events",
               str(self.events_path), *flags]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._err)

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        text = self.events_path.read_text()
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]

    def err(self) -> str:
        return self.err_path.read_text().replace("\r", "\n")

    def frames_read(self) -> int:
        """Frames read so far, from the status line."""
        counts = re.findall(r"stp-run: (\d+) frames ", self.err())
        return int(counts[-1]) if counts else 0

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        """Poll `check` until it returns something truthy (returned); fail, showing stderr, after `timeout` s or
        when stp-run exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := check():
                return value
            if self.proc.poll() is not None:
                pytest.fail(f"stp-run exited ({self.proc.returncode}) before {what}:\n{self.err()[-3000:]}")
            time.sleep(0.1)
        pytest.fail(f"no {what} within {timeout} s:\n{self.err()[-3000:]}")

    def source_events(self, state: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["type"] == "source" and state in (None, e["state"])]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._err.close()


@pytest.fixture(scope="module")
def engine(tiny_bundle) -> str:
    return str(tiny_bundle.with_suffix(".onnx"))


@pytest.fixture
def server():
    srv = RtspServer(free_port())
    yield srv
    srv.kill()


@pytest.fixture
def runs():
    started: list[StpRun] = []
    yield started
    for run in started:
        run.kill()


def frame_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "frame"]


@needs_server
def test_a_server_killed_and_restarted_is_reconnected_and_sigterm_scores_what_was_read(engine, server, runs,
                                                                                       tmp_path):  # fmt: skip
    server.start()
    run = StpRun(tmp_path, engine, server.uri)  # exact lookahead: a snippet is scored 41 snippets (26 s) later,
    runs.append(run)  # or when its stream ends: every frame event below comes from an end
    run.wait_for("source up", lambda: run.source_events("up"), 90)
    run.wait_for("75 frames read", lambda: run.frames_read() >= 75, 30)
    server.kill()
    killed = time.monotonic()
    (down,) = run.wait_for("source down", lambda: run.source_events("down"), 30)
    detected = time.monotonic() - killed
    assert "no frame" in down["reason"] and "reconnecting" in down["reason"]
    before = frame_events(run.events())
    assert len(before) >= 3 and all(e["time"] <= down["time"] for e in before)  # the outage ended the stream
    time.sleep(1.0)  # at least one reconnect attempt fails (0.5 s backoff) before the camera is back
    server.start()
    restarted = time.monotonic()
    ups = run.wait_for("source up again", lambda: run.source_events("up")[1:], 60)
    reconnected = time.monotonic() - restarted
    assert ups[0]["reason"].startswith("reconnected after ")
    read_at_up = run.frames_read()
    run.wait_for("50 frames after the reconnect", lambda: run.frames_read() >= read_at_up + 50, 30)
    assert run.stop(signal.SIGTERM) == 143
    after = [e for e in frame_events(run.events()) if e["time"] > ups[0]["time"]]
    assert after  # read after the reconnect, scored at the stop (the lookahead would have waited 26 s more)
    assert all(e["frame"] > before[-1]["frame"] for e in after)
    err = run.err()
    assert re.search(r"source rtsp://127\.0\.0\.1:\d+/test down: no frame", err)
    assert re.search(r"source rtsp://127\.0\.0\.1:\d+/test up: reconnected after \d+ attempts?", err)
    assert re.search(r"summary: rtsp://127\.0\.0\.1:\d+/test: \d+ frames, 1 reconnect, \d+ dropped; stopped", err)
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    print(f"\nRTSP outage: down {detected:.2f} s after the kill, up {reconnected:.2f} s after the restart")


@needs_server
def test_a_server_absent_at_start_up_is_waited_for(engine, server, runs, tmp_path):
    run = StpRun(tmp_path, engine, server.uri, "--lookahead", "0", "--quiet")
    runs.append(run)
    (down,) = run.wait_for("source down at start-up", lambda: run.source_events("down"), 90)
    assert "cannot open stream" in down["reason"] and "reconnecting" in down["reason"]
    time.sleep(1.0)
    assert run.proc.poll() is None  # still waiting for the camera
    server.start()
    started = time.monotonic()
    (up,) = run.wait_for("source up", lambda: run.source_events("up"), 30)
    waited = time.monotonic() - started
    assert up["reason"].startswith("reconnected after ")
    run.wait_for("a frame event", lambda: frame_events(run.events()), 30)
    assert run.stop(signal.SIGINT) == 130
    assert re.search(r"source rtsp://127\.0\.0\.1:\d+/test down: cannot open stream", run.err())
    print(f"\nRTSP absent at start-up: up {waited:.2f} s after the server started")


@needs_server
def test_a_server_gone_for_good_is_retried_until_sigterm(engine, server, runs, tmp_path):
    server.start()
    run = StpRun(tmp_path, engine, server.uri)
    runs.append(run)
    run.wait_for("source up", lambda: run.source_events("up"), 90)
    run.wait_for("50 frames read", lambda: run.frames_read() >= 50, 30)
    server.kill()
    run.wait_for("source down", lambda: run.source_events("down"), 30)
    read = run.frames_read()
    time.sleep(4.0)  # attempts after 0.5, 1.5 and 3.5 s: all refused; it keeps trying
    assert run.proc.poll() is None and "gave up" not in run.err()
    assert run.stop(signal.SIGTERM) == 143
    frames = frame_events(run.events())
    assert len(frames) >= read // 16 - 1  # every complete snippet of the frames read was scored (stride 16)
    assert [e["state"] for e in run.source_events()] == ["up", "down"]
    err = run.err()
    assert re.search(r"summary: rtsp://127\.0\.0\.1:\d+/test: \d+ frames, 0 reconnects, \d+ dropped; stopped", err)


@needs_server
def test_reconnect_n_with_the_server_gone_fails_naming_the_source(engine, server, runs, tmp_path):
    run = StpRun(tmp_path, engine, server.uri, "--reconnect", "2", "--quiet")  # the server never starts
    runs.append(run)
    started = time.monotonic()
    assert run.proc.wait(timeout=90) == 1
    err = run.err().strip().splitlines()
    assert err[-1] == (f"stp-run: error: every source failed: {server.uri}: gave up after 2 reconnect attempts: "
                       f"cannot open stream {server.uri} (unreachable, wrong URL or credentials, or no video track)")
    assert [e["state"] for e in run.source_events()] == ["down", "down"]
    assert run.source_events()[-1]["reason"].startswith("gave up after 2 reconnect attempts")
    print(f"\n--reconnect 2: exit 1 after {time.monotonic() - started:.1f} s (stp-run's start-up included)")


def test_reconnect_0_refuses_a_stream_that_is_not_up_in_one_line(engine, capsys):
    uri = f"rtsp://127.0.0.1:{free_port()}/test"
    assert run_cli.main([uri, "--engine", engine, "--reconnect", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot open stream" in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("value", ["-1", "sometimes", "1.5"])
def test_a_bad_reconnect_value_is_a_usage_error(value, engine, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli.main(["rtsp://127.0.0.1:1/x", "--engine", engine, "--reconnect", value])
    assert info.value.code == 2 and "--reconnect" in capsys.readouterr().err
