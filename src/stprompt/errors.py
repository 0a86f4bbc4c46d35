"""User-facing errors: every mistake a user can fix ends in one line on stderr and a non-zero exit."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., int | None])


class UserError(Exception):
    """A problem with the user's input (file, flag, data) rather than a bug in stprompt."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (libraries raise pages), or its type name when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def cli_entry(prog: str) -> Callable[[F], F]:
    """Wrap a console-script main so user errors print one clear line instead of a traceback.

    Set STP_DEBUG=1 to see the traceback of a UserError as well.
    """

    def wrap(main: F) -> F:
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                code = main(*args, **kwargs)
            except UserError as err:
                if os.environ.get("STP_DEBUG"):
                    raise
                print(f"{prog}: error: {err}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
            return 0 if code is None else code

        return run  # type: ignore[return-value]

    return wrap
