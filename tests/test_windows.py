import numpy as np
import pytest

from stprompt import windows
from stprompt.bundle.preprocess import OPENAI_MEAN as MEAN_RGB
from stprompt.bundle.preprocess import OPENAI_STD as STD_RGB
from stprompt.sampling import snippet_frame_indices


@pytest.mark.parametrize("scale", [windows.SCALE_A, windows.SCALE_B, windows.WindowScale(56, 56)])
def test_one_resize_mosaic_equals_per_window_resize(scale):
    rng = np.random.default_rng(3)
    for shape in [(224, 224, 3), (360, 640, 3), (97, 131, 3)]:
        small = windows.resize_frame(rng.integers(0, 256, shape, dtype=np.uint8))
        fast = windows.window_crops(small, scale)
        ref = windows.window_crops_reference(small, scale)
        assert fast.shape == (scale.count, 224, 224, 3)
        np.testing.assert_array_equal(fast, ref)


def test_geometry_matches_spec():
    assert (windows.SCALE_A.grid, windows.SCALE_B.grid) == (7, 4)
    b = windows.SCALE_B.boxes()
    assert b[0].tolist() == [0, 0, 80, 80]
    assert b[1].tolist() == [48, 0, 128, 80]  # row-major: second window is to the right
    assert b[-1].tolist() == [144, 144, 224, 224]
    fb = windows.SCALE_A.frame_boxes(640, 360)
    assert fb[-1].tolist() == pytest.approx([640 * 192 / 224, 360 * 192 / 224, 640, 360])
    with pytest.raises(ValueError):
        windows.WindowScale(50, 48)


def test_normalize_is_rgb_clip_mean_std():
    crops = np.zeros((1, 224, 224, 3), np.uint8)
    crops[..., 0] = 255  # blue in BGR
    out = windows.normalize(crops)
    assert out.shape == (1, 3, 224, 224) and out.dtype == np.float32
    expected_rgb = [(0 - MEAN_RGB[0]) / STD_RGB[0], (0 - MEAN_RGB[1]) / STD_RGB[1], (1 - MEAN_RGB[2]) / STD_RGB[2]]
    np.testing.assert_allclose(out[0, :, 5, 7], expected_rgb, rtol=1e-6)


def test_encoder_batch_order_full_frame_then_windows():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    batch = windows.encoder_batch(frame, scale_b=True)
    assert batch.shape == (1 + 49 + 16, 3, 224, 224)
    small = windows.resize_frame(frame)
    np.testing.assert_array_equal(batch[0], windows.normalize(small[None])[0])
    np.testing.assert_array_equal(
        batch[1 + 8], windows.normalize(windows.window_crops_reference(small, windows.SCALE_A)[8:9])[0]
    )
    np.testing.assert_array_equal(
        batch[50 + 5], windows.normalize(windows.window_crops_reference(small, windows.SCALE_B)[5:6])[0]
    )


def test_snippet_indices_drop_the_tail():
    assert snippet_frame_indices(50, 16).tolist() == [8, 24, 40]
    assert snippet_frame_indices(15, 16).tolist() == []
    assert snippet_frame_indices(8, 4).tolist() == [2, 6]


@pytest.mark.parametrize("keep", [None, [0, 3, 10, 47, 48], []])
def test_uint8_crops_normalise_to_the_float_batch_exactly(keep):
    """Engines that normalise on their device get the same rows as uint8 BGR: the full frame, then the kept windows
    (scale A; scale B for localization), which `normalize` turns into the float32 batch bit for bit."""
    frame = np.random.default_rng(5).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    small = windows.resize_frame(frame)
    mask = None if keep is None else np.isin(np.arange(49), keep)
    floats, pixels = np.empty((50, 3, 224, 224), np.float32), np.empty((50, 224, 224, 3), np.uint8)
    rows = windows.fill_encoder_batch(small, floats, mask)
    assert windows.fill_pixel_batch(small, pixels, mask) == rows == (50 if keep is None else 1 + len(keep))
    assert np.array_equal(windows.normalize(pixels[:rows]).view(np.uint32), floats[:rows].view(np.uint32))
    scale_b = windows.SCALE_B
    b_float = np.empty((scale_b.count, 3, 224, 224), np.float32)
    b_pixels = np.empty((scale_b.count, 224, 224, 3), np.uint8)
    windows.fill_windows(small, scale_b, b_float)
    assert windows.fill_pixel_windows(small, scale_b, b_pixels) == scale_b.count
    assert np.array_equal(windows.normalize(b_pixels).view(np.uint32), b_float.view(np.uint32))


def test_pixel_batch_is_the_encoder_batch_before_normalisation():
    """stp-run --check compares backends on these uint8 crops: each backend normalises them its own way."""
    frame = np.random.default_rng(3).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    pixels = windows.pixel_batch(frame)
    assert pixels.shape == (50, 224, 224, 3) and pixels.dtype == np.uint8
    assert np.array_equal(windows.normalize(pixels), windows.encoder_batch(frame))
