"""stp-train's length, validation split, best checkpoint, chance warning, Ctrl-C and the L_const form.

The length is counted in optimizer steps because the paper's 10 epochs at batch 64 are 260 steps on UCF-Crime but
a handful on a small set; the tests pin both ends: the paper's schedule on UCF-Crime-sized data, the minimum on a
small one. Runs use the controlled features (stprompt.data.feature_synth), small enough for seconds per run.
"""

import math
import os
import signal

import numpy as np
import pytest
import torch

from stprompt import train
from stprompt.data.feature_synth import make_feature_dataset
from stprompt.data.features import FeatureStore
from stprompt.errors import UserError
from stprompt.metrics import frame_auc
from stprompt.model import losses

FAST = ["--batch", "8", "--lr", "1e-3", "--threads", "1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_clip):
    """16 train (8 normal, 8 anomalous) + 6 test videos of 8-16 snippets."""
    root = tmp_path_factory.mktemp("sched")
    make_feature_dataset(
        root, n_train=16, n_test=6, length=(8, 16), dim=tiny_clip.dim, clip="stp-tiny", clip_sha256=tiny_clip.sha256
    )
    return root


def fake_train_set(n_normal: int, n_anomalous: int, dim: int, n_classes: int) -> train.TrainSet:
    """A training set of the given size without reading features: 2 random snippets per video."""
    rng = np.random.default_rng(0)
    n = n_normal + n_anomalous
    anomalous = np.arange(n) >= n_normal
    targets = np.zeros((n, 1 + n_classes), np.float32)
    targets[~anomalous, 0] = 1
    targets[anomalous, 1 + np.arange(n_anomalous) % n_classes] = 1
    x = [rng.normal(size=(2, dim)).astype(np.float32) for _ in range(n)]
    return train.TrainSet(x, [np.zeros_like(a) for a in x], targets, anomalous, [f"v{i}" for i in range(n)])


def run_train(store, out, *flags):
    """train.main on `store`; (exit code, checkpoint's `training` dict or None)."""
    code = train.main([str(store), "--out", str(out), "--quiet", *flags])
    ck = torch.load(out, weights_only=True) if out.exists() else None
    return code, ck


def test_paper_schedule_is_unchanged_for_ucf_crime_sized_data():
    # UCF-Crime: 1610 training videos, 800 normal + 810 anomalous -> 26 batches of 32 + 32
    anomalous = np.arange(1610) >= 800
    assert train.batches_per_epoch(anomalous, 64) == 26
    default = train.plan_schedule(26)
    assert (default.steps, default.reason) == (260, "10 epochs x 26 batches")
    assert train.DEFAULT_MIN_STEPS <= 260
    # small sets: the default is raised to the minimum; an explicit --epochs or --steps is literal
    assert train.plan_schedule(1).steps == train.DEFAULT_MIN_STEPS
    assert train.plan_schedule(1, epochs=10).steps == 10
    assert train.plan_schedule(1, epochs=10, min_steps=40).steps == 40
    assert train.plan_schedule(26, min_steps=0).steps == 260
    assert train.plan_schedule(26, steps=7).steps == 7
    # the small-set recipe raises the default minimum only: UCF-Crime is not a small set, explicit flags win
    assert train.SMALL_SET <= 238  # ShanghaiTech's 238 training videos keep the paper's recipe too
    small = train.plan_schedule(1, small=True)
    assert small.steps == train.SMALL_SET_MIN_STEPS and "small-set recipe" in small.reason
    assert train.plan_schedule(26, small=True).steps == train.SMALL_SET_MIN_STEPS
    assert train.plan_schedule(1, epochs=10, small=True).steps == 10
    assert train.plan_schedule(1, min_steps=30, small=True).steps == 30


def test_clip_dropout_defaults_to_the_small_set_recipe_only_on_small_sets_with_sa2():
    assert train.resolve_clip_dropout(None, 64, "sa2")[0] == train.SMALL_SET_CLIP_DROPOUT
    assert train.resolve_clip_dropout(None, 64, "none")[0] == 0  # no x_AS: nothing would be left to learn from
    assert train.resolve_clip_dropout(None, train.SMALL_SET, "sa2") == (0.0, "the paper's recipe")
    assert train.resolve_clip_dropout(0.0, 64, "sa2")[0] == 0.0
    assert train.resolve_clip_dropout(0.8, 1610, "sa2")[0] == 0.8
    assert train.resolve_clip_dropout(0.0, 64, "none")[0] == 0.0
    with pytest.raises(UserError, match="--clip-dropout needs x_AS"):
        train.resolve_clip_dropout(0.5, 64, "none")


def test_clip_dropout_zeroes_whole_videos_reproducibly():
    x = torch.ones(64, 5, 3)
    a = train.drop_clip(x, 0.5, seed=1, step=7)
    kept = a.flatten(1).amax(dim=1)
    assert set(kept.tolist()) == {0.0, 1.0} and 16 < kept.sum() < 48  # whole videos dropped, about half
    assert torch.equal(a, train.drop_clip(x, 0.5, seed=1, step=7))  # --resume redraws the same
    assert not torch.equal(a, train.drop_clip(x, 0.5, seed=1, step=8))
    assert train.drop_clip(x, 0.0, seed=1, step=7) is x


@pytest.mark.parametrize("n_normal,n_anomalous,batch", [(800, 810, 64), (175, 63, 64), (7, 5, 4), (0, 9, 4), (5, 0, 2)])
def test_batches_per_epoch_is_what_balanced_batches_draws(n_normal, n_anomalous, batch):
    anomalous = np.arange(n_normal + n_anomalous) >= n_normal
    drawn = train.balanced_batches(anomalous, batch, np.random.default_rng(3))
    assert train.batches_per_epoch(anomalous, batch) == len(drawn)


def test_a_large_set_trains_the_paper_schedule_and_a_small_one_the_minimum(store, tiny_clip, tmp_path, monkeypatch):
    big = fake_train_set(800, 810, tiny_clip.dim, 4)
    monkeypatch.setattr(train, "load_train_set", lambda *a, **k: big)
    args = train.build_parser().parse_args([str(store), "--out", str(tmp_path / "big.pt"), "--quiet", "--threads", "1"])
    run = train.train(FeatureStore.open(store), args)
    assert run.step == len(run.losses["class"]) == 260
    ck = torch.load(tmp_path / "big.pt", weights_only=True)
    assert ck["epoch"] == 10 and ck["train_args"]["clip_dropout"] == 0.0  # the paper's recipe

    small = fake_train_set(24, 24, tiny_clip.dim, 4)
    monkeypatch.setattr(train, "load_train_set", lambda *a, **k: small)
    args = train.build_parser().parse_args(
        [str(store), "--out", str(tmp_path / "small.pt"), "--quiet", "--threads", "1", "--min-steps", "30"]
    )
    assert train.train(FeatureStore.open(store), args).step == 30  # 10 epochs of 1 batch, raised to 30
    ck = torch.load(tmp_path / "small.pt", weights_only=True)
    assert ck["train_args"]["clip_dropout"] == train.SMALL_SET_CLIP_DROPOUT  # 48 videos: the small-set recipe


def test_chance_warning_fires_when_the_features_cannot_tell_the_labels_apart(store, tmp_path, monkeypatch, capsys):
    real = train.load_train_set

    def identical(*a, **k):  # every video gets the first one's features: the labels cannot be learned
        data = real(*a, **k)
        data.x_clip = [data.x_clip[0]] * len(data.x_clip)
        data.x_as = [data.x_as[0]] * len(data.x_as)
        return data

    code, _ = run_train(store, tmp_path / "real.pt", "--steps", "60", *FAST)
    assert code == 0 and "stp-train: warning" not in capsys.readouterr().err
    monkeypatch.setattr(train, "load_train_set", identical)
    code, ck = run_train(store, tmp_path / "blind.pt", "--steps", "60", *FAST)
    err = capsys.readouterr().err.strip().splitlines()
    warnings = [line for line in err if "stp-train: warning" in line]
    assert code == 0 and len(warnings) == 1
    assert warnings[0].startswith("stp-train: warning: the classification loss is still at chance")
    assert "--steps" in warnings[0] and "labels" in warnings[0]
    tail = ck["training"]["losses"]["class"][-6:]
    assert abs(float(tail.mean()) - math.log(2)) < train.CHANCE_MARGIN
    assert err[-1].startswith("stp-train: 60 steps ->")  # the final line comes last


def test_validation_split_holds_out_training_videos_only(store, tmp_path, monkeypatch):
    fs = FeatureStore.open(store)
    train_ids = {v.id for v in fs.videos("train")}
    test_ids = {v.id for v in fs.videos("test")}
    anomalous = {v.id for v in fs.videos("train") if v.is_anomalous}
    loaded, batches, in_validation = [], [], []
    real_load, real_collate, real_scores = FeatureStore.load, train.collate, train.video_scores

    def load(self, video_id):
        loaded.append(video_id)
        return real_load(self, video_id)

    def collate(data, idx):
        batches.append(([data.ids[i] for i in idx], bool(in_validation)))
        return real_collate(data, idx)

    def scores(*a, **k):
        in_validation.append(True)
        try:
            return real_scores(*a, **k)
        finally:
            in_validation.pop()

    monkeypatch.setattr(FeatureStore, "load", load)
    monkeypatch.setattr(train, "collate", collate)
    monkeypatch.setattr(train, "video_scores", scores)
    code, ck = run_train(store, tmp_path / "m.pt", "--steps", "6", "--save-every", "3", "--val-fraction", "0.25", *FAST)
    assert code == 0
    held = set(ck["training"]["val_videos"])
    assert set(loaded) == train_ids and not held & test_ids
    assert len(held) == 4 and len(held & anomalous) == 2  # 25 % of 8 normal and of 8 anomalous
    trained = {v for ids, val in batches if not val for v in ids}
    validated = {v for ids, val in batches if val for v in ids}
    assert trained == train_ids - held and validated == held
    # the same seed holds out the same videos; another seed others
    _, again = run_train(store, tmp_path / "again.pt", "--steps", "1", "--val-fraction", "0.25", *FAST)
    _, other = run_train(store, tmp_path / "other.pt", "--steps", "1", "--val-fraction", "0.25", "--seed", "1", *FAST)
    assert set(again["training"]["val_videos"]) == held != set(other["training"]["val_videos"])


def video_auc(ckpt_path, store, held: list[str]) -> float:
    """Video-level AUC (max snippet score) of a saved checkpoint on the held-out videos, via stp-eval's predict."""
    from stprompt.checkpoint import load_checkpoint
    from stprompt.evaluate import predict

    fs = FeatureStore.open(store)
    videos = [v for v in fs.videos("train") if v.id in held]
    preds = predict(load_checkpoint(ckpt_path), fs, videos)
    return frame_auc(np.array([v.is_anomalous for v in videos], np.int8), np.array([p.scores.max() for p in preds]))


def test_best_checkpoint_is_the_one_with_the_best_validation_auc(store, tmp_path, capsys):
    out = tmp_path / "model.pt"
    code, last = run_train(store, out, "--steps", "40", "--save-every", "5", "--val-fraction", "0.5", *FAST)
    assert code == 0
    t = last["training"]
    assert t["val_steps"] == list(range(5, 41, 5)) and len(set(t["val_auc"])) > 1
    best_i = int(np.argmax(t["val_auc"]))
    assert (t["best_step"], t["best_auc"]) == (t["val_steps"][best_i], t["val_auc"][best_i])
    best = torch.load(tmp_path / "model.best.pt", weights_only=True)
    assert best["training"]["step"] == t["best_step"] and best["optimizer"] is None
    held = t["val_videos"]
    assert video_auc(tmp_path / "model.best.pt", store, held) == pytest.approx(t["best_auc"], abs=1e-6)
    assert video_auc(out, store, held) == pytest.approx(t["val_auc"][-1], abs=1e-6)
    assert (tmp_path / "model.loss.png").stat().st_size > 0
    final = capsys.readouterr().err.strip().splitlines()[-1]
    assert final == (
        f"stp-train: 40 steps, best val AUC {t['best_auc']:.3f} at step {t['best_step']} "
        f"({tmp_path / 'model.best.pt'}), last -> {out}"
    )


def test_ctrl_c_finishes_the_step_saves_and_resume_continues_exactly(store, tmp_path, monkeypatch, capsys):
    flags = ["--steps", "12", "--save-every", "4", "--val-fraction", "0.25", *FAST]
    _, whole = run_train(store, tmp_path / "whole.pt", *flags)
    real, calls = train.collate, []

    def interrupt_at_6th(data, idx):
        calls.append(1)
        if len(calls) == 6 + 1:  # 6th training batch (after one validation at step 4)
            os.kill(os.getpid(), signal.SIGINT)
        return real(data, idx)

    monkeypatch.setattr(train, "collate", interrupt_at_6th)
    code, cut = run_train(store, tmp_path / "cut.pt", *flags)
    assert code == 130 and cut["training"]["step"] == 6 and cut["training"]["val_steps"] == [4, 6]
    err = capsys.readouterr().err
    assert "stopped at step 6 of 12" in err and "stp-train: interrupted" in err
    monkeypatch.setattr(train, "collate", real)
    code, resumed = run_train(store, tmp_path / "cut.pt", *flags, "--resume")
    assert code == 0 and resumed["training"]["step"] == 12
    assert resumed["training"]["val_steps"] == [4, 6, 8, 12]
    torch.testing.assert_close(resumed["training"]["losses"]["loss"], whole["training"]["losses"]["loss"])
    for k, v in whole["head"].items():
        torch.testing.assert_close(resumed["head"][k], v)
    assert resumed["training"]["val_videos"] == whole["training"]["val_videos"]


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--steps", "5", "--epochs", "2"], "--steps sets the run's length"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--min-steps", "-1"], "--min-steps must be at least 0"),
        (["--val-fraction", "1"], "--val-fraction must be in [0, 1)"),
        (["--clip-dropout", "1"], "--clip-dropout must be in [0, 1)"),
        (["--save-every", "-2"], "--save-every must be at least 0"),
    ],
)
def test_schedule_mistakes_end_in_one_line(store, tmp_path, capsys, flags, needle):
    assert train.main([str(store), "--out", str(tmp_path / "m.pt"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_val_fraction_needs_two_of_each_and_resume_keeps_it(store, tiny_clip, tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.pt"
    assert run_train(store, out, "--steps", "2", "--val-fraction", "0.25", *FAST)[0] == 0
    capsys.readouterr()
    assert train.main([str(store), "--out", str(out), "--resume", "--steps", "3", *FAST]) == 2  # not --quiet
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained with --val-fraction 0.25" in err[0]
    monkeypatch.setattr(train, "load_train_set", lambda *a, **k: fake_train_set(6, 1, tiny_clip.dim, 4))
    assert train.main([str(store), "--out", str(tmp_path / "x.pt"), "--val-fraction", "0.2", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "6 normal and 1 anomalous" in err[0]


def test_const_mean_is_the_sum_over_the_pairs():
    prompts = torch.randn(5, 16)
    total, mean = losses.const_loss(prompts, "sum"), losses.const_loss(prompts, "mean")
    torch.testing.assert_close(mean, total / 20)
    same = torch.ones(5, 16)  # identical prompts: every cosine is 1
    assert losses.const_loss(same).item() == pytest.approx(20.0) and losses.const_loss(same, "mean").item() == 1.0


def test_const_form_mean_trains_and_is_recorded(store, tmp_path):
    code, ck = run_train(store, tmp_path / "m.pt", "--steps", "2", "--const-form", "mean", *FAST)
    assert code == 0 and ck["train_args"]["const_form"] == "mean"
    assert float(ck["training"]["losses"]["const"][0]) <= 1.0  # a mean of cosines; the sum is up to 20 here


def test_progress_bar_and_final_line(store, tmp_path, capsys):
    assert train.main([str(store), "--out", str(tmp_path / "m.pt"), "--steps", "3", *FAST]) == 0
    err = capsys.readouterr().err
    assert "stp-train: 3 steps (--steps 3) on 16 training videos in batches of 8\n" in err
    assert "3/3" in err and "loss=" in err  # tqdm's bar with the running loss
    assert "epoch 1/" not in err  # no line per epoch
    assert err.strip().splitlines()[-1] == f"stp-train: 3 steps -> {tmp_path / 'm.pt'}"
