"""Crash safety, the one-writer lock and readers during appends, with real processes.

A writer process (``store_writer.py``) appends deterministic episodes and acknowledges
each one after ``append`` returned; the tests SIGKILL it at random moments and check
that the store never lies: every acknowledged episode is intact, nothing half-written is
visible, the next writer repairs the tail, and appending goes on.
"""

from __future__ import annotations

import os
import random
import signal
import time

import numpy as np
import pytest

from o2o.datasets import EpisodeStore, StoreLockedError
from o2o.datasets.inspect import verify_dataset


class Truth:
    """Regenerated episodes (``store_writer.make_episode``), cached, and comparisons with a store."""

    def __init__(self, writer_module):
        self.w = writer_module
        self._cache: dict[int, object] = {}

    def episode(self, i: int):
        if i not in self._cache:
            self._cache[i] = self.w.make_episode(i)
        return self._cache[i]

    def assert_store_matches(self, store: EpisodeStore, n: int | None = None) -> None:
        """All committed episodes (or the first ``n``) equal their regeneration, row for row."""
        n = store.num_episodes if n is None else n
        eps = [self.episode(i) for i in range(n)]
        tr = store.load_transitions(np.arange(n), flatten=False)
        assert len(tr) == sum(len(e) for e in eps)
        assert np.array_equal(tr.episode_index, np.repeat(np.arange(n), [len(e) for e in eps]))
        if n == 0:
            return
        for k in eps[0].observations:
            np.testing.assert_array_equal(tr.observations[k], np.concatenate([e.observations[k] for e in eps]))
            np.testing.assert_array_equal(
                tr.next_observations[k], np.concatenate([e.next_observations()[k] for e in eps])
            )
        for field in ("actions", "rewards", "terminals", "timeouts"):
            np.testing.assert_array_equal(getattr(tr, field), np.concatenate([getattr(e, field) for e in eps]))
        table = store.episodes_table(np.arange(n))
        assert table["length"].tolist() == [len(e) for e in eps]
        assert table["seed"].tolist() == [e.seed for e in eps]
        assert table["success"].tolist() == [-1 if e.success is None else int(e.success) for e in eps]
        assert table["source"].tolist() == [e.provenance["source"] for e in eps]
        assert table["start_time"].tolist() == [e.start_time for e in eps]
        assert table["interventions"].tolist() == [int(e.interventions.sum()) for e in eps]

    def assert_episode(self, store: EpisodeStore, i: int) -> None:
        assert self.w.checksum(store.episode(i)) == self.w.checksum(self.episode(i)), f"episode {i} differs"


@pytest.fixture
def truth(store_writer) -> Truth:
    return Truth(store_writer)


def _parse(lines: list[str]) -> tuple[list[tuple[int, str]], list[int]]:
    acks = [(int(a), c) for _, a, c in (ln.split() for ln in lines if ln.startswith("ack "))]
    begins = [int(ln.split()[1]) for ln in lines if ln.startswith("begin ")]
    return acks, begins


STYLES = ("anytime", "mid-append", "after-ack", "closing")


def _kill_at_random(proc, rng: random.Random, style: str) -> None:
    """SIGKILL the writer at a random moment: anywhere, inside an append, just after an ack, or
    while ``close()`` trims the spare rows (the writer was started with ``--count 1``)."""
    if style == "anytime":
        time.sleep(rng.uniform(0.0, 0.6))
    elif style == "mid-append":  # an append (~0.1 s, mostly chunk writes and fsyncs) is running
        for _ in range(rng.randint(1, 3)):
            proc.expect("begin", timeout=30)
        time.sleep(rng.uniform(0.0, 0.08))
    elif style == "after-ack":  # around the commit/acknowledge boundary of the previous append
        proc.expect("ack", timeout=30)
        time.sleep(rng.uniform(0.0, 0.002))
    else:
        proc.expect("ack", timeout=30)
        time.sleep(rng.uniform(0.0, 0.06))
    proc.kill(signal.SIGKILL)


def _crash_rounds(path, store_writer, spawn_writer, truth: Truth, kills: int, seed: int) -> dict:
    store_writer.create_store(path).close()
    rng = random.Random(seed)
    stats = {"mid_append": 0, "in_close": 0, "committed_unacked": 0, "partial_files": 0}
    for k in range(kills):
        with EpisodeStore.open(path) as r:
            before = r.num_episodes
        style = STYLES[k % len(STYLES)]
        proc = spawn_writer("append", path, *(["--count", "1"] if style == "closing" else []))
        ready = proc.expect("ready", timeout=60)
        assert int(ready.split()[2]) == before
        _kill_at_random(proc, rng, style)
        acks, begins = _parse(proc.lines)
        assert [i for i, _ in acks] == list(range(before, before + len(acks)))
        for i, digest in acks:  # the writer acknowledged exactly what we regenerate
            assert digest == store_writer.checksum(truth.episode(i))
        mid_append = bool(begins) and begins[-1] == before + len(acks)
        stats["mid_append"] += mid_append
        stats["in_close"] += style == "closing" and len(acks) == 1 and "closed" not in proc.lines
        stats["partial_files"] += len(list(path.rglob("*.partial")))

        problems, notes = verify_dataset(path)
        assert problems == [], f"kill {k}: {problems}"
        reader = EpisodeStore.open(path, mode="r")
        n = reader.num_episodes
        # Nothing half-visible: the acknowledged episodes, or one more whose commit beat the kill.
        assert n == before + len(acks) or (mid_append and n == before + len(acks) + 1), (k, n, before, acks, begins)
        stats["committed_unacked"] += n == before + len(acks) + 1
        truth.assert_store_matches(reader)
        for i in range(before, n):
            truth.assert_episode(reader, i)

        with EpisodeStore.open(path, mode="a") as writer:  # repairs the uncommitted tail
            assert writer.version == reader.version
            # repaired: no rows past the commit, no temp files of the killed writer
            assert verify_dataset(path) == ([], []), f"kill {k}: not repaired"
            assert writer.append(truth.episode(n)) == n
        problems, notes = verify_dataset(path)
        assert (problems, notes) == ([], []), f"after the post-crash append of kill {k}"
        assert reader.refresh().episodes == n + 1
        truth.assert_episode(reader, n)
    with EpisodeStore.open(path) as r:
        truth.assert_store_matches(r)
    return stats


