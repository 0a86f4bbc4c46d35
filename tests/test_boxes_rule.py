"""One rule picks the snippets that get boxes (`localize.heat.flagged`): stp-run's alarm events carry exactly the
boxes stp-eval --localize --predictions writes for the same video, and an alarm's hysteresis tail carries none."""

import contextlib
import io
import json

import cv2
import numpy as np
import pytest
from conftest import CLASSES, SCORE_ROUNDING

from stprompt import evaluate, extract
from stprompt.bundle.manifest import load_manifest
from stprompt.localize.heat import flagged
from stprompt.runtime import cli as run_cli
from stprompt.runtime.backends.base import EncoderUnavailable
from stprompt.runtime.detector import AlarmSettings, Detector, Sampled, StreamState
from stprompt.runtime.stream import SnippetResult

STRIDE = 16  # the tiny bundle's (conftest.make_checkpoint)
VIDEO = "videos/clip.mp4"
# stp-tiny's random CLIP puts 0.95-0.99 of the query mass on the abnormal queries everywhere; at this heat threshold
# only the bright square (and the gradient's brightest columns) form boxes, so the boxes compared have a shape
HEAT = "0.993"


def write_gradient_video(path, n_frames: int, blob: tuple[int, int], size=(160, 120)) -> None:
    """A left-to-right grey ramp with mild noise; frames in `blob` carry a moving bright square."""
    rng = np.random.default_rng(11)
    w, h = size
    base = np.broadcast_to(np.linspace(0, 255, w)[None, :, None], (h, w, 3)).astype(np.int16)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    assert writer.isOpened()
    for f in range(n_frames):
        frame = np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
        if blob[0] <= f < blob[1]:
            x = 10 + (f * 3) % (w - 40)
            frame[40:70, x : x + 30] = (30, 220, 250)
        writer.write(frame)
    writer.release()


def eval_predictions(feats, ckpt, out, *extra: str) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        assert evaluate.main([str(feats), "--ckpt", str(ckpt), "--predictions", str(out), *extra]) == 0
    return json.loads(out.read_text())[VIDEO]


def tail_threshold(scores: np.ndarray, boxed: np.ndarray) -> float:
    """A threshold halfway between two offline scores, as far from every score as possible, that flags a snippet
    with boxes and leaves a flagged snippet followed by an unflagged one (an alarm tail with --alarm-off 0)."""
    best, gap = None, 0.0
    ordered = np.unique(scores)
    for lo, hi in zip(ordered[:-1], ordered[1:], strict=True):
        t = (lo + hi) / 2
        up = np.flatnonzero(scores >= t)
        if len(up) and (scores[up[0] :] < t).any() and boxed[up].any() and hi - lo > gap:
            best, gap = float(t), float(hi - lo)
    assert best is not None and gap > 2e-4, f"no clear tail threshold in scores {scores}"
    return best


@pytest.fixture(scope="module")
def same_video(tiny_bundle, tiny_clip, tmp_path_factory):
    """A 160-frame test video: its features (with scale B), stp-eval's predictions at a threshold with a tail."""
    root = tmp_path_factory.mktemp("boxes_rule")
    (root / "videos").mkdir()
    write_gradient_video(root / VIDEO, 160, blob=(40, 120))
    entry = {"path": VIDEO, "split": "test", "label": "Fighting", "anomalies": [{"start": 40, "end": 120}]}
    doc = {"format": "stprompt-annotations/1", "classes": CLASSES, "fps": 25.0, "videos": [entry]}
    (root / "annotations.json").write_text(json.dumps(doc))
    feats = root / "features"
    argv = [str(root), "--out", str(feats), "--stride", str(STRIDE), "--scale-b", "--clip", str(tiny_clip.spec)]
    assert extract.main([*argv, "--quiet"]) == 0
    ckpt = tiny_bundle.with_name("model.pt")
    every = eval_predictions(
        feats, ckpt, root / "all.json", "--localize", "--alarm-threshold", "0", "--heat-threshold", HEAT
    )
    boxed = np.array([bool(every["boxes"][str(f)]) for f in every["frames"]])
    threshold = tail_threshold(np.array(every["scores"]), boxed)
    loc = ["--localize", "--alarm-threshold", f"{threshold!r}", "--heat-threshold", HEAT]
    pred = eval_predictions(feats, ckpt, root / "pred.json", *loc)
    return {"root": root, "threshold": threshold, "pred": pred}


