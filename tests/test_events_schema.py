"""The shipped events schema (schemas/events-1.json) is the contract of every sink: each event a real stp-run writes
validates, an alarm's lifecycle is consistent (one id, its peak, its duration), and a wrong event fails."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import CLASSES, write_video
from jsonschema import Draft202012Validator

from stprompt.bundle.manifest import load_manifest
from stprompt.runtime import cli as run_cli
from stprompt.runtime import events as ev
from stprompt.runtime.detector import AlarmSettings, Detector, Sampled, StreamState
from stprompt.runtime.sinks import JsonLinesSink
from stprompt.runtime.stream import SnippetResult

STRIDE = 16  # the tiny bundle's (conftest.make_checkpoint)
N_FRAMES = 160  # 10 snippets


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = ev.load_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def errors(validator: Draft202012Validator, event: dict) -> list[str]:
    return [e.message for e in validator.iter_errors(event)]


def assert_valid(validator: Draft202012Validator, events: list[dict]) -> None:
    for event in events:
        assert not errors(validator, event), (event, errors(validator, event))


def stp_run(video: Path, engine: str, out: Path, *flags: str) -> list[dict]:
    assert run_cli.main([str(video), "--engine", engine, "--events", str(out), "--quiet", *flags]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tiny_bundle, tmp_path_factory) -> dict[str, list[dict]]:
    """stp-run's JSON Lines on one synthetic video: every snippet alarming (the alarm ends with the stream), and
    alarm-on = alarm-off halfway down the largest score drop (an alarm that a low score ends)."""
    root = tmp_path_factory.mktemp("events_schema")
    video = root / "clip.mp4"
    write_video(video, N_FRAMES, seed=3, blob=(48, 112))
    engine = str(tiny_bundle.with_suffix(".onnx"))
    always = stp_run(video, engine, root / "always.jsonl", "--alarm-on", "0", "--alarm-off", "0")
    scores = [e["score"] for e in always if e["type"] == "frame"]
    drop = max(range(len(scores) - 1), key=lambda i: scores[i] - scores[i + 1])
    assert scores[drop] - scores[drop + 1] > 1e-3, scores
    t = repr((scores[drop] + scores[drop + 1]) / 2)
    dropped = stp_run(video, engine, root / "drop.jsonl", "--alarm-on", t, "--alarm-off", t)
    return {"always": always, "drop": dropped}


def lifecycles(events: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in events:
        if e["type"] == "alarm":
            out.setdefault(e["id"], []).append(e)
    return out


def check_lifecycle(alarm: list[dict], frames: list[dict]) -> None:
    """new -> update... -> end under one id; start, peak and duration as the schema's descriptions say."""
    states = [e["state"] for e in alarm]
    assert states[0] == "new" and states[-1] == "end" and set(states[1:-1]) <= {"update"}, states
    new, end, snippets = alarm[0], alarm[-1], alarm[:-1]
    assert len({e["id"] for e in alarm}) == 1 and new["id"].endswith(f":{new['source']}:{new['frame']}")
    assert all((e["start_frame"], e["start_time"]) == (new["frame"], new["time"]) for e in alarm)
    by_frame = {f["frame"]: f for f in frames}
    assert all(e["score"] == by_frame[e["frame"]]["score"] for e in alarm)  # the frame events' scores
    peak = max(snippets, key=lambda e: e["score"])  # the first on a tie, as the schema says
    assert end["peak_score"] == max(e["score"] for e in snippets) == peak["score"]
    assert (end["peak_frame"], end["peak_time"]) == (peak["frame"], peak["time"])
    assert end["best_boxes"] == peak["boxes"] and end["class"] == alarm[-2]["class"]
    assert end["class"] == max(list(by_frame[peak["frame"]]["probs"].items())[1:], key=lambda kv: kv[1])[0]
    assert (end["end_frame"], end["end_time"]) == (end["frame"], end["time"])
    assert end["duration"] == pytest.approx(end["end_time"] - end["start_time"], abs=1e-9)


