"""Live progress for long commands (rich): episodes, steps/s, running return and success."""

from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class CollectProgress:
    """A progress bar for ``collect``; ``update(result, done)`` after each episode."""

    def __init__(self, total: int, enabled: bool = True):
        self.total = total
        self.enabled = enabled
        self._start = time.perf_counter()
        self._progress = Progress(
            TextColumn("collect"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), disable=not enabled,
        )
        self._task = None

    def __enter__(self) -> "CollectProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self._task is not None:
            self._progress.__exit__(*exc)

    def update(self, result, done: int) -> None:
        if self._task is None:  # start drawing at the first episode, after set-up errors had their say
            self._progress.__enter__()
            self._task = self._progress.add_task("collect", total=self.total, stats="")
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        recent = result.returns[-20:]
        known = [s for s in result.successes[-20:] if s is not None]
        stats = f"{result.steps / elapsed:.0f} steps/s  return {sum(recent) / len(recent):.2f}"
        if known:
            stats += f"  success {sum(known) / len(known):.2f}"
        self._progress.update(self._task, completed=done, stats=stats)
