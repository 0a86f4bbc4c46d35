"""Evaluation on hand-computed cases (issue 15, item 5): the micro frame AUC assembled from snippet scores
(`snippet_to_frames`, `summarize`), heat map -> box on frames that are not 224x224, and `stp-eval --localize`
end to end on a hand-built feature folder whose TIoU is worked out below.

Heat geometry used throughout (SPEC.md, localization): with the query embeddings [1, 0] (normal) and [0, 1]
(abnormal) and tau_loc = 0.01, a window feature [0, 1] has heat 1 and [1, 0] heat exp(-100) ~ 0. Scale-A window
(row r, col c) covers [32c, 32c + 32) x [32r, 32r + 32) on the 224 grid. Every scale-B window is abnormal, so the
fused map is 0.5 * A + 0.5 * 1 and the threshold 0.75 on it is the threshold 0.5 on the scale-A map. Resizing the
224 map to W x H is bilinear (source x = (x' + 0.5) * 224 / W - 0.5), so a frame pixel x' is inside the box iff the
step edge's interpolated value is >= 0.5, i.e. iff its centre x' + 0.5 lies in the window's extent scaled by W / 224
(likewise for y with H / 224).
"""

import json
import math

import numpy as np
import pytest
import torch

from stprompt import evaluate
from stprompt.checkpoint import Checkpoint
from stprompt.data.annotations import Video, from_json
from stprompt.data.features import FeatureStore
from stprompt.evaluate import VideoPrediction, summarize
from stprompt.localize.heat import LocalizeSettings
from stprompt.localize.predict import localize_snippets
from stprompt.localize.queries import EncodedQueries
from stprompt.metrics import snippet_to_frames
from stprompt.model.config import HeadConfig
from stprompt.model.head import STPromptHead

NORMAL_F, ABNORMAL_F = [1.0, 0.0], [0.0, 1.0]


# --- frame AUC from snippet scores -----------------------------------------------------------------------------------


def prediction(path, labels, anomalies, scores):
    scores = np.array(scores)
    video = Video(path=path, split="test", labels=labels, anomalies=anomalies)
    return VideoPrediction(
        video=video,
        frames=np.arange(len(scores)) * 4 + 2,
        scores=scores,
        scores_c=1.0 - scores,  # reversed ranking: auc_c must come out as 1 - auc
        probs=np.stack([1.0 - scores, scores], axis=1),
    )


def test_snippet_to_frames_repeats_each_score_stride_times():
    assert snippet_to_frames([0.2, 0.9], 3).tolist() == [0.2, 0.2, 0.2, 0.9, 0.9, 0.9]


def test_summarize_is_one_micro_auc_over_all_frames_with_truncated_ground_truth():
    """stride 4. Frame scores and labels (1 = anomalous):

    A normal,   snippets [0.1, 0.3]       -> frames 0.1 x4, 0.3 x4                       all 0
    B Fighting, snippets [0.2, 0.9, 0.4], anomalies [4, 10) and [11, 14), scored frames 0..11:
                frames 0-3 at 0.2 (0), 4-7 at 0.9 (1), 8-9 at 0.4 (1), 10 at 0.4 (0), 11 at 0.4 (1);
                frames 12, 13 of the second interval lie past T * stride and are dropped
    C Arson,    snippets [0.05], anomaly [0, 4) -> frames 0.05 x4                      all 1

    Positives 11, negatives 13 (8 from A, 5 from B). AUC = (pairs pos > neg + 0.5 ties) / (11 * 13):
      4 positives at 0.9 beat all 13 negatives:                                  52
      3 positives at 0.4 beat 0.1 x4, 0.3 x4, 0.2 x4 and tie the negative 0.4:   3 * 12.5 = 37.5
      4 positives at 0.05 beat none:                                             0
    auc = 89.5 / 143. Per class (normal videos + that class): Fighting = A + B = 89.5 / (7 * 13);
    Arson = A + C: its 4 positives at 0.05 are below all 8 negatives -> 0.
    """
    preds = [
        prediction("a.mp4", ["normal"], [], [0.1, 0.3]),
        prediction("b.mp4", ["Fighting"], [(4, 10), (11, 14)], [0.2, 0.9, 0.4]),
        prediction("c.mp4", ["Arson"], [(0, 4)], [0.05]),
    ]
    m = summarize(preds, ["normal", "Fighting", "Arson"], stride=4)
    assert m["auc"] == pytest.approx(89.5 / 143)
    assert m["auc_c"] == pytest.approx(1 - 89.5 / 143)  # scores_c = 1 - scores: ties count half both ways
    assert m["per_class_auc"] == pytest.approx({"Fighting": 89.5 / 91, "Arson": 0.0})
    assert (m["n_videos"], m["n_anomalous_videos"], m["n_frames"], m["n_anomalous_frames"]) == (3, 2, 24, 11)


