"""stp-extract / stp-train / stp-eval on a tiny generated dataset: outputs, resumption and user errors."""

import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from stprompt import evaluate, extract, train, windows
from stprompt.clip.image import ImageEncoder
from stprompt.data.features import FeatureStore

STRIDE = 8


@pytest.fixture(scope="session")
def features(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    assert extract.main([str(tiny_dataset), "--out", str(out), "--stride", str(STRIDE), "--scale-b", "--quiet"]) == 0
    return out


@pytest.fixture(scope="session")
def checkpoint(features, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt") / "model.pt"
    assert train.main([str(features), "--out", str(ckpt), "--epochs", "2", "--batch", "4", "--quiet"]) == 0
    return ckpt


def test_extracted_features_match_direct_encoding(features, tiny_dataset, tiny_clip):
    store = FeatureStore.open(features)
    assert store.index["clip_sha256"] == tiny_clip.sha256 and store.stride == STRIDE
    vid = store.videos("test")[1]
    arrays = store.load(vid.id)
    t, d = arrays["x_clip"].shape
    assert t == 48 // STRIDE and d == tiny_clip.dim
    assert arrays["x_patch"].shape == (t, 7, 7, d) and arrays["x_patch_b"].shape == (t, 4, 4, d)
    assert arrays["frames"].tolist() == [k * STRIDE + STRIDE // 2 for k in range(t)]
    cap = cv2.VideoCapture(str(tiny_dataset / vid.path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, int(arrays["frames"][2]))
    ok, frame = cap.read()
    assert ok
    emb = ImageEncoder(tiny_clip.model, batch=1)(windows.encoder_batch(frame, scale_b=True))
    np.testing.assert_allclose(arrays["x_clip"][2], emb[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(arrays["x_patch"][2].reshape(49, d), emb[1:50], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(arrays["x_patch_b"][2].reshape(16, d), emb[50:], rtol=1e-4, atol=1e-5)


def test_extract_batch_size_does_not_change_features(tiny_dataset, tiny_clip, tmp_path):
    path = tiny_dataset / "videos/test_5.mp4"
    big = extract.extract_video(path, ImageEncoder(tiny_clip.model, batch=500), STRIDE, False, 500)
    small = extract.extract_video(path, ImageEncoder(tiny_clip.model, batch=7), STRIDE, False, 7)
    np.testing.assert_allclose(big.arrays["x_patch"], small.arrays["x_patch"], rtol=1e-4, atol=1e-5)
    assert big.n_frames == 48 and big.n_crops == 6 * 50


def test_rerun_skips_and_corrupt_video_is_reported(tiny_dataset, features, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    out = tmp_path / "f"
    shutil.copytree(features, out)
    (data / "videos/test_4.mp4").write_bytes(b"\x00" * 100)
    doc = json.loads((data / "annotations.json").read_text())
    doc["videos"].append({"path": "videos/broken.mp4", "split": "test", "label": "normal"})
    (data / "videos/broken.mp4").write_bytes(b"not a video")
    (data / "annotations.json").write_text(json.dumps(doc))
    code = extract.main([str(data), "--out", str(out), "--stride", str(STRIDE), "--scale-b", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert (
        "skipped videos/broken.mp4" in err
        and "6 already there" in err
        and "0 extracted, 6 already there, 1 failed" in err
    )


def test_rerun_records_boxes_imported_after_extraction(tiny_dataset, features, tmp_path, capsys):
    """Boxes imported after a first stp-extract reach the feature folder on the next run, without extracting."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    out = tmp_path / "f"
    shutil.copytree(features, out)
    doc = json.loads((data / "annotations.json").read_text())
    target = next(v for v in doc["videos"] if v["split"] == "test" and v.get("label", "normal") != "normal")
    target["boxes"] = {"10": [[1.0, 2.0, 30.0, 40.0]]}
    (data / "annotations.json").write_text(json.dumps(doc))
    npz = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    assert extract.main([str(data), "--out", str(out), "--stride", str(STRIDE), "--scale-b"]) == 0
    err = capsys.readouterr().err
    assert "0 extracted, 6 already there" in err and "annotations of 1 already extracted videos updated" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")} == npz  # no feature was rewritten
    video = next(v for v in FeatureStore.open(out).videos("test") if v.path == target["path"])
    assert video.boxes == {10: [[1.0, 2.0, 30.0, 40.0]]}


def test_train_writes_a_self_contained_weights_only_checkpoint(checkpoint, tiny_clip):
    d = torch.load(checkpoint, weights_only=True)
    assert d["format"] == "stprompt-checkpoint/1" and d["epoch"] == 2
    assert d["classes"] == ["normal", "Fighting"] and d["class_phrases"] == ["normal", "fighting"]
    assert d["clip_sha256"] == tiny_clip.sha256 and d["stride"] == STRIDE
    assert d["prompt_ctx"].shape == (8, tiny_clip.model.token_embedding.embedding_dim)
    assert d["prompt_features"].shape == (2, tiny_clip.dim)
    assert d["config"]["sigma"] == 1.0 and d["config"]["layers"] == 2


def test_train_is_deterministic_and_resumable(features, checkpoint, tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    train.main([str(features), "--out", str(a), "--epochs", "2", "--batch", "4", "--quiet"])
    train.main([str(features), "--out", str(b), "--epochs", "1", "--batch", "4", "--quiet"])
    train.main([str(features), "--out", str(b), "--epochs", "2", "--batch", "4", "--quiet", "--resume"])
    sa, sb, sc = (torch.load(p, weights_only=True)["head"] for p in (a, b, checkpoint))
    for k in sa:
        torch.testing.assert_close(sa[k], sc[k])
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6)


def test_eval_json_predictions_and_plots(features, checkpoint, tmp_path, capsys):
    pred_path, plots = tmp_path / "pred.json", tmp_path / "plots"
    code = evaluate.main(
        [str(features), "--ckpt", str(checkpoint), "--predictions", str(pred_path), "--plots", str(plots)]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_videos"] == 2 and result["n_frames"] == (44 // STRIDE + 48 // STRIDE) * STRIDE
    assert 0.0 <= result["auc"] <= 1.0 and 0.0 <= result["auc_c"] <= 1.0
    assert set(result["per_class_auc"]) == {"Fighting"}
    pred = json.loads(pred_path.read_text())
    assert set(pred) == {"videos/test_4.mp4", "videos/test_5.mp4"}
    p = pred["videos/test_5.mp4"]
    assert p["frames"] == [4, 12, 20, 28, 36, 44] and len(p["scores"]) == len(p["scores_c"]) == 6
    assert all(abs(sum(row) - 1) < 1e-4 and len(row) == 2 for row in p["probs"])
    assert np.allclose(p["scores"], [1 - row[0] for row in p["probs"]], atol=1e-5)
    assert len(list(plots.glob("*.png"))) == 2


def test_eval_refuses_features_from_other_clip_weights(tiny_dataset, checkpoint, tmp_path, capsys):
    other = tmp_path / "other"
    extract.main(
        [
            str(tiny_dataset),
            "--out",
            str(other),
            "--stride",
            str(STRIDE),
            "--split",
            "test",
            "--clip",
            "stp-tiny:random:5",
            "--quiet",
        ]
    )
    capsys.readouterr()
    assert evaluate.main([str(other), "--ckpt", str(checkpoint)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CLIP weights sha256" in err[0]


@pytest.mark.parametrize(
    "main,argv,needle",
    [
        (extract.main, ["{tmp}/nowhere", "--out", "{tmp}/f"], "no annotations file"),
        (extract.main, ["{data}", "--out", "{tmp}/f", "--stride", "0"], "--stride"),
        (extract.main, ["{data}", "--out", "{tmp}/f", "--clip", "ViT-B-16"], "names no weights"),
        (train.main, ["{tmp}", "--out", "{tmp}/m.pt"], "not a feature folder"),
        (evaluate.main, ["{tmp}", "--ckpt", "{tmp}/missing.pt"], "checkpoint not found"),
        (evaluate.main, ["{tmp}", "--ckpt", "{data}/annotations.json"], "not a loadable stprompt checkpoint"),
    ],
)
def test_user_mistakes_end_in_one_line_and_exit_2(main, argv, needle, tiny_dataset, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, data=tiny_dataset) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]


def test_eval_localize_boxes_tiou_and_frames(features, checkpoint, tiny_dataset, tmp_path, capsys):
    pred_path, plots = tmp_path / "pred.json", tmp_path / "plots"
    argv = [str(features), "--ckpt", str(checkpoint), "--localize", "--alarm-threshold", "0", "--tiou-theta", "0"]
    assert evaluate.main(argv + ["--predictions", str(pred_path), "--plots", str(plots)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["alarm_snippets"] == 44 // STRIDE + 48 // STRIDE  # every snippet alarms at threshold 0
    assert result["tiou_gt_boxes"] == 0 and result["tiou"] is None  # the tiny dataset has no GT boxes
    boxes = json.loads(pred_path.read_text())["videos/test_5.mp4"]["boxes"]
    assert set(boxes) == {"4", "12", "20", "28", "36", "44"}
    for rows in boxes.values():
        for x1, y1, x2, y2, score in rows:
            assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 120 and 0.5 <= score <= 1.0
    assert len(list(plots.glob("*_f*.png"))) == 2 * 4  # --plot-frames 4 per video


def test_eval_localize_needs_scale_b(tiny_dataset, checkpoint, tmp_path, capsys):
    out = tmp_path / "noscaleb"
    extract.main([str(tiny_dataset), "--out", str(out), "--stride", str(STRIDE), "--split", "test", "--quiet"])
    capsys.readouterr()
    assert evaluate.main([str(out), "--ckpt", str(checkpoint), "--localize"]) == 2
    assert "--scale-b" in capsys.readouterr().err


def test_an_anomaly_interval_past_the_video_end_warns_and_counts_clipped(tiny_dataset, checkpoint, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    doc = json.loads((data / "annotations.json").read_text())
    test_5 = next(v for v in doc["videos"] if v["path"] == "videos/test_5.mp4")  # 48 frames, anomaly [16, 40)
    test_5["anomalies"] = [{"start": 16, "end": 60}]
    (data / "annotations.json").write_text(json.dumps(doc))
    out = tmp_path / "f"
    argv = [str(data), "--out", str(out), "--stride", str(STRIDE), "--split", "test", "--quiet"]
    assert extract.main(argv) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [
        "stp-extract: warning: videos/test_5.mp4: anomaly interval [16, 60) in the annotations run past the video's "
        "end (48 frames decoded); clipped to the video"
    ]
    assert evaluate.main([str(out), "--ckpt", str(checkpoint)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("stp-eval: warning: videos/test_5.mp4: anomaly interval [16, 60)")
    result = json.loads(captured.out)
    assert result["n_anomalous_frames"] == 48 - 16  # the interval clipped to the video's 48 frames


def test_a_truncated_video_is_extracted_with_a_warning(tiny_clip, tmp_path):
    path = tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(64):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    feats = extract.extract_video(path, ImageEncoder(tiny_clip.model, batch=100), STRIDE, False, 100)
    assert feats.declared_frames == 64 and 0 < feats.n_frames < 64
    video = extract.ann_mod.Video(path="cut.avi", split="test", labels=["Fighting"], anomalies=[(0, 64)])
    notes = feats.warnings(video)
    assert len(notes) == 2
    assert notes[0] == (
        f"cut.avi: the video ends after {feats.n_frames} of the 64 frames its container declares (truncated or damaged)"
    )
    assert f"[0, 64) in the annotations run past the video's end ({feats.n_frames} frames decoded)" in notes[1]
