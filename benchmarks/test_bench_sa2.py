"""SA2 at ViT-B/16 size (W = 49, D = 512): Numba kernels vs the NumPy reference vs torch (run with --benchmark-only).

Two groups: one snippet from its neighbours (what the streaming runtime does per snippet; the baselines run SA2 on
the 3-snippet window and keep the middle row) and a whole T = 256 sequence.
"""

from __future__ import annotations

import numpy as np
import pytest

from stprompt.kernels.sa2 import sa2_reference, sa2_sequence, sa2_step, warmup

W, D, T = 49, 512, 256


@pytest.fixture(scope="module")
def x_patch() -> np.ndarray:
    warmup()  # compile (or load from the disk cache) before timing
    return np.random.default_rng(0).standard_normal((T, W, D)).astype(np.float32)


@pytest.fixture(scope="module")
def x_torch(x_patch: np.ndarray):
    torch = pytest.importorskip("torch")
    return torch.from_numpy(x_patch)[None]


def _torch_sa2():
    pytest.importorskip("torch")
    from stprompt.model.sa2 import sa2

    return sa2


# --- one snippet ---------------------------------------------------------------------------------------------------


def test_bench_sa2_step_numba(benchmark, x_patch: np.ndarray) -> None:
    benchmark.group = "sa2-step-W49-D512"
    prev, cur, nxt = x_patch[9], x_patch[10], x_patch[11]
    out = benchmark(sa2_step, prev, cur, nxt)
    np.testing.assert_allclose(out, sa2_reference(x_patch[9:12])[1], rtol=1e-5, atol=1e-6)


def test_bench_sa2_step_reference(benchmark, x_patch: np.ndarray) -> None:
    benchmark.group = "sa2-step-W49-D512"
    window = x_patch[9:12]
    benchmark(lambda: sa2_reference(window)[1])


def test_bench_sa2_step_torch(benchmark, x_torch) -> None:
    benchmark.group = "sa2-step-W49-D512"
    sa2 = _torch_sa2()
    window = x_torch[:, 9:12]
    benchmark(lambda: sa2(window)[0, 1])


# --- whole sequence ------------------------------------------------------------------------------------------------


def test_bench_sa2_sequence_numba(benchmark, x_patch: np.ndarray) -> None:
    benchmark.group = "sa2-sequence-T256-W49-D512"
    out = benchmark(sa2_sequence, x_patch)
    np.testing.assert_allclose(out, sa2_reference(x_patch), rtol=1e-5, atol=1e-6)


def test_bench_sa2_sequence_reference(benchmark, x_patch: np.ndarray) -> None:
    benchmark.group = "sa2-sequence-T256-W49-D512"
    benchmark(sa2_reference, x_patch)


def test_bench_sa2_sequence_torch(benchmark, x_torch) -> None:
    benchmark.group = "sa2-sequence-T256-W49-D512"
    sa2 = _torch_sa2()
    benchmark(sa2, x_torch)
