"""Shared fixtures: a seeded stp-tiny CLIP and a tiny dataset of generated videos (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_clip():
    from stprompt.clip.loader import load_clip

    return load_clip("stp-tiny")


def write_video(path: Path, n_frames: int, size=(160, 120), seed: int = 0, blob: tuple[int, int] | None = None) -> None:
    """A noisy static scene; frames in `blob` (start, end) carry a moving bright square."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(40, 200, (h, w, 3), dtype=np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    assert writer.isOpened()
    for f in range(n_frames):
        frame = np.clip(base.astype(np.int16) + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
        if blob and blob[0] <= f < blob[1]:
            x = 10 + (f * 3) % (w - 40)
            frame[40:70, x : x + 30] = (30, 220, 250)
        writer.write(frame)
    writer.release()


SCORE_ROUNDING = 0.5e-4  # events carry scores and probabilities to 4 decimals (stprompt.runtime.events): half a unit


def stable_ids(events: list[dict]) -> list[dict]:
    """Events with each alarm id's random stream token replaced by its order of first appearance (`<0>:...`):
    ids are unique across runs by design, so two runs over the same input compare equal only this way."""
    tokens: dict[str, int] = {}
    out = []
    for e in events:
        if "id" in e:
            token, rest = e["id"].split(":", 1)
            e = {**e, "id": f"<{tokens.setdefault(token, len(tokens))}>:{rest}"}
        out.append(e)
    return out


def count_frames(path: Path) -> int:
    """Frames OpenCV decodes from a video file (an annotated output, a test input)."""
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """4 train + 2 test videos of 40-56 frames at 160x120, classes normal + Fighting."""
    root = tmp_path_factory.mktemp("dataset")
    (root / "videos").mkdir()
    videos = []
    specs = [
        ("train", "normal", 48, None),
        ("train", "normal", 40, None),
        ("train", "Fighting", 56, (16, 40)),
        ("train", "Fighting", 48, (8, 32)),
        ("test", "normal", 44, None),
        ("test", "Fighting", 48, (16, 40)),
    ]
    for i, (split, label, n, blob) in enumerate(specs):
        rel = f"videos/{split}_{i}.mp4"
        write_video(root / rel, n, seed=i, blob=blob)
        entry = {"path": rel, "split": split, "label": label, "anomalies": []}
        if blob:
            entry["anomalies"] = [{"start": blob[0], "end": blob[1]}]
        videos.append(entry)
    doc = {"format": "stprompt-annotations/1", "classes": ["normal", "Fighting"], "fps": 25.0, "videos": videos}
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


CLASSES = ["normal", "Fighting", "RoadAccidents"]


def make_checkpoint(clip, path: Path, seed: int = 0, classes: list[str] = CLASSES) -> Path:
    """A checkpoint with random head weights and the real learned-prompt plumbing (no training needed)."""
    import torch

    from stprompt.checkpoint import Checkpoint
    from stprompt.data.annotations import class_phrase
    from stprompt.model.config import HeadConfig
    from stprompt.model.head import STPromptHead
    from stprompt.model.prompts import PromptLearner

    phrases = [class_phrase(c) for c in classes]
    torch.manual_seed(seed)
    cfg = HeadConfig(dim=clip.dim, n_classes=len(classes))
    learner = PromptLearner(clip.model, phrases)
    with torch.no_grad():
        prompts = learner()
    Checkpoint(
        config=cfg,
        classes=list(classes),
        class_phrases=phrases,
        clip=str(clip.spec),
        clip_sha256=clip.sha256,
        stride=16,
        head_state=STPromptHead(cfg).state_dict(),
        prompt_ctx=learner.ctx.detach(),
        prompt_features=prompts,
    ).save(path)
    return path


@pytest.fixture(scope="session")
def blob_clip(tmp_path_factory) -> Path:
    """64 frames of a noisy static scene with a moving bright square in frames 16-47: read-only, shared by the
    runtime pipeline and metrics tests."""
    path = tmp_path_factory.mktemp("blob-clip") / "clip.mp4"
    write_video(path, 64, seed=7, blob=(16, 48))
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tiny_clip, tmp_path_factory) -> Path:
    """One stp-tiny bundle (fp16 + int8 encoders) with its checkpoint beside it as model.pt; the manifest path.

    Export takes seconds even for stp-tiny, so the read-only export and backend tests share it (tests that
    modify a bundle copy it first).
    """
    from stprompt.export import cli

    out = tmp_path_factory.mktemp("bundle") / "model"
    ckpt = make_checkpoint(tiny_clip, out.with_name("model.pt"))
    assert cli.main(["--ckpt", str(ckpt), "--out", str(out), "--precision", "fp16", "--int8-cpu", "--quiet"]) == 0
    return out.with_name("model.json")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run where PyTorch sees a CUDA device and skip, saying why, everywhere else."""
    if any("gpu" in item.keywords for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU visible to PyTorch (CUDA)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
