"""stp-run end to end on the tiny dataset: scores equal stp-eval's, several sources, sinks, user errors, SIGINT."""

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SCORE_ROUNDING, count_frames, write_video

from stprompt import evaluate, extract, train, windows
from stprompt.export import cli as export_cli
from stprompt.runtime import cli as run_cli

STRIDE = 8


@pytest.fixture(scope="module")
def chain(tiny_dataset, tmp_path_factory):
    """features (stride 8) -> model.pt -> bundle -> stp-eval predictions for the test videos."""
    root = tmp_path_factory.mktemp("run")
    feats, ckpt, stem = root / "features", root / "model.pt", root / "bundle" / "model"
    assert extract.main([str(tiny_dataset), "--out", str(feats), "--stride", str(STRIDE), "--quiet"]) == 0
    assert train.main([str(feats), "--out", str(ckpt), "--epochs", "3", "--batch", "4", "--quiet"]) == 0
    assert export_cli.main(["--ckpt", str(ckpt), "--out", str(stem), "--quiet"]) == 0
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert evaluate.main([str(feats), "--ckpt", str(ckpt), "--predictions", str(root / "pred.json")]) == 0
    return {"root": root, "features": feats, "stem": stem, "pred": json.loads((root / "pred.json").read_text())}


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(argv, capsys=None) -> int:
    return run_cli.main(argv)


def test_streamed_scores_equal_offline_scores(chain, tiny_dataset, tmp_path):
    events_path = tmp_path / "events.jsonl"
    video = tiny_dataset / "videos/test_5.mp4"
    engine = str(chain["stem"]) + ".onnx"
    assert run_cli.main([str(video), "--engine", engine, "--events", str(events_path), "--quiet"]) == 0
    frames = [e for e in read_events(events_path) if e["type"] == "frame"]
    offline = chain["pred"]["videos/test_5.mp4"]
    assert [e["frame"] for e in frames] == offline["frames"]
    # features agree to ~1e-5; events round to 4 decimals (stp-eval's predictions to 6): at most SCORE_ROUNDING more
    np.testing.assert_allclose([e["score"] for e in frames], offline["scores"], atol=1e-5 + SCORE_ROUNDING)
    np.testing.assert_allclose([e["score_c"] for e in frames], offline["scores_c"], atol=1e-5 + SCORE_ROUNDING)
    assert all(list(e["probs"]) == ["normal", "Fighting"] for e in frames)  # by name, in the bundle's class order
    probs = [list(e["probs"].values()) for e in frames]
    np.testing.assert_allclose(probs, offline["probs"], atol=1e-5 + SCORE_ROUNDING)
    assert all(e["source"] == str(video) and e["probs"][e["class"]] == max(e["probs"].values()) for e in frames)


def test_runtime_features_equal_extracted_features(chain, tiny_dataset):
    from stprompt.data.features import FeatureStore
    from stprompt.runtime.backends import open_backend

    backend, _ = open_backend(str(chain["stem"]) + ".onnx")
    store = FeatureStore.open(chain["features"])
    arrays = store.load("videos__test_4")
    cap = cv2.VideoCapture(str(tiny_dataset / "videos/test_4.mp4"))
    index, checked = 0, 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index % STRIDE == STRIDE // 2 and checked < len(arrays["frames"]):
            emb = backend.encode(windows.encoder_batch(frame))
            np.testing.assert_allclose(emb[0], arrays["x_clip"][checked], atol=1e-5)
            np.testing.assert_allclose(emb[1:], arrays["x_patch"][checked].reshape(49, -1), atol=1e-5)
            checked += 1
        index += 1
    assert checked == len(arrays["frames"])


def test_two_sources_give_each_the_scores_it_gets_alone(chain, tiny_dataset, tmp_path):
    engine = str(chain["stem"]) + ".onnx"
    a, b = tiny_dataset / "videos/test_4.mp4", tiny_dataset / "videos/test_5.mp4"
    both = tmp_path / "both.jsonl"
    assert run_cli.main([str(a), str(b), "--engine", engine, "--events", str(both), "--quiet"]) == 0
    events = [e for e in read_events(both) if e["type"] == "frame"]
    for i, path in enumerate((a, b)):
        rel = f"videos/{path.name}"
        mine = [e["score"] for e in events if e["source"] == f"{i}:{path}"]
        np.testing.assert_allclose(mine, chain["pred"][rel]["scores"], atol=1e-5 + SCORE_ROUNDING)


