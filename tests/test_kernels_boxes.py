"""The Numba box kernel must equal the OpenCV reference exactly, and both must match hand-computed boxes."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from stprompt.kernels.boxes import _boxes_kernel, boxes_reference, extract_boxes, warmup

THRESHOLDS = (0.2, 0.45, 0.6, 0.75, 0.9)
MIN_AREAS = (1, 3, 25)


def smooth_noise(rng: np.random.Generator, h: int, w: int, sigma: float, dtype=np.float32) -> np.ndarray:
    """Blurred uniform noise rescaled to [0, 1]: blobs of many shapes (U's, rings, branches) at mid thresholds."""
    noise = rng.random((h, w)).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), sigma)
    lo, hi = float(blurred.min()), float(blurred.max())
    out = (blurred - lo) / (hi - lo) if hi > lo else np.zeros_like(blurred)
    return out.astype(dtype)


def assert_same(heat: np.ndarray, threshold: float, min_area: int = 1) -> np.ndarray:
    ref = boxes_reference(heat, threshold, min_area)
    got = extract_boxes(heat, threshold, min_area)
    assert got.dtype == np.float32 and got.ndim == 2 and got.shape[1] == 5
    np.testing.assert_array_equal(got, ref, err_msg=f"shape={heat.shape} thr={threshold} min_area={min_area}")
    return got


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    warmup()


# --- kernel == reference on random maps -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_reference_smoothed_noise(seed: int, dtype) -> None:
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(20, 130)), int(rng.integers(20, 130))
    heat = smooth_noise(rng, h, w, sigma=float(rng.uniform(1.0, 4.0)), dtype=dtype)
    n_boxes = 0
    for thr in THRESHOLDS:
        for min_area in MIN_AREAS:
            n_boxes += len(assert_same(heat, thr, min_area))
    assert n_boxes > 0


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_large_blobs(seed: int) -> None:
    """Large, winding blobs whose runs are joined late (U-shapes, spirals) exercise the union-find merges."""
    rng = np.random.default_rng(100 + seed)
    heat = smooth_noise(rng, 240, 320, sigma=6.0)
    for thr in np.linspace(0.3, 0.8, 11):
        got = assert_same(heat, float(thr), 1)
        assert len(got) > 0


