"""Runtime sources: files and image folders frame-exact, clear errors, live newest-frame hand-off, reconnects."""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from stprompt.errors import UserError
from stprompt.runtime import sources
from stprompt.runtime.sources import (
    Frame,
    LiveSource,
    backoff_delays,
    classify_uri,
    csi_pipeline,
    open_source,
    opencv_has_gstreamer,
    redact,
)

N_FRAMES, FPS, SIZE = 40, 20.0, (96, 64)


def level(i: int) -> int:
    return 5 * i  # frame i is a flat grey of this value


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    assert writer.isOpened()
    for i in range(N_FRAMES):
        writer.write(np.full((SIZE[1], SIZE[0], 3), level(i), np.uint8))
    writer.release()
    return path


# --- files and folders -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_uri", [False, True])
def test_video_file_gives_every_frame_with_index_and_time(video, as_uri):
    uri = f"file://{video}" if as_uri else str(video)
    src = open_source(uri)
    assert (src.live, src.fps, src.size, src.id, src.uri) == (False, FPS, SIZE, "clip", uri)
    frames = list(src)
    assert [f.index for f in frames] == list(range(N_FRAMES))
    np.testing.assert_allclose([f.time for f in frames], np.arange(N_FRAMES) / FPS)
    means = np.array([f.image.mean() for f in frames])
    assert np.all(np.abs(means - [level(i) for i in range(N_FRAMES)]) < 5) and np.all(np.diff(means) > 0)
    assert all(f.image.shape == (SIZE[1], SIZE[0], 3) and f.image.dtype == np.uint8 for f in frames)
    assert src.stats == {"frames": N_FRAMES, "dropped": 0, "reconnects": 0}
    assert src.read() is None and src.ended
    src.close()
    assert src.read() is None


def test_video_file_source_id_and_close_early(video):
    with open_source(str(video), source_id="cam-A") as src:
        assert src.id == "cam-A" and src.read().index == 0
    assert src.read() is None


def write_images(folder: Path, n: int) -> None:
    folder.mkdir()
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((30, 50, 3), 20 * i, np.uint8))
    (folder / "notes.txt").write_text("not an image")


def test_image_folder_sorted_with_fps_suffix(tmp_path):
    write_images(tmp_path / "imgs", 5)
    cv2.imwrite(str(tmp_path / "imgs" / "004b.JPG"), np.full((30, 50, 3), 200, np.uint8))
    src = open_source(f"{tmp_path / 'imgs'}?fps=10")
    assert (src.live, src.fps, src.size, src.id) == (False, 10.0, (50, 30), "imgs")
    frames = list(src)
    assert [f.index for f in frames] == list(range(6))
    np.testing.assert_allclose([f.time for f in frames], np.arange(6) / 10)
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 20, 40, 60, 80, 200]  # png exact; 004b.JPG after 004
    assert src.stats["frames"] == 6


def test_image_folder_default_fps(tmp_path):
    write_images(tmp_path / "imgs", 2)
    assert open_source(str(tmp_path / "imgs")).fps == 25.0


