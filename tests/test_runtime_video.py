"""The annotated video: H.264 that PyAV and OpenCV decode, a fragmented MP4 a SIGKILL leaves playable, each source at
its own rate under a short name, unusable video outputs refused before anything is touched, mp4v without PyAV."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import count_frames, write_video

from stprompt.errors import UserError
from stprompt.runtime import cli as run_cli
from stprompt.runtime.sinks import VideoSink, open_outputs, short_ids, source_slug

STRIDE = 16  # tiny_bundle's
ALARMS = ["--alarm-on", "0", "--alarm-off", "0"]  # every snippet alarms: heat overlay and boxes on every frame


@pytest.fixture(scope="module")
def engine(tiny_bundle) -> str:
    return str(tiny_bundle.with_suffix(".onnx"))


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, 64, seed=7, blob=(16, 48))
    return path


def write_clip(path: Path, n_frames: int, fps: float, size: tuple[int, int], seed: int = 0) -> Path:
    """A noisy static scene at `fps`, MPEG-4 through PyAV, which keeps odd sizes (OpenCV's writer rounds them)."""
    rng = np.random.default_rng(seed)
    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    base = rng.integers(40, 200, (h, w, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n_frames):
            image = np.clip(base.astype(np.int16) + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def stp_run(*argv: str) -> int:
    return run_cli.main([*argv, "--quiet"])


def probe(path: Path) -> dict:
    """What PyAV reads back: codec, pixel format, size, average rate and the frames it decodes."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        cc = stream.codec_context
        info = {"codec": cc.name, "pix_fmt": cc.pix_fmt, "size": (cc.width, cc.height), "rate": stream.average_rate}
        info["frames"] = sum(1 for _ in container.decode(video=0))
    return info


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_annotated_video_is_h264_that_pyav_and_opencv_decode(suffix, video, engine, tmp_path):
    out = tmp_path / f"annotated{suffix}"
    assert stp_run(str(video), "--engine", engine, "--events", str(tmp_path / "e.jsonl"), "--output", str(out),
                   *ALARMS) == 0  # fmt: skip
    info = probe(out)
    assert info == {"codec": "h264", "pix_fmt": "yuv420p", "size": (160, 120), "rate": Fraction(25, STRIDE),
                    "frames": 64 // STRIDE}  # fmt: skip
    assert count_frames(out) == 64 // STRIDE
    if suffix == ".mp4":  # fragmented: an empty moov up front, then a moof per keyframe
        data = out.read_bytes()
        assert data[4:8] == b"ftyp" and b"mvex" in data and data.count(b"moof") >= 2
    assert not list(tmp_path.glob(".stp-check-*"))  # the encoder check left nothing behind


def test_a_killed_run_leaves_a_decodable_video(engine, tmp_path):
    long = tmp_path / "long.mp4"
    write_video(long, 1600, seed=3)
    out, events = tmp_path / "annotated.mp4", tmp_path / "e.jsonl"
    cmd = [sys.executable, "-m", "stprompt.runtime.cli", str(long), "--engine", engine, "--events", str(events),
           "--output", str(out), "--lookahead", "0", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and (not out.exists() or out.read_bytes().count(b"moof") < 3):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1].decode()  # still running: the kill lands mid-run
    proc.kill()  # SIGKILL: no handler, no close, no trailer
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    scored = sum(json.loads(line)["type"] == "frame" for line in events.read_text().splitlines())
    assert 0 < scored < 1600 // STRIDE
    frames = 0
    with av.open(str(out)) as container:  # the last fragment may be cut short: count what decodes before it
        assert container.streams.video[0].codec_context.name == "h264"
        try:
            for _ in container.decode(video=0):
                frames += 1
        except av.error.FFmpegError:
            pass
    print(f"killed run: {out.stat().st_size} bytes, {frames} frames decoded, {scored} snippets scored")
    assert frames >= 2 and count_frames(out) >= 2


def test_each_source_gets_its_own_rate_and_a_short_name(engine, tmp_path):
    slow = write_clip(tmp_path / ("a" * 200) / ("b" * 200) / "gate.mp4", 48, 10.0, (161, 121), seed=1)
    fast = write_clip(tmp_path / ("c" * 200) / ("d" * 120 + ".mp4"), 64, 25.0, (160, 120), seed=2)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "annotated.mp4"
    assert stp_run(str(slow), str(fast), "--engine", engine, "--events", str(tmp_path / "e.jsonl"),
                   "--output", str(out)) == 0  # fmt: skip
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["annotated.dddddddddddddddddddddddddddddddddddddddd.mp4", "annotated.gate.mp4"]
    gate, d40 = probe(out.parent / names[1]), probe(out.parent / names[0])
    assert gate["rate"] == Fraction(10, STRIDE) and gate["frames"] == 48 // STRIDE and gate["size"] == (162, 122)
    assert d40["rate"] == Fraction(25, STRIDE) and d40["frames"] == 64 // STRIDE and d40["size"] == (160, 120)
    assert gate["codec"] == d40["codec"] == "h264"


def test_short_ids_are_filesystem_safe_short_and_unique():
    assert source_slug("/videos/gate 2/Entrée.mp4") == "Entr-e"
    assert source_slug("file:///videos/cam%201.mkv") == "cam-1"
    assert source_slug("/data/frames/?fps=10") == "frames"
    assert source_slug("rtsp://admin:secret@10.0.0.5:554/stream1") == "10.0.0.5-stream1"
    assert source_slug("rtsp://cam-2/") == "cam-2"
    assert [source_slug(u) for u in ("0", "camera1", "/dev/video2", "csi://0", "gst:videotestsrc ! appsink")] == [
        "camera0", "camera1", "video2", "csi0", "gst"]  # fmt: skip
    assert source_slug("/x/" + "y" * 300 + ".mp4") == "y" * 40
    assert source_slug("/x/.hidden.mp4") == "hidden" and source_slug("/x/...mp4") == "source"
    assert short_ids(["/a/clip.mp4", "/b/clip.avi", "/c/other.mp4"]) == ["0-clip", "1-clip", "other"]
    assert short_ids(["/a/Clip.mp4", "/b/clip.mp4", "/c/1-clip.mp4"]) == ["0-Clip", "1-clip", "2-1-clip"]


@pytest.mark.parametrize("case", ["suffix", "no_suffix", "missing_folder", "folder_is_a_file", "is_a_folder",
                                  "read_only"])  # fmt: skip
def test_an_unusable_video_fails_before_any_source_or_events_file_is_touched(case, video, engine, tmp_path, capsys,
                                                                            monkeypatch):  # fmt: skip
    from stprompt.runtime import pipeline, sinks

    bad = {"suffix": tmp_path / "out.txt", "no_suffix": tmp_path / "annotated",
           "missing_folder": tmp_path / "nope" / "out.mp4", "folder_is_a_file": tmp_path / "e.jsonl" / "out.mp4",
           "is_a_folder": tmp_path / "dir.mp4", "read_only": tmp_path / "ro" / "out.mp4"}[case]  # fmt: skip
    needle = {"suffix": "'.txt'", "no_suffix": "no suffix", "missing_folder": "no folder",
              "folder_is_a_file": "not a folder", "is_a_folder": "is a folder",
              "read_only": "ermission"}[case]  # fmt: skip
    if case == "is_a_folder":
        bad.mkdir()
    if case == "read_only":
        bad.parent.mkdir(mode=0o555)
        if os.geteuid() == 0:  # root writes into read-only folders: give it the error anyone else gets

            def refused(*args, **kwargs):
                raise PermissionError(13, "Permission denied")

            monkeypatch.setattr(sinks.tempfile, "mkstemp", refused)
    events = tmp_path / "e.jsonl"
    events.write_text('{"kept": true}\n')
    opened = []

    def open_sources(*args, **kwargs):
        opened.append(args)
        pytest.fail("a source was opened")

    monkeypatch.setattr(pipeline, "open_sources", open_sources)
    assert stp_run(str(video), "--engine", engine, "--output", str(events), "--video-out", str(bad)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--video-out" in err[0] and needle in err[0] and "Traceback" not in err[0], err
    assert events.read_text() == '{"kept": true}\n' and not opened
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_open_outputs_opens_videos_before_it_truncates_an_events_file(tmp_path):
    events = tmp_path / "e.jsonl"
    events.write_text("kept\n")
    with pytest.raises(UserError, match="no folder"):
        open_outputs([str(events), str(tmp_path / "nope" / "v.mp4")])
    assert events.read_text() == "kept\n"
    sinks = open_outputs([str(events), str(tmp_path / "v.mkv")])  # the given order stays
    assert [type(s).__name__ for s in sinks] == ["JsonLinesSink", "VideoSink"] and events.read_text() == ""
    for s in sinks:
        s.close()


def test_mp4v_when_pyav_is_missing(video, engine, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    out = tmp_path / "annotated.mp4"
    assert stp_run(str(video), "--engine", engine, "--events", str(tmp_path / "e.jsonl"), "--output", str(out)) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PyAV is not installed" in err[0] and "mp4v" in err[0], err
    cap = cv2.VideoCapture(str(out))
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
    assert fourcc in ("mp4v", "FMP4")  # MPEG-4 part 2, as OpenCV's FFmpeg names it when reading
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(25 / STRIDE, rel=1e-3)
    cap.release()
    assert count_frames(out) == 64 // STRIDE
    with pytest.raises(UserError, match="unknown video suffix"):  # the checks hold without PyAV too
        VideoSink(str(tmp_path / "v.webm"))
    with pytest.raises(UserError, match="no folder"):
        VideoSink(str(tmp_path / "nope" / "v.mp4"))
    monkeypatch.undo()
    assert probe(out)["codec"] == "mpeg4"
