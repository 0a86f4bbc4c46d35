"""Localization: Eq. 11 heat, placement by window geometry, fusion, query bank, and TIoU on known cases."""

import json
import math

import numpy as np
import pytest

from stprompt.errors import UserError
from stprompt.localize import heat as H
from stprompt.localize.predict import VideoBoxes, video_tiou_terms
from stprompt.localize.queries import default_bank, encode_bank, load_bank
from stprompt.metrics import box_iou, tiou_terms
from stprompt.windows import SCALE_A, SCALE_B


def test_window_heat_is_softmax_mass_on_abnormal_queries():
    q = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)  # normal, abnormal, abnormal
    abnormal = np.array([False, True, True])
    x = np.array([[3.0, 0.0]])  # normalised to [1, 0]
    cos = np.array([1.0, 0.0, 0.6])
    p = np.exp(cos / 0.5) / np.exp(cos / 0.5).sum()
    assert H.window_heat(x, q, abnormal, tau=0.5)[0] == pytest.approx(p[1] + p[2], rel=1e-6)
    sharp = H.window_heat(np.array([[0.0, 1.0]]), q, abnormal, tau=0.01)  # nearest query abnormal
    assert sharp[0] == pytest.approx(1.0, abs=1e-6)


def test_scale_a_placement_is_blockwise():
    heat = np.arange(49, dtype=np.float32).reshape(7, 7)
    m = H.place_on_grid(heat, SCALE_A)
    assert m.shape == (224, 224)
    assert m[0, 0] == 0 and m[31, 31] == 0 and m[0, 32] == 1 and m[32, 0] == 7 and m[223, 223] == 48


def test_scale_b_overlaps_are_averaged():
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0], heat[0, 1] = 1.0, 0.5  # windows x in [0, 80) and [48, 128) on the first row
    m = H.place_on_grid(heat, SCALE_B)
    assert m[10, 10] == pytest.approx(1.0)  # only window (0, 0)
    assert m[10, 60] == pytest.approx(0.75)  # windows (0,0) and (0,1) overlap: mean
    assert m[10, 100] == pytest.approx(0.5 / 2)  # windows (0,1) and (0,2): 0.5 and 0
    assert m[60, 60] == pytest.approx((1.0 + 0.5 + 0 + 0) / 4)  # four windows overlap


def test_fusion_and_frame_resize():
    a, b = np.full((224, 224), 1.0, np.float32), np.zeros((224, 224), np.float32)
    assert H.fuse(a, b, 0.5)[5, 5] == pytest.approx(0.5)
    assert H.fuse(a, b, 0.8)[5, 5] == pytest.approx(0.8)
    assert H.fuse(a, None) is a
    frame = H.to_frame(H.fuse(a, b, 0.5), 640, 360)
    assert frame.shape == (360, 640) and np.allclose(frame, 0.5)


def test_fusing_then_resizing_equals_resizing_then_fusing():
    rng = np.random.default_rng(0)
    a = H.place_on_grid(rng.random((7, 7)), SCALE_A)
    b = H.place_on_grid(rng.random((4, 4)), SCALE_B)
    once = H.to_frame(H.fuse(a, b, 0.3), 333, 187)
    twice = 0.3 * H.to_frame(a, 333, 187) + 0.7 * H.to_frame(b, 333, 187)
    np.testing.assert_allclose(once, twice, atol=1e-5)


def test_query_bank_defaults_file_and_errors(tmp_path, tiny_clip):
    bank = default_bank()
    assert len(bank.normal) == 13 and bank.normal[0] == "a picture of sky"
    assert "people knockout someone" in bank.abnormal["Fighting"]
    normal, abnormal = bank.texts_for(["normal", "Fighting", "RoadAccidents"])
    assert abnormal == ["fighting", "people knockout someone", "road accidents", "people lying on the ground"]
    path = tmp_path / "q.json"
    path.write_text(
        json.dumps({"format": "stprompt-queries/1", "normal": ["a picture of sky"], "abnormal": {"X": ["a"]}})
    )
    custom = load_bank(path)
    enc = encode_bank(tiny_clip.model, custom, ["normal", "X"])
    assert enc.texts == ["a picture of sky", "x", "a"] and enc.abnormal.tolist() == [False, True, True]
    np.testing.assert_allclose(np.linalg.norm(enc.embeddings, axis=1), 1.0, rtol=1e-5)
    path.write_text(json.dumps({"format": "stprompt-queries/1", "normal": [], "abnormal": {}}))
    with pytest.raises(UserError, match="'normal'"):
        load_bank(path)
    with pytest.raises(UserError, match="not found"):
        load_bank(tmp_path / "nope.json")


def test_box_iou():
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou[0], [1.0, 50 / 150, 0.0])


GT = {3: [[0, 0, 10, 10]], 4: [[0, 0, 10, 10]]}


def test_tiou_perfect_boxes_above_theta_is_one():
    pred = {3: np.array([[0, 0, 10, 10, 0.9]]), 4: np.array([[0, 0, 10, 10, 0.8]])}
    assert np.mean(tiou_terms(GT, pred, np.full(8, 0.9), theta=0.5)) == pytest.approx(1.0)


def test_tiou_scores_below_theta_give_zero():
    pred = {3: np.array([[0, 0, 10, 10, 0.9]]), 4: np.array([[0, 0, 10, 10, 0.8]])}
    assert tiou_terms(GT, pred, np.full(8, 0.4), theta=0.5) == [0.0, 0.0]


def test_tiou_half_overlap_gives_its_iou_and_best_box_is_used():
    pred = {3: np.array([[5, 0, 15, 10, 0.9], [30, 30, 40, 40, 0.95]]), 4: np.array([[0, 0, 10, 10, 0.5]])}
    terms = tiou_terms(GT, pred, np.full(8, 0.9))
    assert terms == pytest.approx([50 / 150, 1.0])
    by_score = tiou_terms(GT, pred, np.full(8, 0.9), best="score")  # top-scoring box misses on frame 3
    assert by_score == pytest.approx([0.0, 1.0])


def test_tiou_ignores_frames_without_ground_truth_and_unscored_tail():
    pred = {3: np.array([[0, 0, 10, 10, 1.0]]), 5: np.array([[0, 0, 99, 99, 1.0]])}
    gt = {3: [[0, 0, 10, 10]], 100: [[0, 0, 5, 5]]}  # frame 100 is past the scored frames
    assert tiou_terms(gt, pred, np.full(8, 0.9)) == [1.0]
    assert tiou_terms({3: [[0, 0, 10, 10]]}, {}, np.full(8, 0.9)) == [0.0]  # no box predicted


def test_ground_truth_frames_take_the_covering_snippets_boxes():
    boxes = VideoBoxes(size=(64, 64), boxes={1: np.array([[0, 0, 10, 10, 0.9]])})
    scores = np.array([0.1, 0.9, 0.2])  # stride 4: snippet 1 covers frames 4..7
    gt = {5: [[0, 0, 10, 10]], 7: [[0, 0, 20, 10]], 9: [[0, 0, 10, 10]]}
    terms = video_tiou_terms(gt, boxes, scores, stride=4, theta=0.5)
    assert terms == pytest.approx([1.0, 0.5, 0.0])
    assert math.isclose(np.mean(terms), 0.5)
