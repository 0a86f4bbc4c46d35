"""Motion-gated crop encoding: which windows are re-encoded, and what the scores become."""

import numpy as np
import pytest
from conftest import SCORE_ROUNDING

from stprompt import windows
from stprompt.errors import UserError
from stprompt.runtime.api import open_detector
from stprompt.runtime.detector import AlarmSettings
from stprompt.runtime.gating import WindowGate

EVENTS_ATOL = 1e-5 + 2 * SCORE_ROUNDING  # scores agree to 1e-5; both runs' events round them to 4 decimals


def frame224(value: int = 100) -> np.ndarray:
    return np.full((224, 224, 3), value, np.uint8)


def test_static_windows_reuse_and_changed_windows_are_encoded():
    gate = WindowGate(2.0)
    first = frame224()
    assert gate.select("a", first).all()  # nothing cached yet: every window
    gate.merge("a", gate.streams["a"].pending[0], np.arange(49 * 2, dtype=np.float32).reshape(49, 2))
    moved = first.copy()
    moved[40:60, 100:140] = 250  # touches windows (1, 3), (1, 4) of the 7x7 grid
    mask = gate.select("a", moved)
    assert np.flatnonzero(mask).tolist() == [7 + 3, 7 + 4]
    x_patch = gate.merge("a", mask, np.full((2, 2), -1, np.float32))
    assert (x_patch[[10, 11]] == -1).all()
    np.testing.assert_array_equal(
        np.delete(x_patch, [10, 11], 0), np.delete(np.arange(98.0).reshape(49, 2), [10, 11], 0)
    )
    assert gate.stats == {"windows": 98, "skipped": 47, "refreshed": 0}


def test_change_is_measured_against_the_pixels_at_the_last_encoding():
    """Slow drift accumulates: +1 grey level per frame with threshold 2.5 re-encodes every third frame."""
    gate = WindowGate(2.5)
    encoded = []
    for i in range(10):
        mask = gate.select("a", frame224(100 + i))
        gate.merge("a", mask, np.zeros((int(mask.sum()), 4), np.float32))
        encoded.append(bool(mask.all()))
        assert mask.all() or not mask.any()
    assert encoded == [True, False, False, True, False, False, True, False, False, True]


def test_threshold_zero_is_off_and_negative_is_refused():
    gate = WindowGate(0.0)
    for _ in range(3):
        assert gate.select("a", frame224()).all()
    assert gate.stats["skipped"] == 0 and not gate.streams
    with pytest.raises(UserError):
        WindowGate(-1.0)
    with pytest.raises(UserError):
        WindowGate(float("nan"))


def test_streams_keep_their_own_cache():
    gate = WindowGate(1.0)
    for sid, value in (("a", 10), ("b", 200)):
        mask = gate.select(sid, frame224(value))
        gate.merge(sid, mask, np.full((49, 1), value, np.float32))
    mask = gate.select("a", frame224(10))
    assert not mask.any()
    assert (gate.merge("a", mask, np.zeros((0, 1), np.float32)) == 10).all()


def static_frames(n: int, seed: int = 0, moving: bool = False) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, (120, 160, 3), dtype=np.uint8)
    frames = []
    for f in range(n):
        frame = base.copy()
        if moving and 20 <= f < 60:
            x = 10 + f % 100
            frame[40:70, x : x + 30] = (30, 220, 250)
        frames.append(frame)
    return frames


def run_detector(engine: str, frames: list[np.ndarray], gate: float, refresh: int = 0):
    no_alarms = AlarmSettings(on=1.0, off=1.0, min_snippets=10**9)  # no scale-B crops in the counts
    det = open_detector(engine, gate=gate, gate_refresh=refresh, alarm=no_alarms)
    events = [e for f in frames for e in det.feed(f, source="cam")] + det.finish("cam")
    return np.array([e["score"] for e in events if e["type"] == "frame"]), det