def test_missing_corrupt_and_empty_inputs_name_the_path(tmp_path):
    with pytest.raises(UserError, match=r"video file not found: .*nope\.mp4"):
        open_source(str(tmp_path / "nope.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UserError, match=r"bad\.mp4: OpenCV cannot open it as a video"):
        open_source(str(bad))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: no images"):
        open_source(str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"fps= must be a positive number"):
        open_source(f"{tmp_path / 'empty'}?fps=zero")


def test_unreadable_image_is_named_skipped_and_counted(tmp_path, capsys):
    write_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "001z.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    src = open_source(str(tmp_path / "imgs"))
    assert [f.index for f in src] == [0, 1, 3]  # 001z.jpg's position stays unused, as a dropped frame's
    assert src.stats["skipped"] == 1 and src.stats["frames"] == 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and re.search(r"warning: .*001z\.jpg: cannot read this image .*; skipped$", err[0])


# --- URIs, cameras, GStreamer, network ----------------------------------------------------------------------------


def test_classify_uri():
    assert classify_uri("camera0") == ("camera", 0)
    assert classify_uri("0") == ("camera", 0)
    assert classify_uri("/dev/video2") == ("camera", 2)
    assert classify_uri("v4l2:///dev/video1") == ("camera", 1)
    assert classify_uri("csi://0?width=640") == ("csi", "csi://0?width=640")
    assert classify_uri("gst:videotestsrc ! appsink") == ("gst", "videotestsrc ! appsink")
    assert classify_uri("rtsp://u:p@cam/stream1")[0] == "network"
    assert classify_uri("https://host/live.m3u8")[0] == "network"
    assert classify_uri("file:///tmp/x.mp4") == ("file", Path("/tmp/x.mp4"))
    with pytest.raises(UserError, match="unknown source type 'ftp://'"):
        classify_uri("ftp://host/x.mp4")
    with pytest.raises(UserError, match="empty"):
        classify_uri("  ")


def test_redact_hides_credentials():
    assert redact("rtsp://admin:hunter2@10.0.0.5:554/s1") == "rtsp://***@10.0.0.5:554/s1"
    assert redact("rtsp://10.0.0.5/s1") == "rtsp://10.0.0.5/s1"


@pytest.mark.parametrize("uri", ["camera99", "99", "/dev/video99"])
def test_missing_camera_fails_fast_without_reconnects(uri):
    start = time.monotonic()
    with pytest.raises(UserError, match=r"camera 99 not found or busy \(/dev/video99\)"):
        open_source(uri, reconnect=0)
    assert time.monotonic() - start < 5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="V4L2 device nodes are Linux's")
def test_missing_camera_is_waited_for_by_default():
    """A USB camera may be plugged in later: the source starts down and keeps trying (without OpenCV probing)."""
    src = open_source("/dev/video99")
    try:
        assert src.live and not src.ended and src.size is None and src.state == "down"
        (event,) = src.take_events()
        assert event["type"] == "source" and event["state"] == "down" and "/dev/video99" in event["reason"]
        assert src.read(timeout=0.05) is None and not src.ended
    finally:
        start = time.monotonic()
        src.close()
    assert src.ended and time.monotonic() - start < 1


@pytest.mark.parametrize(
    "uri,needle",
    [("rtsp://", "no host"), ("rtsp:///stream", "no host"), ("http://:8080/x", "no host"),
     ("rtsp://u:secret@cam:99999/x", "port"), ("rtsp://cam:port/x", "port")],
)  # fmt: skip
def test_a_stream_url_that_can_never_work_is_refused_at_once(uri, needle):
    with pytest.raises(UserError, match=needle) as info:
        open_source(uri)  # whatever the reconnect policy
    assert "secret" not in str(info.value)


@pytest.mark.skipif(opencv_has_gstreamer(), reason="this OpenCV has GStreamer")
@pytest.mark.parametrize("uri", ["csi://0", "gst:videotestsrc ! videoconvert ! appsink"])
def test_gstreamer_sources_need_jetpack_opencv(uri):
    with pytest.raises(UserError, match=r"without GStreamer.*JetPack's OpenCV"):
        open_source(uri)


def test_csi_pipeline_string():
    p = csi_pipeline(1, 1920, 1080, 60, 2)
    assert p.startswith("nvarguscamerasrc sensor-id=1 ! ")
    assert "width=1920, height=1080, framerate=60/1" in p and "flip-method=2" in p
    assert p.endswith("appsink drop=true max-buffers=1 sync=false")


def test_unreachable_stream_is_a_user_error_without_reconnects_and_credentials():
    with pytest.raises(UserError, match=r"cannot open stream rtsp://\*\*\*@127\.0\.0\.1:1/x") as info:
        open_source("rtsp://user:secret@127.0.0.1:1/x", reconnect=0)
    assert "secret" not in str(info.value)


def test_unreachable_stream_starts_down_and_gives_up_after_its_attempts():
    start = time.monotonic()
    src = open_source("rtsp://user:secret@127.0.0.1:1/x", reconnect=1)  # port 1: refused at once
    assert src.state == "down" and not src.ended
    assert src.read(timeout=5) is None and src.ended  # gave up after 1 attempt (0.5 s wait, refused at once)
    assert time.monotonic() - start < 5
    events = src.take_events()
    assert [e["state"] for e in events] == ["down", "down"]
    assert "reconnecting" in events[0]["reason"] and events[1]["reason"].startswith("gave up after 1 reconnect")
    assert src.error.startswith("gave up after 1 reconnect attempt: cannot open stream rtsp://***@127.0.0.1:1/x")
    assert all("secret" not in e["reason"] for e in events)
    src.close()


# --- live sources with fake captures -------------------------------------------------------------------------------


class FakeCapture:
    """Yields `n` frames whose pixels hold a global serial number, `period` seconds apart, then fails."""

    serial = 0

    def __init__(self, n: int, period: float = 0.0, opened: bool = True):
        self.n, self.period, self.opened, self.released = n, period, opened, False

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.opened

    def read(self):
        if self.period:
            time.sleep(self.period)
        if self.n <= 0:
            return False, None
        self.n -= 1
        image = np.full((4, 6, 3), FakeCapture.serial % 256, np.uint8)
        FakeCapture.serial += 1
        return True, image

    def release(self) -> None:
        self.released = True

    def get(self, prop: int) -> float:
        return 15.0 if prop == cv2.CAP_PROP_FPS else 0.0


def live(factory, **kwargs) -> LiveSource:
    kwargs.setdefault("backoff", [0.001] * 3)
    kwargs.setdefault("jitter", 0.0)
    return LiveSource("rtsp://fake/stream", factory, source_id="fake", open_error="fake stream did not open", **kwargs)


class Plan:
    """A capture factory that hands out the captures of `plan` in order, then closed ones; keeps what it made."""

    def __init__(self, *plan):
        self.plan, self.made = list(plan), []

    def __call__(self):
        cap = self.plan.pop(0) if self.plan else FakeCapture(0, opened=False)
        if isinstance(cap, Exception):
            raise cap
        self.made.append(cap)
        return cap


def drain(src: LiveSource, seconds: float = 5.0) -> list[Frame]:
    """Every frame until the source ends (bounded: the test fails instead of hanging)."""
    got, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        frame = src.read(timeout=0.05)
        if frame is not None:
            got.append(frame)
        elif src.ended:
            return got
    raise AssertionError(f"the source did not end within {seconds} s")


def test_live_source_keeps_only_the_newest_frame():
    FakeCapture.serial = 0
    src = live(lambda: FakeCapture(200, period=0.0005), reconnect=False)
    assert (src.live, src.fps, src.size) == (True, 15.0, (6, 4))
    got: list[Frame] = []
    while (frame := src.read()) is not None:
        got.append(frame)
        time.sleep(0.005)  # a pipeline slower than the camera
    indices = [f.index for f in got]
    assert all(b > a for a, b in zip(indices, indices[1:], strict=False))
    assert all(int(f.image[0, 0, 0]) == f.index % 256 for f in got)  # index = the decoded frame's own number
    assert src.stats["dropped"] > 0 and src.stats["frames"] == len(got)
    assert src.stats["frames"] + src.stats["dropped"] == 200
    times = [f.time for f in got]
    assert all(b >= a for a, b in zip(times, times[1:], strict=False))
    src.close()


def test_live_read_blocks_for_a_newer_frame():
    FakeCapture.serial = 0
    src = live(lambda: FakeCapture(3, period=0.05), reconnect=False)
    first = src.read()
    start = time.monotonic()
    second = src.read()
    assert second.index > first.index and time.monotonic() - start > 0.02  # waited for the camera
    src.close()


def test_live_read_timeout_is_not_the_end():
    src = live(lambda: FakeCapture(3, period=0.3), reconnect=False)
    assert src.read(timeout=0.01).index == 0
    assert src.read(timeout=0.01) is None and not src.ended  # the camera is just slower than the timeout
    src.close()
    assert src.ended and src.read() is None


def test_reconnect_with_backoff_after_failures():
    FakeCapture.serial = 0
    plan = [FakeCapture(5), FakeCapture(0, opened=False), FakeCapture(0), FakeCapture(5)]  # then nothing opens
    opened: list[FakeCapture] = []

    def factory():
        cap = plan.pop(0) if plan else FakeCapture(0, opened=False)
        opened.append(cap)
        return cap

    start = time.monotonic()
    src = live(factory, backoff=[0.001, 0.002, 0.004], reconnect=3)
    got = []
    while (frame := src.read()) is not None:
        got.append(frame.index)
    assert time.monotonic() - start < 2
    assert src.stats["reconnects"] == 1  # frames flowed again once; the final outage exhausted the attempts
    assert src.stats["frames"] + src.stats["dropped"] == 10
    assert got == sorted(set(got)) and got[-1] == 9
    assert src.error.startswith("gave up after 3 reconnect attempts: fake stream did not open") and src.ended
    assert [e["state"] for e in src.take_events()] == ["up", "down", "up", "down", "down"]
    assert all(c.released for c in opened)
    src.close()


def test_no_reconnect_ends_at_first_failure():
    src = live(lambda: FakeCapture(2), reconnect=False)
    while src.read() is not None:
        pass
    assert src.stats["reconnects"] == 0 and src.stats["frames"] + src.stats["dropped"] == 2
    events = src.take_events()
    assert [e["state"] for e in events] == ["up", "down"] and "not reconnecting" in events[1]["reason"]
    assert src.error is None  # the end of the stream, as a file's end: not a failure


def test_live_source_that_never_delivers_is_a_user_error_without_reconnects():
    with pytest.raises(UserError, match="fake stream did not open"):
        live(lambda: FakeCapture(0, opened=False), reconnect=0)
    with pytest.raises(UserError, match="fake stream did not open"):
        live(lambda: FakeCapture(0), reconnect=0)  # opens, but no first frame

    def boom():
        raise RuntimeError("driver exploded")

    with pytest.raises(UserError, match="fake stream did not open.*driver exploded"):
        live(boom, reconnect=0)


def test_a_camera_not_up_at_start_is_waited_for_and_then_read():
    FakeCapture.serial = 0
    plan = Plan(RuntimeError("driver exploded"), FakeCapture(0, opened=False), FakeCapture(0),
                FakeCapture(1000, period=0.01))  # fmt: skip
    src = live(plan, backoff=[0.01, 0.02])  # reconnect forever, the default
    assert src.state == "down" and src.size is None and src.fps == sources.DEFAULT_LIVE_FPS  # nominal until up
    (down,) = src.take_events()
    assert down == {"v": 1, "type": "source", "source": "fake", "state": "down", "time": down["time"],
                    "reason": down["reason"]} and 0 <= down["time"] < 1  # fmt: skip
    assert "fake stream did not open (RuntimeError: driver exploded)" in down["reason"]
    assert "reconnecting (waits 0.01-0.02 s)" in down["reason"]
    frame = src.read(timeout=5)
    assert frame is not None and frame.index < 10 and src.state == "up"  # indices count from the first frame
    (up,) = src.take_events()
    assert up["state"] == "up" and up["reason"].startswith("reconnected after 3 attempts")
    assert up["time"] >= down["time"]
    assert src.stats["reconnects"] == 1
    src.close()
    assert len(plan.made) >= 3 and all(c.released for c in plan.made[:2])


def test_forever_keeps_trying_until_closed():
    plan = Plan(FakeCapture(3))  # then nothing ever opens again
    src = live(plan, backoff=[0.001, 0.002])  # reconnect=None: forever
    assert src.max_attempts is None and src.reconnect
    time.sleep(0.3)
    assert not src.ended and src.error is None and len(plan.made) > 20  # hundreds of attempts, never given up
    assert src.read(timeout=0.1).index == 2 and src.read(timeout=0.01) is None  # the newest frame is still there
    assert [e["state"] for e in src.take_events()] == ["up", "down"]  # no event per failed attempt
    start = time.monotonic()
    src.close()
    assert src.ended and src.read() is None and time.monotonic() - start < 1


def test_events_wait_for_the_frames_read_before_them():
    """A `down` is handed out only once the last frame before the outage was read (or dropped): a consumer
    that finishes the stream on `down` has every frame of it."""
    src = live(Plan(FakeCapture(2), FakeCapture(0, opened=False)), reconnect=0)
    deadline = time.monotonic() + 5
    while src.state != "down" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e["state"] for e in src.take_events()] == ["up"]  # the down waits for frame 1, still unread
    assert src.read().index == 1
    assert [e["state"] for e in src.take_events()] == ["down"] and src.ended