def test_alarms_bracket_anomalies_and_carry_boxes_and_video_is_written(chain, tiny_dataset, tmp_path):
    events_path, video_out = tmp_path / "e.jsonl", tmp_path / "out.mp4"
    engine = str(chain["stem"]) + ".onnx"
    argv = [str(tiny_dataset / "videos/test_5.mp4"), "--engine", engine, "--events", str(events_path),
            "--video-out", str(video_out), "--alarm-on", "0", "--alarm-off", "0", "--quiet"]  # fmt: skip
    assert run_cli.main(argv) == 0
    alarms = [e for e in read_events(events_path) if e["type"] == "alarm"]
    states = [e["state"] for e in alarms]
    assert states[0] == "new" and states[-1] == "end" and set(states[1:-1]) <= {"update"}
    assert len({e["id"] for e in alarms}) == 1
    for e in alarms[:-1]:
        for x1, y1, x2, y2, score in e["boxes"]:
            assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 120 and score >= 0.5
    assert count_frames(video_out) == 48 // STRIDE


def test_python_api_feeds_frames_and_gets_the_same_events(chain, tiny_dataset):
    from stprompt.runtime.api import open_detector

    detector = open_detector(str(chain["stem"]) + ".onnx")
    assert detector.sa2_kernel  # SA2 runs as the Numba kernel, the head graph after SA2 takes x_clip, x_as
    cap = cv2.VideoCapture(str(tiny_dataset / "videos/test_5.mp4"))
    events = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        events += detector.feed(frame, source="cam")
    events += detector.finish("cam")
    scores = [e["score"] for e in events if e["type"] == "frame"]
    np.testing.assert_allclose(scores, chain["pred"]["videos/test_5.mp4"]["scores"], atol=1e-5 + SCORE_ROUNDING)


