"""The encoder on a Triton Inference Server (gRPC), the heads here: a thin client of a GPU pool.

Appliances and thin clients decode, cut windows, gate and run the tiny head; Triton runs the ViT for all of
them and batches their requests together (dynamic batching). Each encoder call is cut into requests of one
sampled frame's crops, several in flight, each with a deadline.

Before the first frame and after every reconnect, the model config the server reports is checked against the
local bundle (`bundle.serving`: tensor names, types, dims, the hosted graph's sha256), and after every encoder
call it is confirmed unchanged (gRPC reconnects by itself, so a quick restart would go unseen): a server hosting
another export is refused with one line, never used; mid-run that ends the run as a give-up does. A server that
is unreachable or restarting is an outage, as a camera going down is: an `engine` event (`down`, then `up`),
retries with the live sources' backoff (forever by default, or `reconnect` attempts), and the call waits: files
wait, live sources keep decoding and drop the frames the pipeline cannot take meanwhile (counted as ever). A stop
during an outage raises `EncoderUnavailable`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ... import windows
from ...bundle.graphs import ENCODER_INPUT, ENCODER_OUTPUT, PRE_INPUT
from ...bundle.manifest import Manifest
from ...bundle.ort import CPU, require_ort, resolve_providers
from ...bundle.serving import ENCODER_MODEL, served_encoder_problems, served_input_format, served_role
from ...errors import UserError, inform
from ..events import engine_event
from ..sources import BACKOFF_JITTER, DEFAULT_BACKOFF, reconnect_attempts
from .base import EncoderUnavailable
from .ort import HostHeadsBackend

DEFAULT_PORT = 8001
DEFAULT_TIMEOUT_S = 30.0  # one request's deadline: a ViT-B/16 batch on a busy GPU takes well under a second
DEFAULT_IN_FLIGHT = 4  # requests of one encoder call outstanding at once
CHECK_TIMEOUT_S = 5.0  # health and config calls
TRITON_MISSING = "tritonclient is not installed: pip install 'stprompt[triton]'"


class _Outage(Exception):
    """The server cannot serve now (unreachable, restarting, model not ready): retry."""


def parse_triton_url(url: str) -> tuple[str, str]:
    """`grpc://HOST[:PORT][/MODEL]` -> ("HOST:PORT", MODEL); the port defaults to Triton's gRPC 8001, the model
    to stp-triton's encoder name."""
    parts = urlsplit(url if "://" in url else f"grpc://{url}")
    if parts.scheme != "grpc":
        raise UserError(f"--triton {url}: only grpc://HOST:PORT[/MODEL] is supported (Triton's gRPC port, 8001)")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise UserError(f"--triton {url}: bad port") from None
    if not parts.hostname:
        raise UserError(f"--triton {url}: no host (grpc://HOST:PORT[/MODEL])")
    model = parts.path.strip("/") or ENCODER_MODEL
    if "/" in model:
        raise UserError(f"--triton {url}: the path is one model name, got {model!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}", model


def _import_grpcclient():
    try:
        import tritonclient.grpc as grpcclient
    except ImportError:
        raise UserError(TRITON_MISSING) from None
    return grpcclient


class TritonBackend(HostHeadsBackend):
    """The encoder through `tritonclient.grpc`; the heads on ONNX Runtime here (`OrtHeads`)."""

    def __init__(self, url: str, manifest: Manifest, *, providers: Sequence[str] | None = None,
                 max_batch: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 in_flight: int = DEFAULT_IN_FLIGHT, reconnect: int | None = None,
                 backoff: Sequence[float] = DEFAULT_BACKOFF, jitter: float = BACKOFF_JITTER,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        if timeout_s <= 0 or in_flight < 1:
            raise UserError(f"--triton-timeout must be > 0 and --triton-in-flight >= 1, got {timeout_s}, {in_flight}")
        self._grpc = _import_grpcclient()
        self.address, self.model = parse_triton_url(url)
        self.url = f"grpc://{self.address}/{self.model}"
        self.manifest = manifest
        self.dim, self.preprocess = manifest.dim, manifest.preprocess
        self.timeout_s, self.in_flight = float(timeout_s), int(in_flight)
        self.request_crops = windows.crops_per_frame(pre=self.preprocess)  # one sampled frame per request
        self.max_attempts = reconnect_attempts(reconnect)
        self.backoff, self.jitter = tuple(backoff) or (0.0,), jitter
        self._clock = clock
        self._t0 = clock()
        self._client: Any = None
        self._emit: Callable[[dict[str, Any]], None] | None = None
        self._stopping: Callable[[], bool] = lambda: False
        self.stats = {"requests": 0, "outages": 0, "reconnects": 0}
        self.role = ""
        self._user_max_batch = max_batch
        self._failed: EncoderUnavailable | None = None
        self._config: dict[str, Any] = {}  # the served model config checked last
        self._connect_first()
        providers = resolve_providers(providers, require_ort().get_available_providers()) if providers else [CPU]
        self._open_heads(manifest, providers)
        self.name = f"triton[{self.url} {self.role}]"

    # -- the pipeline's hooks ------------------------------------------------------------------------
    def bind_run(self, emit: Callable[[dict[str, Any]], None], stopping: Callable[[], bool]) -> None:
        """Where `engine` events go (the pipeline's sinks) and how to know the run is stopping (ends a wait)."""
        self._emit, self._stopping = emit, stopping

    # -- Backend --------------------------------------------------------------------------------------
    def _encode_batch(self, images: np.ndarray) -> np.ndarray:
        if self.input_format == "uint8":  # the Detector sends uint8 crops to such a server (encode_pixels)
            raise UserError(f"Triton {self.url} takes uint8 crops (stp-triton's default): send them with "
                            "encode_pixels, or serve float32 crops (stp-triton --input images)")  # fmt: skip
        return self._call(images)

    def _encode_pixel_batch(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 crops go as they are to a server that normalises them (a quarter of float32's bytes); a server
        that hosts the float32 encoder gets them normalised here."""
        if self.input_format != "uint8":
            return super()._encode_pixel_batch(pixels)
        return self._call(pixels)

    def _call(self, crops: np.ndarray) -> np.ndarray:
        """One encoder call with the reconnect policy: outages waited out, a server serving something else refused."""
        if self._failed is not None:  # gave up, or stopped while waiting: later calls (the scale-B windows of the
            raise self._failed  # snippets still to score) fail at once instead of waiting again
        try:
            while True:
                try:
                    out = self._infer(crops)
                    self._confirm()
                    return out
                except _Outage as err:
                    self._wait_for_server(str(err))
        except EncoderUnavailable as gone:
            self._failed = gone
            raise
        except UserError as err:  # reachable, but serving something else now: end the run as a give-up does
            self._event("down", f"refused: {err}")
            self._failed = EncoderUnavailable(str(err), gave_up=True)
            raise self._failed from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        super().close()

    # -- connection -----------------------------------------------------------------------------------
    def _connect_first(self) -> None:
        """Connect and check before the first frame; a server not up yet is waited for as an outage is."""
        try:
            self._connect()
            return
        except _Outage as err:
            reason = str(err)
        if self.max_attempts == 0:
            raise EncoderUnavailable(f"Triton {self.url} unreachable: {reason}", gave_up=True)
        inform(f"waiting for the Triton server at {self.url}: {reason}")
        self._retry(reason, first=True)

    def _connect(self) -> None:
        """A fresh client, the server and model ready, and the model's config this bundle's encoder; raises
        _Outage while it cannot serve, UserError when it serves something else."""
        grpc = self._grpc
        if self._client is not None:
            self._client.close()
        self._client = grpc.InferenceServerClient(self.address)
        try:
            if not self._client.is_server_live(client_timeout=CHECK_TIMEOUT_S):
                raise _Outage("server not live")
            if not self._client.is_model_ready(self.model, client_timeout=CHECK_TIMEOUT_S):
                if self._client.is_server_ready(client_timeout=CHECK_TIMEOUT_S):
                    raise UserError(f"Triton {self.url}: the server is ready but has no model {self.model!r} "
                                    f"ready ({self._model_names()})")  # fmt: skip
                raise _Outage(f"model {self.model} not ready (server starting?)")
            config = self._served_config()
        except grpc.InferenceServerException as err:
            raise _Outage(_reason(err)) from None
        self._check(config)

    def _served_config(self) -> dict[str, Any]:
        config = self._client.get_model_config(self.model, as_json=True, client_timeout=CHECK_TIMEOUT_S)
        return config.get("config", config)

    def _confirm(self) -> None:
        """After every encoder call: the server still hosts the config checked last. gRPC reconnects on its own,
        so a server restarted between two calls with another export behind the same name would otherwise answer
        unnoticed; one small call per encoder call (the embeddings just received are discarded on a change)."""
        try:
            config = self._served_config()
        except self._grpc.InferenceServerException as err:
            raise _Outage(_reason(err)) from None
        if config != self._config:
            self._check(config)

    def _check(self, config: dict[str, Any]) -> None:
        """Refuse (UserError) a model config that is not this bundle's encoder; else adopt it."""
        problems = served_encoder_problems(config, self.manifest)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UserError(f"Triton {self.url} does not serve this bundle's encoder ({self.manifest.path.name}): "
                            f"{problems[0]}{more}")  # fmt: skip
        served = served_input_format(config)
        if self._config and served != self.input_format:  # the Detector cuts one kind of crop for the whole run
            raise UserError(f"Triton {self.url} now takes {served} crops, not the {self.input_format} crops this "
                            f"run sends (the server's repository changed: restart stp-run)")  # fmt: skip
        self.input_format = served  # "uint8": stp-triton fused model.pre.onnx in front of the encoder
        self._config = config
        self.role = served_role(config) or ""
        served = int(config.get("max_batch_size", 0))
        self.max_batch = min(served, self._user_max_batch) if self._user_max_batch else served

    def _model_names(self) -> str:
        try:
            index = self._client.get_model_repository_index(as_json=True, client_timeout=CHECK_TIMEOUT_S)
        except self._grpc.InferenceServerException:
            return "its models could not be listed"
        names = sorted({m.get("name", "") for m in index.get("models", [])})
        return f"it has {', '.join(names)}" if names else "it has no models"

    def _wait_for_server(self, reason: str) -> None:
        """An outage in the run: `engine` down, retries, `engine` up once the server serves this bundle again."""
        self.stats["outages"] += 1
        self._event("down", reason)
        self._retry(reason, first=False)
        self.stats["reconnects"] += 1
        self._event("up", f"reconnected; {self.model} checked ({self.role})")

    def _retry(self, reason: str, first: bool) -> None:
        attempts = 0
        while True:
            if self.max_attempts is not None and attempts >= self.max_attempts:
                if not first:
                    self._event("down", f"gave up after {attempts} attempts: {reason}")
                raise EncoderUnavailable(f"Triton {self.url} unreachable, gave up after {attempts} attempts: {reason}",
                                         gave_up=True)  # fmt: skip
            delay = self.backoff[min(attempts, len(self.backoff) - 1)] * (1 + random.uniform(-1, 1) * self.jitter)
            self._sleep(delay, reason)
            attempts += 1
            try:
                self._connect()
                return
            except _Outage as err:
                reason = str(err)

    def _sleep(self, seconds: float, reason: str) -> None:
        end = self._clock() + seconds
        while True:
            if self._stopping():
                raise EncoderUnavailable(f"stopped while the Triton server at {self.url} was unreachable: {reason}",
                                         gave_up=False)  # fmt: skip
            left = end - self._clock()
            if left <= 0:
                return
            time.sleep(min(0.05, left))

    def _event(self, state: str, reason: str) -> None:
        event = engine_event(self.url, state, reason, self._clock() - self._t0)
        if self._emit is not None:
            self._emit(event)
        else:
            inform(f"engine {self.url} {state}: {reason}")

    # -- inference ------------------------------------------------------------------------------------
    def _infer(self, crops: np.ndarray) -> np.ndarray:
        """One encoder call as requests of one sampled frame's crops, up to `in_flight` outstanding: uint8 crops
        [N, S, S, 3] as `pixels`, float32 [N, 3, S, S] as `images`."""
        grpc = self._grpc
        pixels = crops.dtype == np.uint8
        name, dtype, kind = (PRE_INPUT, np.uint8, "UINT8") if pixels else (ENCODER_INPUT, np.float32, "FP32")
        chunks = [crops[i : i + self.request_crops] for i in range(0, len(crops), self.request_crops)]
        results: list[np.ndarray | None] = [None] * len(chunks)
        errors: list[Exception] = []
        done = threading.Semaphore(0)
        slots = threading.Semaphore(self.in_flight)

        def finished(index: int, result: Any, error: Exception | None) -> None:
            try:
                if error is not None:
                    errors.append(error)
                else:
                    results[index] = result.as_numpy(ENCODER_OUTPUT)
            except Exception as err:  # noqa: BLE001 - a malformed answer: reported by the caller, never lost here
                errors.append(err)
            finally:
                slots.release()
                done.release()

        sent = 0
        deadline = self._clock() + self.timeout_s * (1 + len(chunks) / self.in_flight)
        for index, chunk in enumerate(chunks):
            if not slots.acquire(timeout=max(0.0, deadline - self._clock())) or errors:
                break
            tensor = grpc.InferInput(name, list(chunk.shape), kind)
            tensor.set_data_from_numpy(np.ascontiguousarray(chunk, dtype=dtype))
            try:
                self._client.async_infer(
                    self.model, [tensor], lambda result, error, i=index: finished(i, result, error),
                    outputs=[grpc.InferRequestedOutput(ENCODER_OUTPUT)], client_timeout=self.timeout_s,
                )  # fmt: skip
            except grpc.InferenceServerException as err:
                slots.release()
                errors.append(err)
                break
            sent += 1
        for _ in range(sent):  # every sent request answers (its own deadline ends it), so nothing calls back later
            done.acquire(timeout=self.timeout_s + CHECK_TIMEOUT_S)
        self.stats["requests"] += sent
        if errors:
            raise self._classify(errors[0])
        if any(r is None for r in results):
            raise _Outage(f"no answer within {self.timeout_s:g} s")
        out = np.concatenate(results) if len(results) > 1 else results[0]
        if out.shape != (len(crops), self.dim):
            raise UserError(f"Triton {self.url} answered embeddings {list(out.shape)} for {len(crops)} crops, "
                            f"expected [{len(crops)}, {self.dim}]")  # fmt: skip
        return out

    def _classify(self, err: Exception) -> Exception:
        """A request's error: the server refusing our input is a bug reported as one line; everything else
        (unreachable, deadline, restarting, model unloaded) is an outage to wait out."""
        status = str(getattr(err, "status", lambda: "")() or "")
        if "INVALID_ARGUMENT" in status:
            return UserError(f"Triton {self.url} refused the encoder input: {_reason(err)}")
        return _Outage(_reason(err))


def _reason(err: Exception) -> str:
    """tritonclient's exception as a short reason: status and the first line of its message."""
    message = getattr(err, "message", lambda: str(err))() or str(err)
    status = getattr(err, "status", lambda: None)()
    text = message.strip().splitlines()[0] if message.strip() else type(err).__name__
    return f"{status.replace('StatusCode.', '')}: {text}" if status else text