# --- heat map -> boxes on frames that are not 224x224 ---------------------------------------------------------------


def queries() -> EncodedQueries:
    return EncodedQueries(
        texts=["normal", "abnormal"],
        embeddings=np.array([NORMAL_F, ABNORMAL_F], np.float32),
        abnormal=np.array([0, 1], bool),
    )


def patches(n_snippets: int, abnormal: dict[int, tuple[int, int]]) -> dict[str, np.ndarray]:
    """x_patch: every window normal except window (row, col) = abnormal[k] at snippet k; x_patch_b all abnormal."""
    x_patch = np.tile(np.float32(NORMAL_F), (n_snippets, 7, 7, 1))
    for k, (r, c) in abnormal.items():
        x_patch[k, r, c] = ABNORMAL_F
    return {"x_patch": x_patch, "x_patch_b": np.tile(np.float32(ABNORMAL_F), (n_snippets, 4, 4, 1))}


@pytest.mark.parametrize(
    "size,box",
    [
        # window (3, 2) = x [64, 96), y [96, 128) on the 224 grid.
        # 320x240: x [64, 96) * 320/224 = [91.43, 137.14] -> centres 91.5 .. 136.5 -> x 91..136 -> [91, 137);
        #          y [96, 128) * 240/224 = [102.86, 137.14] -> y 103..136 -> [103, 137)
        ((320, 240), [91, 103, 137, 137]),
        # 160x120: x * 160/224 = [45.71, 68.57] -> x 46..68; y * 120/224 = [51.43, 68.57] -> y 51..68
        ((160, 120), [46, 51, 69, 69]),
    ],
)
def test_alarmed_snippet_heat_map_gives_the_window_box_in_frame_pixels(size, box):
    # snippet 0 also has an abnormal window but scores below the alarm threshold: no boxes for it
    arrays = patches(2, {0: (0, 0), 1: (3, 2)})
    settings = LocalizeSettings(heat_threshold=0.75)  # default lambda 0.5, tau_loc 0.01, min area 0.1 %
    vb = localize_snippets(arrays, np.array([0.2, 0.7]), size, queries(), settings, alarm_threshold=0.5)
    assert vb.size == size and sorted(vb.boxes) == [1]
    got = vb.boxes[1]
    assert got.shape == (1, 5)
    assert got[0, :4].tolist() == box
    assert got[0, 4] == pytest.approx(1.0)  # max fused heat: 0.5 * 1 + 0.5 * 1


# --- stp-eval --localize end to end ------------------------------------------------------------------------------


SHA = "0" * 64


def write_features(root):
    """A feature folder (stride 4, D = 2, scale B) whose annotations.json carries ground-truth boxes.

    a.mp4 Fighting 320x240, 14 frames -> 3 snippets (frames 12, 13 are the dropped tail):
        x_CLIP normal, abnormal, abnormal; abnormal window (3, 2) at snippet 1, (0, 0) at snippet 2.
    b.mp4 normal 320x240, 8 frames -> 2 normal snippets, no window abnormal.
    c.mp4 Fighting 160x120, 8 frames -> 2 snippets, x_CLIP normal, abnormal; abnormal window (3, 2) at snippet 1.
    """
    doc = {
        "format": "stprompt-annotations/1",
        "classes": ["normal", "Fighting"],
        "fps": 25.0,
        "videos": [
            {
                "path": "a.mp4",
                "split": "test",
                "label": "Fighting",
                "anomalies": [{"start": 4, "end": 12}],
                "boxes": {
                    "1": [[91, 103, 137, 137]],
                    "5": [[91, 103, 137, 137]],
                    "6": [[91, 103, 183, 137]],
                    "9": [[0, 0, 23, 34]],
                    "13": [[0, 0, 10, 10]],
                },
            },
            {"path": "b.mp4", "split": "test", "label": "normal"},
            {
                "path": "c.mp4",
                "split": "test",
                "label": "Fighting",
                "anomalies": [{"start": 4, "end": 8}],
                "boxes": {"6": [[50, 51, 69, 69]]},
            },
        ],
    }
    videos = {v.path: v for v in from_json(doc).videos}
    store = FeatureStore.create(
        root, clip="stp-tiny", clip_sha256=SHA, dim=2, stride=4, scale_b=True, classes=doc["classes"], fps=25.0
    )
    layout = {  # path: (x_CLIP per snippet, abnormal windows, frames decoded, size)
        "a.mp4": ([NORMAL_F, ABNORMAL_F, ABNORMAL_F], {1: (3, 2), 2: (0, 0)}, 14, (320, 240)),
        "b.mp4": ([NORMAL_F, NORMAL_F], {}, 8, (320, 240)),
        "c.mp4": ([NORMAL_F, ABNORMAL_F], {1: (3, 2)}, 8, (160, 120)),
    }
    for path, (x_clip, abnormal, n_frames, size) in layout.items():
        t = len(x_clip)
        arrays = {"x_clip": np.array(x_clip, np.float32), "frames": np.arange(t) * 4 + 2, **patches(t, abnormal)}
        store.write(videos[path], arrays, n_frames, size)


