"""GPU decode (`nvdec:PATH`, PyNvVideoCodec): the URI's parsing and the one line where it cannot run, everywhere;
the decode itself where a GPU and PyNvVideoCodec are (`gpu`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from conftest import write_video

from stprompt.errors import UserError
from stprompt.runtime.sources import classify_uri, open_source

HAS_NVC = importlib.util.find_spec("PyNvVideoCodec") is not None


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("nvdec") / "clip.mp4"
    write_video(path, 40, size=(320, 180), seed=5)
    return path


def test_nvdec_uris_name_a_file(video):
    assert classify_uri(f"nvdec:{video}") == ("nvdec", video)
    assert classify_uri(f"nvdec://{video}") == ("nvdec", video)
    assert classify_uri(f"NVDEC:{video}")[0] == "nvdec"
    for bad, needle in (("nvdec:", "nvdec:PATH"), ("nvdec:rtsp://cam/1", "files only")):
        with pytest.raises(UserError, match=needle):
            classify_uri(bad)


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(UserError, match="video file not found"):
        open_source(f"nvdec:{tmp_path / 'nope.mp4'}")


@pytest.mark.skipif(HAS_NVC, reason="PyNvVideoCodec is installed here")
def test_without_pynvvideocodec_stp_run_says_so_in_one_line(tiny_bundle, video, capsys):
    from stprompt.runtime import cli

    code = cli.main(["--engine", str(tiny_bundle.with_name("model.onnx")), f"nvdec:{video}", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "PyNvVideoCodec" in err[0] and "pip install PyNvVideoCodec" in err[0] and "nvdec:" in err[0]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_NVC, reason="needs PyNvVideoCodec (pip install PyNvVideoCodec)")
def test_gpu_decode_gives_the_frames_opencv_gives(video):
    """Every frame, in order; the sampled ones' pixels within a few levels of FFmpeg's (another YUV -> RGB)."""
    from stprompt.runtime.prefetch import PrefetchSource
    from stprompt.runtime.sources import VideoFileSource

    cpu = list(VideoFileSource(video))
    gpu = list(PrefetchSource(open_source(f"nvdec:{video}"), lambda i: i % 16 == 8))
    assert [f.index for f in gpu] == [f.index for f in cpu] == list(range(40))
    for a, b in zip(cpu, gpu, strict=True):
        if a.index % 16 == 8:
            assert b.image.shape == a.image.shape and b.image.dtype == np.uint8
            assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 3.0, a.index
        else:
            assert b.image is None
