"""The GPU path: window crops built by PyTorch (on any device) against the CPU definition, the PyTorch backend's
precisions and devices, and -- on a CUDA machine -- the fp16 CUDA-graph encoder and GPU preprocessing end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stprompt import windows
from stprompt.bundle.compare import centered_cosine
from stprompt.bundle.preprocess import DEFAULT
from stprompt.clip import torch_windows
from stprompt.clip.cuda_encoder import buckets
from stprompt.errors import UserError
from stprompt.runtime.backends import open_backend


def frames224(n: int, seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n, 300, 400, 3), dtype=np.uint8)
    return np.stack([windows.resize_frame(cv2.GaussianBlur(f, (0, 0), 1.5)) for f in raw])


@pytest.mark.parametrize("scale", [windows.SCALE_A, windows.SCALE_B])
def test_torch_windows_are_within_one_grey_level_of_the_cpu_definition(scale):
    smalls = frames224(2)
    got = torch_windows.encoder_batch(torch.from_numpy(smalls), scale=scale).numpy()
    expected = np.concatenate(
        [windows.normalize(np.concatenate([s[None], windows.window_crops(s, scale)])) for s in smalls]
    )
    assert got.shape == expected.shape == (2 * (1 + scale.count), 3, 224, 224)
    grey = np.abs(got - expected) / (DEFAULT.gain.max())  # back to grey levels
    assert grey.max() <= 1.0 + 1e-3
    assert (grey > 0.5).mean() < 1e-3  # a few pixels in ten thousand round differently
    np.testing.assert_array_equal(got[0], expected[0])  # the full frame is not resampled: exact


def test_torch_windows_keep_the_detector_order_with_masks():
    smalls = frames224(3, seed=1)
    masks = np.zeros((3, 49), bool)
    masks[0, [0, 48]] = True
    masks[2, 7] = True
    got = torch_windows.encoder_batch(torch.from_numpy(smalls), torch.from_numpy(masks)).numpy()
    full = torch_windows.encoder_batch(torch.from_numpy(smalls)).numpy()
    rows = [0, 1, 49, 50, 100, 100 + 8]  # frame 0: full, w0, w48; frame 1: full; frame 2: full, w7
    np.testing.assert_array_equal(got, full[rows])


def test_buckets_cover_every_batch_up_to_max():
    assert buckets(50) == [1, 2, 4, 8, 16, 32, 50]
    assert buckets(1) == [1] and buckets(64) == [1, 2, 4, 8, 16, 32, 50, 64]
    assert buckets(256) == [1, 2, 4, 8, 16, 32, 50, 64, 100, 128, 150, 200, 250, 256]
    for n in range(1, 257):
        fit = next(b for b in buckets(256) if b >= n)
        assert fit - n < max(1, n)  # padding never doubles a batch
    assert all(b in buckets(256) for b in (50, 100, 150, 200, 250))  # whole sampled frames fit exactly


def test_torch_backend_bf16_and_device_preprocessing_on_cpu(tiny_bundle):
    small = frames224(1)
    images = windows.normalize(np.concatenate([small, windows.window_crops(small[0], windows.SCALE_A)]))
    fp32, _ = open_backend(tiny_bundle.with_name("model.pt"))
    bf16, _ = open_backend(tiny_bundle.with_name("model.pt"), precision="bf16")
    assert fp32.name == "torch-cpu-fp32" and bf16.name == "torch-cpu-bf16" and not fp32.gpu_preprocessing
    ref = fp32.encode(images)
    low = bf16.encode(images)  # bf16 keeps 8 mantissa bits: close in direction, not to fp32 rounding
    cos = (low * ref).sum(1) / np.linalg.norm(low, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.999 and np.abs(low - ref).max() < 0.1 * np.abs(ref).max()
    # encode_frames (crops cut by PyTorch) is what a CUDA backend runs; on the CPU it must agree closely too
    got = fp32.encode_frames([small[0]], [np.ones(49, bool)])
    assert centered_cosine(got, ref).min() > 0.999


def test_device_and_precision_flags_are_for_checkpoints(tiny_bundle):
    with pytest.raises(UserError, match="--device"):
        open_backend(tiny_bundle.with_name("model.onnx"), device="cuda")
    with pytest.raises(UserError, match="unknown --device"):
        open_backend(tiny_bundle.with_name("model.pt"), device="tpu")
    with pytest.raises(UserError, match="precision"):
        open_backend(tiny_bundle.with_name("model.pt"), precision="fp8")


# --- CUDA (the `gpu` marker skips these where PyTorch sees no GPU) --------------------------------------------------


@pytest.mark.gpu
def test_cuda_fp16_graph_encoder_matches_the_cpu_reference(tiny_bundle):
    cpu, _ = open_backend(tiny_bundle.with_name("model.pt"))
    gpu, _ = open_backend(tiny_bundle.with_name("model.pt"), device="cuda", max_batch=8)
    assert gpu.name == "torch-cuda-fp16" and gpu.gpu_preprocessing
    rng = np.random.default_rng(0)
    images = rng.standard_normal((11, 3, 224, 224)).astype(np.float32)  # 8 + 3: two buckets, one padded
    ref = cpu.encode(images)
    got = gpu.encode(images)
    assert centered_cosine(got, ref).min() > 0.999
    np.testing.assert_array_equal(gpu.encode(images[:3]), got[8:11])  # a graph replays the same result
    assert sorted(gpu._encoder._graphs) == [4, 8]  # 11 crops = 8 + 3 (padded to 4)


@pytest.mark.gpu
def test_cuda_detector_with_gpu_preprocessing_matches_onnx_runtime(tiny_bundle):
    from stprompt.runtime.detector import Detector

    smalls = frames224(6, seed=3)
    ort_backend, manifest = open_backend(tiny_bundle.with_name("model.onnx"))
    gpu, _ = open_backend(tiny_bundle.with_name("model.pt"), device="cuda")

    def scores(backend):
        det = Detector(backend, manifest)
        events = []
        for i in range(6 * 16):
            events += det.feed(smalls[i // 16], source="s")
        events += det.finish("s")
        return np.array([e["score"] for e in events if e["type"] == "frame"])

    np.testing.assert_allclose(scores(gpu), scores(ort_backend), atol=5e-3)
