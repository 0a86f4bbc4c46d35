"""stp-run with the encoder on a real Triton Inference Server (tests/triton_server.py; no GPU).

The server hosts the repository stp-triton writes, its encoder as a Python-backend model running the bundle's
ONNX graph with ONNX Runtime, plus the encoder of another export under another name. `pytest -k triton` runs
these alone.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SCORE_ROUNDING, write_video
from test_runtime_pipeline import FileCamera
from triton_server import TritonServer, free_port, missing_reason, python_backend_repository

from stprompt.errors import UserError

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))

QUEUE_DELAY_US = 50_000  # the served encoder's queue delay (the batching test has its own model, 1 s)
FAST_BACKOFF = {"backoff": (0.2, 0.5, 1.0), "jitter": 0.0}


def _other_export(bundle: Path, out: Path) -> Path:
    """A copy of the bundle whose encoder has other weights (another export), its manifest re-hashed."""
    import onnx
    from onnx import numpy_helper

    from stprompt.bundle.hashing import file_entry

    shutil.copytree(bundle.parent, out)
    model = onnx.load(str(out / "model.onnx"))
    init = next(i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    onnx.save(model, str(out / "model.onnx"))
    doc = json.loads((out / "model.json").read_text())
    doc["files"]["encoder"] = {**doc["files"]["encoder"], **file_entry(out / "model.onnx")}
    (out / "model.json").write_text(json.dumps(doc))
    return out / "model.json"


@pytest.fixture(scope="module")
def repository(tiny_bundle, tmp_path_factory) -> Path:
    """stp-triton's repository of the bundle (fp32 encoder) and of another export, as the test server runs it."""
    from stprompt.triton.repository import RepositoryOptions, write_repository

    work = tmp_path_factory.mktemp("triton")
    options = RepositoryOptions(precision="fp32", queue_delay_us=QUEUE_DELAY_US)
    ours = write_repository(tiny_bundle, work / "ours", options)
    other = write_repository(_other_export(tiny_bundle, work / "other-bundle"), work / "theirs",
                             RepositoryOptions(name="other", precision="fp32"))  # fmt: skip
    # the same encoder with a 1 s queue delay: two clients' requests share an execution however loaded the machine
    batching = write_repository(tiny_bundle, work / "batching", RepositoryOptions(name="batching", precision="fp32",
                                                                                 queue_delay_us=1_000_000))  # fmt: skip
    # the float32 encoder (stp-triton --input images): clients normalise and send four times the bytes
    floats = write_repository(tiny_bundle, work / "floats", RepositoryOptions(name="floats", precision="fp32",
                                                                             input="images", head=False))  # fmt: skip
    served = python_backend_repository(ours, work / "served")
    for generated in (other, batching, floats):
        python_backend_repository(generated, served)
    return served


