"""sha256 of bundle files: the manifest records one per file, and nothing is loaded whose hash differs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: str | os.PathLike) -> dict[str, Any]:
    """The `files` record of one bundle file: its name relative to the manifest, sha256 and size."""
    p = Path(path)
    return {"path": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