@pytest.mark.slow  # over 10 s: outside the fast tier (pytest -m 'not slow'), in the full suite
def test_sigkill_during_appends_never_loses_or_tears_episodes(tmp_path, store_writer, spawn_writer, truth):
    stats = _crash_rounds(tmp_path / "crash.zarr", store_writer, spawn_writer, truth, kills=10, seed=7)
    assert stats["mid_append"] >= 3, stats  # the kills did hit appends in progress


@pytest.mark.slow
def test_sigkill_many_times(tmp_path, store_writer, spawn_writer, truth):
    stats = _crash_rounds(tmp_path / "crash.zarr", store_writer, spawn_writer, truth, kills=25, seed=2024)
    assert stats["mid_append"] >= 10, stats


# -- one writer --------------------------------------------------------------------------------


def test_second_writer_in_same_process_is_refused(tmp_path, store_writer):
    path = tmp_path / "s.zarr"
    first = store_writer.create_store(path)
    with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}") as err:
        EpisodeStore.open(path, mode="a")
    assert str(path) in str(err.value)
    with EpisodeStore.open(path, mode="r") as reader:  # readers are fine meanwhile
        assert reader.num_episodes == 0
    first.append(store_writer.make_episode(0))
    first.close()
    with EpisodeStore.open(path, mode="a") as second:
        assert second.append(store_writer.make_episode(1)) == 1


def test_writer_in_another_process_is_refused_and_released(tmp_path, store_writer, spawn_writer):
    path = tmp_path / "s.zarr"
    store_writer.create_store(path).close()
    holder = spawn_writer("hold", path)
    holder.expect("ready")
    with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):
        EpisodeStore.open(path, mode="a")
    holder.proc.stdin.write("done\n")
    holder.proc.stdin.flush()
    holder.expect("closed")
    assert holder.finish() and holder.proc.returncode == 0
    with EpisodeStore.open(path, mode="a") as w:
        w.append(store_writer.make_episode(0))


def test_other_process_is_refused_while_this_one_writes(tmp_path, store_writer, spawn_writer):
    path = tmp_path / "s.zarr"
    with store_writer.create_store(path):
        other = spawn_writer("append", path, "--count", "1")
        line = other.expect("locked")
        assert f"pid {os.getpid()}" in line
        other.finish()
        assert other.proc.returncode == store_writer.LOCKED_EXIT
    other = spawn_writer("append", path, "--count", "1")
    other.expect("closed")


def test_sigkilled_writer_leaves_no_stale_lock(tmp_path, store_writer, spawn_writer):
    path = tmp_path / "s.zarr"
    store_writer.create_store(path).close()
    holder = spawn_writer("hold", path)
    holder.expect("ready")
    with pytest.raises(StoreLockedError):
        EpisodeStore.open(path, mode="a")
    holder.kill(signal.SIGKILL)
    assert holder.proc.returncode == -signal.SIGKILL
    assert (path / ".o2o.lock").exists()  # the file stays; the kernel dropped the lock with the process
    with EpisodeStore.open(path, mode="a") as w:
        assert w.append(store_writer.make_episode(0)) == 0


# -- readers during appends --------------------------------------------------------------------


def test_reader_during_appends_sees_only_complete_committed_episodes(tmp_path, store_writer, spawn_writer, truth):
    path = tmp_path / "s.zarr"
    with store_writer.create_store(path) as w:
        w.append_many([truth.episode(0), truth.episode(1)])
    reader = EpisodeStore.open(path, mode="r")  # opened before the writer starts
    writer = spawn_writer("append", path)
    writer.expect("ready")
    seen: list[int] = []
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        v = reader.refresh()
        assert not seen or v.episodes >= seen[-1]
        seen.append(v.episodes)
        tr = reader.load_transitions(flatten=False)
        assert len(tr) == v.steps
        truth.assert_store_matches(reader, v.episodes)  # compares the loaded rows: no fill values
        truth.assert_episode(reader, v.episodes - 1)
        fresh = EpisodeStore.open(path, mode="r")  # a reader opened mid-append
        truth.assert_episode(fresh, fresh.num_episodes - 1)
        assert fresh.select(version=v).tolist() == list(range(v.episodes))
    lines = writer.kill(signal.SIGKILL)
    acked = len([ln for ln in lines if ln.startswith("ack")])
    assert len(set(seen)) >= 4, f"the reader saw too few commits to mean anything: {sorted(set(seen))}"
    assert seen[-1] <= 2 + acked + 1
    assert verify_dataset(path)[0] == []