def corrupt(tmp_path) -> str:
    p = tmp_path / "corrupt.mp4"
    p.write_bytes(os.urandom(4000))
    return str(p)


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing_file", "not found"),
        ("corrupt_video", "corrupt.mp4"),
        ("missing_camera", "camera"),
        ("other_bundle_engine", "not part of bundle"),
        ("wrong_hash", "sha256 mismatch"),
        ("unreadable_onnx", "model.onnx"),
    ],
)
def test_bad_inputs_end_in_one_line(case, needle, chain, tiny_dataset, tmp_path, capsys):
    import shutil

    video = str(tiny_dataset / "videos/test_5.mp4")
    engine = str(chain["stem"]) + ".onnx"
    if case == "missing_file":
        argv = [str(tmp_path / "nope.mp4"), "--engine", engine]
    elif case == "corrupt_video":
        argv = [corrupt(tmp_path), "--engine", engine]
    elif case == "missing_camera":  # by default a missing /dev/video9 is waited for (USB hot-plug)
        argv = ["camera9", "--engine", engine, "--reconnect", "0"]
    else:
        copy = tmp_path / "b"
        shutil.copytree(chain["stem"].parent, copy)
        if case == "other_bundle_engine":  # an int8 encoder copied in from another export
            data = bytearray((copy / "model.onnx").read_bytes())
            data[-1] ^= 0xFF
            (copy / "model.int8.onnx").write_bytes(bytes(data))
            engine = str(copy / "model.int8.onnx")
        elif case == "wrong_hash":
            data = bytearray((copy / "model.head.onnx").read_bytes())
            data[-1] ^= 0xFF
            (copy / "model.head.onnx").write_bytes(bytes(data))
            engine = str(copy / "model.onnx")
        else:
            (copy / "model.onnx").write_bytes(b"not onnx")
            doc = json.loads((copy / "model.json").read_text())
            from stprompt.bundle.hashing import sha256_file

            doc["files"]["encoder"]["sha256"] = sha256_file(copy / "model.onnx")
            doc["files"]["encoder"]["bytes"] = 8
            (copy / "model.json").write_text(json.dumps(doc))
            engine = str(copy / "model.onnx")
        argv = [video, "--engine", engine]
    assert run_cli.main(argv + ["--quiet", "--events", str(tmp_path / "e.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err


def test_sigint_leaves_valid_events_of_every_emitted_snippet(chain, tmp_path):
    video = tmp_path / "long.mp4"
    write_video(video, 1600, seed=3)
    events_path = tmp_path / "events.jsonl"
    cmd = [sys.executable, "-m", "stprompt.runtime.cli", str(video), "--engine", str(chain["stem"]) + ".onnx",
           "--events", str(events_path), "--lookahead", "0", "--quiet"]  # fmt: skip
    # a shell's background job (`.ci/run &`) starts children with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: give the child the default disposition, as a terminal's Ctrl-C finds it
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and (not events_path.exists() or events_path.stat().st_size < 2000):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    events = read_events(events_path)  # every line parses
    frames = [e["frame"] for e in events if e["type"] == "frame"]
    assert 0 < len(frames) < 1600 // STRIDE and frames == sorted(frames)
    assert frames == [k * STRIDE + STRIDE // 2 for k in range(len(frames))]  # none missing
    assert "interrupted" in err and "Traceback" not in err


def test_readme_python_api_example_runs(chain, tiny_dataset, tmp_path, monkeypatch):
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"\*\*Python API\*\*.*?```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "bundle").symlink_to(chain["stem"].parent)
    monkeypatch.chdir(tmp_path)
    handled = []

    def my_frames():
        cap = cv2.VideoCapture(str(tiny_dataset / "videos/test_5.mp4"))
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame

    exec(code, {"my_frames": my_frames, "handle": handled.append})
    scores = [e["score"] for e in handled if e["type"] == "frame"]
    np.testing.assert_allclose(scores, chain["pred"]["videos/test_5.mp4"]["scores"], atol=1e-5 + SCORE_ROUNDING)


def test_a_live_stream_that_dropped_the_sampled_frames_samples_the_next_ones(chain, tiny_dataset):
    from stprompt.runtime.api import open_detector
    from stprompt.runtime.sources import Frame

    detector = open_detector(str(chain["stem"]) + ".onnx", lookahead=0)
    cap = cv2.VideoCapture(str(tiny_dataset / "videos/test_5.mp4"))
    items, index = [], 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        if index % STRIDE != STRIDE // 2:  # the camera dropped exactly the frames we would sample
            items.append(("live", Frame(image, index, index / 25)))
        index += 1
    events = detector.process(items) + detector.finish("live")
    assert [e["frame"] for e in events if e["type"] == "frame"] == [5, 13, 21, 29, 37, 45]


def test_check_mode_compares_two_backends(chain, tiny_dataset, capsys):
    stem = str(chain["stem"])
    video = str(tiny_dataset / "videos/test_5.mp4")
    assert run_cli.main([video, "--engine", stem + ".onnx", "--check", str(chain["root"] / "model.pt")]) == 2
    assert "model.json" in capsys.readouterr().err  # a checkpoint needs its bundle's manifest beside it
    import shutil

    shutil.copy(chain["root"] / "model.pt", stem + ".pt")
    assert run_cli.main([video, "--engine", stem + ".onnx", "--check", stem + ".pt", "--check-frames", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["crops"] == 100 and report["snippets"] == 2
    assert report["embeddings"]["max_abs"] < 1e-4 and report["score"]["max_abs"] < 1e-5


def test_show_without_gui_is_one_clear_line(chain, tiny_dataset, capsys):
    if "GTK" in cv2.getBuildInformation() and os.environ.get("DISPLAY"):
        pytest.skip("this OpenCV can open windows here")
    argv = [str(tiny_dataset / "videos/test_5.mp4"), "--engine", str(chain["stem"]) + ".onnx", "--show", "--quiet"]
    assert run_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--show" in err[0]


def test_check_applies_the_exports_gates(chain, tiny_dataset, capsys):
    """--check passes two faithful engines and fails, exit 2 with one line, when the bundle's gate is stricter than
    the engines agree (an edited model.json: the manifest is not hashed, its files are)."""
    import shutil

    root = chain["root"]
    work = root.parent / "check-gates"
    shutil.copytree(chain["stem"].parent, work, dirs_exist_ok=True)  # the bundle folder
    stem = str(work / chain["stem"].name)
    video = str(tiny_dataset / "videos/test_5.mp4")
    shutil.copy(root / "model.pt", stem + ".pt")
    argv = [video, "--engine", stem + ".onnx", "--check", stem + ".pt", "--check-frames", "1"]
    assert run_cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gate"]["passed"] and report["gate"]["encoder_threshold"] == 0.999
    manifest = json.loads(Path(stem + ".json").read_text())
    manifest["gates"]["head_fp32"]["threshold"] = 1e-30  # stricter than any two implementations agree
    Path(stem + ".json").write_text(json.dumps(manifest))
    assert run_cli.main(argv) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["gate"]["passed"] is False
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "head outputs max abs" in err[0] and "model.json: gates" in err[0]


def test_help_loads_no_numba_opencv_or_numpy():
    """stp-run --help answers before the heavy libraries load (0.3 s quiet, over 1 s under load with them; issue 18
    item 6): a fresh interpreter, so nothing another test imported counts."""
    code = (
        "import contextlib, io, sys\n"
        "from stprompt.runtime import cli\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n"
        "    cli.main(['--help'])\n"
        "assert buf.getvalue().startswith('usage: stp-run'), buf.getvalue()[:200]\n"
        "print(sorted(m for m in ('numba', 'cv2', 'numpy', 'onnxruntime', 'torch') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_run_on_a_file_ends_with_one_summary_line(chain, tiny_dataset, tmp_path, capsys):
    engine = str(chain["stem"]) + ".onnx"
    argv = [str(tiny_dataset / "videos/test_5.mp4"), "--engine", engine, "--events", str(tmp_path / "e.jsonl")]
    assert run_cli.main(argv) == 0
    err = capsys.readouterr().err
    last = err.rstrip("\n").rsplit("\n", 1)[-1]
    assert err.count("summary:") == 1 and last.startswith("stp-run: summary: ")
    assert re.search(r"test_5\.mp4: 48 frames; ended; 6 snippets, \d+ alarms? in \d+\.\d s \(\d+\.\d frames/s\)$",
                     last), last  # fmt: skip


def test_the_cpu_encoder_gets_one_sampled_frame_per_call(chain):
    """stp-run peaked at 1.05 GB with 256 crops a call on the CPU, 0.42 GB with one frame's (issue 18 item 6): the
    default follows the backend; a GPU keeps its large calls."""
    from types import SimpleNamespace

    from stprompt.runtime.api import MAX_BATCH, default_max_batch, open_detector

    detector = open_detector(str(chain["stem"]) + ".onnx")
    per_frame = windows.crops_per_frame(pre=detector.preprocess)
    assert detector.max_batch == per_frame == default_max_batch(detector.backend)
    assert detector.backend.host_encoder  # ONNX Runtime on the CPU provider
    from stprompt.runtime.backends.sim import open_simulated
    from stprompt.runtime.backends.trt import TrtBackend

    simulated_gpu = open_simulated(str(chain["stem"]) + ".json", 0.0)  # the GPU stand-in: an encoder off the host
    assert default_max_batch(simulated_gpu) == MAX_BATCH
    simulated_gpu.close()
    assert TrtBackend.host_encoder is False  # TensorRT keeps its large calls
    backend = SimpleNamespace(host_encoder=True, preprocess=detector.preprocess)  # e.g. PyTorch on cpu
    assert default_max_batch(backend) == per_frame


def test_summary_lines_for_one_and_several_sources():
    from stprompt.runtime.sinks import summary_lines

    one = {"source": "a.mp4", "live": False, "frames": 96, "dropped": 0, "reconnects": 0, "end": "ended", "error": None}
    cam = {**one, "source": "cam", "live": True, "frames": 50, "dropped": 3, "reconnects": 1}
    stats = {"frames": 146, "snippets": 18, "alarms": 1}
    assert summary_lines([one], {**stats, "frames": 96}, 4.0) == [
        "summary: a.mp4: 96 frames; ended; 18 snippets, 1 alarm in 4.0 s (24.0 frames/s)"]  # fmt: skip
    assert summary_lines([one, cam], stats, 2.0) == [
        "summary: a.mp4: 96 frames; ended", "summary: cam: 50 frames, 1 reconnect, 3 dropped; ended",
        "summary: 2 sources: 146 frames, 18 snippets, 1 alarm in 2.0 s (73.0 frames/s)"]  # fmt: skip
