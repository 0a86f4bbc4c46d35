"""stp-run --output mqtt://: against a real Mosquitto (tests/mqtt_broker.py) and a recording subscriber.

The events topic carries exactly the JSON Lines sink's alarm and source events, in order; the score stream keeps
its throttle; snapshots decode; `available` is retained online / offline, the will when the process is killed; a
broker restart mid-run loses no event and keeps their order while write() never waits; every bad URL is one line.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import write_video
from mqtt_broker import Mosquitto, Recorder, free_port, missing_reason, retained

from stprompt.errors import UserError
from stprompt.runtime import cli as run_cli
from stprompt.runtime import sinks
from stprompt.runtime.mqtt import MqttSettings, MqttSink, import_paho

needs_broker = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")
ALARMS = ["--alarm-on", "0", "--alarm-off", "0"]  # every snippet alarms: one alarm per source, new to end
SCHEMA = files("stprompt.runtime").joinpath("schemas", "events-1.json")
SIZE = (160, 120)  # write_video's


@pytest.fixture(scope="module")
def engine(tiny_bundle) -> str:
    return str(tiny_bundle.with_suffix(".onnx"))


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("mqtt_videos")
    paths = [root / "hall.mp4", root / "gate.mp4"]
    write_video(paths[0], 128, seed=7, blob=(16, 100))
    write_video(paths[1], 96, seed=8, blob=(8, 60))
    return paths


@pytest.fixture
def broker(tmp_path):
    if missing_reason() is not None:
        pytest.skip(missing_reason())
    with Mosquitto(tmp_path / "broker") as b:
        yield b


def validate(events: list[dict]) -> None:
    """Every event against the shipped schema, once it ships (issue 17's events-1)."""
    if not SCHEMA.is_file():
        return
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(json.loads(SCHEMA.read_text()))
    for e in events:
        assert not list(validator.iter_errors(e)), e


def payloads(recorder: Recorder, topic: str) -> list[dict]:
    return [json.loads(m.payload) for m in recorder.on(topic)]


def throttled(frames: list[dict], crossings: set[tuple[str, int]], interval: float) -> list[dict]:
    """The documented score rule: one per `interval` of the source's time, and every alarm crossing."""
    out, last = [], None
    for e in frames:
        due = last is None or e["time"] < last or e["time"] - last >= interval
        if due or (e["source"], e["frame"]) in crossings:
            out.append(e)
            last = e["time"]
    return out


def alarm(state: str, frame: int, source: str = "cam", **extra) -> dict:
    """An alarm event shaped as events-1 (the sink routes on type and state only)."""
    return {"v": 1, "type": "alarm", "state": state, "id": f"t:{source}:0", "source": source, "frame": frame,
            "time": frame / 25, "score": 0.9, "class": "Fighting", **extra}  # fmt: skip


def frame_event(frame: int, source: str = "cam", score: float = 0.9) -> dict:
    return {"v": 1, "type": "frame", "source": source, "frame": frame, "time": frame / 25, "score": score,
            "score_c": score, "class": "Fighting", "probs": {"normal": 1 - score, "Fighting": score}}  # fmt: skip


def open_sink(url: str) -> MqttSink:
    return sinks.open_output(url)  # type: ignore[return-value]


# -- 1. stp-run end to end -----------------------------------------------------------------------------------
@needs_broker
def test_stp_run_publishes_what_the_json_lines_sink_writes(engine, videos, broker, tmp_path, capsys):
    out = tmp_path / "events.jsonl"
    with Recorder(broker.port, "stp/#") as rec:
        argv = [*map(str, videos), "--engine", engine, "--output", str(out), "--output", broker.url("stp"),
                *ALARMS, "--quiet"]  # fmt: skip
        assert run_cli.main(argv) == 0
        assert rec.wait_for(lambda r: [m.payload for m in r.on("stp/available")][-1:] == [b"offline"], 10)
        written = [json.loads(line) for line in out.read_text().splitlines()]
        ids = {e["source"]: n for e in written for n in ("hall", "gate") if e["source"].endswith(f"/{n}.mp4")}
        assert len(ids) == 2
        for source, short in ids.items():
            mine = [e for e in written if e.get("source") == source]
            lifecycle = [e for e in mine if e["type"] in ("alarm", "source")]
            assert [e["state"] for e in lifecycle][:1] == ["new"] and lifecycle[-1]["state"] == "end"
            assert payloads(rec, f"stp/{short}/events") == lifecycle  # the same objects, in order
            frames = [e for e in mine if e["type"] == "frame"]
            crossings = {(e["source"], e["frame"]) for e in lifecycle if e["state"] in ("new", "end")}
            scores = payloads(rec, f"stp/{short}/score")
            assert scores == throttled(frames, crossings, 1.0)
            assert 1 < len(scores) < len(frames)  # the throttle did something, and the stream is there
            shots = rec.on(f"stp/{short}/snapshot")
            assert len(shots) == 2  # when the alarm starts and when it ends
            for shot in shots:
                image = cv2.imdecode(np.frombuffer(shot.payload, np.uint8), cv2.IMREAD_COLOR)
                assert image is not None and (image.shape[1], image.shape[0]) == SIZE
            validate(lifecycle + scores)
        available = [m.payload for m in rec.on("stp/available")]
        assert available[0] == b"online" and available[-1] == b"offline"
        assert not rec.on("stp/engine")
    got = retained(broker.port, "stp/available")
    assert got is not None and got.retain and got.payload == b"offline"
    snap = retained(broker.port, "stp/hall/snapshot")
    assert snap is not None and snap.retain and snap.payload == rec.on("stp/hall/snapshot")[-1].payload
    err = capsys.readouterr().err
    assert "MQTT" not in err, err  # a healthy broker: not a word about it


# -- 2. a broker restart mid-run --------------------------------------------------------------------------------
def test_broker_restart_loses_no_event_and_write_never_waits(tmp_path, capsys):
    if missing_reason() is not None:
        pytest.skip(missing_reason())
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    rec = Recorder(broker.port, "stp/#", session=True).start()  # its session and queue survive the restart
    sink = open_sink(broker.url("stp", query="flush=20"))
    sent: list[dict] = []
    slowest, stop = [0.0], threading.Event()

    def pipeline() -> None:  # a run's writes: an alarm update and a frame event every 5 ms, whatever the broker
        frame = 0
        while not stop.is_set():
            batch = [frame_event(frame), alarm("new" if frame == 0 else "update", frame)]
            t0 = time.perf_counter()
            sink.write(batch)
            slowest[0] = max(slowest[0], time.perf_counter() - t0)
            sent.append(batch[1])
            frame += 1
            time.sleep(0.005)

    writer = threading.Thread(target=pipeline)
    gc.freeze()  # the session's torch and CLIP fixtures make a full GC pass take ~0.4 s: not what is timed here
    try:
        writer.start()
        assert rec.wait_for(lambda r: len(r.on("stp/cam/events")) >= 50, 10)
        broker.stop()
        down_at = len(sent)
        time.sleep(3.0)  # several seconds without a broker
        assert len(sent) > down_at + 100  # the run went on meanwhile
        broker.start()
        assert rec.wait_for(lambda r: len(r.on("stp/cam/events")) > down_at + 100, 20)
        time.sleep(0.3)
    finally:
        stop.set()
        writer.join(10)
        gc.unfreeze()
    sink.write([alarm("end", len(sent))])
    sent.append(alarm("end", len(sent)))
    sink.close()
    try:
        assert rec.wait_for(lambda r: r.on("stp/available")[-1:] and r.on("stp/available")[-1].payload == b"offline",
                            20), broker.tail()  # fmt: skip
        got = payloads(rec, "stp/cam/events")
    finally:
        rec.stop()
        broker.stop()
    first_seen: list[int] = []
    for e in got:  # QoS 1 is at least once: what was in flight when the broker went may come twice
        if e["frame"] not in first_seen:
            first_seen.append(e["frame"])
    assert first_seen == [e["frame"] for e in sent]  # none lost, in order
    assert len(got) - len(sent) <= 25  # duplicates: at most what was in flight
    assert all(g == s for g, s in zip(got[: down_at // 2], sent, strict=False))
    assert slowest[0] < 0.25, f"write() took {slowest[0]:.3f} s"  # an outage lasts seconds: none of it here
    assert sink.dropped == 0 and sink.skipped_scores > 0  # scores during the outage: not replayed
    err = capsys.readouterr().err
    assert "connection to the MQTT broker lost" in err and "connected to the MQTT broker again" in err, err


def test_a_full_buffer_drops_the_oldest_and_says_so_once(capsys):
    if missing_reason() is not None:
        pytest.skip(missing_reason())
    sink = open_sink(f"mqtt://127.0.0.1:{free_port()}/stp?queue=5&flush=0")
    t0 = time.perf_counter()
    for i in range(20):
        sink.write([alarm("update", i)])
    assert time.perf_counter() - t0 < 0.5
    assert sink.dropped == 15 and list(m.topic for m in sink.publisher.buffer) == ["stp/cam/events"] * 5
    assert [json.loads(m.payload)["frame"] for m in sink.publisher.buffer] == list(range(15, 20))
    sink.close()
    err = capsys.readouterr().err.splitlines()
    assert len([line for line in err if "buffer full" in line]) == 1
    assert any("5 MQTT messages not delivered" in line for line in err), err
    assert any("15 MQTT messages dropped" in line for line in err), err


# -- 3. the will ----------------------------------------------------------------------------------------------
@needs_broker
def test_available_goes_offline_when_stp_run_is_killed(engine, broker, tmp_path):
    """A camera that is not up keeps stp-run running (it reconnects forever): its `source` down event reaches the
    events topic, `available` is retained online, and SIGKILL leaves the will, retained offline."""
    camera = f"rtsp://127.0.0.1:{free_port()}/cam"  # nothing serves it
    cmd = [sys.executable, "-m", "stprompt.runtime.cli", camera, "--engine", engine, "--events",
           str(tmp_path / "events.jsonl"), "--output", broker.url("stp"), "--quiet"]  # fmt: skip
    with Recorder(broker.port, "stp/#") as rec:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert rec.wait_for(lambda r: bool(r.on("stp/127.0.0.1-cam/events")), 60)
            assert proc.poll() is None
            online = retained(broker.port, "stp/available")
            assert online is not None and online.retain and online.payload == b"online"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert rec.wait_for(lambda r: [m.payload for m in r.on("stp/available")][-1:] == [b"offline"], 10)
        down = payloads(rec, "stp/127.0.0.1-cam/events")[0]
        assert (down["type"], down["state"], down["source"]) == ("source", "down", camera)
        validate([down])
    offline = retained(broker.port, "stp/available")
    assert offline is not None and offline.retain and offline.payload == b"offline"


# -- 4. user errors, one line each ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "uri, message",
    [
        ("mqtt://", "no broker host"),
        ("mqtt:///stp", "no broker host"),
        ("mqtt://host:99999/stp", "port must be a number from 1 to 65535"),
        ("mqtt://host:abc/stp", "port must be a number from 1 to 65535"),
        ("mqtt://alice:s3cret@host/stp", "no password in the URI; set it in the STP_MQTT_PASSWORD"),
        ("mqtt://host/stp?bogus=1", "unknown option 'bogus'; use score_interval, queue, client_id, keepalive, flush"),
        ("mqtt://host/stp?score_interval=-1", "score_interval must be a number >= 0, got '-1'"),
        ("mqtt://host/stp?score_interval=nan", "score_interval must be a number >= 0"),
        ("mqtt://host/stp?queue=0", "queue must be a whole number >= 1, got '0'"),
        ("mqtt://host/stp?queue=1.5", "queue must be a whole number >= 1"),
        ("mqtt://host/stp?queue=1&queue=2", "option 'queue' given twice"),
        ("mqtt://host/stp?client_id=", "client_id must be 1 to 128 printable characters"),
        ("mqtt://host/a/+/b", "must not contain '+', '#'"),
        ("mqtt://host/a//b", "an empty level"),
        ("mqtts://host/$SYS", "nor start with '$'"),
    ],
)
def test_bad_urls_are_one_line(uri, message):
    with pytest.raises(UserError) as err:
        sinks.check_outputs([uri])
    text = str(err.value)
    assert message in text and "\n" not in text and "s3cret" not in text, text


def test_settings_defaults_and_options():
    s = MqttSettings.parse("mqtts://bob@broker.example/site/cams?score_interval=0.5&queue=7&client_id=x1&keepalive=9"
                           "&flush=2", "out")  # fmt: skip
    assert (s.tls, s.host, s.port, s.prefix, s.user) == (True, "broker.example", 8883, "site/cams", "bob")
    assert (s.score_interval, s.queue, s.client_id, s.keepalive, s.flush) == (0.5, 7, "x1", 9, 2.0)
    d = MqttSettings.parse("mqtt://[::1]", "out")
    assert (d.port, d.prefix, d.user, d.score_interval, d.queue) == (1883, "stprompt", None, 1.0, 10_000)
    assert d.client_id.startswith("stp-run-") and d.target == "mqtt://[::1]:1883/stprompt"
    with pytest.raises(UserError, match="given twice"):
        sinks.check_outputs(["mqtt://h/stp", "mqtt://h:1883/stp/"])


def test_password_in_the_uri_is_refused_by_stp_run(engine, videos, tmp_path, capsys):
    argv = [str(videos[0]), "--engine", engine, "--events", str(tmp_path / "e.jsonl"), "--output",
            "mqtt://alice:s3cret@127.0.0.1/stp", "--quiet"]  # fmt: skip
    assert run_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "STP_MQTT_PASSWORD" in err[0] and "s3cret" not in err[0], err
    assert not (tmp_path / "e.jsonl").exists()  # refused before any output was opened


def test_environment_mistakes_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("STP_MQTT_PASSWORD", "pw")
    with pytest.raises(UserError, match="STP_MQTT_PASSWORD is set but the URI names no user"):
        sinks.check_outputs(["mqtt://host/stp"])
    monkeypatch.delenv("STP_MQTT_PASSWORD")
    monkeypatch.setenv("STP_MQTT_CA", str(tmp_path / "missing.pem"))
    with pytest.raises(UserError, match="STP_MQTT_CA=.*missing.pem: not a readable CA file"):
        sinks.check_outputs(["mqtts://host/stp"])
    sinks.check_outputs(["mqtt://host/stp"])  # no TLS: the CA variable does not matter


def test_missing_paho_names_the_extra(monkeypatch):
    import_paho()  # installed here (the dev extra)
    for name in ("paho", "paho.mqtt", "paho.mqtt.client"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` raises ImportError
    with pytest.raises(UserError) as err:
        sinks.check_outputs(["mqtt://host/stp"])
    assert str(err.value) == "MQTT output needs paho-mqtt: pip install 'stprompt[mqtt]'"


def test_an_unreachable_broker_is_one_line_and_the_run_completes(engine, videos, tmp_path, capsys):
    if missing_reason() is not None:
        pytest.skip(missing_reason())
    out = tmp_path / "events.jsonl"
    url = f"mqtt://127.0.0.1:{free_port()}/stp?flush=0.5"  # nothing listens there
    argv = [str(videos[1]), "--engine", engine, "--output", str(out), "--output", url, *ALARMS, "--quiet"]
    t0 = time.monotonic()
    assert run_cli.main(argv) == 0
    assert time.monotonic() - t0 < 60
    err = capsys.readouterr().err.strip().splitlines()
    unreachable = [line for line in err if "unreachable" in line]
    assert len(unreachable) == 1 and "retried in the background" in unreachable[0], err
    assert any("MQTT messages not delivered" in line for line in err), err
    assert any(json.loads(line)["type"] == "alarm" for line in out.read_text().splitlines())  # detection went on


# -- credentials and TLS ------------------------------------------------------------------------------------------
@needs_broker
def test_password_comes_from_the_environment_and_a_refusal_is_one_line(tmp_path, monkeypatch, capsys):
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "alice", "s3cret"], check=True, capture_output=True,
                   timeout=30)  # fmt: skip
    with Mosquitto(tmp_path / "b", anonymous=False, extra=[f"password_file {passwd}"]) as b:
        monkeypatch.setenv("STP_MQTT_PASSWORD", "wrong")
        with pytest.raises(UserError) as err:
            open_sink(b.url("stp", user="alice"))
        assert "refused the connection" in str(err.value) and "wrong" not in str(err.value)
        monkeypatch.setenv("STP_MQTT_PASSWORD", "s3cret")
        with Recorder(b.port, "stp/#", user="alice", password="s3cret") as rec:
            sink = open_sink(b.url("stp", user="alice"))
            sink.write([alarm("new", 8)])
            sink.close()
            assert rec.wait_for(lambda r: len(r.on("stp/cam/events")) == 1, 10)
    assert "s3cret" not in capsys.readouterr().err


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl); (ca, cert, key)."""
    folder.mkdir()
    ca, ca_key, cert, key = folder / "ca.pem", folder / "ca.key", folder / "server.pem", folder / "server.key"

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
            "-subj", "/CN=stp test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    csr = folder / "server.csr"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = folder / "ext.cnf"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        "keyUsage=digitalSignature,keyEncipherment\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out",
            str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return ca, cert, key


@needs_broker
def test_mqtts_with_the_ca_from_the_environment(tmp_path, monkeypatch, capsys):
    import ssl

    try:
        ca, cert, key = make_certificates(tmp_path / "tls")
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot make test certificates with openssl: {err}")
    with Mosquitto(tmp_path / "b", extra=[f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]) as b:
        url = b.url("stp", scheme="mqtts", query="flush=0")
        monkeypatch.delenv("STP_MQTT_CA", raising=False)
        untrusted = open_sink(url)  # the system's CAs do not know this one: unreachable, one line, retried
        untrusted.close()
        err = capsys.readouterr().err
        assert "unreachable" in err and "certificate verify failed" in err, err
        monkeypatch.setenv("STP_MQTT_CA", str(ca))
        with Recorder(b.port, "stp/#", tls=ssl.create_default_context(cafile=str(ca))) as rec:
            sink = open_sink(b.url("stp", scheme="mqtts"))
            sink.write([alarm("new", 8), frame_event(8)])
            sink.close()
            assert rec.wait_for(lambda r: len(r.on("stp/cam/events")) == 1 and r.on("stp/available")[-1:], 10)
            assert payloads(rec, "stp/cam/events") == [alarm("new", 8)]
    assert "unreachable" not in capsys.readouterr().err


# -- routing without a broker's help -----------------------------------------------------------------------------
def test_routing_topics_and_snapshot_choice(capsys):
    """Alarm / source events to the source's events topic, engine events to PREFIX/engine, the new frame and the
    peak frame as snapshots (after their events), topic-safe source ids."""
    if missing_reason() is not None:
        pytest.skip(missing_reason())
    from stprompt.runtime.detector import Snippet

    ctx = sinks.OutputContext(names={"0:rtsp://cam-2/live": "cam-2-live"})
    sink = MqttSink(MqttSettings.parse(f"mqtt://127.0.0.1:{free_port()}/p?flush=0&score_interval=0", "out"), ctx)
    src = "0:rtsp://cam-2/live"
    images = {f: np.full((120, 160, 3), f, np.uint8) for f in (8, 24, 40, 56)}
    scores = {8: 0.6, 24: 0.9, 40: 0.7, 56: 0.2}
    events = []
    for f in (8, 24, 40, 56):
        fe = frame_event(f, src, scores[f])
        sink.snippet(Snippet(src, fe, images[f], None, np.zeros((0, 5))))
        state = {8: "new", 24: "update", 40: "update", 56: "end"}[f]
        events += [fe, alarm(state, f, src, score=scores[f], peak_frame=24 if f >= 24 else 8)]
    sink.write(events[:4])
    sink.write(events[4:])
    down = {"v": 1, "state": "down", "reason": "x", "time": 1.0}
    sink.write(
        [{**down, "type": "engine", "engine": "grpc://t"}, {**down, "type": "source", "source": "1:weird/#name+"}]
    )
    ev, shot = "p/cam-2-live/events", "p/cam-2-live/snapshot"
    assert [m.topic for m in sink.publisher.buffer] == [ev, shot, ev, ev, ev, shot, "p/engine", "p/name/events"]
    assert sink.skipped_scores == 4  # no broker: the score gauge is not buffered
    shots = [m for m in sink.publisher.buffer if m.topic == shot]
    assert all(m.retain and m.qos == 1 for m in shots)
    first, last = (cv2.imdecode(np.frombuffer(m.payload(), np.uint8), cv2.IMREAD_COLOR) for m in shots)
    assert abs(int(np.median(first[60:])) - 8) <= 3 and abs(int(np.median(last[60:])) - 24) <= 3  # the peak: 24
    assert not sink.pending and not sink.best
    sink.close()
    capsys.readouterr()


def test_both_import_orders_register_the_sink():
    code = ("import stprompt.runtime.mqtt as m, stprompt.runtime.sinks as s; assert m.MqttSink in s.OUTPUTS; "
            "assert s.resolve_output('mqtts://h/x')[0] is m.MqttSink")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env)
