"""Heat map -> boxes on a 1080p map: Numba kernel vs the OpenCV/NumPy reference (run with --benchmark-only)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stprompt.kernels.boxes import boxes_reference, extract_boxes, warmup

# Thresholds giving a dense (~37% of pixels) and a sparse (~6%) map, each with 5-20 blobs for this seed.
THRESHOLDS = (0.6, 0.8)
MIN_AREA = 16


@pytest.fixture(scope="module")
def heat_1080p() -> np.ndarray:
    """Smooth anomaly-like map: blurred low-res noise upsampled to 1920x1080, rescaled to [0, 1]."""
    rng = np.random.default_rng(0)
    low = cv2.GaussianBlur(rng.random((135, 240)).astype(np.float32), (0, 0), 6)
    heat = cv2.resize(low, (1920, 1080), interpolation=cv2.INTER_LINEAR)
    heat = (heat - heat.min()) / (heat.max() - heat.min())
    for thr in THRESHOLDS:  # sanity of the workload, not of timing
        assert 5 <= len(boxes_reference(heat, thr, MIN_AREA)) <= 20
    warmup()  # compile (or load from the disk cache) before timing
    return np.ascontiguousarray(heat, dtype=np.float32)


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_bench_extract_boxes_numba(benchmark, heat_1080p: np.ndarray, threshold: float) -> None:
    benchmark.group = f"boxes-1080p-thr{threshold}"
    out = benchmark(extract_boxes, heat_1080p, threshold, MIN_AREA)
    np.testing.assert_array_equal(out, boxes_reference(heat_1080p, threshold, MIN_AREA))


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_bench_boxes_reference(benchmark, heat_1080p: np.ndarray, threshold: float) -> None:
    benchmark.group = f"boxes-1080p-thr{threshold}"
    benchmark(boxes_reference, heat_1080p, threshold, MIN_AREA)
