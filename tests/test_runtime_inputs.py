"""stp-run's inputs: a bad flag or bundle threshold refused before anything is written, a corrupt image skipped
(not the end of the run), a truncated video warned about, and messages free of library noise and escapes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from stprompt import errors
from stprompt.errors import UserError, cli_entry, first_line
from stprompt.runtime import cli as run_cli
from stprompt.runtime.sources import open_source

KEPT = '{"type":"frame","frame":8}\n'  # what an earlier run left in the events file


@pytest.fixture
def events(tmp_path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text(KEPT)
    return path


@pytest.fixture(scope="module")
def engine(tiny_bundle) -> str:
    return str(tiny_bundle.with_name("model.onnx"))


@pytest.fixture(scope="module")
def stride(tiny_bundle) -> tuple[int, int]:
    doc = json.loads(tiny_bundle.read_text())
    return doc["sampling"]["stride"], doc["sampling"]["offset"]


def write_folder(folder: Path, n: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))


def run(argv: list[str]) -> int:
    try:
        return run_cli.main(argv)
    except SystemExit as exit_:  # argparse's own refusal (usage + one error line)
        return int(exit_.code)


# --- item 3: a bad flag or threshold refuses before anything is read or written ---------------------------------


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--lookahead", "-1"], "--lookahead must be >= 0, got -1"),
        (["--lookahead", "two"], "--lookahead"),
        (["--gate", "-1"], "--gate"),
        (["--gate", "nan"], "--gate must be >= 0 grey levels (a finite number) or auto, got nan"),
        (["--gate", "inf"], "--gate"),
        (["--gate-refresh", "-1"], "--gate-refresh must be >= 0 sampled frames, got -1"),
        (["--alarm-on", "1.5"], "--alarm-on must be in [0, 1], got 1.5"),
        (["--alarm-on", "nan"], "--alarm-on"),
        (["--alarm-off", "-0.1"], "--alarm-off"),
        (["--alarm-on", "0.3", "--alarm-off", "0.6"], "--alarm-off 0.6 must be <= --alarm-on 0.3"),
        (["--alarm-min", "0"], "--alarm-min"),
        (["--heat-threshold", "2"], "--heat-threshold"),
        (["--heat-threshold", "nan"], "--heat-threshold"),
        (["--min-box-area", "1"], "--min-box-area must be in [0, 1), got 1"),
        (["--min-box-area", "-0.5"], "--min-box-area"),
        (["--max-batch", "0"], "--max-batch"),
        (["--check-frames", "0"], "--check-frames"),
    ],
)
def test_a_bad_flag_is_refused_before_the_events_file_is_touched(flags, needle, events, tmp_path, capsys):
    folder = tmp_path / "imgs"
    write_folder(folder, 4)
    argv = [str(folder), "--engine", str(tmp_path / "no-bundle.onnx"), "--events", str(events), "--quiet"]
    assert run(argv + flags) == 2
    assert events.read_text() == KEPT
    err = capsys.readouterr().err.strip().splitlines()
    if flags[-1] == "two":  # not a number at all: argparse's usage and its error line
        assert err[-1] == ("stp-run: error: argument --lookahead: expected a number of snippets, exact or auto, "
                           "got 'two'")
    else:
        assert len(err) == 1 and err[0].startswith("stp-run: error: ") and needle in err[0], err


def test_alarm_off_above_the_bundles_alarm_threshold_names_model_json(engine, events, tmp_path, capsys):
    folder = tmp_path / "imgs"
    write_folder(folder, 4)
    assert run([str(folder), "--engine", engine, "--events", str(events), "--alarm-off", "0.9", "--quiet"]) == 2
    assert events.read_text() == KEPT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--alarm-off 0.9" in err[0] and "model.json: thresholds.alarm" in err[0], err


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("alarm", 1.5, "model.json: thresholds.alarm = 1.5 must be in [0, 1]"),
        ("heat", -0.2, "model.json: thresholds.heat = -0.2 must be in [0, 1]"),
        ("min_box_area", 1, "model.json: thresholds.min_box_area = 1 must be in [0, 1)"),
        ("tau_loc", 0, "model.json: thresholds.tau_loc = 0 must be > 0"),
        ("fusion_lambda", float("nan"), "model.json: thresholds.fusion_lambda = nan must be in [0, 1]"),
    ],
)
def test_an_edited_bundle_threshold_out_of_range_names_model_json_and_the_field(
    field, value, needle, tiny_bundle, events, tmp_path, capsys
):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.parent, copy)
    doc = json.loads((copy / "model.json").read_text())
    doc["thresholds"][field] = value
    (copy / "model.json").write_text(json.dumps(doc))  # model.json is not hashed: editing thresholds is allowed
    folder = tmp_path / "imgs"
    write_folder(folder, 4)
    assert run([str(folder), "--engine", str(copy / "model.onnx"), "--events", str(events), "--quiet"]) == 2
    assert events.read_text() == KEPT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


# --- item 4: one bad frame does not end a run ----------------------------------------------------------------------


def frame_events(path: Path) -> list[int]:
    return [e["frame"] for e in map(json.loads, path.read_text().splitlines()) if e["type"] == "frame"]


def test_a_corrupt_image_is_skipped_with_a_warning_and_counted(engine, stride, events, tmp_path, capsys):
    step, offset = stride
    n = 3 * step
    folder = tmp_path / "imgs"
    write_folder(folder, n)
    bad = folder / f"{offset:03d}.jpg"  # the first snippet's sampled frame
    bad.write_bytes(b"\xff\xd8 garbage, not a jpeg" * 10)
    assert run([str(folder), "--engine", engine, "--events", str(events)]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings == [f"stp-run: warning: {bad}: cannot read this image (corrupt or not an image); skipped"]
    assert "skipped 1" in err.rstrip().rsplit("\r", 1)[-1]  # the final status line counts it
    # every snippet still scored: the frame after the unreadable one is sampled in its place (as after a drop)
    assert frame_events(events) == [offset + 1] + [k * step + offset for k in range(1, 3)]


def test_image_folder_source_skips_unreadable_images_and_keeps_indices(tmp_path, capsys):
    folder = tmp_path / "imgs"
    write_folder(folder, 6)
    for i in (0, 3):  # the first one too: the constructor moves on to the next readable image
        (folder / f"{i:03d}.jpg").write_bytes(b"not an image")
    src = open_source(f"{folder}?fps=10")
    frames = list(src)
    assert [f.index for f in frames] == [1, 2, 4, 5]
    np.testing.assert_allclose([f.time for f in frames], [0.1, 0.2, 0.4, 0.5])  # times as if nothing was lost
    assert src.stats["skipped"] == 2 and src.stats["frames"] == 4 and src.size == (64, 48)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "000.jpg: cannot read this image" in err[0] and "003.jpg" in err[1]


def test_a_folder_of_unreadable_images_is_one_error(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"imgs: none of its 3 images can be read"):
        open_source(str(folder))
    assert capsys.readouterr().err == ""  # no warning per image before the error


def write_avi(path: Path, n: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    assert writer.isOpened()
    rng = np.random.default_rng(1)
    for _ in range(n):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()


def test_a_video_shorter_than_its_declared_frame_count_warns(tmp_path, capsys):
    whole, cut = tmp_path / "whole.avi", tmp_path / "cut.avi"
    write_avi(whole, 40)
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # AVI declares its frame count up front: OpenCV still opens the rest
    assert len(list(open_source(str(whole)))) == 40
    assert capsys.readouterr().err == ""
    src = open_source(str(cut))
    assert src.declared_frames == 40
    n = len(list(src))
    assert 0 < n < 40
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [f"stprompt: warning: {cut}: the video ends after {n} of the 40 frames its container "
                        "declares (truncated or damaged)"]  # fmt: skip


# --- item 8: messages a person can act on --------------------------------------------------------------------------


def test_first_line_and_cli_errors_drop_terminal_escapes(capsys):
    err = RuntimeError("\x1b[1;31m[E:onnxruntime:Default] Load model failed\x1b[0m\r\n\x1b[33mdetails\x1b[m")
    assert first_line(err) == "[E:onnxruntime:Default] Load model failed"

    @cli_entry("stp-x")
    def main() -> int:
        raise UserError("model.onnx: \x1b[31mbroken\x1b[0m\nsecond \x1b]8;;http://x\x07line\x1b]8;;\x07")

    assert main() == 2
    assert capsys.readouterr().err == "stp-x: error: model.onnx: broken second line\n"


def test_a_warning_after_an_open_status_line_starts_a_new_line(capsys):
    errors.status_line_open(True)
    errors.warn("x.jpg: \x1b[2Kunreadable")
    assert capsys.readouterr().err == "\nstprompt: warning: x.jpg: unreadable\n"
    errors.warn("again")
    assert capsys.readouterr().err == "stprompt: warning: again\n"


def subprocess_run(args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("OPENCV_", "STP_DEBUG"))}
    return subprocess.run([sys.executable, "-m", "stprompt.runtime.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip


def test_a_corrupt_video_is_exactly_one_stderr_line_without_ffmpeg_noise(engine, events, tmp_path):
    bad = tmp_path / "broken.mp4"
    good = tmp_path / "good.avi"
    write_avi(good, 40)
    bad.write_bytes(good.read_bytes()[:3000].replace(b"RIFF", b"\x00\x00\x00\x00", 1))  # FFmpeg complains about it
    proc = subprocess_run([str(bad), "--engine", engine, "--events", str(events), "--quiet"])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stp-run: error: ") and "broken.mp4" in lines[0], proc.stderr
    assert events.read_text() == KEPT  # sources are opened before any output


def test_a_truncated_video_run_warns_once_and_finishes(engine, tmp_path):
    whole, cut = tmp_path / "whole.avi", tmp_path / "cut.avi"
    write_avi(whole, 80)
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # FFmpeg logs the damaged tail itself unless silenced
    out = tmp_path / "e.jsonl"
    proc = subprocess_run([str(cut), "--engine", engine, "--events", str(out), "--quiet"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stp-run: warning: {cut}: the video ends after "), proc.stderr
    assert frame_events(out)  # the decoded part was scored