def test_gated_run_on_static_footage_skips_windows_and_keeps_scores(tiny_bundle):
    engine = str(tiny_bundle.with_suffix(".onnx"))
    frames = static_frames(96, moving=True)
    reference, plain = run_detector(engine, frames, 0.0)
    gated_scores, gated = run_detector(engine, frames, 0.5)
    # 6 sampled frames; the first is encoded whole, the blob moves through some windows of the next three
    assert plain.stats["gated_crops"] == 0 and plain.stats["crops"] == 6 * 50
    assert gated.stats["gated_crops"] == 300 - gated.stats["crops"]
    assert 0.5 < gated.stats["gated_crops"] / (5 * 49) < 1.0
    # skipped windows had exactly their old pixels, so their embeddings are the old ones: the scores agree
    np.testing.assert_allclose(gated_scores, reference, atol=EVENTS_ATOL)


def test_gated_crops_are_the_same_crops_the_full_batch_has(tiny_bundle):
    small = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    mask = np.zeros(49, bool)
    mask[[0, 5, 48]] = True
    det = open_detector(str(tiny_bundle.with_suffix(".onnx")))
    full = windows.normalize(np.concatenate([small[None], windows.window_crops(small, windows.SCALE_A)]))
    got = det._batch([small, small], [mask, np.ones(49, bool)])
    np.testing.assert_array_equal(got, np.concatenate([full[[0, 1, 6, 49]], full]))  # bit-identical, in order
    np.testing.assert_array_equal(det._batch([small], [mask]), full[[0, 1, 6, 49]])  # the buffer is reused


