"""SA2 kernels: Numba == NumPy reference == the PyTorch model's `sa2`, the lowest-index tie rule, a hand case."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from stprompt.kernels.sa2 import sa2_reference, sa2_sequence, sa2_step, warmup
from stprompt.model.sa2 import sa2 as sa2_torch

W = 49
TOL = {"rtol": 1e-5, "atol": 1e-6}


def torch_sa2(x: np.ndarray, k: int = 12) -> np.ndarray:
    return sa2_torch(torch.from_numpy(np.ascontiguousarray(x, np.float32))[None], k=k)[0].numpy()


def assert_all_agree(x: np.ndarray, k: int = 12) -> np.ndarray:
    got = sa2_sequence(x, k)
    ref = sa2_reference(x, k)
    assert got.dtype == np.float32 and got.shape == (x.shape[0], x.shape[2])
    assert ref.dtype == np.float32 and ref.shape == got.shape
    np.testing.assert_allclose(got, ref, **TOL)
    np.testing.assert_allclose(got, torch_sa2(x, k), **TOL)
    return got


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    warmup()


# --- kernel == reference == torch on random inputs ----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("d", [8, 64])
@pytest.mark.parametrize("t", [1, 2, 3, 17])
def test_random_matches_reference_and_torch(t: int, d: int, seed: int) -> None:
    x = np.random.default_rng(seed * 1000 + t * 10 + d).standard_normal((t, W, d)).astype(np.float32)
    assert_all_agree(x)


@pytest.mark.parametrize("k", [1, 2, 5, 48, 49])
def test_other_k_matches_torch(k: int) -> None:
    x = np.random.default_rng(k).standard_normal((9, W, 16)).astype(np.float32)
    assert_all_agree(x, k)


def test_k_equal_w_is_softmax_over_all_windows() -> None:
    x = np.random.default_rng(7).standard_normal((4, 5, 3)).astype(np.float32)
    got = sa2_sequence(x, 5)
    np.testing.assert_allclose(got, sa2_reference(x, 5), **TOL)
    np.testing.assert_allclose(got, torch_sa2(x, 5), **TOL)


@pytest.mark.parametrize("t", [1, 2, 3, 17])
def test_step_equals_sequence_row(t: int) -> None:
    x = np.random.default_rng(t).standard_normal((t, W, 64)).astype(np.float32)
    seq = sa2_sequence(x)
    for i in range(t):
        prev, nxt = x[max(i - 1, 0)], x[min(i + 1, t - 1)]  # replicate ends: the snippet stands in for itself
        out = sa2_step(prev, x[i], nxt)
        assert out.dtype == np.float32 and out.shape == (64,)
        np.testing.assert_array_equal(out, seq[i], err_msg=f"i={i}")
    # The ends written out explicitly: the first snippet is its own predecessor, the last its own successor.
    np.testing.assert_array_equal(sa2_step(x[0], x[0], x[min(1, t - 1)]), seq[0])
    np.testing.assert_array_equal(sa2_step(x[max(t - 2, 0)], x[t - 1], x[t - 1]), seq[t - 1])


def test_streaming_ring_buffer_reproduces_offline() -> None:
    """Emit snippet i when i + 1 arrives, and the last one at end of stream: same rows as the whole sequence."""
    x = np.random.default_rng(3).standard_normal((11, W, 32)).astype(np.float32)
    ring: list[np.ndarray] = []
    emitted: list[np.ndarray] = []
    for snippet in x:
        ring = (ring + [snippet])[-3:]
        if len(ring) >= 2:
            cur, nxt = ring[-2], ring[-1]
            prev = ring[-3] if len(ring) == 3 else cur
            emitted.append(sa2_step(prev, cur, nxt))
    emitted.append(sa2_step(ring[-2] if len(ring) >= 2 else ring[-1], ring[-1], ring[-1]))
    np.testing.assert_array_equal(np.stack(emitted), sa2_sequence(x))


# --- ties: the lowest window index wins ---------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1, 2, 5])
def test_static_scene_keeps_windows_0_to_11_equally(t: int) -> None:
    frame = np.random.default_rng(0).standard_normal((W, 8)).astype(np.float32)
    x = np.repeat(frame[None], t, axis=0)
    got = assert_all_agree(x)
    expected = frame[:12].astype(np.float64).mean(axis=0)
    for i in range(t):
        np.testing.assert_allclose(got[i], expected, **TOL)


def test_exact_ties_across_top12_boundary() -> None:
    """Integer data so every motion norm is exact in every implementation; ties straddle the 12th place.

    Snippet 1's motion per window (|2 x1 - x0 - x2| with x0 = x2 = 0, D = 1): 10 windows at 5 (indexes spread out),
    then 6 windows at 3 -- only the 2 lowest-indexed of those 6 fit -- and the rest at 1.
    """
    mo = np.ones(W)
    high = [3, 7, 11, 15, 20, 22, 30, 31, 40, 48]
    tied = [2, 9, 13, 27, 35, 44]
    mo[high] = 5.0
    mo[tied] = 3.0
    x = np.zeros((3, W, 1), np.float32)
    x[1, :, 0] = (mo / 2.0).astype(np.float32)
    # D = 1: x_AS[1] is the softmax-weighted mean of the kept windows' values (mo / 2); which of the tied windows are
    # kept is checked by the next test, which tags every window.
    got = assert_all_agree(x)
    kept = sorted(high + tied[:2])
    att = np.exp(mo[kept] - mo[kept].max())
    att /= att.sum()
    np.testing.assert_allclose(got[1, 0], (att * mo[kept] / 2.0).sum(), **TOL)


def test_exact_ties_identify_the_kept_windows() -> None:
    """Same tie layout with D = 2: channel 1 is constant in time (no motion) and tags each window with its index."""
    mo = np.ones(W)
    high = [0, 5, 6, 17, 18, 19, 25, 33, 34, 47]
    tied = [1, 4, 10, 21, 46]
    mo[high] = 4.0
    mo[tied] = 2.0
    x = np.zeros((3, W, 2), np.float32)
    x[1, :, 0] = mo / 2.0
    x[:, :, 1] = np.arange(W, dtype=np.float32)[None] * 1000.0  # static: adds nothing to the motion
    got = assert_all_agree(x)
    kept = sorted(high + tied[:2])  # windows 1 and 4 win the tie, 10, 21 and 46 do not
    att = np.exp(mo[kept] - mo[kept].max())
    att /= att.sum()
    np.testing.assert_allclose(got[1, 1], (att * np.array(kept) * 1000.0).sum(), rtol=1e-6)
    # Snippets 0 and 2 (replicate ends) see motion |x1 - x0| = |x1 - x2| = mo / 2: same ranking, same tie winners.
    att_end = np.exp(mo[kept] / 2.0 - mo[kept].max() / 2.0)
    att_end /= att_end.sum()
    np.testing.assert_allclose(got[0, 1], (att_end * np.array(kept) * 1000.0).sum(), rtol=1e-6)


# --- hand-computed tiny case --------------------------------------------------------------------------------------


def test_hand_computed_tiny_case() -> None:
    # W = 3 windows, D = 1, T = 3 snippets: w0 = [0, 0.5, 5], w1 = [0, 1, 0], w2 = [1, 1, 3.5] over time.
    x = np.array([[0.0, 0.5, 5.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.5]], np.float32).T[:, :, None]  # [T=3, W=3, 1]
    # Motion rows (replicate ends): i=0: |x0 - x1|, i=1: |2 x1 - x0 - x2|, i=2: |x2 - x1|.
    mo = np.array([[0.5, 1.0, 0.0], [4.0, 2.0, 2.5], [4.5, 1.0, 2.5]])

    def softmax(v: np.ndarray) -> np.ndarray:
        e = np.exp(v - v.max())
        return e / e.sum()

    expected = np.array(
        [
            softmax(np.array([1.0, 0.5])) @ np.array([0.0, 0.0]),  # i=0 keeps w1, w0
            softmax(np.array([4.0, 2.5])) @ np.array([0.5, 1.0]),  # i=1 keeps w0, w2
            softmax(np.array([4.5, 2.5])) @ np.array([5.0, 3.5]),  # i=2 keeps w0, w2
        ]
    )[:, None]
    assert mo.shape == (3, 3)
    got = assert_all_agree(x, k=2)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[1, 0], (np.exp(4.0) * 0.5 + np.exp(2.5) * 1.0) / (np.exp(4.0) + np.exp(2.5)), 1e-6)
    np.testing.assert_array_equal(sa2_step(x[0], x[1], x[2], k=2), got[1])


# --- input handling -----------------------------------------------------------------------------------------------


def test_float64_and_non_contiguous_inputs() -> None:
    base = np.random.default_rng(5).standard_normal((6, 16, W)).astype(np.float32)
    x = base.transpose(0, 2, 1)  # [6, W, 16], not C-contiguous
    assert not x.flags.c_contiguous
    expected = sa2_sequence(np.ascontiguousarray(x))
    np.testing.assert_array_equal(sa2_sequence(x), expected)
    np.testing.assert_array_equal(sa2_sequence(x.astype(np.float64)), expected)
    np.testing.assert_array_equal(sa2_reference(x), sa2_reference(np.ascontiguousarray(x)))
    np.testing.assert_array_equal(sa2_step(x[1].astype(np.float64), x[2], x[3]), expected[2])


def test_empty_sequence() -> None:
    x = np.zeros((0, W, 8), np.float32)
    assert sa2_sequence(x).shape == (0, 8)
    assert sa2_reference(x).shape == (0, 8)


@pytest.mark.parametrize("shape", [(W, 8), (2, 3, W, 8), (W,)])
def test_wrong_ndim_raises(shape: tuple[int, ...]) -> None:
    x = np.zeros(shape, np.float32)
    with pytest.raises(ValueError):
        sa2_sequence(x)
    with pytest.raises(ValueError):
        sa2_reference(x)


def test_step_bad_shapes_raise() -> None:
    a = np.zeros((W, 8), np.float32)
    with pytest.raises(ValueError):
        sa2_step(a[None], a, a)
    with pytest.raises(ValueError):
        sa2_step(a, a, a[:, :4])


@pytest.mark.parametrize("k", [0, -1, W + 1, 2.5, True])
def test_bad_k_raises(k) -> None:
    x = np.zeros((3, W, 8), np.float32)
    for fn in (sa2_sequence, sa2_reference):
        with pytest.raises(ValueError):
            fn(x, k)
    with pytest.raises(ValueError):
        sa2_step(x[0], x[1], x[2], k)


def test_threads_give_identical_results() -> None:
    """nogil kernels called from worker threads (as the runtime does) give the same rows as serial calls."""
    xs = [np.random.default_rng(s).standard_normal((20, W, 64)).astype(np.float32) for s in range(8)]
    serial = [sa2_sequence(x) for x in xs]
    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(sa2_sequence, xs))
    for a, b in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(a, b)


def test_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from stprompt.kernels.sa2 import sa2_sequence, sa2_step, sa2_reference\n"
        "x = np.random.default_rng(0).standard_normal((4, 49, 8)).astype(np.float32)\n"
        "np.testing.assert_allclose(sa2_sequence(x), sa2_reference(x), rtol=1e-5, atol=1e-6)\n"
        "assert sa2_step(x[0], x[1], x[2]).shape == (8,)\n"
        "assert sys.modules['torch'] is None\n"
        "print('ok')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