def test_read_errors_and_reader_bugs_end_in_a_down_never_a_hang():
    class Raising(FakeCapture):
        def read(self):
            if self.n <= 0:
                raise RuntimeError("decoder exploded")
            return super().read()

    src = live(Plan(Raising(2), FakeCapture(2)), reconnect=1)
    frames = drain(src)
    events = src.take_events()
    assert [e["state"] for e in events] == ["up", "down", "up", "down", "down"]
    assert "read failed: RuntimeError: decoder exploded" in events[1]["reason"]
    assert src.stats["reconnects"] == 1 and len(frames) + src.stats["dropped"] == 4 and src.error


def test_backoff_waits_are_capped_and_jittered():
    src = live(lambda: FakeCapture(1, period=0.01), backoff=sources.backoff_delays(), jitter=0.1, reconnect=0)
    waits = [src._delay(i) for i in range(12)]
    assert all(0.45 <= w <= 0.55 for w in waits[:1]) and all(7.2 <= w <= 8.8 for w in waits[4:])
    assert len({round(w, 6) for w in waits[4:]}) > 1  # jittered: cameras that fell together do not retry together
    src.close()


@pytest.mark.parametrize("value,attempts", [(None, None), (True, None), (False, 0), (0, 0), (5, 5)])
def test_reconnect_policies(value, attempts):
    assert sources.reconnect_attempts(value) == attempts


def test_a_bad_reconnect_policy_is_refused():
    with pytest.raises(ValueError, match="reconnect"):
        sources.reconnect_attempts(-1)


def test_close_unblocks_a_waiting_reader():
    src = live(lambda: FakeCapture(1000, period=0.3), reconnect=False)
    src.read()
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(src.read()))
    reader.start()
    time.sleep(0.05)
    src.close()
    reader.join(timeout=1.0)
    assert not reader.is_alive() and result == [None]


def test_backoff_schedule():
    assert backoff_delays() == [0.5, 1, 2, 4, 8]  # the last wait repeats for every later attempt
    assert backoff_delays(attempts=7) == [0.5, 1, 2, 4, 8, 8, 8]
    assert backoff_delays(1, 1) == [1]
    assert list(sources.DEFAULT_BACKOFF) == backoff_delays()
