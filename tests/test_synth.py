"""The synthetic generators: rendered videos (stp-synth) and planted feature datasets."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from stprompt.data.annotations import load, validate
from stprompt.data.feature_synth import feature_classes, make_feature_dataset
from stprompt.data.synth import CLASSES, MARKER, generate
from stprompt.data.synth_cli import main

TINY = dict(n_train=4, n_test=2, n_frames=48, width=160, height=120, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, **TINY)
    return out


def _read(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def test_videos_decode_with_the_right_size_and_length(tiny: Path) -> None:
    ann = load(tiny)
    assert ann.classes == CLASSES
    assert len(ann.split("train")) == 4 and len(ann.split("test")) == 2
    for v in ann.videos:
        assert v.path.startswith("videos/") and v.path.endswith(f"_{v.labels[0]}.mp4")
        frames = _read(ann.video_path(v))
        assert len(frames) == TINY["n_frames"]
        assert frames[0].shape == (TINY["height"], TINY["width"], 3)
    # each split holds normal and anomalous videos
    for split in ("train", "test"):
        assert {v.is_anomalous for v in ann.split(split)} == {True, False}


def test_annotations_are_valid_and_boxes_are_small_and_inside(tiny: Path) -> None:
    doc = json.loads((tiny / "annotations.json").read_text())
    validate(doc)
    ann = load(tiny)
    W, H = TINY["width"], TINY["height"]
    areas = []
    for v in ann.videos:
        if not v.is_anomalous:
            assert not v.anomalies and not v.boxes
            continue
        ((start, end),) = v.anomalies
        n = end - start
        assert 0 <= start < end <= TINY["n_frames"]
        assert 0.2 * TINY["n_frames"] <= n <= 0.65 * TINY["n_frames"]
        assert sorted(v.boxes) == list(range(start, end)), "every anomalous frame has a box, no others"
        for bs in v.boxes.values():
            assert len(bs) >= 1
            for x1, y1, x2, y2 in bs:
                assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
                areas.append((x2 - x1) * (y2 - y1) / (W * H))
    assert np.median(areas) < 0.25


def test_anomaly_is_drawn_inside_its_box(tiny: Path) -> None:
    """Fire / explosion / crash pixels appear inside the box: compare with a frame outside the interval."""
    ann = load(tiny)
    checked = 0
    for v in ann.videos:
        if not v.is_anomalous or v.labels[0] == "Fighting":  # fighters walk in: not a clean reference
            continue
        frames = _read(ann.video_path(v))
        ((start, end),) = v.anomalies
        ref = start - 1 if start > 0 else end
        t = (start + end) // 2
        x1, y1, x2, y2 = (int(c) for c in v.boxes[t][0])
        diff = np.abs(frames[t].astype(np.int16) - frames[ref].astype(np.int16)).mean(axis=2)
        assert diff[y1:y2, x1:x2].mean() > 3 * np.median(diff) + 1
        checked += 1
    assert checked >= 1


def test_same_seed_same_data_other_seed_other_data(tiny: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "a", **TINY)
    assert again.to_json() == load(tiny).to_json()
    other = generate(tmp_path / "b", **{**TINY, "seed": 4})
    assert other.to_json() != again.to_json()


def test_cli_writes_a_dataset_and_may_overwrite_its_own_output(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    args = [str(out), "--train", "2", "--test", "2", "--frames", "24", "--width", "96", "--height", "72"]
    assert main(args) == 0
    assert (out / "annotations.json").is_file() and (out / MARKER).is_file()
    assert len(load(out).videos) == 4
    assert "wrote 4 videos" in capsys.readouterr().err
    assert main([*args[:2], "1", *args[3:]]) == 0  # rerun into its own output: allowed, stale files removed
    assert len(list((out / "videos").glob("*.mp4"))) == 3


def test_cli_refuses_a_foreign_non_empty_folder(tmp_path: Path, capsys) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    assert main([str(tmp_path), "--train", "1", "--test", "1", "--frames", "16"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert not (tmp_path / "annotations.json").exists()


def test_cli_help_shows_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines by terminal width
    for default in ("192", "320", "240", "25.0", "0.5"):
        assert f"(default: {default})" in text


# --- feature-level generator ------------------------------------------------------------------------------
FEAT = dict(n_train=6, n_test=4, length=(8, 16), dim=16, n_classes=3, stride=4, seed=1)


def test_feature_dataset_shapes_and_frames(tmp_path: Path) -> None:
    store = make_feature_dataset(tmp_path / "f", **FEAT)
    assert store.classes == feature_classes(3) == ["normal", "Fighting", "Arson", "RoadAccidents"]
    assert store.dim == 16 and store.stride == 4
    videos = store.videos()
    assert len(videos) == 10 and {v.split for v in videos} == {"train", "test"}
    for v in videos:
        a = store.load(v.id)
        T = len(a["frames"])
        assert 8 <= T <= 16 and store.n_snippets(v.id) == T
        assert a["x_clip"].shape == (T, 16) and a["x_clip"].dtype == np.float32
        assert a["x_patch"].shape == (T, 7, 7, 16) and a["x_patch"].dtype == np.float32
        assert a["frames"].dtype == np.int64
        np.testing.assert_array_equal(a["frames"], np.arange(T) * 4 + 2)
        assert a["planted"].shape == (T, 7, 7)


def test_feature_anomalies_align_with_planted_snippets(tmp_path: Path) -> None:
    store = make_feature_dataset(tmp_path / "f", **FEAT)
    n_anomalous = 0
    for v in store.videos():
        a = store.load(v.id)
        T = len(a["frames"])
        planted = (a["planted"] == 2).any(axis=(1, 2))
        assert (a["planted"] == 1).any(), "every video has moving normal objects"
        if not v.is_anomalous:
            assert not planted.any() and not v.anomalies
            continue
        n_anomalous += 1
        ((start, end),) = v.anomalies
        assert start % 4 == 0 and end % 4 == 0
        k = np.flatnonzero(planted)
        assert start == k[0] * 4 and end == (k[-1] + 1) * 4 and len(k) == k[-1] - k[0] + 1
        gt = v.frame_labels(T * 4)[a["frames"]]
        np.testing.assert_array_equal(gt.astype(bool), planted)
        assert 1 <= (a["planted"][k] == 2).sum(axis=(1, 2)).max() <= 4
    assert n_anomalous >= 2


def test_feature_dataset_is_deterministic(tmp_path: Path) -> None:
    a = make_feature_dataset(tmp_path / "a", **FEAT)
    b = make_feature_dataset(tmp_path / "b", **FEAT)
    c = make_feature_dataset(tmp_path / "c", **{**FEAT, "seed": 2})
    assert a.annotations().to_json() == b.annotations().to_json()
    v = a.videos()[0]
    np.testing.assert_array_equal(a.load(v.id)["x_patch"], b.load(v.id)["x_patch"])
    assert a.annotations().to_json() != c.annotations().to_json()


def test_feature_boxes_cover_the_planted_windows(tmp_path: Path) -> None:
    store = make_feature_dataset(tmp_path / "f", **FEAT, with_boxes=True)
    v = next(v for v in store.videos() if v.is_anomalous)
    a = store.load(v.id)
    for k, frame in enumerate(a["frames"]):
        rows, cols = np.nonzero(a["planted"][k] == 2)
        if len(rows) == 0:
            assert int(frame) not in v.boxes
            continue
        x1, y1, x2, y2 = v.boxes[int(frame)][0]
        assert (x1, y1, x2, y2) == (
            cols.min() * 32,
            rows.min() * 32,
            (cols.max() + 1) * 32,
            (rows.max() + 1) * 32,
        )
