"""Atomic file writes: a crash or Ctrl-C never leaves a half-written output behind."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from .errors import UserError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def read_json(path: str | os.PathLike, what: str = "") -> Any:
    """The parsed JSON document at `path`; a missing, unreadable or invalid file is one UserError naming it."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what or 'file'} not found: {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{p} is not valid JSON: {err}") from None
    except OSError as err:
        raise UserError(f"cannot read {p}: {err.strerror}") from None


def check_writable(path: str | os.PathLike, what: str, *, folder: bool = False, hint: str = "") -> None:
    """Refuse, in one UserError line, an output the command could not write: called before any work, so a run
    never ends in a traceback (or loses its results) at its first write.

    `path`: a file the command writes (`folder=False`; written atomically, i.e. as a new entry in its folder), or
    a folder it writes into (`folder=True`; created by the command when missing). `what`: the flag or argument
    that named it (`--out`, `OUT`), said first in the message with the path and the OS reason. `hint`: what to do
    instead, added in parentheses.

    Checks: no existing ancestor on the way is a file; a file output is not an existing folder and a folder output
    not an existing file; the folder that receives the new entry (the file's folder, the existing output folder, or
    the folder a missing one is created in) accepts one, tried by creating and removing a temporary file (this
    catches read-only folders and file systems, which permission bits alone do not). Missing folders above the
    output are created, as the command would create them; nothing else is left behind.
    """
    p = Path(path)

    def refuse(problem: str) -> UserError:
        return UserError(f"{what} {p}{problem}" + (f" ({hint})" if hint else ""))

    def kind(q: Path) -> str:
        """'folder', 'file' (anything else that exists) or 'missing'."""
        try:
            return "folder" if stat.S_ISDIR(q.stat().st_mode) else "file"
        except (FileNotFoundError, NotADirectoryError):
            return "missing"
        except OSError as err:
            raise refuse(f": cannot reach {q}: {err.strerror or err}") from None

    if folder and kind(p) == "file":
        raise refuse(" is a file, not a folder")
    if not folder and kind(p) == "folder":
        raise refuse(" is a folder; name a file")
    target = p if folder and kind(p) == "folder" else p.parent
    ancestor = target
    while kind(ancestor) == "missing" and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if kind(ancestor) == "file":
        raise refuse(f": {ancestor} is a file, not a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise refuse(f": cannot create the folder {target}: {err.strerror or err}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".stp-probe-", dir=target)
    except OSError as err:
        raise refuse(f": cannot write into {target}: {err.strerror or err}") from None
    os.close(fd)
    os.unlink(probe)
