"""Motion gating kernel (per-window mean absolute pixel change) against its NumPy definition."""

import numpy as np
import pytest

from stprompt.kernels.motion import window_change, window_change_reference


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("side", "size", "stride"), [(224, 32, 32), (224, 80, 48), (12, 4, 4), (9, 3, 2)])
def test_kernel_equals_reference(seed, side, size, stride):
    rng = np.random.default_rng(seed)
    cur = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    ref = cur.copy()
    changed = rng.random(cur.shape[:2]) < rng.random()  # a random share of pixels changes, by any amount
    ref[changed] = rng.integers(0, 256, (int(changed.sum()), 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        window_change(cur, ref, size, stride), window_change_reference(cur, ref, size, stride)
    )


def test_values_are_mean_absolute_grey_levels_per_window():
    cur = np.zeros((224, 224, 3), np.uint8)
    ref = cur.copy()
    ref[:32, :32] = 10  # window 0: every value differs by 10
    ref[32:64, 32:48, 0] = 255  # window 8: half the pixels of one channel differ by 255 -> 255 / 6 = 42.5
    cur[200:, 200:] = 1  # window 48: a 24x24 corner differs by 1 -> 576 / 1024
    change = window_change(cur, ref, 32, 32)
    expected = np.zeros(49, np.float32)
    expected[0], expected[8], expected[48] = 10, 42.5, 576 / 1024
    np.testing.assert_allclose(change, expected, rtol=1e-6)


def test_identical_frames_have_zero_change_and_bad_inputs_are_refused():
    img = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    assert not window_change(img, img.copy(), 32, 32).any()
    with pytest.raises(ValueError):
        window_change(img, img[:100], 32, 32)
    with pytest.raises(ValueError):
        window_change(img.astype(np.float32), img.astype(np.float32), 32, 32)