@pytest.mark.parametrize("density", [0.2, 0.4, 0.5, 0.6])
def test_matches_reference_salt_noise(density: float) -> None:
    """Unsmoothed random pixels: many tiny components joined only through corners."""
    rng = np.random.default_rng(int(density * 100))
    heat = (rng.random((97, 131)) < density).astype(np.float32) * rng.random((97, 131)).astype(np.float32)
    for min_area in (1, 2, 10):
        assert_same(heat, 1e-6, min_area)


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 1), (1, 57), (57, 1), (2, 2), (3, 1000), (1000, 3)])
def test_matches_reference_odd_sizes(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for heat in (rng.random(shape).astype(np.float32), smooth_noise(rng, *shape, sigma=1.5)):
        for thr in (0.0, 0.3, 0.5, 0.7, 1.0):
            for min_area in (1, 2):
                assert_same(heat, thr, min_area)


def test_matches_reference_with_nans() -> None:
    rng = np.random.default_rng(7)
    for _ in range(5):
        heat = smooth_noise(rng, 80, 90, sigma=2.5)
        heat[rng.random(heat.shape) < 0.05] = np.nan
        heat[:, 40] = np.nan  # a NaN wall must split blobs
        for thr in THRESHOLDS:
            got = assert_same(heat, thr, 1)
            assert not np.isnan(got).any()


# --- hand-constructed cases ----------------------------------------------------------------------------------------


def test_two_rectangles_exact() -> None:
    heat = np.zeros((50, 60), np.float32)
    heat[5:15, 10:30] = 0.6
    heat[7, 12] = 0.8
    heat[30:45, 40:55] = 0.95
    for fn in (extract_boxes, boxes_reference):
        got = fn(heat, 0.5)
        expected = np.array([[40, 30, 55, 45, 0.95], [10, 5, 30, 15, 0.8]], np.float32)
        np.testing.assert_array_equal(got, expected)


def test_all_below_and_all_above() -> None:
    heat = np.full((13, 17), 0.4, np.float32)
    for fn in (extract_boxes, boxes_reference):
        below = fn(heat, 0.5)
        assert below.shape == (0, 5) and below.dtype == np.float32
        np.testing.assert_array_equal(fn(heat, 0.4), np.array([[0, 0, 17, 13, 0.4]], np.float32))
        np.testing.assert_array_equal(fn(np.zeros((13, 17)), 0.0), np.array([[0, 0, 17, 13, 0.0]], np.float32))


def test_diagonal_only_is_one_component() -> None:
    checker = (np.indices((9, 11)).sum(axis=0) % 2 == 0).astype(np.float32)
    diag = np.eye(12, dtype=np.float32)
    anti = np.fliplr(diag).copy()  # each pixel touches the previous row only at its upper-right corner
    zigzag = np.zeros((6, 10), np.float32)
    zigzag[[0, 1, 0, 1, 0, 1, 0, 1, 0, 1], np.arange(10)] = 1.0
    cases = ((checker, [0, 0, 11, 9]), (diag, [0, 0, 12, 12]), (anti, [0, 0, 12, 12]), (zigzag, [0, 0, 10, 2]))
    for heat, box in cases:
        for fn in (extract_boxes, boxes_reference):
            np.testing.assert_array_equal(fn(heat, 0.5), np.array([[*box, 1.0]], np.float32))


def test_u_and_comb_shapes_merge() -> None:
    """Arms that start as separate runs and only meet lower down (U, comb, spiral) must end up as one box."""
    u = np.zeros((10, 10), np.float32)
    u[1:9, 1] = 0.7
    u[1:9, 8] = 0.9
    u[8, 1:9] = 0.7
    comb = np.zeros((8, 21), np.float32)
    comb[0:7, 0:21:2] = 0.6
    comb[7, :] = 0.6
    comb[0, 20] = 0.65
    spiral = np.zeros((11, 11), np.float32)
    spiral[0, :] = spiral[:, 10] = spiral[10, :] = spiral[2:, 0] = spiral[2, 0:9] = 1.0
    spiral[2:9, 8] = spiral[8, 2:9] = spiral[4:9, 2] = spiral[4, 2:7] = 1.0
    for heat, expected in (
        (u, [1, 1, 9, 9, 0.9]),
        (comb, [0, 0, 21, 8, 0.65]),
        (spiral, [0, 0, 11, 11, 1.0]),
    ):
        for fn in (extract_boxes, boxes_reference):
            np.testing.assert_array_equal(fn(heat, 0.5), np.array([expected], np.float32))


def test_min_area_filtering() -> None:
    heat = np.zeros((20, 40), np.float32)
    heat[1, 1] = 0.9  # area 1
    heat[5:7, 5:7] = 0.8  # area 4
    heat[10:13, 20:25] = 0.7  # area 15
    areas_to_boxes = {
        1: [[1, 1, 2, 2, 0.9], [5, 5, 7, 7, 0.8], [20, 10, 25, 13, 0.7]],
        2: [[5, 5, 7, 7, 0.8], [20, 10, 25, 13, 0.7]],
        4: [[5, 5, 7, 7, 0.8], [20, 10, 25, 13, 0.7]],
        5: [[20, 10, 25, 13, 0.7]],
        15: [[20, 10, 25, 13, 0.7]],
        16: np.zeros((0, 5)),
    }
    for min_area, expected in areas_to_boxes.items():
        for fn in (extract_boxes, boxes_reference):
            np.testing.assert_array_equal(fn(heat, 0.5, min_area), np.asarray(expected, np.float32).reshape(-1, 5))
    for min_area in (0, -3):  # below 1 keeps everything
        np.testing.assert_array_equal(extract_boxes(heat, 0.5, min_area), extract_boxes(heat, 0.5, 1))


def test_tie_order() -> None:
    """Equal scores: (y1, x1) ascending, then (y2, x2) -- including two components sharing a top-left corner."""
    heat = np.zeros((12, 12), np.float32)
    heat[0, 0] = 0.5  # box (0, 0, 1, 1)
    heat[0, 3] = heat[1:3, 3] = heat[3, 0:4] = 0.5  # L around it: box (0, 0, 4, 4), same corner
    heat[8, 9] = 0.5
    heat[8, 5] = 0.5
    heat[10, 1] = 0.9
    expected = np.array(
        [[1, 10, 2, 11, 0.9], [0, 0, 1, 1, 0.5], [0, 0, 4, 4, 0.5], [5, 8, 6, 9, 0.5], [9, 8, 10, 9, 0.5]], np.float32
    )
    for fn in (extract_boxes, boxes_reference):
        np.testing.assert_array_equal(fn(heat, 0.5), expected)


def test_threshold_is_inclusive_and_exact() -> None:
    """``heat >= threshold`` in float64: float32(0.1) is above 0.1, the float32 just below it is not."""
    below = np.nextafter(np.float32(0.1), np.float32(0))
    heat = np.array([[np.float32(0.1), 0, below]], np.float32)
    for fn in (extract_boxes, boxes_reference):
        np.testing.assert_array_equal(fn(heat, 0.1), np.array([[0, 0, 1, 1, np.float32(0.1)]], np.float32))
        assert fn(heat, np.nan).shape == (0, 5)
        assert fn(heat, 1).shape == (0, 5)  # integer thresholds are accepted


# --- input handling ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((2, 3, 4)), np.float32(0.5)])
def test_rejects_non_2d(bad) -> None:
    for fn in (extract_boxes, boxes_reference):
        with pytest.raises(ValueError, match="2-D"):
            fn(bad, 0.5)


def test_converts_other_inputs() -> None:
    rng = np.random.default_rng(3)
    base = smooth_noise(rng, 40, 70, sigma=2.0)
    expected = extract_boxes(base, 0.6, 2)
    assert len(expected) > 0
    np.testing.assert_array_equal(extract_boxes(np.asfortranarray(base), 0.6, 2), expected)
    np.testing.assert_array_equal(extract_boxes(base.tolist(), 0.6, 2), expected)  # float64, same values
    padded = np.zeros((40, 140), np.float32)
    padded[:, ::2] = base  # strided, non-contiguous view below
    np.testing.assert_array_equal(extract_boxes(padded[:, ::2], 0.6, 2), expected)
    for other in ((base * 255).astype(np.uint8), base.astype(np.float16), base > 0.6):
        assert_same(other, 0.6 * 255 if other.dtype == np.uint8 else 0.6, 2)
    for empty in (np.zeros((0, 4), np.float32), np.zeros((3, 0))):
        for fn in (extract_boxes, boxes_reference):
            assert fn(empty, 0.5).shape == (0, 5)


# --- runtime properties --------------------------------------------------------------------------------------------


def test_kernel_releases_gil_and_is_thread_safe() -> None:
    assert _boxes_kernel.targetoptions.get("nogil") is True
    rng = np.random.default_rng(11)
    maps = [smooth_noise(rng, 120, 160, sigma=3.0) for _ in range(16)]
    serial = [extract_boxes(m, 0.6, 4) for m in maps]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda m: extract_boxes(m, 0.6, 4), maps))
    for a, b in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(a, b)


def test_import_does_not_pull_torch() -> None:
    code = "import sys, stprompt.kernels; stprompt.kernels.warmup(); assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_imports_without_writable_cache(tmp_path) -> None:
    """A read-only appliance (no cache locator at all) must still import, with one warning and no disk cache."""
    (tmp_path / "nolocator.py").write_text(
        "class Never:\n    @classmethod\n    def from_function(cls, py_func, source_path):\n        return None\n"
    )
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import stprompt.kernels.boxes as b\n"
        "assert len(caught) == 1 and 'NUMBA_CACHE_DIR' in str(caught[0].message), caught\n"
        "assert type(b._boxes_kernel._cache).__name__ == 'NullCache'\n"
    )
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "nolocator.Never", "PYTHONPATH": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, env=env, cwd=tmp_path)
