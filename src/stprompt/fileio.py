"""Atomic file writes: a crash or Ctrl-C never leaves a half-written output behind."""

from __future__ import annotations

import json
import os
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
