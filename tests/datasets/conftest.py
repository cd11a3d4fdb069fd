"""Shared fixtures of the episode-store tests: file-tree snapshots and writer subprocesses."""

from __future__ import annotations

import hashlib
import importlib.util
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

WRITER_SCRIPT = Path(__file__).with_name("store_writer.py")


def tree_digest(root: str | Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (index, metadata, chunks, lock), by relative path."""
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def snapshot():
    """The :func:`tree_digest` function (fixtures are how test modules share helpers here)."""
    return tree_digest


@pytest.fixture(scope="session")
def store_writer():
    """``store_writer.py`` imported as a module: its episode generator is the ground truth."""
    spec = importlib.util.spec_from_file_location("o2o_tests_store_writer", WRITER_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class WriterProcess:
    """``store_writer.py`` running in a child process; its stdout is read line by line."""

    def __init__(self, *args: str):
        # stderr goes to a file: a pipe nobody drains could fill up and stall the child.
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(WRITER_SCRIPT), *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)  # end of output

    def expect(self, prefix: str, timeout: float = 60.0) -> str:
        """Block until a line starting with ``prefix`` arrives; fail with the output so far."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"writer {self.pid} gave no {prefix!r} line; stdout {self.lines[-5:]}, "
                    f"stderr {self.stderr()[-2000:]!r}"
                )
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def kill(self, sig: int = signal.SIGKILL) -> list[str]:
        """Send ``sig``, wait for the process to end, and return every line it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.finish()

    def finish(self, timeout: float = 60.0) -> list[str]:
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        while True:
            line = self._queue.get_nowait() if not self._queue.empty() else None
            if line is None:
                break
            self.lines.append(line)
        return self.lines

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(timeout=10)  # it stops at end of output; then its pipe can close
        self.proc.stdin.close()
        self.proc.stdout.close()
        self._stderr.close()


@pytest.fixture
def spawn_writer():
    """Start ``store_writer.py`` processes; any still running at teardown are killed."""
    started: list[WriterProcess] = []

    def spawn(*args: str) -> WriterProcess:
        w = WriterProcess(*args)
        started.append(w)
        return w

    yield spawn
    for w in started:
        w.close()