def test_stp_run_refuses_a_negative_gate(tiny_bundle, tmp_path, capsys):
    from conftest import write_video

    from stprompt.runtime import cli

    video = tmp_path / "v.mp4"
    write_video(video, 20)
    assert cli.main([str(video), "--engine", str(tiny_bundle.with_suffix(".onnx")), "--gate", "-1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--gate" in err[0]


def test_auto_gates_live_sources_only_and_per_source_thresholds_apply():
    from types import SimpleNamespace

    from stprompt.runtime.cli import build_parser
    from stprompt.runtime.gating import LIVE_DEFAULT
    from stprompt.runtime.pipeline import gate_thresholds

    assert build_parser().parse_args(["v.mp4", "--engine", "m.onnx"]).gate == "auto"
    assert build_parser().parse_args(["v.mp4", "--engine", "m.onnx", "--gate", "2.5"]).gate == 2.5
    sources = [SimpleNamespace(id="file", live=False), SimpleNamespace(id="cam", live=True)]
    assert gate_thresholds("auto", sources) == (0.0, {"file": 0.0, "cam": LIVE_DEFAULT})
    assert gate_thresholds(3.0, sources) == (3.0, {})
    gate = WindowGate(0.0, per_source={"cam": 1.0})
    for sid in ("file", "cam"):
        mask = gate.select(sid, frame224())
        gate.merge(sid, mask, np.zeros((49, 1), np.float32))
    assert gate.select("file", frame224()).all()  # files: every window, every time
    assert not gate.select("cam", frame224()).any()  # the camera reuses its unchanged windows
    assert list(gate.streams) == ["cam"]


def encoded_frames(gate: WindowGate, frames: list[np.ndarray]) -> np.ndarray:
    """Bool [frames, 49]: which windows each sampled frame re-encoded."""
    masks = []
    for frame in frames:
        mask = gate.select("a", frame)
        gate.merge("a", mask, np.zeros((int(mask.sum()), 1), np.float32))
        masks.append(mask)
    return np.array(masks)


@pytest.mark.parametrize("n", [1, 3, 4, 8])
def test_refresh_re_encodes_each_window_of_a_static_scene_every_n_sampled_frames(n):
    masks = encoded_frames(WindowGate(2.0, refresh=n), [frame224()] * 40)
    assert masks[0].all()
    for w in range(49):
        at = np.flatnonzero(masks[:, w])
        assert 1 <= at[1] <= n  # the first forced refresh comes early by the window's phase (staggered)
        assert (np.diff(at[1:]) == n).all()  # then exactly every n sampled frames
    per_frame = masks[1:].sum(1)  # staggered: about 49 / n windows a frame, never all of them at once
    assert per_frame.min() >= 49 // n and per_frame.max() <= -(-49 // n)


def test_unstaggered_refresh_encodes_every_window_together():
    masks = encoded_frames(WindowGate(2.0, refresh=4, stagger=False), [frame224()] * 13)
    assert masks.sum(1).tolist() == [49, 0, 0, 0, 49, 0, 0, 0, 49, 0, 0, 0, 49]


def test_refresh_zero_never_forces_and_a_changed_window_starts_its_age_again():
    gate = WindowGate(2.0, refresh=0)
    assert not encoded_frames(gate, [frame224()] * 30)[1:].any() and gate.stats["refreshed"] == 0
    gate = WindowGate(2.0, refresh=5, stagger=False)
    frames = [frame224() for _ in range(12)]
    frames[2] = frames[2].copy()
    frames[2][:32, :32] = 250  # window 0 changes at frame 2 and back at frame 3
    masks = encoded_frames(gate, frames)
    assert np.flatnonzero(masks[:, 0]).tolist() == [0, 2, 3, 8]  # its age restarts at each encoding
    assert np.flatnonzero(masks[:, 1]).tolist() == [0, 5, 10]
    assert gate.stats["refreshed"] == 48 * 2 + 1  # forced, not changed: 48 windows at 5 and 10, window 0 at 8
    for bad in (-1, 1.5, True):
        with pytest.raises(UserError, match="--gate-refresh"):
            WindowGate(2.0, refresh=bad)


def test_gated_run_with_refresh_keeps_the_ungated_scores_on_static_footage(tiny_bundle):
    engine = str(tiny_bundle.with_suffix(".onnx"))
    frames = static_frames(96, moving=True)
    reference, _ = run_detector(engine, frames, 0.0)
    unbounded, lazy = run_detector(engine, frames, 0.5, refresh=0)
    bounded, fresh = run_detector(engine, frames, 0.5, refresh=2)
    assert fresh.gate.refresh == 2 and fresh.gate.stats["refreshed"] > 0 and lazy.gate.stats["refreshed"] == 0
    assert fresh.stats["crops"] > lazy.stats["crops"]  # the forced refreshes cost crops
    assert fresh.stats["gated_crops"] == 300 - fresh.stats["crops"]
    np.testing.assert_allclose(unbounded, reference, atol=EVENTS_ATOL)
    np.testing.assert_allclose(bounded, reference, atol=EVENTS_ATOL)


def test_stp_run_gate_refresh_flag(tiny_bundle, tmp_path, capsys):
    from conftest import write_video

    from stprompt.runtime import cli
    from stprompt.runtime.gating import REFRESH_DEFAULT

    parse = cli.build_parser().parse_args
    assert parse(["v.mp4", "--engine", "m.onnx"]).gate_refresh == REFRESH_DEFAULT
    assert parse(["v.mp4", "--engine", "m.onnx", "--gate-refresh", "0"]).gate_refresh == 0
    video = tmp_path / "v.mp4"
    write_video(video, 20)
    engine = str(tiny_bundle.with_suffix(".onnx"))
    assert cli.main([str(video), "--engine", engine, "--gate-refresh", "-1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--gate-refresh" in err[0]


def test_gate_refresh_reaches_the_detector_through_the_pipeline_and_the_api(tiny_bundle, tmp_path):
    from conftest import write_video

    from stprompt.runtime.api import open_pipeline
    from stprompt.runtime.gating import REFRESH_DEFAULT

    video = tmp_path / "v.mp4"
    write_video(video, 20)
    engine = str(tiny_bundle.with_suffix(".onnx"))
    with open_pipeline(engine, [str(video)], gate=2.0, gate_refresh=3) as pipeline:
        assert pipeline.detector.gate.refresh == 3 and pipeline.detector.gate.threshold == 2.0
    with open_pipeline(engine, [str(video)]) as pipeline:
        assert pipeline.detector.gate.refresh == REFRESH_DEFAULT
    assert open_detector(engine, gate=1.0, gate_refresh=0).gate.refresh == 0
    assert open_detector(engine, gate=1.0).gate.refresh == REFRESH_DEFAULT