@pytest.fixture(scope="module")
def impostor_repository(tiny_bundle, repository, tmp_path_factory) -> Path:
    """Another export's encoder under this bundle's model name (a server redeployed with another bundle)."""
    from stprompt.triton.repository import RepositoryOptions, write_repository

    work = tmp_path_factory.mktemp("impostor")
    other_bundle = repository.parent / "other-bundle" / "model.json"
    generated = write_repository(other_bundle, work / "generated", RepositoryOptions(precision="fp32"))
    return python_backend_repository(generated, work / "served")


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    with TritonServer(repository, tmp_path_factory.mktemp("server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, 320, blob=(90, 220))
    return path


@pytest.fixture(scope="module")
def local_events(tiny_bundle, video, tmp_path_factory) -> list[dict]:
    from stprompt.runtime import cli

    out = tmp_path_factory.mktemp("local") / "events.jsonl"
    assert cli.main(["--engine", str(tiny_bundle.with_name("model.onnx")), str(video), "--events", str(out),
                     "--quiet"]) == 0  # fmt: skip
    return [json.loads(line) for line in out.read_text().splitlines()]


def after_first_encoder_call(monkeypatch, action) -> None:
    """Run `action` (kill or redeploy the server) once, right after the first encoder call was answered and its
    served config confirmed: between two encoder calls of the run."""
    from stprompt.runtime.backends.triton import TritonBackend

    original, done = TritonBackend._confirm, []

    def confirm_then_act(self) -> None:
        original(self)
        if not done:
            done.append(True)
            action()

    monkeypatch.setattr(TritonBackend, "_confirm", confirm_then_act)


def _frames(events: list[dict]) -> dict[int, float]:
    return {e["frame"]: e["score"] for e in events if e["type"] == "frame"}


def _assert_same_scores(events: list[dict], reference: list[dict]) -> None:
    got, want = _frames(events), _frames(reference)
    assert sorted(got) == sorted(want) and len(want) >= 15
    # scores agree to 1e-5; both runs' events round them to 4 decimals, which may split that by one more unit
    assert max(abs(got[k] - want[k]) for k in want) <= 1e-5 + 2 * SCORE_ROUNDING


def test_triton_run_equals_local_run(server, tiny_bundle, video, local_events, tmp_path, capsys):
    from stprompt.runtime import cli

    out = tmp_path / "events.jsonl"
    code = cli.main(["--engine", str(tiny_bundle.with_name("model.onnx")), "--triton", server.url, str(video),
                     "--events", str(out), "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    events = [json.loads(line) for line in out.read_text().splitlines()]
    _assert_same_scores(events, local_events)
    alarms = lambda evs: [(e["state"], e["frame"]) for e in evs if e["type"] == "alarm"]  # noqa: E731
    assert alarms(events) == alarms(local_events)


@pytest.mark.parametrize("model, sent", [("stp_encoder", np.uint8), ("floats_encoder", np.float32)])
def test_triton_client_sends_the_crops_the_served_model_takes(server, tiny_bundle, video, local_events, tmp_path,
                                                              model, sent, monkeypatch):  # fmt: skip
    """stp-triton's default model takes uint8 crops (model.pre.onnx fused in front: a quarter of the bytes);
    `--input images` float32. The client reads which from the served config; the scores are the same."""
    from stprompt.runtime import cli
    from stprompt.runtime.backends.triton import TritonBackend

    dtypes, infer = [], TritonBackend._infer
    monkeypatch.setattr(TritonBackend, "_infer", lambda self, crops: dtypes.append(crops.dtype) or infer(self, crops))
    out = tmp_path / "events.jsonl"
    url = f"grpc://{server.address}/{model}"
    code = cli.main(["--engine", str(tiny_bundle.with_name("model.onnx")), "--triton", url, str(video),
                     "--events", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    assert dtypes and set(dtypes) == {np.dtype(sent)}
    _assert_same_scores([json.loads(line) for line in out.read_text().splitlines()], local_events)


def test_triton_two_clients_are_batched_together(server, tiny_bundle):
    """Two clients, one request in flight each: an execution of more crops than one request carries can only be
    both clients' requests batched together by the server."""
    import tritonclient.grpc as grpcclient

    from stprompt.bundle.manifest import load_manifest
    from stprompt.runtime.backends.triton import TritonBackend

    manifest = load_manifest(tiny_bundle)
    stats = grpcclient.InferenceServerClient(server.address)

    def counts() -> tuple[int, int, dict[int, int]]:
        s = stats.get_inference_statistics("batching_encoder", as_json=True)["model_stats"][0]  # zeros are absent
        sizes = {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in s.get("batch_stats", [])}
        return int(s["inference_stats"]["success"].get("count", 0)), int(s.get("execution_count", 0)), sizes

    clients = [TritonBackend(f"{server.url}/batching_encoder", manifest, in_flight=1) for _ in range(2)]
    crops = np.random.default_rng(0).integers(0, 256, (50, 224, 224, 3), dtype=np.uint8)  # what the model takes
    requests0, executions0, sizes0 = counts()
    start = threading.Barrier(2)
    outs: list[np.ndarray] = []

    def client(backend) -> None:
        start.wait(timeout=10)
        for _ in range(3):
            outs.append(backend.encode_pixels(crops))

    threads = [threading.Thread(target=client, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    requests1, executions1, sizes1 = counts()
    for c in clients:
        c.close()
    assert len(outs) == 6 and all(np.array_equal(o, outs[0]) for o in outs)
    assert requests1 - requests0 == 6
    assert executions1 - executions0 < 6  # fewer executions than requests
    assert sizes1.get(100, 0) > sizes0.get(100, 0)  # 50 + 50 crops: one request of each client in one batch


def test_triton_server_killed_and_restarted_mid_run(repository, tiny_bundle, video, local_events, tmp_path):
    """A file waits out the outage: engine down and up events, and every score equal to the local run's."""
    from stprompt.runtime.api import open_pipeline

    srv = TritonServer(repository, tmp_path).start()
    killed = threading.Event()
    restarter = threading.Thread(target=lambda: (time.sleep(1.0), srv.start()))

    def on_frame(source: str, frame) -> None:
        if frame.index == 100 and not killed.is_set():
            srv.kill()  # between two encoder calls: the next one finds no server
            killed.set()
            restarter.start()

    try:
        with open_pipeline(str(tiny_bundle.with_name("model.onnx")), [str(video)], triton=srv.url,
                           triton_options=FAST_BACKOFF, on_frame=on_frame) as pipeline:  # fmt: skip
            events = list(pipeline)
        restarter.join(timeout=60)
    finally:
        srv.kill()
    engine = [(e["state"], e["reason"]) for e in events if e["type"] == "engine"]
    assert [state for state, _ in engine] == ["down", "up"], engine
    assert "checked" in engine[1][1]
    _assert_same_scores(events, local_events)
    assert pipeline.stats["unencoded"] == 0


def test_triton_outage_drops_live_frames_and_counts_them(repository, tiny_bundle, video, tmp_path):
    """A camera keeps decoding while the server is down: the frames the pipeline could not take are dropped and
    counted, the stream goes on after the server is back."""
    from stprompt.runtime.api import open_pipeline
    from stprompt.runtime.sources import LiveSource

    srv = TritonServer(repository, tmp_path).start()
    cam = LiveSource("rtsp://cam/1", lambda: FileCamera(video, 10_000, period=0.01), source_id="cam",
                     open_error="off", backoff=[0.05], jitter=0.0)  # fmt: skip
    seen: list[int] = []

    def on_frame(source: str, frame) -> None:
        seen.append(frame.index)
        if len(seen) == 8:  # every frame a live source hands over is encoded (the one sampled may be dropped)
            srv.kill()
            threading.Thread(target=lambda: (time.sleep(1.0), srv.start())).start()

    try:
        with open_pipeline(str(tiny_bundle.with_name("model.onnx")), [cam], triton=srv.url, lookahead=0,
                           triton_options=FAST_BACKOFF, on_frame=on_frame) as pipeline:  # fmt: skip
            events, up_at = [], None
            for event in pipeline:
                events.append(event)
                if event["type"] == "engine" and event["state"] == "up":
                    up_at = len(seen)
                if up_at is not None and len(seen) > up_at + 8:  # frames flow again after the server came back
                    break
    finally:
        srv.kill()
    assert [e["state"] for e in events if e["type"] == "engine"] == ["down", "up"]
    assert pipeline.report()[0]["dropped"] > 100  # down for > 1 s (plus the restart), a frame every 10 ms


def test_triton_server_hosting_another_export_is_refused(server, tiny_bundle, video, capsys):
    from stprompt.runtime import cli
    from stprompt.runtime.backends import open_backend

    with pytest.raises(UserError, match=r"does not serve this bundle's encoder .*another export \(encoder sha256"):
        open_backend(tiny_bundle.with_name("model.onnx"), triton=f"{server.url}/other_encoder")
    code = cli.main(["--engine", str(tiny_bundle.with_name("model.onnx")), "--triton", f"{server.url}/other_encoder",
                     str(video)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("stp-run: error: Triton grpc://127.0.0.1:")


def test_triton_unknown_model_names_the_served_ones(server, tiny_bundle):
    from stprompt.runtime.backends import open_backend

    served = r"\(it has batching_encoder, floats_encoder, other_encoder, stp_encoder\)"
    with pytest.raises(UserError, match=r"has no model 'nope' ready " + served):
        open_backend(tiny_bundle.with_name("model.onnx"), triton=f"{server.url}/nope")


def test_triton_unreachable_server_gives_up_as_reconnect_says(tiny_bundle, video, capsys):
    from stprompt.runtime import cli
    from stprompt.runtime.backends import open_backend

    url = f"grpc://127.0.0.1:{free_port()}"
    with pytest.raises(UserError, match=r"unreachable, gave up after 2 attempts: UNAVAILABLE"):
        open_backend(tiny_bundle.with_name("model.onnx"), triton=url,
                     triton_options={"reconnect": 2, "backoff": (0.01,)})  # fmt: skip
    assert "waiting for the Triton server" in capsys.readouterr().err
    code = cli.main(["--engine", str(tiny_bundle.with_name("model.onnx")), "--triton", url, "--reconnect", "0",
                     str(video)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"stp-run: error: Triton {url}/stp_encoder unreachable: ")


def test_triton_server_gone_for_good_ends_the_run_with_what_was_encoded(repository, tiny_bundle, video, tmp_path,
                                                                         capsys, monkeypatch):  # fmt: skip
    """Killed after the first encoder call and never back: one reconnect attempt (--reconnect 1), then the
    snippets encoded so far are scored and written, and stp-run exits 1 with one line."""
    from stprompt.runtime import cli

    srv = TritonServer(repository, tmp_path).start()
    after_first_encoder_call(monkeypatch, srv.kill)  # its embeddings were answered and confirmed: they are kept
    out = tmp_path / "events.jsonl"
    try:
        code = cli.main(["--engine", str(tiny_bundle.with_name("model.onnx")), "--triton", srv.url, "--reconnect",
                         "1", str(video), "--events", str(out), "--quiet"])  # fmt: skip
    finally:
        srv.kill()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("stp-run: error: Triton grpc://") and "gave up after 1 attempts" in err[-1]
    events = [json.loads(line) for line in out.read_text().splitlines()]
    engine = [(e["state"], e["reason"]) for e in events if e["type"] == "engine"]
    assert [s for s, _ in engine] == ["down", "down"] and engine[1][1].startswith("gave up")
    assert len(_frames(events)) == 4  # the first call's 5 sampled frames; the 5th snippet's frames were not all read


def test_triton_server_back_with_another_export_ends_the_run(repository, impostor_repository, tiny_bundle, video,
                                                             tmp_path, capsys, monkeypatch):  # fmt: skip
    """Restarted between two encoder calls serving another export under the same model name: the answer to the
    next call is not used (the config is confirmed after every call), the snippets encoded before are scored and
    written, exit 1 with one line."""
    from stprompt.runtime import cli

    srv = TritonServer(repository, tmp_path).start()

    def redeploy() -> None:  # between two encoder calls, quicker than any retry: gRPC reconnects by itself
        srv.kill()
        srv.repository = impostor_repository
        srv.start()

    after_first_encoder_call(monkeypatch, redeploy)
    out = tmp_path / "events.jsonl"
    try:
        code = cli.main(["--engine", str(tiny_bundle.with_name("model.onnx")), "--triton", srv.url, str(video),
                         "--events", str(out), "--quiet"])  # fmt: skip
    finally:
        srv.kill()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "another export" in err[-1] and err[-1].startswith("stp-run: error: Triton grpc://")
    events = [json.loads(line) for line in out.read_text().splitlines()]
    engine = [(e["state"], e["reason"]) for e in events if e["type"] == "engine"]
    assert [s for s, _ in engine] == ["down"] and engine[0][1].startswith("refused: ")
    assert len(_frames(events)) == 4  # what the first call encoded is scored (the 5th snippet was unfinished)


def test_triton_needs_the_bundle_named_by_its_onnx(tiny_bundle):
    from stprompt.runtime.backends import open_backend

    with pytest.raises(UserError, match=r"--triton runs the encoder on the server .*by its model\.onnx"):
        open_backend(tiny_bundle.with_name("model.pt"), triton="grpc://127.0.0.1:1")


def test_triton_url_forms():
    from stprompt.runtime.backends.triton import parse_triton_url

    assert parse_triton_url("grpc://gpu-pool:8001") == ("gpu-pool:8001", "stp_encoder")
    assert parse_triton_url("grpc://10.0.0.5/site_a_encoder") == ("10.0.0.5:8001", "site_a_encoder")
    assert parse_triton_url("gpu-pool:9001") == ("gpu-pool:9001", "stp_encoder")
    for bad, why in [("http://h:8000", "only grpc://"), ("grpc://:8001", "no host"), ("grpc://h:x", "bad port"),
                     ("grpc://h/a/b", "one model name")]:  # fmt: skip
        with pytest.raises(UserError, match=why):
            parse_triton_url(bad)
