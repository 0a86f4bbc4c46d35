"""Encoder-batch kernels: bit-identical to the NumPy normalisation of the window crops, for any mask."""

import numpy as np
import pytest

from stprompt import windows
from stprompt.bundle.preprocess import DEFAULT
from stprompt.kernels.normalize import normalize_frames, normalize_tiles


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("scale", [windows.SCALE_A, windows.SCALE_B])
def test_fill_encoder_batch_is_bit_identical_to_normalize(seed, scale):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    mask = rng.random(scale.count) < 0.6 if seed else np.ones(scale.count, bool)
    out = np.full((1 + scale.count, 3, 224, 224), np.nan, np.float32)
    rows = windows.fill_encoder_batch(small, out, mask, scale)
    crops = np.concatenate([small[None], windows.window_crops_reference(small, scale)[mask]])
    assert rows == len(crops)
    np.testing.assert_array_equal(out[:rows], windows.normalize(crops))
    assert np.isnan(out[rows:]).all()  # nothing written past the kept rows


def test_normalize_frames_takes_strided_input():
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (2, 10, 12, 3), dtype=np.uint8)
    view = big[:, ::2, 1::2]  # non-contiguous
    out = np.empty((2, 3, 5, 6), np.float32)
    normalize_frames(view, out, DEFAULT.gain, DEFAULT.bias)
    expected = windows.normalize(np.ascontiguousarray(view), out=np.empty((2, 3, 5, 6), np.float32))
    np.testing.assert_array_equal(out, expected)


def test_shape_mistakes_are_refused():
    gain, bias = DEFAULT.gain, DEFAULT.bias
    with pytest.raises(ValueError):
        normalize_frames(np.zeros((1, 4, 4, 3), np.uint8), np.empty((1, 3, 4, 5), np.float32), gain, bias)
    tiles = np.zeros((2, 3, 2, 3, 3), np.uint8)
    with pytest.raises(ValueError):
        normalize_tiles(tiles, np.ones(4, bool), np.empty((3, 3, 3, 3), np.float32), gain, bias)
    with pytest.raises(ValueError):
        windows.fill_encoder_batch(np.zeros((224, 224, 3), np.uint8), np.empty((10, 3, 224, 224), np.float32))
