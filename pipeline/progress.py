"""Progress of long stages (collect, pretrain, evaluate, finetune): count/total, rate and ETA.

On a terminal, a rich progress bar. When stdout is not a terminal (a file, a pipe, CI), a
plain line every ``every_s`` seconds and one at the end, never a carriage return::

    [pretrain] 1,200/3,000 updates (40%), 95.1 updates/s, ETA 0:00:19, critic_loss 0.21
    [pretrain] 3,000/3,000 updates (100%) in 0:00:31, 96.8 updates/s, critic_loss 0.18

The interval comes from ``O2O_PROGRESS_EVERY_S`` (seconds, default 10): a display setting,
so it is not part of any config a stage is fingerprinted by. The rate is the average since
the start (periodic evaluations included), so the ETA already counts the evaluations to come.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from typing import Any, Callable, Mapping, TextIO

from rich.console import Console
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

EVERY_S_ENV = "O2O_PROGRESS_EVERY_S"
DEFAULT_EVERY_S = 10.0
REDRAW_S = 0.1  # a terminal bar is redrawn at most this often (updates come every millisecond)

Stats = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None

_live: list["Progress"] = []  # bars on the terminal now (rich draws one live display at a time)


def default_every_s() -> float:
    """Seconds between plain progress lines: ``O2O_PROGRESS_EVERY_S``, else 10."""
    raw = os.environ.get(EVERY_S_ENV)
    if raw is None or raw == "":
        return DEFAULT_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"{EVERY_S_ENV}={raw!r}: seconds between progress lines, a number > 0")
    return value


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether progress on ``stream`` (default stdout) can be a live bar: a terminal that is not
    dumb, outside CI (a CI log keeps every carriage-return frame)."""
    if os.environ.get("CI"):
        return False
    console = Console(file=stream or sys.stdout)
    return console.is_terminal and not console.is_dumb_terminal


def duration(seconds: float) -> str:
    """``0:00:19``: hours, minutes, seconds."""
    return str(timedelta(seconds=int(round(max(0.0, seconds)))))


