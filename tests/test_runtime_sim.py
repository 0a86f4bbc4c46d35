"""The simulated GPU encoder (`sim:MS`): it holds its latency without using the CPU or the GIL, scales with the batch,
returns fixed embeddings of the bundle's dimension and runs the bundle's real heads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from stprompt.bundle.manifest import load_manifest
from stprompt.errors import UserError
from stprompt.runtime.backends.sim import SimBackend, open_simulated, parse_sim


def test_parse_sim_names():
    assert parse_sim("sim:125") == (125.0, False, False) and parse_sim("sim:16.5").ms == 16.5
    assert parse_sim("SIM:0").ms == 0 and parse_sim("ort-fp32") is None
    assert parse_sim("sim:16:device") == (16.0, True, False) and parse_sim("sim:16:u8") == (16.0, False, True)
    for bad in ("sim:", "sim:fast", "sim:-3", "sim:1e3", "sim:16:host", "sim:16:device:u8"):
        with pytest.raises(UserError, match="sim:MS"):
            parse_sim(bad)


def test_the_simulated_encoder_holds_its_latency_without_cpu_or_gil(tiny_bundle):
    backend = open_simulated(tiny_bundle, 200.0)
    crops = np.zeros((50, 3, 224, 224), np.float32)
    backend.encode(crops[:1])  # first call outside the measurement
    spins = [0]
    done = threading.Event()

    def spin() -> None:  # a pure-Python loop: it only advances while the GIL is free
        while not done.is_set():
            spins[0] += 1

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        time.sleep(0.05)
        before_spins = spins[0]
        cpu0, t0 = time.thread_time(), time.perf_counter()
        out = backend.encode(crops)
        cpu, wall = time.thread_time() - cpu0, time.perf_counter() - t0
        during = spins[0] - before_spins
    finally:
        done.set()
        thread.join()
    assert wall >= 0.2 and cpu < 0.02, (wall, cpu)  # held 200 ms per 50 crops, the calling thread idle
    assert during > 1000  # another Python thread kept running meanwhile: the GIL was released
    m = load_manifest(tiny_bundle)
    assert out.shape == (50, m.dim) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(out, backend.encode(crops))  # fixed embeddings
    assert backend.name == "sim:200" and not backend.gpu_preprocessing


def test_the_hold_scales_with_the_batch_and_the_process_stays_idle(tiny_bundle):
    backend = SimBackend(load_manifest(tiny_bundle), 100.0)
    assert backend.hold_s(50) == pytest.approx(0.1) and backend.hold_s(200) == pytest.approx(0.4)
    crops = np.zeros((100, 3, 224, 224), np.float32)
    cpu0, t0 = time.process_time(), time.perf_counter()
    backend.encode(crops)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    assert wall >= 0.2 and cpu < 0.05, (wall, cpu)  # the whole process: no thread worked for it either


def test_the_heads_are_the_bundles_own(tiny_bundle):
    from stprompt.runtime.backends import open_backend

    sim = open_simulated(tiny_bundle.with_name("model.onnx"), 0.0)  # any file of the bundle names it
    ort, m = open_backend(tiny_bundle.with_name("model.onnx"))
    rng = np.random.default_rng(0)
    x_clip = rng.standard_normal((12, m.dim)).astype(np.float32)
    x_patch = rng.standard_normal((12, 49, m.dim)).astype(np.float32)
    a, b = sim.head(x_clip, x_patch), ort.head(x_clip, x_patch)
    for key in ("score", "score_c", "probs"):
        assert np.allclose(a[key], b[key], atol=1e-5), key


def test_windows_cut_on_the_simulated_device_hold_the_same(tiny_bundle):
    backend = SimBackend(load_manifest(tiny_bundle), 100.0, device=True)
    assert backend.gpu_preprocessing and backend.name == "sim:100:device"
    smalls = [np.zeros((224, 224, 3), np.uint8)] * 2
    masks = [np.ones(49, bool), np.arange(49) < 9]  # 50 + 10 crops
    cpu0, t0 = time.process_time(), time.perf_counter()
    out = backend.encode_frames(smalls, masks)
    assert out.shape == (60, backend.dim) and time.perf_counter() - t0 >= 0.12 and time.process_time() - cpu0 < 0.05


def test_a_bundle_without_manifest_is_one_line(tmp_path):
    with pytest.raises(UserError, match="bundle manifest"):
        open_simulated(tmp_path / "model.json", 16.0)
