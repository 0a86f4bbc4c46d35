"""The runtime end to end per sampled frame (decode + windows + encode + SA2 + head + events) and the bare encoder
on the same crops, per ONNX Runtime bundle file; their ratio is stp-bench's pipeline efficiency.

Run: `python -m pytest benchmarks/test_bench_pipeline.py --benchmark-only` (stp-tiny bundle exported once per
session; STP_SLOW=1 adds ViT-B-16 with random weights, int8). `stp-bench` reports the same with percentiles and the
machine stamp; this suite keeps the numbers comparable across commits with pytest-benchmark's --benchmark-compare.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stprompt import windows
from stprompt.bench import stages
from stprompt.bench.bundle import random_bundle
from stprompt.runtime.backends import open_backend

CASES = [("stp-tiny", "model.onnx"), ("stp-tiny", "model.int8.onnx")]
CASES += [("ViT-B-16:random", "model.int8.onnx")] if os.environ.get("STP_SLOW") else []
FRAMES = 64  # 4 sampled frames at stride 16


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for arch in dict.fromkeys(a for a, _ in CASES):
        out[arch] = random_bundle(arch, tmp_path_factory.mktemp("bundle"), int8=True, log=lambda _: None).parent
    return out


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return stages.write_test_video(tmp_path_factory.mktemp("video") / "v.mp4", FRAMES)


@pytest.mark.parametrize(("arch", "file"), CASES)
def test_bench_pipeline_per_video(benchmark, bundles, video, arch, file):
    backend, manifest = open_backend(bundles[arch] / file)
    timing, stats = benchmark.pedantic(stages.run_end_to_end, args=(backend, file, manifest, video, FRAMES),
                                       rounds=3, warmup_rounds=1)  # fmt: skip
    assert stats["crops"] == 4 * windows.crops_per_frame()


@pytest.mark.parametrize(("arch", "file"), CASES)
def test_bench_bare_encoder_same_crops(benchmark, bundles, video, arch, file):
    backend, manifest = open_backend(bundles[arch] / file)
    frames = stages.read_frames(video, FRAMES)
    crops = [windows.encoder_batch(f) for f in frames[manifest.offset :: manifest.stride]]

    def encode_all():
        for c in crops:
            backend.encode(c)

    benchmark.pedantic(encode_all, rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("ms", [0.0, 16.0])
def test_bench_host_four_streams_simulated_encoder(benchmark, bundles, video, ms):
    """The host side on 4 concurrent streams against the simulated GPU encoder (stp-bench --streams 4): sim:0 is
    the host ceiling, sim:16 a data-centre GPU's ViT-B/16 latency (stprompt.bench.host)."""
    from stprompt.bench import host
    from stprompt.runtime.backends.sim import open_simulated

    backend = open_simulated(bundles["stp-tiny"] / "model.json", ms)
    run = benchmark.pedantic(host.run_streams, args=(backend, backend.manifest, video, 4, FRAMES), rounds=3,
                             warmup_rounds=1)  # fmt: skip
    assert run["sampled"] == 4 * 4 and run["host_ms_per_sampled_frame"]["total"] > 0
