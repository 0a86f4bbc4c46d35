"""The events of stp-run, its sinks and the Python API: one versioned schema and the builders every producer uses.

`schemas/events-1.json` (shipped in the package, `schema_path()`) is the contract: `v` = 1 on every event, `type`
frame | alarm | source | engine, an alarm's lifecycle new -> update... -> end in `state` under one `id`. The
builders here round as the schema says (scores 4 decimals, seconds 3, boxes 2 as stp-eval --predictions writes
them), so no producer rounds on its own and no sink reshapes an event. Torch-free; no jsonschema at run time
(the tests validate against the schema).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    import numpy as np

SCHEMA_VERSION = 1
SCHEMA_FILE = f"events-{SCHEMA_VERSION}.json"
SCORE_DECIMALS, TIME_DECIMALS = 4, 3
BOX_DECIMALS = 2  # stp-eval's (evaluate.py --predictions), so a file's alarm boxes equal the boxes it writes
TOKEN_BYTES = 6  # 12 hex digits: an alarm id's stream token


def schema_path() -> Traversable:
    """The JSON Schema of these events as shipped in the package (a file path in an ordinary install)."""
    return files("stprompt.runtime") / "schemas" / SCHEMA_FILE  # one child per step: Python 3.10 takes no more


def load_schema() -> dict[str, Any]:
    """The schema as a dict, for a consumer's validator."""
    return json.loads(schema_path().read_text(encoding="utf-8"))


# -- rounding: what the schema promises ------------------------------------------------------------------
def score(value: float) -> float:
    """A score or probability as events carry it: 4 decimals (stp-eval's scores agree to ~1e-5 before it)."""
    return round(float(value), SCORE_DECIMALS)


def seconds(value: float) -> float:
    """A time or duration as events carry it: milliseconds."""
    return round(float(value), TIME_DECIMALS)


def boxes(rows: np.ndarray | Sequence[Sequence[float]]) -> list[list[float]]:
    """[[x1, y1, x2, y2, score]]: corners in source pixels (whole pixel edges) and the heat inside, to 2 decimals as
    stp-eval writes them."""
    return [[round(float(c), BOX_DECIMALS) for c in row[:5]] for row in rows]


def stream_token() -> str:
    """The random part of alarm ids, drawn once per stream the detector starts (`Alarm.id`)."""
    return secrets.token_hex(TOKEN_BYTES)


# -- builders -------------------------------------------------------------------------------------------
def frame_event(source: str, frame: int, time: float, score_a: float, score_c: float, classes: Sequence[str],
                probs: Sequence[float]) -> dict[str, Any]:  # fmt: skip
    """A scored snippet: `probs` by class name in the bundle's order, `class` the most probable of them."""
    named = {c: score(p) for c, p in zip(classes, probs, strict=True)}
    top = max(range(len(classes)), key=lambda i: float(probs[i]))
    return {"v": SCHEMA_VERSION, "type": "frame", "source": source, "frame": int(frame), "time": seconds(time),
            "score": score(score_a), "score_c": score(score_c), "class": classes[top], "probs": named}  # fmt: skip


def source_event(source: str, state: str, reason: str, time: float) -> dict[str, Any]:
    """A live source went up or down (`time`: seconds since it was opened)."""
    return {"v": SCHEMA_VERSION, "type": "source", "source": source, "state": state, "reason": reason,
            "time": seconds(time)}  # fmt: skip


def engine_event(engine: str, state: str, reason: str, time: float) -> dict[str, Any]:
    """A remote encoder (Triton server at URL `engine`) went up or down (`time`: seconds since its client opened)."""
    return {"v": SCHEMA_VERSION, "type": "engine", "engine": engine, "state": state, "reason": reason,
            "time": seconds(time)}  # fmt: skip


@dataclass
class Alarm:
    """One alarm of one stream, from `new` to `end`: its id, start, peak so far and the peak's boxes.

    Scores are kept unrounded so the peak is chosen on the scores the alarm rule compares; events round them.
    The alarm's snippets are those of its new and update events; the snippet below alarm-off that ends it is not.
    """

    id: str
    source: str
    start_frame: int
    start_time: float
    peak_score: float
    peak_frame: int
    peak_time: float
    peak_class: str
    last: tuple[int, float, float]  # (frame, time, score) of the alarm's latest snippet
    best_boxes: list[list[float]] | None = None  # the peak snippet's, once it was localized

    @classmethod
    def start(cls, token: str, source: str, frame: int, time: float, score_a: float, klass: str) -> Alarm:
        """The alarm raised at this snippet; its id `<token>:<source>:<frame>` (the schema's rule)."""
        return cls(f"{token}:{source}:{int(frame)}", source, int(frame), float(time), float(score_a), int(frame),
                   float(time), klass, (int(frame), float(time), float(score_a)))  # fmt: skip

    def add(self, frame: int, time: float, score_a: float, klass: str) -> None:
        """A later snippet of the alarm: the peak moves only to a strictly higher score."""
        self.last = (int(frame), float(time), float(score_a))
        if score_a > self.peak_score:
            self.peak_score, self.peak_frame, self.peak_class = float(score_a), int(frame), klass
            self.peak_time = float(time)
            self.best_boxes = None

    def located(self, frame: int, rows: list[list[float]]) -> None:
        """This snippet's boxes (as events carry them): kept when it is the peak."""
        if frame == self.peak_frame:
            self.best_boxes = rows

    def event(self, state: str, rows: list[list[float]], note: str | None = None) -> dict[str, Any]:
        """The `new` or `update` event of the alarm's latest snippet, with its boxes (and why none, `note`)."""
        frame, time, score_a = self.last
        event = {**self._common(state, frame, time, score_a), "boxes": rows}
        if note is not None:
            event["localization"] = note
        if state != "new":
            event["best_boxes"] = self.best_boxes or []
        return event

    def end(self, reason: str, frame: int | None = None, time: float | None = None,
            score_a: float | None = None) -> dict[str, Any]:  # fmt: skip
        """The `end` event: at the snippet below alarm-off (`reason` score) or, the stream over (`reason` stream),
        at the alarm's last snippet (frame, time and score not given)."""
        if frame is None or time is None or score_a is None:
            frame, time, score_a = self.last
        event = self._common("end", frame, time, score_a)
        event["best_boxes"] = self.best_boxes or []
        event["end_frame"], event["end_time"] = event["frame"], event["time"]
        event["duration"] = seconds(event["end_time"] - event["start_time"])
        event["reason"] = reason
        return event

    def _common(self, state: str, frame: int, time: float, score_a: float) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, "type": "alarm", "state": state, "id": self.id, "source": self.source,
                "frame": int(frame), "time": seconds(time), "score": score(score_a), "class": self.peak_class,
                "start_frame": self.start_frame, "start_time": seconds(self.start_time),
                "peak_score": score(self.peak_score), "peak_frame": self.peak_frame,
                "peak_time": seconds(self.peak_time)}  # fmt: skip