def write_checkpoint(path):
    """SA2 and adapter off: x_TA = x_CLIP, so the A-branch sees x_CLIP + x_TA = 2 x_CLIP. Prompts normal [1, 0],
    Fighting [0, 1]: x_CLIP = [0, 1] gives logits [0, 1/0.07] and score 1 / (1 + e^-14.3) ~ 1 - 6e-7 (alarm);
    x_CLIP = [1, 0] gives score ~ 6e-7."""
    cfg = HeadConfig(dim=2, n_classes=2, use_sa2=False, use_adapter=False)
    head = STPromptHead(cfg)
    with torch.no_grad():
        head.c_branch.weight.zero_()
        head.c_branch.bias.zero_()
    Checkpoint(
        config=cfg,
        classes=["normal", "Fighting"],
        class_phrases=["normal", "fighting"],
        clip="stp-tiny",
        clip_sha256=SHA,
        stride=4,
        head_state=head.state_dict(),
        prompt_ctx=torch.zeros(8, 2),
        prompt_features=torch.tensor([NORMAL_F, ABNORMAL_F]),
    ).save(path)


def test_stp_eval_localize_tiou_matches_a_hand_calculation(tmp_path, capsys):
    """Boxes (320x240 and 160x120, see the heat test): a snippet 1 -> [91, 103, 137, 137], a snippet 2 (window
    (0, 0): x [0, 45.71] -> 0..45, y [0, 34.29] -> 0..33) -> [0, 0, 46, 34], c snippet 1 -> [46, 51, 69, 69].

    TIoU terms, one per ground-truth box on a scored frame (frame f takes snippet f // 4's boxes and score):
      a frame 1  (snippet 0, score ~0 < theta 0.5)                                        0
      a frame 5  (snippet 1) GT = the predicted box                                       1
      a frame 6  (snippet 1) GT [91, 103, 183, 137]: 46*34 / (92*34)                      1/2
      a frame 9  (snippet 2) GT [0, 0, 23, 34] vs [0, 0, 46, 34]: 23*34 / (46*34)         1/2
      a frame 13 is past the 3 * 4 scored frames: not counted
      c frame 6  (snippet 1) GT [50, 51, 69, 69] vs [46, 51, 69, 69]: 19*18 / (23*18)     19/23
    TIoU = (0 + 1 + 1/2 + 1/2 + 19/23) / 5 = 13/23.
    """
    features, ckpt, pred_path = tmp_path / "features", tmp_path / "model.pt", tmp_path / "predictions.json"
    write_features(features)
    write_checkpoint(ckpt)
    argv = [str(features), "--ckpt", str(ckpt), "--localize", "--heat-source", "prompts", "--heat-threshold", "0.75"]
    assert evaluate.main([*argv, "--predictions", str(pred_path)]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["tiou"] == pytest.approx(13 / 23)
    assert m["tiou_gt_boxes"] == 5
    assert m["alarm_snippets"] == 3 and m["boxes_per_alarm_frame"] == 1.0
    assert m["auc"] == 1.0  # every anomalous frame scores ~1, every normal one ~0
    preds = json.loads(pred_path.read_text())
    # boxes are keyed by the snippet's native frame (k * 4 + 2)
    assert preds["a.mp4"]["boxes"] == {"6": [[91, 103, 137, 137, 1.0]], "10": [[0, 0, 46, 34, 1.0]]}
    assert preds["b.mp4"]["boxes"] == {}
    assert preds["c.mp4"]["boxes"] == {"6": [[46, 51, 69, 69, 1.0]]}
    assert math.isclose(preds["a.mp4"]["scores"][1], 1.0, abs_tol=1e-5)
    # the same run judged against theta above every score counts no frame
    assert evaluate.main([*argv, "--tiou-theta", "1.01"]) == 0
    assert json.loads(capsys.readouterr().out)["tiou"] == 0.0
