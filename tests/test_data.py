import copy
import json

import numpy as np
import pytest

from stprompt.data import annotations as ann
from stprompt.data.features import FeatureStore
from stprompt.errors import UserError

GOOD = {
    "format": "stprompt-annotations/1",
    "classes": ["normal", "RoadAccidents"],
    "fps": 30,
    "videos": [
        {"path": "a/n1.mp4", "split": "train", "label": "normal"},
        {
            "path": "a/r1.mp4",
            "split": "test",
            "label": "RoadAccidents",
            "anomalies": [{"start": 10, "end": 20}],
            "boxes": {"12": [[1, 2, 30, 40]]},
        },
    ],
}


def test_round_trip_and_frame_labels(tmp_path):
    a = ann.from_json(copy.deepcopy(GOOD))
    a.save(tmp_path / "annotations.json")
    b = ann.load(tmp_path)
    assert b.to_json() == a.to_json()
    video = b.split("test")[0]
    assert video.is_anomalous and video.boxes == {12: [[1.0, 2.0, 30.0, 40.0]]}
    gt = video.frame_labels(25)
    assert gt[:10].sum() == 0 and gt[10:20].all() and gt[20:].sum() == 0
    assert b.video_path(video) == tmp_path / "a/r1.mp4"


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda d: d.update(format="x"), "format"),
        (lambda d: d.update(classes=["Fighting", "normal"]), "classes[0]"),
        (lambda d: d.update(fps=0), "fps"),
        (lambda d: d["videos"][1].update(split="val"), "videos[1].split"),
        (lambda d: d["videos"][1].update(label="Arson"), "videos[1].label"),
        (lambda d: d["videos"][1]["anomalies"].append({"start": 5, "end": 5}), "videos[1].anomalies[1]"),
        (lambda d: d["videos"][0].update(anomalies=[{"start": 0, "end": 3}]), "videos[0].anomalies"),
        (lambda d: d["videos"][1]["boxes"].update({"13": [[5, 5, 1, 9]]}), "videos[1].boxes['13']"),
        (lambda d: d["videos"][1].update(path="a/n1.mp4"), "videos[1].path"),
    ],
)
def test_validator_names_the_bad_field(mutate, field):
    doc = copy.deepcopy(GOOD)
    mutate(doc)
    with pytest.raises(UserError) as err:
        ann.validate(doc)
    assert f"annotations: {field}:" in str(err.value)


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="no annotations file"):
        ann.load(tmp_path)
    (tmp_path / "annotations.json").write_text("{oops")
    with pytest.raises(UserError, match="not valid JSON"):
        ann.load(tmp_path)


def test_class_phrases_are_natural_and_consistent():
    assert ann.class_phrase("RoadAccidents") == "road accidents"
    assert ann.class_phrase("Normal_Videos") == "normal videos"
    assert ann.class_phrase("road accident") == "road accident"
    assert ann.class_phrase("Fighting") == "fighting"
    assert ann.video_id("Abuse/Abuse001_x264.mp4") == "Abuse__Abuse001_x264"


def _store(tmp_path, **kw):
    args = dict(
        clip="stp-tiny", clip_sha256="ab" * 32, dim=4, stride=16, scale_b=False, classes=["normal", "X"], fps=25
    )
    args.update(kw)
    return FeatureStore.create(tmp_path / "f", **args)


def _arrays(t=3, d=4):
    rng = np.random.default_rng(0)
    return {
        "x_clip": rng.standard_normal((t, d)).astype(np.float32),
        "x_patch": rng.standard_normal((t, 7, 7, d)).astype(np.float32),
        "frames": np.arange(t) * 16 + 8,
    }


def test_feature_store_write_load_and_resume(tmp_path):
    store = _store(tmp_path)
    video = ann.Video(path="v/a.mp4", split="test", labels=["X"], anomalies=[(0, 16)])
    arrays = _arrays()
    store.write(video, arrays, n_frames=50)
    again = FeatureStore.open(tmp_path / "f")
    assert again.has(video.id) and again.n_snippets(video.id) == 3
    loaded = again.load(video.id)
    np.testing.assert_array_equal(loaded["x_patch"], arrays["x_patch"])
    assert again.videos("test")[0].anomalies == [(0, 16)]
    assert not list((tmp_path / "f").glob("*.tmp-*"))
    resumed = _store(tmp_path)  # same settings: resume
    assert resumed.has(video.id)
    with pytest.raises(UserError, match="stride"):
        _store(tmp_path, stride=4)
    with pytest.raises(UserError, match="clip_sha256"):
        _store(tmp_path, clip_sha256="cd" * 32)


def test_feature_store_refuses_nan_and_corrupt_files(tmp_path):
    store = _store(tmp_path)
    video = ann.Video(path="v/a.mp4", split="test", labels=["normal"])
    arrays = _arrays()
    arrays["x_clip"][1, 2] = np.nan
    store.write(video, arrays, n_frames=48)
    with pytest.raises(UserError, match="NaN"):
        store.load(video.id)
    (tmp_path / "f" / f"{video.id}.npz").write_bytes(b"garbage")
    with pytest.raises(UserError, match="unreadable"):
        store.load(video.id)
    (tmp_path / "f" / "index.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="unknown format"):
        FeatureStore.open(tmp_path / "f")
