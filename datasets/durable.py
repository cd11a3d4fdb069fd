"""Durable, atomic file writes and the one-writer lock of an episode store.

zarr's ``LocalStore`` already writes every key through a temp file and a rename, so a
crash leaves either the old or the new chunk, never a torn one. It does not fsync, so a
power cut could still persist the rename before the data. :class:`DurableLocalStore`
adds the fsync of each file and remembers which directories changed, so the store can
fsync them before it commits its index (data first, index last).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import getpass
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

from zarr.core.buffer import Buffer
from zarr.storage import LocalStore


def fsync_dir(path: Path) -> None:
    """Persist a directory's entries (renames, new files) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` so that readers and crashes see either the old or the new content."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _durable_put(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class DurableLocalStore(LocalStore):
    """A zarr ``LocalStore`` whose writes are fsynced; :meth:`sync_dirs` persists the renames."""

    def __init__(self, root, *, read_only: bool = False):
        super().__init__(root, read_only=read_only)
        self._dirty_dirs: set[Path] = set()

    def with_read_only(self, read_only: bool = False) -> "DurableLocalStore":
        return type(self)(self.root, read_only=read_only)

    async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        if exclusive:  # zarr's create-if-absent path; rare, keep its semantics
            return await super()._set(key, value, exclusive=True)
        if not self._is_open:
            await self._open()
        self._check_writable()
        path = self.root / key
        await asyncio.to_thread(_durable_put, path, value.as_buffer_like())
        self._dirty_dirs.add(path.parent)

    def sync_dirs(self) -> None:
        """fsync every directory written since the last call (new chunk files, renames)."""
        for d in sorted(self._dirty_dirs, key=lambda p: len(p.parts), reverse=True):
            if d.exists():
                fsync_dir(d)
        self._dirty_dirs.clear()


class StoreLockedError(RuntimeError):
    """Another process holds the dataset's writer lock."""


class WriterLock:
    """An OS-level exclusive lock (``flock``) on ``<store>/.o2o.lock``.

    The kernel releases it when the holder exits or dies, so a crashed writer never
    leaves a stale lock. The file names the holder, for the error the next writer gets.
    """

    def __init__(self, root: Path):
        self.path = Path(root) / ".o2o.lock"
        self._fd: int | None = None

    def acquire(self, dataset: str) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise StoreLockedError(
                f"dataset {dataset!r} is being written by another process ({self.holder()}); "
                "wait for it to finish or stop it — one writer at a time, readers are fine"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "user": _user(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv)[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return "holder unknown"
        if not info:
            return "holder unknown"
        return f"pid {info.get('pid')} on {info.get('host')} by {info.get('user')} since {info.get('since')}: {info.get('command')!r}"

    def release(self) -> None:
        if self._fd is not None:
            # Leave the holder text: the file is only meaningful while locked.
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return str(os.getuid())
