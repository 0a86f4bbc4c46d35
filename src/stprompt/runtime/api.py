"""The Python API for appliances: open a bundle, feed frames from any source of yours, receive events.

    from stprompt.runtime.api import open_detector

    detector = open_detector("bundle/model.onnx")          # .plan for TensorRT, .pt for PyTorch
    for frame in my_frames():                               # H x W x 3 uint8 BGR numpy arrays
        for event in detector.feed(frame, source="gate-2"):
            handle(event)                                   # the same dicts stp-run writes as JSON Lines
    for event in detector.finish("gate-2"):                 # end of that stream: the last snippets
        handle(event)

Events are `{"type": "frame", "source", "frame", "time", "score", "score_c", "class", "probs"}` per snippet
and `{"type": "alarm", "state": "start" | "ongoing" | "end", ..., "boxes": [[x1, y1, x2, y2, score], ...]}`.
"""

from __future__ import annotations

from .detector import AlarmSettings, Detector


def open_detector(
    engine: str,
    *,
    providers: list[str] | None = None,
    lookahead: int | None = None,
    alarm: AlarmSettings | None = None,
    max_batch: int = 256,
    gate: float = 0.0,
) -> Detector:
    """A Detector over the bundle that `engine` belongs to (its manifest is found beside it and verified)."""
    from .backends import open_backend

    backend, manifest = open_backend(engine, providers=providers, max_batch=max_batch)
    return Detector(backend, manifest, lookahead=lookahead, alarm=alarm, max_batch=max_batch, gate=gate)
