"""The controlling terminal as a teleoperation device: single key presses in, a live status line out.

The terminal is put in cbreak mode (keys arrive without Enter, Ctrl-C still interrupts)
and restored on :meth:`Terminal.close`, at exit, and after Ctrl-C. A terminal delivers key
*presses* only (no releases): a held key arrives as the OS's auto-repeat, which is why
the teleop either acts once per press (step mode) or holds a key's effect for a short
time after each press (real-time mode).
"""

from __future__ import annotations

import atexit
import os
import select
import time

# Multi-byte sequences terminals send for special keys; single bytes are mapped below.
_SEQUENCES = {
    "\x1b[A": "up",
    "\x1b[B": "down",
    "\x1b[C": "right",
    "\x1b[D": "left",
    "\x1bOA": "up",
    "\x1bOB": "down",
    "\x1bOC": "right",
    "\x1bOD": "left",
}
_SINGLE = {
    "\r": "enter",
    "\n": "enter",
    "\x7f": "backspace",
    "\x08": "backspace",
    " ": "space",
    "\t": "tab",
    "\x1b": "escape",
}


def decode_keys(text: str) -> list[str]:
    """Key names in ``text`` as read from a terminal: ``"w"``, ``"enter"``, ``"up"``..."""
    keys, i = [], 0
    while i < len(text):
        seq = next((s for s in _SEQUENCES if text.startswith(s, i)), None)
        if seq is not None:
            keys.append(_SEQUENCES[seq])
            i += len(seq)
            continue
        ch = text[i]
        keys.append(_SINGLE.get(ch, ch))
        i += 1
    return keys


class Terminal:
    """Key presses from, and a status line on, the controlling terminal (``/dev/tty``).

    Raises a ``RuntimeError`` saying what to do when there is no terminal (a pipe, CI):
    teleoperation needs a person at a keyboard.
    """

    def __init__(self, path: str = "/dev/tty"):
        import termios
        import tty

        try:
            self._fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        except OSError as e:
            raise RuntimeError(
                f"behavior=human needs a terminal to read keys from ({path}: {e.strerror}); "
                "run `o2o collect behavior=human ...` in a terminal (or tmux/ssh -t)"
            ) from None
        if not os.isatty(self._fd):
            os.close(self._fd)
            raise RuntimeError(f"behavior=human: {path} is not a terminal")
        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)  # no Enter needed, no echo; ISIG stays on so Ctrl-C still interrupts
        self._termios = termios
        self._closed = False
        atexit.register(self.close)

    def read(self, timeout: float | None = 0.0) -> list[str]:
        """Keys pressed since the last call; waits up to ``timeout`` s for the first (None: forever)."""
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return []
        data = os.read(self._fd, 1024)
        # An escape sequence may arrive split across reads: give it a moment to complete.
        if data.endswith(b"\x1b") or data.endswith(b"\x1b["):
            more, _, _ = select.select([self._fd], [], [], 0.02)
            if more:
                data += os.read(self._fd, 1024)
        return decode_keys(data.decode("utf-8", errors="replace"))

    def wait(self, seconds: float) -> list[str]:
        """Collect keys for ``seconds`` (pacing a real-time loop without missing presses)."""
        end = time.monotonic() + seconds
        keys: list[str] = []
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return keys + self.read(0.0)
            keys += self.read(left)

    @property
    def width(self) -> int:
        """Columns of the terminal itself (not $COLUMNS, which a parent shell may have fixed)."""
        try:
            return os.get_terminal_size(self._fd).columns
        except OSError:
            return 100

    def status(self, text: str) -> None:
        """Redraw the one-line status (cut to the terminal width, so it never wraps)."""
        self._write("\r\x1b[K" + text[: max(10, self.width - 1)])

    def message(self, text: str) -> None:
        """A line that stays (above the status line)."""
        self._write("\r\x1b[K" + text + "\r\n")

    def _write(self, text: str) -> None:
        if not self._closed:
            os.write(self._fd, text.encode())

    def close(self) -> None:
        """Restore the terminal's mode (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            os.write(self._fd, b"\r\n")
            self._termios.tcsetattr(self._fd, self._termios.TCSADRAIN, self._saved)
        finally:
            os.close(self._fd)
