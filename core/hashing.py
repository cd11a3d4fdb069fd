"""SHA-256 of files and folders: export manifests, stage fingerprints, imported files' origins.

Files are read in blocks of 1 MiB, so a checkpoint or a dataset of any size hashes in
constant memory.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

BLOCK = 1 << 20


def _update(h: Any, path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    _update(h, path)
    return h.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (as :func:`sha256_file`), or of a folder: every file below it, in
    sorted order, as its relative path, a NUL byte and its bytes (a renamed file changes it)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(p.relative_to(path)).encode() + b"\0")
        _update(h, p)
    return h.hexdigest()


def file_unchanged(path: str | os.PathLike, sha256: str) -> bool:
    """True when ``path`` exists and still has the SHA-256 recorded for it."""
    return Path(path).exists() and sha256_file(path) == sha256
