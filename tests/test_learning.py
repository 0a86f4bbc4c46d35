"""The learning machinery on controlled features, where the truth is known (data/feature_synth.py).

x_clip is dominated by scene noise; a planted anomaly lives in a few moving windows of x_patch. The full
model must find it from video-level labels only, and SA2 must be what lifts it out of the background.
Measured (seeds 0 and 1, these settings): SA2 on A-branch AUC 0.965 / 0.988, C-branch 0.972 / 0.987;
SA2 off 0.498 / 0.481 (chance).

The hard preset (every video also carries erratic normal objects that SA2 picks as readily as the anomaly, and
the frame embedding drifts per video) is where the head can memorise its training videos: with the paper's
recipe (250 steps at batch 64, lr 1e-4, weight decay 0.01, no clip dropout) SA2 on scores 0.671 +- 0.018 over
seeds 0-2, and no other flag measured lifts it past ~0.69. stp-train's small-set recipe (below 200 training
videos: --clip-dropout 0.5, at least 500 steps) is the default here; its measured AUC over seeds is in
benchmarks/results/generalisation-hard.json (benchmarks/measure_generalisation.py --configs default).
"""

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from stprompt import evaluate, train
from stprompt.data.feature_synth import HARD, make_feature_dataset
from stprompt.errors import UserError
from stprompt.model.sa2 import motion_magnitude

TRAIN_ARGS = ["--epochs", "20", "--batch", "16", "--lr", "1e-3", "--quiet"]
# stp-train's defaults (on this 64-video store: the small-set recipe); one thread: much faster on a shared 2-core box
HARD_ARGS = ["--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def controlled(tmp_path_factory, tiny_clip):
    root = tmp_path_factory.mktemp("controlled")
    make_feature_dataset(root, dim=tiny_clip.dim, clip="stp-tiny", clip_sha256=tiny_clip.sha256, seed=0)
    return root


@pytest.fixture(scope="module")
def hard(tmp_path_factory, tiny_clip):
    root = tmp_path_factory.mktemp("hard")
    make_feature_dataset(root, preset="hard", dim=tiny_clip.dim, clip="stp-tiny", clip_sha256=tiny_clip.sha256, seed=0)
    return root


def train_and_eval(root, out, extra, base=TRAIN_ARGS):
    assert train.main([str(root), "--out", str(out)] + base + extra) == 0
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert evaluate.main([str(root), "--ckpt", str(out)]) == 0
    return json.loads(buf.getvalue())


def test_full_model_finds_planted_anomalies_and_sa2_is_why(controlled, tmp_path):
    with_sa2 = train_and_eval(controlled, tmp_path / "sa2.pt", [])
    without = train_and_eval(controlled, tmp_path / "nosa2.pt", ["--no-sa2"])
    assert with_sa2["auc"] >= 0.9 and with_sa2["auc_c"] >= 0.9
    assert with_sa2["auc"] - without["auc"] >= 0.3
    assert all(v >= 0.8 for v in with_sa2["per_class_auc"].values()), with_sa2["per_class_auc"]


def test_hard_variant_generalises_with_the_default_small_set_recipe(hard, tmp_path):
    with_sa2 = train_and_eval(hard, tmp_path / "sa2.pt", [], HARD_ARGS)
    without = train_and_eval(hard, tmp_path / "nosa2.pt", ["--no-sa2"], HARD_ARGS)
    # measured over seeds 0-4 (generalisation-hard.json, "default", 500 steps): SA2 on 0.761 +- 0.019, min 0.739
    # (seed 0: 0.775), gap to SA2 off 0.252, min 0.153. The paper's recipe reaches at most 0.69 on any seed, so
    # this fails if the small-set recipe stops working.
    assert with_sa2["auc"] >= 0.72, with_sa2
    assert with_sa2["auc"] - without["auc"] >= 0.15, (with_sa2["auc"], without["auc"])


def test_hard_preset_is_the_default_store_plus_erratic_normal_objects_and_drift(tmp_path):
    kw = dict(n_train=6, n_test=4, length=(16, 24), dim=16, n_classes=3, seed=1)
    plain = make_feature_dataset(tmp_path / "plain", **kw)
    hard = make_feature_dataset(tmp_path / "hard", preset="hard", **kw)
    assert hard.annotations().to_json() == plain.annotations().to_json()  # same videos, same anomalies
    increments = []
    for v in hard.videos():
        a, b = hard.load(v.id), plain.load(v.id)
        np.testing.assert_array_equal(a["planted"] == 2, b["planted"] == 2)
        added = (a["planted"] == 1) & (b["planted"] == 0)  # windows only the hard preset's objects occupy
        assert added.any(), f"{v.id}: every video, normal or not, has erratic normal objects"
        # ... which move like the anomaly: SA2's most-moving window is one of them in some snippets
        mo = motion_magnitude(torch.from_numpy(a["x_patch"]).flatten(1, 2)[None])[0].numpy()
        top = mo.argmax(axis=1)
        assert added.reshape(len(top), -1)[np.arange(len(top)), top].any(), v.id
        # x_clip = the default's + a per-video random walk (+ the objects' faint trace, absent from clean snippets)
        clean = ~added.any(axis=(1, 2))
        step = np.diff(a["x_clip"].astype(np.float64) - b["x_clip"], axis=0)
        increments.append(step[clean[1:] & clean[:-1]])
    std = np.concatenate(increments).std()
    assert abs(std - HARD["clip_drift"]) < 0.1 * HARD["clip_drift"], std


def test_hard_preset_refuses_contradicting_arguments(tmp_path):
    with pytest.raises(UserError, match="preset 'hard' sets clip_drift"):
        make_feature_dataset(tmp_path / "a", preset="hard", clip_drift=0.5, n_train=2, n_test=2, dim=16)
    with pytest.raises(UserError, match="preset must be one of"):
        make_feature_dataset(tmp_path / "b", preset="harder", n_train=2, n_test=2, dim=16)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
