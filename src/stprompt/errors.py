"""User-facing errors: every mistake a user can fix ends in one line on stderr and a non-zero exit."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., int | None])


# terminal escape sequences (colours, cursor moves, OSC titles/links) and the other control characters libraries
# (ONNX Runtime, TensorRT, FFmpeg) put in their messages: they garble logs and files that collect stderr
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])|[\x00-\x08\x0b-\x1f\x7f]")

_prog = "stprompt"  # who warnings speak for: the console script running (cli_entry), else the library
_partial_line = False  # a status line without its newline is on stderr (runtime.sinks.Status)


class UserError(Exception):
    """A problem with the user's input (file, flag, data) rather than a bug in stprompt."""


def plain(text: str) -> str:
    """`text` without ANSI escape sequences and control characters (newlines and tabs kept)."""
    return _ESCAPES.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def one_line(text: str) -> str:
    """`plain(text)` with its lines joined by spaces: one line on stderr whatever a library put in it."""
    return " ".join(line.strip() for line in plain(text).splitlines() if line.strip())


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (libraries raise pages) without terminal escapes, or its type
    name when it has none."""
    text = plain(str(err)).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def warn(message: str) -> None:
    """One warning line on stderr, `stp-run: warning: ...` (the running command's name; `stprompt` for library
    callers), on a line of its own even while a status line is shown."""
    _stderr_line(f"{_prog}: warning: {one_line(message)}")


def inform(message: str) -> None:
    """One log line on stderr, `stp-run: ...` (as warn(), without the `warning:`): a live source's state change,
    the run's summary."""
    _stderr_line(f"{_prog}: {one_line(message)}")


def _stderr_line(text: str) -> None:
    global _partial_line
    prefix = "\n" if _partial_line else ""
    _partial_line = False
    print(prefix + text, file=sys.stderr, flush=True)


def status_line_open(is_open: bool) -> None:
    """The status line tells whether it left a line without its newline on stderr (warn() starts a new one)."""
    global _partial_line
    _partial_line = is_open


def quiet_native_logs() -> None:
    """Silence OpenCV's and FFmpeg's own log lines (`[ WARN:0@0.1] global ...`, `moov atom not found`): the
    problems they describe reach the user as stprompt's one-line errors and warnings instead.

    Environment defaults (a value the user set wins): OPENCV_LOG_LEVEL for OpenCV, read when it first logs, and
    OPENCV_FFMPEG_LOGLEVEL=-8 (FFmpeg's AV_LOG_QUIET), read when OpenCV first opens a file through FFmpeg, so
    this runs before any video is opened. An OpenCV already imported gets its level through its API as well.
    """
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cv2 = sys.modules.get("cv2")
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is not None and os.environ["OPENCV_LOG_LEVEL"].upper() == "ERROR":
        with contextlib.suppress(Exception):  # an OpenCV without this API keeps its level
            logging.setLogLevel(logging.LOG_LEVEL_ERROR)


def cli_entry(prog: str) -> Callable[[F], F]:
    """Wrap a console-script main so user errors print one clear line instead of a traceback.

    Set STP_DEBUG=1 to see the traceback of a UserError as well. OpenCV's and FFmpeg's own log lines are
    silenced (`quiet_native_logs`); warnings (`warn`) carry the command's name.
    """

    def wrap(main: F) -> F:
        @functools.wraps(main)
        def run(*args, **kwargs):
            global _prog
            previous, _prog = _prog, prog
            quiet_native_logs()
            try:
                code = main(*args, **kwargs)
            except UserError as err:
                if os.environ.get("STP_DEBUG"):
                    raise
                _stderr_line(f"{prog}: error: {one_line(str(err)) or type(err).__name__}")
                return 2
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
            finally:
                _prog = previous
            return 0 if code is None else code

        return run  # type: ignore[return-value]

    return wrap
