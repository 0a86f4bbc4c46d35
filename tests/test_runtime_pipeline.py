"""The Pipeline behind stp-run, the Python API and stp-bench; outputs as URIs; one Frame type."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import cv2
import pytest
from conftest import count_frames, stable_ids

from stprompt.errors import UserError
from stprompt.runtime import cli as run_cli
from stprompt.runtime.sinks import DisplaySink, JsonLinesSink, Sink, VideoSink, open_output

STRIDE = 16  # tiny_bundle's
ALARMS = ["--alarm-on", "0", "--alarm-off", "0"]  # every snippet alarms: heat maps and boxes in every output


@pytest.fixture(scope="module")
def video(blob_clip) -> Path:
    return blob_clip


@pytest.fixture(scope="module")
def engine(tiny_bundle) -> str:
    return str(tiny_bundle.with_suffix(".onnx"))


def read_events(path: Path) -> list[dict]:
    """The JSON Lines events, alarm ids without their random token (`stable_ids`), so runs compare equal."""
    return stable_ids([json.loads(line) for line in path.read_text().splitlines()])


def stdout_events(text: str) -> list[dict]:
    return stable_ids([json.loads(line) for line in text.splitlines() if line.strip()])


def stp_run(*argv: str) -> int:
    return run_cli.main([*argv, "--quiet"])


@pytest.fixture(scope="module")
def reference(video, engine, tmp_path_factory) -> list[dict]:
    """stp-run's JSON Lines on the test video with the pre-URI flag (--events)."""
    out = tmp_path_factory.mktemp("reference") / "events.jsonl"
    assert stp_run(str(video), "--engine", engine, "--events", str(out), *ALARMS) == 0
    events = read_events(out)
    assert [e["frame"] for e in events if e["type"] == "frame"] == [8, 24, 40, 56]
    assert any(e["type"] == "alarm" and e.get("boxes") is not None for e in events)
    return events


def test_several_outputs_at_once_get_the_same_events(video, engine, reference, tmp_path, capsys):
    events, annotated = tmp_path / "e.jsonl", tmp_path / "annotated.mp4"
    argv = [str(video), "--engine", engine, "--output", str(events), "--output", str(annotated), "--output", "-"]
    assert stp_run(*argv, *ALARMS) == 0
    assert read_events(events) == reference
    assert stdout_events(capsys.readouterr().out) == reference
    assert count_frames(annotated) == 64 // STRIDE


def test_aliases_equal_their_output_uris(video, engine, reference, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    assert stp_run(str(video), "--engine", engine, "--events", str(a / "e.jsonl"),
                   "--video-out", str(a / "v.mp4"), *ALARMS) == 0  # fmt: skip
    assert stp_run(str(video), "--engine", engine, "--output", str(b / "e.jsonl"),
                   "--output", str(b / "v.mp4"), *ALARMS) == 0  # fmt: skip
    assert read_events(a / "e.jsonl") == read_events(b / "e.jsonl") == reference
    assert count_frames(a / "v.mp4") == count_frames(b / "v.mp4") == 64 // STRIDE
    assert capsys.readouterr().out == ""  # a JSON Lines output was given: nothing on stdout


def test_events_go_to_stdout_when_no_output_takes_them(video, engine, reference, tmp_path, capsys):
    assert stp_run(str(video), "--engine", engine, "--output", str(tmp_path / "only.mp4"), *ALARMS) == 0
    assert stdout_events(capsys.readouterr().out) == reference
    assert stp_run(str(video), "--engine", engine, "--events", "-", *ALARMS) == 0  # the alias, as before
    assert stdout_events(capsys.readouterr().out) == reference
    assert stp_run(str(video), "--engine", engine, "--events", str(tmp_path / "log.txt"), *ALARMS) == 0
    assert read_events(tmp_path / "log.txt") == reference  # --events is JSON Lines whatever the suffix


@pytest.mark.parametrize(
    "uri,needle",
    [("out.txt", "'.txt'"), ("results", "no suffix"), ("rtsp://host/out", "'rtsp://'"),
     ("display://left", "display://0")],
)  # fmt: skip
def test_unknown_output_is_one_line_naming_what_is_accepted(uri, needle, video, engine, capsys):
    assert stp_run(str(video), "--engine", engine, "--output", uri) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0] and needle in err[0], err
    if uri != "display://left":
        assert all(s in err[0] for s in (".jsonl", "- (stdout)", ".mp4", "display://0")), err


