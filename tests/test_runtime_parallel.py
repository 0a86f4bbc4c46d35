"""The host side made fast and parallel, and still exact: frames skipped without their pixels, files read ahead on
their own threads, windows cut for several frames at once, the next batch prepared while the encoder runs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_video

from stprompt.bundle.manifest import load_manifest
from stprompt.runtime.frames import Frame
from stprompt.runtime.parallel import EncoderThread, parallel_map
from stprompt.runtime.prefetch import PrefetchSource
from stprompt.runtime.sources import VideoFileSource, open_source
from stprompt.runtime.stageclock import NO_CLOCK, StageClock
from stprompt.sampling import is_sampled

STRIDE, OFFSET = 16, 8  # tiny_bundle's


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("parallel") / "clip.mp4"
    write_video(path, 70, size=(320, 180), seed=3, blob=(10, 60))
    return path


def _sampled(index: int) -> bool:
    return is_sampled(index, STRIDE, OFFSET)


def _all_frames(video: Path, threads: int | None = None) -> list[Frame]:
    src = VideoFileSource(video, threads=threads)
    try:
        return list(src)
    finally:
        src.close()


def test_skipping_unsampled_frames_leaves_the_sampled_ones_bit_identical(video):
    full = _all_frames(video, threads=None)  # OpenCV's default decoder threads, every frame retrieved
    src = VideoFileSource(video)
    skipped = []
    while (frame := src.read(retrieve=_sampled(src.next_index))) is not None:
        skipped.append(frame)
    assert [f.index for f in skipped] == [f.index for f in full] == list(range(70))  # no frame dropped
    for a, b in zip(full, skipped, strict=True):
        if _sampled(a.index) or a.index == 0:  # frame 0 is decoded when the file is opened
            assert b.image is not None and np.array_equal(a.image, b.image), a.index
        else:
            assert b.image is None
        assert a.time == b.time


def test_a_read_ahead_file_gives_the_same_frames_none_dropped(video):
    full = _all_frames(video)
    clock = StageClock()
    ahead = PrefetchSource(VideoFileSource(video), _sampled, ahead=1, clock=clock)  # a full queue at every frame
    frames = list(ahead)
    assert [f.index for f in frames] == list(range(70)) and ahead.ended
    for a, b in zip(full, frames, strict=True):
        if _sampled(a.index):
            assert np.array_equal(a.image, b.image)
    assert clock.cpu_s["decode"] > 0  # decode time is billed on the reader thread
    limited = PrefetchSource(VideoFileSource(video), limit=20)
    assert [f.index for f in limited] == list(range(20))  # every frame's pixels without `needed`
    assert ahead.inner.ended and limited.inner.ended  # the reader closed its source


def test_closing_a_read_ahead_file_stops_its_reader_at_once(video):
    src = VideoFileSource(video)
    ahead = PrefetchSource(src, ahead=2)
    time.sleep(0.2)  # the reader is waiting on its full queue
    t0 = time.perf_counter()
    ahead.close()
    assert time.perf_counter() - t0 < 2.0 and not ahead._thread.is_alive() and src.ended
    assert ahead.read() is None


def test_a_read_error_reaches_the_consumer(video):
    class Broken(VideoFileSource):
        def read(self, timeout=None, retrieve=True):
            frame = super().read(timeout, retrieve)
            if frame is not None and frame.index == 5:
                raise RuntimeError("disk gone")
            return frame

    ahead = PrefetchSource(Broken(video))
    with pytest.raises(RuntimeError, match="disk gone"):
        list(ahead)


def test_parallel_map_keeps_order_and_raises():
    items = list(range(23))
    for workers in (None, 1, 2, 3, 50):
        assert parallel_map(lambda x: x * x, items, workers) == [x * x for x in items]

    def boom(x: int) -> int:
        if x == 7:
            raise ValueError("seven")
        return x

    with pytest.raises(ValueError, match="seven"):
        parallel_map(boom, items, 2)


def test_parallel_window_cutting_gives_the_same_batches(tiny_bundle, video):
    from stprompt.runtime.backends import open_backend
    from stprompt.runtime.detector import Detector

    backend, manifest = open_backend(tiny_bundle.with_name("model.onnx"))
    frames = [f for f in _all_frames(video) if _sampled(f.index)]  # 4 sampled frames
    items = [(f"s{i}", f) for i in range(3) for f in frames[:2]]  # 3 streams x 2 sampled frames: 6 per batch
    serial = Detector(backend, manifest, window_workers=1, gate=1.0)
    for workers in (None, 2, 4):
        parallel = Detector(backend, manifest, window_workers=workers, gate=1.0)
        for step in (items, [(sid, f) for sid in ("s0", "s1", "s2") for f in frames[2:]]):  # the gate's 2nd frames
            a, b = serial.prepare(step), parallel.prepare(step)
            assert a.rows == b.rows and np.array_equal(a.crops, b.crops)
            assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks, strict=True))
        serial = Detector(backend, manifest, window_workers=1, gate=1.0)


def test_the_encoder_thread_runs_calls_in_order_and_hands_back_errors():
    worker = EncoderThread()
    seen: list[int] = []
    threads: set[int] = set()

    def job(i: int) -> int:
        time.sleep(0.01 * (5 - i))  # later jobs are quicker: order is the queue's, not the clock's
        seen.append(i)
        threads.add(threading.get_ident())
        return i * 10

    futures = [worker.submit(job, i) for i in range(5)]
    assert [f.result() for f in futures] == [0, 10, 20, 30, 40] and seen == list(range(5))
    assert worker.call(job, 4) == 40 and len(threads) == 1 and threading.get_ident() not in threads
    with pytest.raises(ZeroDivisionError):
        worker.call(lambda: 1 / 0)
    worker.close()
    assert not worker._thread.is_alive()


def test_the_next_batch_is_prepared_while_the_encoder_runs(tiny_bundle, video):
    """No clock: the encoder call of the first batch waits until the pipeline has prepared the second one, which
    only happens if preparing does not wait for the encoder (a sequential pipeline would wait here forever)."""
    from stprompt.runtime.backends.sim import open_simulated
    from stprompt.runtime.detector import AlarmSettings, Detector
    from stprompt.runtime.pipeline import Pipeline

    backend = open_simulated(tiny_bundle, 0.0)
    prepared = threading.Semaphore(0)
    overlapped: list[bool] = []

    class Watched(Detector):
        def prepare(self, items):
            batch = super().prepare(items)
            prepared.release()
            return batch

        def encode(self, batch):
            if not overlapped:  # the first call: is batch 2 prepared meanwhile?
                prepared.acquire(timeout=30)  # batch 1's own release
                overlapped.append(prepared.acquire(timeout=30))
            return super().encode(batch)

    detector = Watched(backend, load_manifest(tiny_bundle), alarm=AlarmSettings(on=1.0, off=1.0))
    sources = [VideoFileSource(video, source_id="a"), VideoFileSource(video, source_id="b")]
    stats = Pipeline(detector, sources, sampled_per_batch=1).run()
    assert overlapped == [True] and stats["sampled"] == 2 * 4 and stats["frames"] == 2 * 70


def test_stage_clocks():
    clock = StageClock()
    with clock("windows"):
        sum(i * i for i in range(200_000))
    clock.add("decode", 0.5)
    assert clock.cpu_s["windows"] > 0 and clock.cpu_s["decode"] == 0.5 and clock.cpu_s["sinks"] == 0.0
    ran = []
    with NO_CLOCK("windows"):  # the runtime's default: the stage runs, nothing is measured or allocated
        ran.append(True)
    assert ran == [True] and NO_CLOCK("windows") is NO_CLOCK("decode") and NO_CLOCK.add("decode", 1.0) is None
    assert not hasattr(NO_CLOCK, "cpu_s")


def test_a_pipeline_hands_pixels_only_to_sampled_frames_unless_asked(tiny_bundle, video):
    from stprompt.runtime.backends.sim import open_simulated
    from stprompt.runtime.detector import Detector
    from stprompt.runtime.pipeline import Pipeline

    def run(**kw) -> dict[int, bool]:
        seen: dict[int, bool] = {}
        detector = Detector(open_simulated(tiny_bundle, 0.0), load_manifest(tiny_bundle))

        def on_frame(sid: str, frame: Frame) -> None:
            seen[frame.index] = frame.image is not None

        Pipeline(detector, [open_source(str(video))], on_frame=on_frame, **kw).run()
        return seen

    full = run()
    assert all(full.values()) and len(full) == 70  # on_frame may look at the pixels: every frame has them
    lean = run(decode_all=False)
    assert {i for i, has in lean.items() if has} == {0, *(i for i in range(70) if _sampled(i))}