def test_stp_run_alarm_boxes_equal_stp_eval_boxes(same_video, tiny_bundle, tmp_path):
    threshold, offline = same_video["threshold"], same_video["pred"]
    events_path = tmp_path / "events.jsonl"
    argv = [str(same_video["root"] / VIDEO), "--engine", str(tiny_bundle.with_suffix(".onnx")),
            "--events", str(events_path), "--lookahead", "exact", "--gate", "0",
            "--alarm-on", f"{threshold!r}", "--alarm-off", "0", "--heat-threshold", HEAT, "--quiet"]  # fmt: skip
    assert run_cli.main(argv) == 0
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    frames = [e for e in events if e["type"] == "frame"]
    # features agree to ~1e-5; events round scores to 4 decimals (stp-eval's predictions to 6)
    np.testing.assert_allclose([e["score"] for e in frames], offline["scores"], atol=1e-5 + SCORE_ROUNDING)
    alarms = [e for e in events if e["type"] == "alarm" and e["state"] != "end"]
    localized = {str(e["frame"]): e["boxes"] for e in alarms if "localization" not in e}
    tail = [e for e in alarms if "localization" in e]

    expected = {str(f) for f, s in zip(offline["frames"], offline["scores"], strict=True) if s >= threshold}
    assert set(offline["boxes"]) == expected  # stp-eval boxes exactly the flagged snippets
    assert set(localized) == expected  # and so does stp-run: the same snippets
    boxes = np.array([row for rows in localized.values() for row in rows]).reshape(-1, 5)
    assert ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) < 160 * 120 / 4).any()  # not all full frame
    for frame, rows in offline["boxes"].items():
        got, want = np.array(localized[frame]).reshape(-1, 5), np.array(rows).reshape(-1, 5)
        assert got.shape == want.shape, frame
        # pixel edges: features agree to ~1e-5, so only a pixel whose heat is that close to the threshold may flip
        np.testing.assert_allclose(got[:, :4], want[:, :4], atol=1.0)
        np.testing.assert_allclose(got[:, 4], want[:, 4], atol=1e-3)  # the max heat inside
    assert tail and all(e["state"] == "update" and e["score"] < threshold for e in tail)
    assert all(e["boxes"] == [] and e["localization"].startswith("skipped: score below alarm-on") for e in tail)


class NoEncoder:
    """The rule test's backend: `_locate` is replaced, so nothing may be encoded."""

    dim, gpu_preprocessing, max_batch = 8, False, None


def alarm_events(detector: Detector, scores: list[float]) -> list[dict]:
    """The alarm events of one stream whose snippets score `scores` (the head's results fed to `_emit`)."""
    state = StreamState(head=None)
    image = np.zeros((4, 4, 3), np.uint8)
    events = []
    for i, score in enumerate(scores):
        state.snippets[i] = Sampled(i * STRIDE + 8, i * 0.64, image, image, np.zeros(8), np.zeros((49, 8)))
        result = SnippetResult(index=i, score=float(score), score_c=0.0, probs=np.array([1 - score, score, 0.0]))
        events += [e for e in detector._emit("cam", state, [result]) if e["type"] == "alarm"]
    return events


def test_rule_at_the_threshold_and_in_the_hysteresis_tail(tiny_bundle, monkeypatch):
    assert flagged(0.5, 0.5) and not flagged(np.nextafter(0.5, 0), 0.5)  # at or above, nothing below
    assert flagged(np.array([0.2, 0.5, 0.7]), 0.5).tolist() == [False, True, True]

    detector = Detector(NoEncoder(), load_manifest(tiny_bundle), alarm=AlarmSettings(on=0.5, off=0.3))
    located = []
    box = np.array([[1.0, 2.0, 30.0, 40.0, 0.9]])
    monkeypatch.setattr(detector, "_locate", lambda s: located.append(s.frame_index) or (np.zeros((4, 4)), box))
    # start at the threshold, tail, tail at alarm-off, flagged again, end just below alarm-off
    events = alarm_events(detector, [0.5, 0.45, 0.3, 0.7, float(np.nextafter(0.3, 0))])
    assert [e["state"] for e in events] == ["new", "update", "update", "update", "end"]
    assert [e.get("boxes") for e in events] == [box.tolist(), [], [], box.tolist(), None]
    assert ["localization" in e for e in events] == [False, True, True, False, False]
    assert events[1]["localization"] == "skipped: score below alarm-on (0.5)"
    assert located == [8, 3 * STRIDE + 8]  # the tail costs no scale-B encoding


def test_flagged_snippet_without_encoder_keeps_its_score_and_says_why(tiny_bundle, monkeypatch):
    detector = Detector(NoEncoder(), load_manifest(tiny_bundle), alarm=AlarmSettings(on=0.5, off=0.3))

    def gone(s):
        raise EncoderUnavailable("Triton grpc://gpu:8001 gave up after 1 attempts\ndetails", gave_up=True)

    monkeypatch.setattr(detector, "_locate", gone)
    (event,) = alarm_events(detector, [0.9])
    assert event["state"] == "new" and event["score"] == 0.9 and event["boxes"] == []
    assert event["localization"] == "skipped: Triton grpc://gpu:8001 gave up after 1 attempts"