def test_every_event_of_a_real_run_validates_and_alarms_have_a_lifecycle(runs, validator):
    for name, events in runs.items():
        assert_valid(validator, events)
        frames = [e for e in events if e["type"] == "frame"]
        assert len(frames) == N_FRAMES // STRIDE and all(list(f["probs"]) == CLASSES for f in frames)
        alarms = lifecycles(events)
        assert alarms, name
        for alarm in alarms.values():
            check_lifecycle(alarm, frames)
    (always,) = lifecycles(runs["always"]).values()  # on from the first snippet to the stream's end
    assert [e["state"] for e in always] == ["new"] + ["update"] * (N_FRAMES // STRIDE - 1) + ["end"]
    assert always[-1]["reason"] == "stream" and always[-1]["frame"] == always[-2]["frame"]
    ended = [a[-1] for a in lifecycles(runs["drop"]).values()]
    assert any(e["reason"] == "score" and e["score"] < e["peak_score"] for e in ended)  # a low score ended one


class NoEncoder:
    """A backend that must not encode: the tests below replace `_locate`."""

    dim, gpu_preprocessing, max_batch = 8, False, None


def feed(detector: Detector, state: StreamState, scores: list[float], start: int = 0) -> list[dict]:
    """The events of snippets scoring `scores` (the head's results fed to `_emit`), class 1 above class 2."""
    image = np.zeros((4, 4, 3), np.uint8)
    out = []
    for i, score in enumerate(scores, start):
        state.snippets[i] = Sampled(i * STRIDE + 8, i * 0.64, image, image, np.zeros(8), np.zeros((49, 8)))
        probs = np.array([1 - score, score * 0.6, score * 0.4]) if i % 2 else np.array([1 - score, 0.0, score])
        out += detector._emit("cam", state, [SnippetResult(index=i, score=float(score), score_c=0.5, probs=probs)])
    return out


def test_peak_best_boxes_class_and_both_ends(tiny_bundle, monkeypatch, validator):
    detector = Detector(NoEncoder(), load_manifest(tiny_bundle), alarm=AlarmSettings(on=0.5, off=0.3))
    monkeypatch.setattr(detector, "_locate", lambda s: (np.zeros((4, 4)), np.array([[s.frame_index, 1, 9, 9, 0.9]])))
    state = detector.streams["cam"] = StreamState(head=SimpleNamespace(flush=lambda: []))
    events = feed(detector, state, [0.6, 0.9, 0.4, 0.9, 0.1, 0.7, 0.8])  # the peak at snippet 1 (tie: the first)
    events += detector.finish("cam")  # the second alarm is still on: the stream's end closes it
    assert_valid(validator, events)
    first, second = lifecycles(events).values()
    assert [e["state"] for e in first] == ["new", "update", "update", "update", "end"]
    assert [e["state"] for e in second] == ["new", "update", "end"] and first[0]["id"] != second[0]["id"]
    assert [e["class"] for e in first] == ["RoadAccidents", "Fighting", "Fighting", "Fighting", "Fighting"]
    assert [e["best_boxes"] for e in first[1:]] == [[[24.0, 1.0, 9.0, 9.0, 0.9]]] * 4  # snippet 1's (frame 24)
    assert first[2]["boxes"] == [] and first[2]["localization"].startswith("skipped")  # the tail: no boxes
    end = first[-1]
    assert (end["frame"], end["score"], end["reason"], end["peak_frame"], end["peak_score"]) == (72, 0.1, "score", 24,
                                                                                                   0.9)  # fmt: skip
    assert end["duration"] == pytest.approx(4 * 0.64) and second[-1]["reason"] == "stream"
    assert (second[-1]["frame"], second[-1]["duration"]) == (6 * STRIDE + 8, pytest.approx(0.64))


def test_source_and_engine_events_validate(tiny_bundle, tmp_path, validator):
    """A live source going down and up, written by the JSON Lines sink with the alarm its outage closed, and the
    Triton backend's engine events as its own `_event` makes them."""
    from test_runtime_pipeline import flaky_camera, pipeline_over

    from stprompt.runtime.backends.triton import TritonBackend

    video = tmp_path / "clip.mp4"
    write_video(video, 64, seed=7, blob=(16, 48))
    out = tmp_path / "events.jsonl"
    pipeline_over(str(tiny_bundle.with_suffix(".onnx")), [flaky_camera(video)], [JsonLinesSink(str(out))]).run()
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert_valid(validator, events)
    assert [e["state"] for e in events if e["type"] == "source"] == ["up", "down", "up", "down", "down"]
    assert any(e["type"] == "alarm" and e["state"] == "end" and e["reason"] == "stream" for e in events)

    engine: list[dict] = []
    fake = SimpleNamespace(url="grpc://gpu:8001", _clock=lambda: 12.34567, _t0=2.0, _emit=engine.append)
    TritonBackend._event(fake, "down", "unreachable")
    TritonBackend._event(fake, "up", "reconnected")
    assert engine[0] == {"v": 1, "type": "engine", "engine": "grpc://gpu:8001", "state": "down",
                         "reason": "unreachable", "time": 10.346}  # fmt: skip
    assert_valid(validator, engine)


def good_events() -> dict[str, dict]:
    alarm = ev.Alarm.start("0123456789ab", "cam", 24, 0.96, 0.8123456, "Fighting")
    frame = ev.frame_event("cam", 24, 0.96, 0.8123456, 0.7, CLASSES, [0.1876544, 0.8, 0.0123456])
    return {
        "frame": frame,
        "new": alarm.event("new", ev.boxes([[1, 2, 30, 40, 0.97]])),
        "update": alarm.event("update", [], "skipped: score below alarm-on (0.5)"),
        "end": alarm.end("score", 40, 1.6, 0.2),
        "source": ev.source_event("cam", "down", "no frame", 3.21),
        "engine": ev.engine_event("grpc://gpu:8001", "up", "reconnected", 1.0),
    }


def test_the_builders_make_valid_events_rounded_as_the_schema_says(validator):
    events = good_events()
    assert_valid(validator, list(events.values()))
    frame, end = events["frame"], events["end"]
    assert frame["probs"] == {"normal": 0.1877, "Fighting": 0.8, "RoadAccidents": 0.0123} and frame["score"] == 0.8123
    assert frame["class"] == "Fighting" and end["duration"] == 0.64 and end["id"] == "0123456789ab:cam:24"
    assert events["new"]["boxes"] == [[1.0, 2.0, 30.0, 40.0, 0.97]]


def _drop(key: str):
    return lambda e: e.pop(key)


def _set(key: str, value):
    return lambda e: e.__setitem__(key, value)


MALFORMED = {
    "probs as a list": ("frame", _set("probs", [0.1877, 0.8, 0.0123])),
    "unknown alarm state": ("new", _set("state", "start")),
    "old ongoing state": ("update", _set("state", "ongoing")),
    "missing id": ("update", _drop("id")),
    "id without its token": ("new", _set("id", "cam:24")),
    "missing version": ("frame", _drop("v")),
    "another version": ("source", _set("v", 2)),
    "unknown type": ("frame", _set("type", "snippet")),
    "extra field": ("frame", _set("extra", 1)),
    "score above 1": ("frame", _set("score", 1.5)),
    "end without duration": ("end", _drop("duration")),
    "end with boxes": ("end", _set("boxes", [])),
    "new with best_boxes": ("new", _set("best_boxes", [])),
    "update without best_boxes": ("update", _drop("best_boxes")),
    "a note beside boxes": ("new", _set("localization", "skipped: why")),
    "a box of four numbers": ("new", _set("boxes", [[1.0, 2.0, 30.0, 40.0]])),
    "unknown source state": ("source", _set("state", "flapping")),
    "engine without its url": ("engine", _drop("engine")),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_event_fails(case, validator):
    kind, spoil = MALFORMED[case]
    event = copy.deepcopy(good_events()[kind])
    assert not errors(validator, event)
    spoil(event)
    assert errors(validator, event), case


def test_the_schema_ships_in_the_package_and_the_module_needs_neither_torch_nor_jsonschema():
    assert ev.schema_path().name == "events-1.json" and ev.load_schema()["$defs"]["v"]["const"] == ev.SCHEMA_VERSION
    code = ("import sys, stprompt.runtime.events as ev; ev.load_schema(); "
            "print(sorted(m for m in ('torch', 'jsonschema') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
