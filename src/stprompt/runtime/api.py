"""The Python API for appliances: open a bundle, feed frames from any source of yours, receive events.

    from stprompt.runtime.api import open_detector

    detector = open_detector("bundle/model.onnx")          # .plan for TensorRT, .pt for PyTorch
    for frame in my_frames():                               # H x W x 3 uint8 BGR numpy arrays
        for event in detector.feed(frame, source="gate-2"):
            handle(event)                                   # the same dicts stp-run writes as JSON Lines
    for event in detector.finish("gate-2"):                 # end of that stream: the last snippets
        handle(event)

Or let stp-run's own pipeline read the sources (URIs, as stp-run takes them) and write the outputs:

    from stprompt.runtime.api import open_pipeline

    with open_pipeline("bundle/model.onnx", ["rtsp://cam/1", "gate.mp4"], outputs=["events.jsonl"]) as pipeline:
        for event in pipeline:                              # or pipeline.run(); pipeline.stop() from elsewhere
            handle(event)

Events follow one versioned JSON Schema shipped in the package (`stprompt.runtime.events.schema_path()`,
schemas/events-1.json), `"v": 1` on each, their kind in `type`: per snippet `{"type": "frame", "source", "frame",
"time", "score", "score_c", "class", "probs": {class name: probability}}`; per alarm a lifecycle in `state`,
`new` -> `update`... -> `end`, under one `id`, with `start_frame`, `peak_score`, `peak_frame`, the class at the
peak, `boxes` `[[x1, y1, x2, y2, score], ...]` of flagged snippets (score >= alarm-on, as stp-eval's; a tail
snippet's `[]` comes with a `localization` note), `best_boxes` (the peak's) and at the end `end_frame`,
`duration`. A pipeline's live sources add `{"type": "source", "source", "state": "down" | "up", "reason", "time"}`
per state change (they reconnect forever by default: `reconnect=N` gives up after N attempts, 0 never
reconnects), and a Triton encoder (`triton=`) `{"type": "engine", "engine", "state": "down" | "up", "reason",
"time"}`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..bundle.engine_keys import DEFAULT_MAX_BATCH
from .detector import AlarmSettings, Detector

if TYPE_CHECKING:
    from ..localize.heat import LocalizeSettings
    from .frames import Frame
    from .pipeline import Pipeline
    from .sinks import Sink
    from .sources import Source


# crops: the largest encoder call a backend is opened for unless max_batch says (backends split larger ones), and
# the calls the Detector makes where batching pays (a GPU, a remote server): the engine builds' own default
MAX_BATCH = DEFAULT_MAX_BATCH


def opened_batch(max_batch: int | None) -> int:
    """The largest encoder call to open a backend for: the caller's --max-batch (0 and below are refused by
    open_backend in one line), else MAX_BATCH."""
    return MAX_BATCH if max_batch is None else max_batch


def default_max_batch(backend) -> int:
    """Crops per encoder call when none is given: one sampled frame's where the encoder runs on the host CPU
    (`host_encoder`: ONNX Runtime's CPU provider, PyTorch on cpu, OpenVINO), MAX_BATCH elsewhere. On a CPU a larger
    call gains nothing measurable (stp-tiny under ONNX Runtime: 200-250 crops/s at 50 to 250 crops a call) and costs
    peak memory in proportion: the encoder's activations (about 1.7 MB a crop for stp-tiny) and the float32 input
    (0.6 MB a crop). At 256 a stp-run on a file peaked at 1.05 GB, at one frame (50 crops) at about 0.43 GB (README:
    memory table)."""
    from .. import windows

    if getattr(backend, "host_encoder", False):
        return windows.crops_per_frame(pre=backend.preprocess)
    return MAX_BATCH


def open_detector(
    engine: str,
    *,
    providers: list[str] | None = None,
    lookahead: int | None = None,
    alarm: AlarmSettings | None = None,
    max_batch: int | None = None,
    gate: float = 0.0,
    gate_refresh: int | None = None,
    triton: str | None = None,
) -> Detector:
    """A Detector over the bundle that `engine` belongs to (its manifest is found beside it and verified).
    `gate_refresh`: as stp-run's --gate-refresh (None = its default, `gating.REFRESH_DEFAULT`). `triton`: the
    encoder on that Triton server (grpc://HOST:PORT[/MODEL]), as stp-run's --triton. `max_batch`: crops per encoder
    call, as stp-run's --max-batch (None = `default_max_batch`)."""
    from .backends import open_backend
    from .gating import REFRESH_DEFAULT

    backend, manifest = open_backend(engine, providers=providers, max_batch=opened_batch(max_batch), triton=triton)
    refresh = REFRESH_DEFAULT if gate_refresh is None else gate_refresh
    max_batch = default_max_batch(backend) if max_batch is None else max_batch
    return Detector(backend, manifest, lookahead=lookahead, alarm=alarm, max_batch=max_batch, gate=gate,
                    gate_refresh=refresh)  # fmt: skip


def open_pipeline(
    engine: str,
    sources: Sequence[str | Source],
    *,
    outputs: Sequence[str | Sink] = (),
    providers: list[str] | None = None,
    lookahead: int | str = "auto",
    alarm: AlarmSettings | None = None,
    localize: LocalizeSettings | None = None,
    max_batch: int | None = None,
    gate: float | str = "auto",
    gate_refresh: int | None = None,
    status: bool = False,
    on_frame: Callable[[str, Frame], None] | None = None,
    reconnect: int | None = None,
    triton: str | None = None,
    triton_options: dict | None = None,
) -> Pipeline:
    """stp-run's pipeline over `sources` (URIs or Source objects, ids as stp-run gives them) into `outputs`
    (output URIs as --output takes them, or Sink objects), with stp-run's defaults: the same events as its
    JSON Lines. Unlike stp-run, no output is added by default: iterate the pipeline for the events.
    `lookahead`: as stp-run's (auto: exact for files and folders, a few snippets for live sources; exact; a number).
    `gate`, `gate_refresh`: as stp-run's --gate and --gate-refresh (None = its default).
    `status`: stp-run's status line on stderr. The pipeline owns the sources and outputs (use it as a context
    manager, or call close(): a clean stop that still scores what was read). `reconnect`: the live sources' policy
    as stp-run's --reconnect (None = forever), and the Triton server's. `triton`: as stp-run's --triton
    (grpc://HOST:PORT[/MODEL]: the encoder on that server); `triton_options`: timeout_s, in_flight, backoff.
    `max_batch`: crops per encoder call, as stp-run's --max-batch (None = `default_max_batch`)."""
    from .backends import open_backend
    from .pipeline import build_pipeline
    from .sinks import Status

    backend, manifest = open_backend(engine, providers=providers, max_batch=opened_batch(max_batch), triton=triton,
                                     triton_options={"reconnect": reconnect, **(triton_options or {})})  # fmt: skip
    calls = default_max_batch(backend) if max_batch is None else max_batch
    return build_pipeline(backend, manifest, sources, outputs, lookahead=lookahead, alarm=alarm, localize=localize,
                          max_batch=calls, gate=gate, gate_refresh=gate_refresh,
                          status=Status(False) if status else None,
                          on_frame=on_frame, reconnect=reconnect)  # fmt: skip
