"""A real NVIDIA Triton Inference Server on 127.0.0.1 for the Triton tests, without a GPU.

NVIDIA's `nvidia-pytriton` wheel carries the `tritonserver` binary and its Python backend. `.ci/run` installs it
without its dependencies (it pins numpy below 2; only the binary is used). A test repository mirrors the one
`stp-triton` generates (same model name, tensors, max_batch_size, dynamic batching, parameters), with the encoder
as a Python-backend model that runs the bundle's ONNX graph with ONNX Runtime on the CPU: the server's ONNX
Runtime backend is not in the wheel. Every wait here is bounded.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

START_TIMEOUT_S = 60.0

# the Python-backend encoder: the config's one input and output, every request of a dynamic batch in one ORT call
PYTHON_MODEL = '''\
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]
        here = Path(args["model_repository"]) / args["model_version"]
        options = ort.SessionOptions()
        threads = config.get("parameters", {}).get("intra_op_thread_count", {}).get("string_value", "1")
        options.intra_op_num_threads = int(threads)  # as the ONNX Runtime backend's parameter of that name
        self.session = ort.InferenceSession(str(here / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        arrays = [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, self.input)) for r in requests]
        out = self.session.run([self.output], {self.input: np.concatenate(arrays)})[0]
        responses, start = [], 0
        for a in arrays:
            # DLPack both ways, not as_numpy() / Tensor(name, array): the wheel's stub is built against numpy 1 and
            # misreads numpy 2 arrays (empty responses, scrambled inputs)
            part = pb_utils.Tensor.from_dlpack(self.output, np.ascontiguousarray(out[start : start + len(a)]))
            responses.append(pb_utils.InferenceResponse([part]))
            start += len(a)
        return responses
'''


def server_root() -> Path | None:
    """The wheel's `pytriton/tritonserver` folder (binary, backends, Python stubs), or None."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    return root if (root / "bin" / "tritonserver").is_file() else None


def missing_reason() -> str | None:
    """Why no server can start here (the tests skip saying so), or None."""
    if importlib.util.find_spec("tritonclient") is None:
        return "tritonclient is not installed (pip install 'stprompt[triton]')"
    root = server_root()
    if root is None:
        return "no tritonserver binary: pip install --no-deps nvidia-pytriton (.ci/run does)"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not (root / "python_backend_stubs" / version / "triton_python_backend_stub").is_file():
        return f"the nvidia-pytriton wheel has no Python backend stub for Python {version}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_backend_repository(generated: Path, out: Path, threads: int = 1) -> Path:
    """A copy of a stp-triton repository whose encoder model is the Python-backend one (same name, tensors,
    batching, parameters), on the CPU with `threads` ONNX Runtime threads per instance; the other models are left
    out (their backend is not in the wheel)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from stprompt.bundle.serving import P_ROLE

    out.mkdir(parents=True, exist_ok=True)
    for model in sorted(p for p in generated.iterdir() if (p / "config.pbtxt").is_file()):
        config = text_format.Parse((model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        if config.parameters[P_ROLE].string_value not in ("encoder", "encoder_fp16", "encoder_int8"):
            continue
        config.platform = ""
        config.backend = "python"
        config.ClearField("optimization")
        for group in config.instance_group:
            group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
        config.parameters["intra_op_thread_count"].string_value = str(threads)
        version = out / model.name / "1"
        version.mkdir(parents=True)
        (out / model.name / "config.pbtxt").write_text(text_format.MessageToString(config))
        shutil.copy2(model / "1" / "model.onnx", version / "model.onnx")
        (version / "model.py").write_text(PYTHON_MODEL)
    return out


class TritonServer:
    """`tritonserver` on free loopback ports serving `repository`; kill() and start() again on the same ports."""

    def __init__(self, repository: Path, workdir: Path):
        self.root = server_root()
        assert self.root is not None, missing_reason()
        self.repository = repository
        self.workdir = workdir
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "tritonserver.log"
        self.backends = self._backend_dir()

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _backend_dir(self) -> Path:
        """The wheel's Python backend with the stub for this Python beside libtriton_python.so."""
        backends = self.workdir / "backends"
        python = backends / "python"
        if not python.exists():
            shutil.copytree(self.root / "backends" / "python", python)
            version = f"{sys.version_info.major}.{sys.version_info.minor}"
            shutil.copy2(self.root / "python_backend_stubs" / version / "triton_python_backend_stub", python)
        return backends

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = [str(self.root.parent.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")])
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))  # the stub's imports
        return env

    def start(self) -> TritonServer:
        cmd = [
            str(self.root / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.backends}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false", "--exit-timeout-secs=5",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self._env(),
                                         start_new_session=True)  # fmt: skip
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.address)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"tritonserver exited ({self.proc.returncode}): {self.tail()}")
                try:
                    if client.is_server_ready(client_timeout=2.0):
                        return
                except Exception:  # noqa: BLE001 - not up yet: connection refused, unavailable
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        raise RuntimeError(f"tritonserver not ready after {timeout:.0f} s: {self.tail()}")

    def kill(self) -> None:
        """SIGKILL the server and its Python stubs (a crash, not a clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def tail(self, n: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
