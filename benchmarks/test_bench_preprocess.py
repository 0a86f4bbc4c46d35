"""Per sampled frame preprocessing: encoder batch built in place by the Numba kernels vs NumPy, and the gate kernel.

    python -m pytest benchmarks/test_bench_preprocess.py --benchmark-only
"""

import numpy as np
import pytest

from stprompt import windows
from stprompt.kernels.motion import window_change, window_change_reference

SMALL = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
OTHER = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)


def test_encoder_batch_in_place_kernels(benchmark):
    out = np.empty((50, 3, 224, 224), np.float32)
    windows.fill_encoder_batch(SMALL, out)
    benchmark(windows.fill_encoder_batch, SMALL, out)


def test_encoder_batch_numpy(benchmark):
    def numpy_batch():
        return windows.normalize(np.concatenate([SMALL[None], windows.window_crops(SMALL, windows.SCALE_A)]))

    benchmark(numpy_batch)


@pytest.mark.parametrize("impl", ["numba", "numpy"])
def test_window_change(benchmark, impl):
    fn = window_change if impl == "numba" else window_change_reference
    fn(SMALL, OTHER, 32, 32)
    benchmark(fn, SMALL, OTHER, 32, 32)