def number(v: Any) -> str:
    """A stat's value as shown: integers with thousands separators, floats to 3 significant digits."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def rate_text(rate: float, unit: str) -> str:
    digits = 0 if rate >= 100 else 1 if rate >= 10 else 2
    return f"{rate:,.{digits}f} {unit}/s"


def line(
    label: str,
    done: int,
    total: int | None,
    unit: str,
    elapsed: float,
    stats: Mapping[str, Any] | None = None,
    *,
    final: bool = False,
    initial: int = 0,
) -> str:
    """One progress line: ``[label] done/total unit (pct), rate, ETA`` and the stats; ``final``:
    the closing line, with the time taken (``stopped at`` when it ended short of the total)."""
    rate = (done - initial) / elapsed if elapsed > 0 else 0.0
    count = f"{done:,}/{total:,} {unit} ({100 * done / total:.0f}%)" if total else f"{done:,} {unit}"
    parts = []
    if final:
        short = bool(total) and done < total
        parts.append(f"{'stopped at ' if short else ''}{count} {'after' if short else 'in'} {duration(elapsed)}")
        parts.append(rate_text(rate, unit))
    else:
        parts += [count, rate_text(rate, unit)]
        if total:
            parts.append(f"ETA {duration((total - done) / rate)}" if rate > 0 else "ETA ?")
    parts += [f"{k} {number(v)}" for k, v in (stats or {}).items()]
    return f"[{label}] " + ", ".join(parts)


class Progress:
    """Progress of one long task: ``update(done)`` after each step (cheap: it draws or writes only
    when due), ``close()`` at the end (or use it as a context manager).

    ``enabled=False``: nothing is drawn or written. ``terminal``: None decides from ``stream``
    (default stdout). ``stats``: a mapping, or a function returning one that is called only when
    a line or frame is due (e.g. losses held on a GPU). ``clock``: for tests.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        unit: str = "steps",
        *,
        enabled: bool = True,
        every_s: float | None = None,
        stream: TextIO | None = None,
        terminal: bool | None = None,
        initial: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.total, self.unit, self.enabled = label, (int(total) if total else None), unit, bool(enabled)
        self.every_s = default_every_s() if every_s is None else float(every_s)
        self.stream, self._terminal, self.clock = stream, terminal, clock
        self.initial = self.done = int(initial)
        self.started = self.clock()
        self._last = self.started  # the last line written, or frame drawn
        self._stats: Stats = None
        self._bar: RichProgress | None = None
        self._task = None
        self._closed = False
        self._updated = False

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, done: int, stats: Stats = None) -> None:
        """The task has done ``done`` of its total (``stats`` shown next to the count)."""
        if not self.enabled or self._closed:
            return
        self.done, self._updated = int(done), True
        if stats is not None:
            self._stats = stats
        now = self.clock()
        if self._terminal is None:
            self._terminal = is_terminal(self.stream) and not _live
        if self._terminal:
            if self._bar is None or now - self._last >= REDRAW_S or (self.total and self.done >= self.total):
                self._draw(now)
        elif now - self._last >= self.every_s:
            self._write(
                line(
                    self.label,
                    self.done,
                    self.total,
                    self.unit,
                    now - self.started,
                    self._stat_values(),
                    initial=self.initial,
                )
            )
            self._last = now

    def advance(self, n: int = 1, stats: Stats = None) -> None:
        self.update(self.done + n, stats)

    def close(self) -> None:
        """The closing line (or the bar's last frame); nothing when nothing was ever updated."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._draw(self.clock())
            self._bar.stop()
            _live.remove(self)
        elif self._updated and not self._terminal:
            self._write(
                line(
                    self.label,
                    self.done,
                    self.total,
                    self.unit,
                    self.elapsed,
                    self._stat_values(),
                    final=True,
                    initial=self.initial,
                )
            )

    # ------------------------------------------------------------------ output
    def _stat_values(self) -> Mapping[str, Any]:
        s = self._stats
        return dict(s() if callable(s) else s or {})

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(text + "\n")
        stream.flush()

    def _draw(self, now: float) -> None:
        if self._bar is None:  # drawn from the first update on, after set-up errors had their say
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[count]}"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA {task.fields[eta]}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[stats]}"),
                console=Console(file=self.stream) if self.stream else None,
            )
            self._bar.start()
            _live.append(self)
            self._task = self._bar.add_task(self.label, total=self.total, count="", rate="", eta="?", stats="")
        elapsed = now - self.started
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        count = f"{self.done:,}/{self.total:,} {self.unit}" if self.total else f"{self.done:,} {self.unit}"
        eta = duration((self.total - self.done) / rate) if self.total and rate > 0 else "?"
        stats = ", ".join(f"{k} {number(v)}" for k, v in self._stat_values().items())
        self._bar.update(
            self._task, completed=self.done, count=count, rate=rate_text(rate, self.unit), eta=eta, stats=stats
        )
        self._last = now


class CollectProgress:
    """Progress of a collection, ``update(result, done)`` after each episode (``collect``'s
    ``progress`` hook): episodes, with steps/s and the running return and success rate."""

    def __init__(self, total: int, enabled: bool = True, label: str = "collect", **kwargs: Any):
        self.progress = Progress(label, total, "episodes", enabled=enabled, **kwargs)

    def __enter__(self) -> "CollectProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.progress.close()

    def update(self, result, done: int) -> None:
        def stats() -> dict[str, Any]:
            recent = result.returns[-20:]
            known = [s for s in result.successes[-20:] if s is not None]
            out = {
                "steps/s": result.steps / max(self.progress.elapsed, 1e-9),
                "return": sum(recent) / max(1, len(recent)),
            }
            if known:
                out["success"] = sum(known) / len(known)
            return out

        self.progress.update(done, stats)


def collect_progress(cfg: Any, label: str = "collect") -> CollectProgress:
    """The progress of collecting ``cfg.collect.episodes`` with ``cfg.behavior``: off when
    ``collect.progress`` is false, and for a person at the terminal (teleoperation draws its own
    status line)."""
    enabled = bool(cfg.collect.get("progress", True)) and cfg.behavior.get("kind") != "human"
    return CollectProgress(int(cfg.collect.episodes), enabled=enabled, label=label)