def test_the_same_output_twice_is_refused(video, engine, tmp_path, capsys):
    path = str(tmp_path / "e.jsonl")
    assert stp_run(str(video), "--engine", engine, "--output", path, "--events", path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "twice" in err[0]


def test_open_output_picks_the_sink_by_suffix_or_scheme(tmp_path):
    sinks = [open_output(str(tmp_path / "x.NDJSON")), open_output("file://" + str(tmp_path / "y.json")),
             open_output("-"), open_output(str(tmp_path / "z.mkv"))]  # fmt: skip
    try:
        assert [type(s) for s in sinks] == [JsonLinesSink, JsonLinesSink, JsonLinesSink, VideoSink]
        assert sinks[2].target == "-" and sinks[1].target == str((tmp_path / "y.json").resolve())
    finally:
        for s in sinks:
            s.close()
    if "GTK" in cv2.getBuildInformation() and os.environ.get("DISPLAY"):
        return
    with pytest.raises(UserError, match="display://0 needs an OpenCV with GUI"):
        open_output("display://0")
    with pytest.raises(UserError, match="--show needs"):
        open_output("display://0", kind=DisplaySink, name="--show")


def test_python_api_pipeline_gives_stp_runs_events(video, engine, reference, tmp_path):
    from stprompt.runtime.api import open_pipeline
    from stprompt.runtime.detector import AlarmSettings
    from stprompt.runtime.pipeline import Pipeline

    out = tmp_path / "api.jsonl"
    with open_pipeline(engine, [str(video)], outputs=[str(out)], alarm=AlarmSettings(on=0.0, off=0.0)) as pipeline:
        assert isinstance(pipeline, Pipeline)
        events = [json.loads(json.dumps(e)) for e in pipeline]
    assert stable_ids(events) == reference and read_events(out) == reference
    assert pipeline.stats["frames"] == 64 and pipeline.stats["events"] == len(reference)
    assert not pipeline.interrupted


class Recorder(Sink):
    """A new kind of output is one small class: this one keeps what it gets, and can ask the run to stop."""

    def __init__(self, stop_after: int | None = None):
        self.events: list[dict] = []
        self.snippets: list[int] = []
        self.closed = 0
        self.stop_after = stop_after

    def write(self, events):
        self.events += events

    def snippet(self, snippet):
        self.snippets.append(snippet.event["frame"])
        assert snippet.image.ndim == 3 and (snippet.heat is None) == (snippet.boxes is None)
        if self.stop_after is not None and len(self.snippets) >= self.stop_after:
            self.stop_requested = True

    def close(self):
        self.closed += 1


def pipeline_over(engine: str, sources, sinks, lookahead: int | None = None, **kw):
    from stprompt.runtime.backends import open_backend
    from stprompt.runtime.detector import AlarmSettings, Detector
    from stprompt.runtime.pipeline import Pipeline

    backend, manifest = open_backend(engine)
    detector = Detector(backend, manifest, alarm=AlarmSettings(on=0.0, off=0.0), lookahead=lookahead)
    return Pipeline(detector, sources, sinks, **kw)


def test_a_custom_sink_gets_every_event_and_snippet(video, engine, reference):
    from stprompt.runtime.sources import VideoFileSource

    sink = Recorder()
    stats = pipeline_over(engine, [VideoFileSource(video, source_id=str(video))], [sink]).run()
    assert stable_ids(sink.events) == reference and sink.snippets == [8, 24, 40, 56] and sink.closed == 1
    assert stats["snippets"] == 4 and stats["frames"] == 64


def test_stop_scores_the_snippets_already_read(video, engine, reference):
    from stprompt.runtime.sources import VideoFileSource

    sink = Recorder()
    src = VideoFileSource(video, source_id=str(video))
    seen: list[int] = []

    def on_frame(sid, frame):
        seen.append(frame.index)
        if frame.index == 40:
            pipeline.stop()

    pipeline = pipeline_over(engine, [src], [sink], on_frame=on_frame, sampled_per_batch=1)
    pipeline.run()
    assert pipeline.interrupted and src.ended and sink.closed == 1
    # frame 40 is seen once its batch was scored, and the next batch (frames 41-56) had been read meanwhile (the
    # host prepares the next batch while the encoder runs): it is the last one read, and it is scored too
    assert seen == list(range(57))
    # snippets 8, 24 and 40 were complete and are scored (with the stream's true end); 56's frames were not all read
    assert [e["frame"] for e in sink.events if e["type"] == "frame"] == [8, 24, 40]
    assert sink.events[-1] == {**sink.events[-1], "type": "alarm", "state": "end"}


def test_a_sink_can_stop_the_run_like_the_live_windows_q(video, engine):
    from stprompt.runtime.sources import VideoFileSource

    sink = Recorder(stop_after=1)  # without lookahead a snippet is scored as soon as its frames are read
    pipeline = pipeline_over(engine, [VideoFileSource(video)], [sink], lookahead=0, sampled_per_batch=1)
    pipeline.run()
    assert pipeline.interrupted and sink.closed == 1 and 1 <= len(sink.snippets) < 4


class StalledCamera:
    """A live source that delivers nothing until the file beside it has ended, then ends itself."""

    live, fps = True, 30.0

    def __init__(self, other):
        self.id, self.other, self.timeouts = "cam", other, []
        self.stats = {"frames": 0, "dropped": 3, "reconnects": 0}

    def read(self, timeout=None):
        self.timeouts.append(timeout)
        return None

    @property
    def ended(self):
        return self.other.ended

    def close(self):
        pass


def test_a_live_source_never_blocks_the_others(video, engine, reference):
    from stprompt.runtime.pipeline import LIVE_WAIT_S
    from stprompt.runtime.sources import VideoFileSource

    src = VideoFileSource(video, source_id=str(video))
    cam = StalledCamera(src)
    sink = Recorder()
    stats = pipeline_over(engine, [src, cam], [sink]).run()
    assert stable_ids(sink.events) == reference  # every frame of the file, scored as when it runs alone
    assert set(cam.timeouts) == {LIVE_WAIT_S} and stats["dropped"] == 3


def test_sources_and_detector_share_one_frame_type():
    from stprompt.runtime import detector, frames, sources

    assert sources.Frame is frames.Frame is detector.Frame


def test_signals_stop_the_pipeline_and_a_second_one_aborts():
    from types import SimpleNamespace

    from stprompt.runtime.cli import stop_on_signals

    fake = SimpleNamespace(stopping=False)
    fake.stop = lambda: setattr(fake, "stopping", True)
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(fake):
        os.kill(os.getpid(), signal.SIGTERM)
        assert fake.stopping
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before


def test_bench_end_to_end_drives_the_pipeline(tiny_bundle, tmp_path, monkeypatch):
    from stprompt.bench import stages
    from stprompt.runtime.backends import open_backend
    from stprompt.runtime.pipeline import Pipeline

    runs: list[Pipeline] = []
    original = Pipeline.run

    def spy(self):
        runs.append(self)
        return original(self)

    monkeypatch.setattr(Pipeline, "run", spy)
    backend, manifest = open_backend(tiny_bundle.with_name("model.onnx"))
    clip = stages.write_test_video(tmp_path / "b.mp4", 80, (160, 120))
    timing, stats = stages.run_end_to_end(backend, "ort", manifest, clip, 64)
    assert len(runs) == 1 and runs[0].sources[0].path == clip
    assert len(timing.samples) == 4 and stats["frames"] == 64 and stats["crops"] == 200 and stats["encode_s"] > 0


# --- live sources that go down and come back; a clean close -----------------------------------------------------


class FileCamera:
    """A capture (the part of cv2.VideoCapture a LiveSource uses) that plays `n` frames of a video, then fails:
    a camera whose stream is lost."""

    def __init__(self, path: Path, n: int, period: float = 0.002):
        self.cap, self.n, self.period = cv2.VideoCapture(str(path)), n, period

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def read(self):
        time.sleep(self.period)
        if self.n <= 0:
            return False, None
        self.n -= 1
        ok, image = self.cap.read()
        if not ok:  # the video is shorter: play it again
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self.cap.read()
        return ok, image

    def release(self) -> None:
        self.cap.release()

    def get(self, prop: int) -> float:
        return 25.0


def flaky_camera(video: Path, reconnect: int | None = 2):
    """Up for 48 frames, down (one failed reconnect), up again for 48 frames, then gone for good."""
    from stprompt.runtime.sources import LiveSource

    plan = [FileCamera(video, 48, period=0.03), None, FileCamera(video, 48, period=0.03)]  # 1.4 s each
    return LiveSource("rtsp://cam/1", lambda: plan.pop(0) if plan else None, source_id="cam", open_error="cam is off",
                      reconnect=reconnect, backoff=[0.01], jitter=0.0)  # fmt: skip


def test_a_live_source_going_down_and_up_is_reported_and_scored(video, engine, capsys):
    sink = Recorder()
    pipeline = pipeline_over(engine, [flaky_camera(video)], [sink])
    stats = pipeline.run()
    kinds = [(e["type"], e.get("state")) for e in sink.events]
    source_events = [e for e in sink.events if e["type"] == "source"]
    assert [e["state"] for e in source_events] == ["up", "down", "up", "down", "down"]
    keys = {"v", "type", "source", "state", "reason", "time"}
    assert all(set(e) == keys and e["source"] == "cam" for e in source_events)
    assert json.loads(json.dumps(source_events)) == source_events  # JSON-ready
    assert source_events[-1]["reason"].startswith("gave up after 2 reconnect attempts: cam is off")
    first_down, second_up = kinds.index(("source", "down")), kinds.index(("source", "up"), 1)
    # the outage ends the stream as an end of file: what was read before it is scored (and its alarm closed)
    # before the down, not after the camera comes back (exact lookahead would wait for 41 more snippets)
    before = [e for e in sink.events[:first_down] if e["type"] == "frame"]
    assert before and sink.events[first_down - 1] == {**sink.events[first_down - 1], "type": "alarm", "state": "end"}
    assert all(e["frame"] < 48 for e in before)
    assert any(e["type"] == "frame" and e["frame"] >= 48 for e in sink.events[second_up:])  # scored after the outage
    assert stats["snippets"] == sum(e["type"] == "frame" for e in sink.events)
    (report,) = pipeline.report()
    assert report["end"] == "failed" and report["reconnects"] == 1 and report["error"].startswith("gave up")
    assert report["frames"] + report["dropped"] == 96
    err = capsys.readouterr().err
    assert err.count("source cam down:") == 3 and err.count("source cam up:") == 2  # one line per state change


def test_summary_and_status_name_the_reconnects(video, engine, capsys):
    from stprompt.runtime.sinks import Status

    pipeline = pipeline_over(engine, [flaky_camera(video)], [], status=Status(False))
    pipeline.run()
    err = capsys.readouterr().err
    assert "reconnects 1" in err  # the status line
    summary = [line for line in err.splitlines() if "summary:" in line]
    assert len(summary) == 1 and "cam: " in summary[0] and "1 reconnect, " in summary[0] and "dropped; failed: gave" \
        in summary[0]  # fmt: skip


def test_close_before_the_end_scores_what_was_read(video, engine):
    """The API's close() (or leaving its `with` block) after a break is a clean stop, as a signal is for stp-run."""
    from stprompt.runtime.sources import VideoFileSource

    sink = Recorder()
    pipeline = pipeline_over(engine, [VideoFileSource(video)], [sink], lookahead=0, sampled_per_batch=1)
    it = iter(pipeline)
    first = next(e for e in it if e["type"] == "frame")
    pipeline.close()
    assert next(it, None) is None and sink.closed == 1 and pipeline.interrupted
    frames = [e["frame"] for e in sink.events if e["type"] == "frame"]
    assert frames[0] == first["frame"] == 8 and frames == sorted(frames) and frames[-1] < 56
    assert sink.events[-1] == {**sink.events[-1], "type": "alarm", "state": "end"}  # the stream was finished
    assert pipeline.report()[0]["end"] == "stopped"
    pipeline.close()  # once is enough
    assert sink.closed == 1


def test_with_block_left_early_scores_what_was_read_and_an_error_does_not(video, engine):
    from stprompt.runtime.sources import VideoFileSource

    clean, failed = Recorder(), Recorder()
    with pipeline_over(engine, [VideoFileSource(video)], [clean], lookahead=0, sampled_per_batch=1) as pipeline:
        for event in pipeline:
            if event["type"] == "frame":
                break
    assert clean.closed == 1 and clean.events[-1]["state"] == "end"
    failing = pipeline_over(engine, [VideoFileSource(video)], [failed], lookahead=0, sampled_per_batch=1)
    with pytest.raises(ZeroDivisionError), failing as pipeline:
        for event in pipeline:
            if event["type"] == "frame":
                1 / 0  # noqa: B018 - the caller's own error
    assert failed.closed == 1 and failed.events[-1].get("state") != "end"  # released without scoring the rest


def test_close_from_another_thread_asks_the_stop(video, engine):
    from stprompt.runtime.sources import LiveSource, VideoFileSource

    sink = Recorder()
    cam = LiveSource("rtsp://cam/2", lambda: FileCamera(video, 10_000, period=0.01), source_id="cam2",
                     open_error="off", backoff=[0.01], jitter=0.0)  # fmt: skip
    pipeline = pipeline_over(engine, [cam, VideoFileSource(video)], [sink], lookahead=0)
    closer = threading.Timer(1.0, pipeline.close)
    closer.start()
    pipeline.run()  # returns once the other thread's close() stopped it
    closer.join()
    assert pipeline.interrupted and sink.closed == 1 and cam.ended
    assert pipeline.report()[0]["end"] == "stopped"


@pytest.mark.parametrize(
    "signals,interrupted,ends,code",
    [([], False, ["ended"], 0), ([], False, ["failed", "ended"], 0), ([], False, ["failed", "failed"], 1),
     ([signal.SIGTERM], True, ["stopped"], 143), ([signal.SIGINT], True, ["stopped"], 130),
     ([signal.SIGTERM, signal.SIGTERM], True, ["aborted"], 143), ([], True, ["stopped"], 130)],
)  # fmt: skip
def test_exit_status(signals, interrupted, ends, code, capsys):
    from types import SimpleNamespace

    report = [{"source": f"s{i}", "end": end, "error": "gave up" if end == "failed" else None}
              for i, end in enumerate(ends)]  # fmt: skip
    fake = SimpleNamespace(interrupted=interrupted, events_out=3, report=lambda: report)
    assert run_cli.exit_status(fake, signals) == code
    err = capsys.readouterr().err.strip().splitlines()
    if code == 1:
        assert err == ["stp-run: error: every source failed: s0: gave up; s1: gave up"]
    elif code:
        assert len(err) == 1 and err[0].startswith("stp-run: interrupted") and "3 events" in err[0]
    else:
        assert err == []


def test_lookahead_auto_is_exact_for_files_and_short_for_live_sources(video, engine):
    from types import SimpleNamespace

    from stprompt.runtime.backends import open_backend
    from stprompt.runtime.pipeline import LIVE_LOOKAHEAD, build_pipeline, lookaheads
    from stprompt.runtime.sources import LiveSource

    file, cam = SimpleNamespace(id="f", live=False), SimpleNamespace(id="c", live=True)
    assert lookaheads("auto", [file, cam]) == (None, {"c": LIVE_LOOKAHEAD})
    assert lookaheads("exact", [file, cam]) == (None, {}) and lookaheads(3, [file, cam]) == (3, {})
    assert run_cli.build_parser().parse_args(["v.mp4", "--engine", "m.onnx"]).lookahead == "auto"

    backend, manifest = open_backend(engine)
    exact = manifest.head_settings.exact_lookahead
    assert exact > LIVE_LOOKAHEAD
    cam = LiveSource("rtsp://cam/3", lambda: FileCamera(video, 10_000, period=0.005), source_id="cam3",
                     open_error="off", backoff=[0.01], jitter=0.0)  # fmt: skip
    pipeline = build_pipeline(backend, manifest, [str(video), cam], lookahead="auto")
    detector = pipeline.detector
    assert detector.lookahead_for("cam3") == LIVE_LOOKAHEAD and detector.lookahead_for(pipeline.sources[0].id) == exact
    first_live = None
    with pipeline:
        for event in pipeline:
            if event["type"] == "frame" and event["source"] == "cam3":
                first_live = detector.streams["cam3"].head.received  # snippets read when its first score came
                break
    assert first_live == LIVE_LOOKAHEAD + 1  # scored as soon as LIVE_LOOKAHEAD successors exist, not 41
