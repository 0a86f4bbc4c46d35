"""The `Preprocess` value: written to and read from the manifest, refused by field when it cannot be honoured, and
really used: the runtime normalises crops the bundle's way, and export / extraction take the CLIP model's own."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import write_video

from stprompt import windows
from stprompt.bundle.manifest import load_manifest
from stprompt.bundle.preprocess import DEFAULT, OPENAI_MEAN, OPENAI_STD, Preprocess
from stprompt.errors import UserError
from stprompt.runtime import cli as run_cli
from stprompt.runtime.backends import open_backend

HALF = (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, 48, seed=3, blob=(16, 40))
    return path


def edited_copy(bundle: Path, dst: Path, edit: Callable[[dict], object]) -> Path:
    """A copy of the bundle whose model.json was edited by hand (the manifest is not hashed; its files are)."""
    shutil.copytree(bundle.parent, dst)
    manifest = dst / bundle.name
    doc = json.loads(manifest.read_text())
    edit(doc)
    manifest.write_text(json.dumps(doc))
    return manifest


def with_half_mean_std(doc: dict) -> None:
    doc["preprocess"].update(mean=list(HALF), std=list(HALF))


def scores(events: Path) -> np.ndarray:
    frames = [e for e in map(json.loads, events.read_text().splitlines()) if e["type"] == "frame"]
    assert [e["frame"] for e in frames] == [8, 24, 40]
    return np.array([e["score"] for e in frames])


def expected_crops(crops_bgr: np.ndarray, mean, std) -> np.ndarray:
    """The definition: (pixel / 255 - mean) / std per RGB channel, [N, 3, S, S], in float64."""
    rgb = crops_bgr[..., ::-1].astype(np.float64) / 255.0
    return ((rgb - np.asarray(mean)) / np.asarray(std)).transpose(0, 3, 1, 2)


# --- (a) the manifest sections round trip -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pre",
    [DEFAULT, Preprocess(mean=HALF, std=HALF), Preprocess(mean=(0.1, 0.2, 0.3), std=(0.9, 0.8, 0.7), scale_b=(56, 56))],
    ids=["openai", "siglip", "other"],
)
def test_manifest_sections_round_trip(pre):
    sections = pre.manifest_sections()
    assert Preprocess.from_manifest(sections) == pre
    assert Preprocess.from_manifest(json.loads(json.dumps(sections)), "model.json") == pre  # as JSON does it
    assert sections["windows"]["A"] == {"size": 32, "stride": 32, "grid": 7}
    assert sections["windows"]["crops_per_frame"] == 50 and sections["preprocess"]["size"] == 224
    pixels = np.arange(256, dtype=np.float64)[:, None]
    np.testing.assert_allclose(pixels * pre.gain + pre.bias, (pixels / 255 - pre.mean) / pre.std, atol=1e-5)


def test_exported_manifest_holds_the_clip_models_preprocessing(tiny_bundle, tiny_clip):
    from stprompt.clip.loader import clip_preprocess

    manifest = load_manifest(tiny_bundle)
    assert manifest.preprocess == clip_preprocess(tiny_clip.model) == DEFAULT
    assert manifest.preprocess.mean == OPENAI_MEAN and manifest.preprocess.std == OPENAI_STD
    assert {k: manifest.raw[k] for k in ("preprocess", "windows")} == DEFAULT.manifest_sections()


# --- (b) what cannot be honoured is refused, by field, in one line -------------------------------------------------

REFUSED = [
    ("preprocess.size", lambda d: d["preprocess"].update(size=256)),
    ("preprocess.resampler", lambda d: d["preprocess"].update(resampler="cv2.INTER_LINEAR")),
    ("preprocess.colour_order", lambda d: d["preprocess"].update(colour_order="RGB")),
    ("windows.A", lambda d: d["windows"].update(A={"size": 28, "stride": 28, "grid": 8})),  # 8 x 8 windows
    ("windows.A", lambda d: d["windows"].update(A={"size": 56, "stride": 28, "grid": 7})),  # 7 x 7, overlapping
    ("preprocess.std", lambda d: d["preprocess"].update(std=[0.5, 0.0, 0.5])),
    ("preprocess.std", lambda d: d["preprocess"].update(std=[0.5, -0.2, 0.5])),
    ("preprocess.mean", lambda d: d["preprocess"].pop("mean")),
    ("preprocess.scale", lambda d: d["preprocess"].update(scale=1.0)),  # crops in 0..255, not 0..1
]
REFUSED_IDS = ["size", "resampler", "colour", "grid8", "overlap", "std0", "std_neg", "no_mean", "scale"]


def _names_field(message: str, field: str) -> bool:
    return "\n" not in message and re.search(rf"(^|\s){re.escape(field)}(\s|$)", message) is not None


@pytest.mark.parametrize(("field", "edit"), REFUSED, ids=REFUSED_IDS)
def test_unsupported_field_is_refused_by_name(field, edit):
    doc = DEFAULT.manifest_sections()
    edit(doc)
    with pytest.raises(UserError) as err:
        Preprocess.from_manifest(doc, "model.json")
    message = str(err.value)
    assert message.startswith("model.json: ") and _names_field(message, field), message


@pytest.mark.parametrize(("field", "edit"), REFUSED, ids=REFUSED_IDS)
def test_unsupported_bundle_is_refused_by_open_backend_and_stp_run(tiny_bundle, tmp_path, video, capsys, field,
                                                                   edit):  # fmt: skip
    manifest = edited_copy(tiny_bundle, tmp_path / "b", edit)
    load_manifest(manifest)  # the files still verify: only the manifest changed
    with pytest.raises(UserError) as err:
        open_backend(manifest.with_name("model.onnx"))
    assert str(err.value).startswith("model.json: ") and _names_field(str(err.value), field), str(err.value)
    capsys.readouterr()
    argv = [str(video), "--engine", str(manifest.with_name("model.onnx")), "--events", str(tmp_path / "e.jsonl"),
            "--quiet"]  # fmt: skip
    assert run_cli.main(argv) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("stp-run: error: model.json: ")
    assert _names_field(err_lines[0], field), err_lines[0]
    assert not (tmp_path / "e.jsonl").exists()


# --- (c) the runtime normalises as the bundle says ----------------------------------------------------------------


@pytest.mark.parametrize("pre", [Preprocess(mean=HALF, std=HALF), DEFAULT], ids=["half", "openai"])
def test_fill_encoder_batch_normalises_with_the_given_mean_std(pre):
    rng = np.random.default_rng(4)
    small = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    mask = rng.random(49) < 0.5
    out = np.full((50, 3, 224, 224), np.nan, np.float32)
    rows = windows.fill_encoder_batch(small, out, mask, pre=pre)
    crops = np.concatenate([small[None], windows.window_crops_reference(small, windows.SCALE_A)[mask]])
    assert rows == len(crops) == 1 + mask.sum()
    np.testing.assert_allclose(out[:rows], expected_crops(crops, pre.mean, pre.std), rtol=0, atol=2e-6)
    if pre.mean == HALF:  # (pixel / 255 - 0.5) / 0.5: black is -1, white is +1, in every channel
        assert out[:rows].min() >= -1.0 and out[:rows].max() <= 1.0
    assert np.isnan(out[rows:]).all()


def test_detector_hands_the_backend_crops_normalised_the_bundles_way(tiny_bundle, tmp_path):
    from stprompt.runtime.detector import Detector

    half = edited_copy(tiny_bundle, tmp_path / "half", with_half_mean_std)
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(9)]  # frame 8 is sampled
    small = windows.resize_frame(frames[8])
    crops = np.concatenate([small[None], windows.window_crops_reference(small, windows.SCALE_A)])
    for manifest_file, mean, std in ((half, HALF, HALF), (tiny_bundle, OPENAI_MEAN, OPENAI_STD)):
        backend, manifest = open_backend(manifest_file.with_name("model.onnx"))
        assert backend.preprocess == manifest.preprocess and manifest.preprocess.mean == mean
        seen: list[np.ndarray] = []
        encode = backend.encode
        backend.encode = lambda images, encode=encode, seen=seen: seen.append(np.array(images)) or encode(images)
        detector = Detector(backend, manifest)
        for frame in frames:
            detector.feed(frame)
        seen = [images for images in seen if len(images)]  # frames 0-7 are not sampled: nothing (or 0 crops)
        assert len(seen) == 1 and seen[0].shape == (50, 3, 224, 224)
        np.testing.assert_allclose(seen[0], expected_crops(crops, mean, std), rtol=0, atol=2e-5)
        # the backends' own host-side crops (encode_frames) follow the bundle as well
        np.testing.assert_array_equal(backend.encode_frames([small], [np.ones(49, bool)]), encode(seen[0]))


def test_stp_run_scores_follow_the_bundles_mean_std(tiny_bundle, tmp_path, video):
    half = edited_copy(tiny_bundle, tmp_path / "half", with_half_mean_std)

    def run(manifest: Path, name: str) -> np.ndarray:
        events = tmp_path / f"{name}.jsonl"
        argv = [str(video), "--engine", str(manifest.with_name("model.onnx")), "--events", str(events), "--quiet"]
        assert run_cli.main(argv) == 0
        return scores(events)

    original = run(tiny_bundle, "original")
    edited = run(half, "half")
    assert np.abs(edited - original).max() > 1e-4  # the crops were normalised differently
    np.testing.assert_array_equal(run(tiny_bundle, "again"), original)  # the original bundle is unaffected
    np.testing.assert_array_equal(run(half, "half_again"), edited)


# --- (d) a CLIP model with its own preprocessing: export and extraction take it -------------------------------------


@pytest.fixture(scope="module")
def half_clip():
    """stp-tiny whose open_clip preprocessing config says mean = std = 0.5 (as SigLIP models do); not the session's
    tiny_clip, which other tests share."""
    from stprompt.clip.loader import load_clip

    clip = load_clip("stp-tiny")
    clip.model.visual.preprocess_cfg = {**clip.model.visual.preprocess_cfg, "mean": HALF, "std": HALF}
    return clip


@pytest.fixture
def patched_loader(half_clip, monkeypatch):
    from stprompt.clip import loader

    def load_clip(spec):
        assert str(spec) == "stp-tiny"
        return half_clip

    monkeypatch.setattr(loader, "load_clip", load_clip)
    return half_clip


def test_clip_preprocess_reads_the_models_config(half_clip, tiny_clip):
    from stprompt.clip.loader import clip_preprocess

    pre = clip_preprocess(half_clip.model)
    assert pre == half_clip.preprocess == Preprocess(mean=HALF, std=HALF)
    assert clip_preprocess(tiny_clip.model) == DEFAULT  # the shared model is untouched
    assert half_clip.sha256 == tiny_clip.sha256  # the config is not part of the weights


def test_export_and_extract_use_the_clip_models_mean_std(patched_loader, tiny_bundle, tiny_dataset, tmp_path):
    from stprompt import extract
    from stprompt.clip.image import ImageEncoder
    from stprompt.data.features import FeatureStore
    from stprompt.data.video import SampledFrames
    from stprompt.export.bundle import export_bundle
    from stprompt.export.options import ExportOptions

    pre = Preprocess(mean=HALF, std=HALF)
    path = export_bundle(tiny_bundle.with_name("model.pt"), tmp_path / "bundle" / "model",
                         ExportOptions(probe_frames=1, max_window=32), log=lambda _m: None)  # fmt: skip
    manifest = load_manifest(path)
    assert manifest.raw["preprocess"]["mean"] == list(HALF) and manifest.raw["preprocess"]["std"] == list(HALF)
    assert manifest.preprocess == pre
    assert all(g["passed"] for name, g in manifest.gates.items() if name != "probe")
    backend, _ = open_backend(manifest.file("encoder"))
    assert backend.preprocess == pre

    out = tmp_path / "features"
    assert extract.main([str(tiny_dataset), "--out", str(out), "--split", "test", "--quiet"]) == 0
    store = FeatureStore.open(out)
    assert store.index["preprocess"] == {key: manifest.raw[key] for key in ("preprocess", "windows")}
    assert store.index["clip_sha256"] == manifest.clip_sha256
    # and the features were made from crops normalised that way: snippet 0's full frame, encoded directly
    video = store.videos("test")[0]
    with np.load(out / f"{video.id}.npz") as z:
        x_clip = z["x_clip"]
    index, frame = next(iter(SampledFrames(tiny_dataset / video.path, store.stride)))
    encoder = ImageEncoder(patched_loader.model, batch=64)
    own = encoder(windows.encoder_batch(frame, pre=pre)[:1])[0]
    other = encoder(windows.encoder_batch(frame, pre=DEFAULT)[:1])[0]
    assert index == 8
    np.testing.assert_allclose(x_clip[0], own, rtol=1e-4, atol=1e-5)
    assert not np.allclose(x_clip[0], other, rtol=1e-4, atol=1e-5)
