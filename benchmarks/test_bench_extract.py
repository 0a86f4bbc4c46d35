"""Extraction throughput: per-frame preprocessing and CLIP encoding of one sampled frame's 50 crops.

Run: `python -m pytest benchmarks/test_bench_extract.py --benchmark-only` (STP_SLOW=1 adds ViT-B-16 with
random weights). crops/s = 50 / mean time of an `encode` benchmark. Times are reported, never asserted.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from stprompt import windows

CROPS = windows.crops_per_frame()  # 1 + 49
ARCHS = ["stp-tiny"] + (["ViT-B-16:random"] if os.environ.get("STP_SLOW") else [])


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8)


def test_bench_preprocess_frame_mosaic(benchmark, frame):
    """resize + 49 windows (one cv2.resize of a mosaic) + normalisation -> [50, 3, 224, 224]."""
    out = benchmark(windows.encoder_batch, frame)
    assert out.shape == (CROPS, 3, 224, 224)


def test_bench_preprocess_frame_per_window_loop(benchmark, frame):
    """The same batch with one cv2.resize per window (the reference loop)."""

    def loop():
        small = windows.resize_frame(frame)
        crops = np.concatenate([small[None], windows.window_crops_reference(small, windows.SCALE_A)])
        return windows.normalize(crops)

    assert benchmark(loop).shape == (CROPS, 3, 224, 224)


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    from stprompt.clip.loader import load_clip

    return load_clip(request.param).model


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bench_encode_batched(benchmark, model, frame, precision):
    """All 50 crops of a sampled frame in one encoder call."""
    from stprompt.clip.image import ImageEncoder

    batch = windows.encoder_batch(frame)
    encode = ImageEncoder(model, precision=precision, batch=CROPS)
    encode(batch)  # warm-up
    benchmark.extra_info["crops"] = CROPS
    benchmark.pedantic(encode, args=(batch,), rounds=3, iterations=1)


def test_bench_encode_one_crop_at_a_time(benchmark, model, frame):
    """The same 50 crops, one encoder call each (what a naive script does)."""
    from stprompt.clip.image import ImageEncoder

    batch = windows.encoder_batch(frame)
    encode = ImageEncoder(model, batch=1)
    encode(batch[:2])
    benchmark.extra_info["crops"] = CROPS
    benchmark.pedantic(encode, args=(batch,), rounds=3, iterations=1)
