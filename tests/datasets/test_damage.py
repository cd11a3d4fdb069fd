"""A damaged store is never used silently: every kind of damage is listed by ``verify`` (exit 1,
never a crash), refused by loading and by appending (nothing written), with the array, chunk and
episodes named; ``verify=False`` is the explicit way past the content check.

The store is ``store_writer.py``'s (small chunks: every array spans many chunk files); each
test damages a fresh copy the way a disk, a stray script or a person would.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from o2o.datasets import EpisodeStore
from o2o.datasets.inspect import verify_report
from o2o.datasets.integrity import DatasetDamagedError
from o2o.pipeline.cli import main

EPISODES = 12


@pytest.fixture(scope="module")
def template(tmp_path_factory, store_writer):
    path = tmp_path_factory.mktemp("damage") / "s.zarr"
    with store_writer.create_store(path) as store:
        store.append_many([store_writer.make_episode(i) for i in range(EPISODES)])
    return path


@pytest.fixture
def fresh(template, tmp_path):
    path = tmp_path / "s.zarr"
    shutil.copytree(template, path)
    return path


def chunk_file(path: Path, name: str, chunk: int) -> Path:
    arr = zarr.open_array(str(path / name), mode="r")
    return path / name / arr.metadata.encode_chunk_key((chunk,) + (0,) * (arr.ndim - 1))


def rows_of(path: Path, episode: int) -> tuple[int, int]:
    with EpisodeStore.open(path, verify=False) as s:
        t = s.episodes_table()
    return int(t["start"][episode]), int(t["start"][episode] + t["length"][episode])


def chunk_of(path: Path, name: str, row: int) -> int:
    return row // zarr.open_array(str(path / name), mode="r").chunks[0]


# -- the kinds of damage: each returns the fragments every report of it must contain ----------------


def values_changed(path: Path) -> list[str]:
    """A script rewrote one row of episode 5 through zarr: the chunk decodes, the content is not what was committed."""
    a, _ = rows_of(path, 5)
    arr = zarr.open_array(str(path / "data/obs/joints"), mode="r+")
    arr[a + 3] = arr[a + 3] + 0.25
    return ["content digest mismatch in 1 episode (5)"]


def bytes_overwritten(path: Path) -> list[str]:
    """4 bytes in the middle of a chunk file overwritten (what the issue did): wrong values or an undecodable chunk."""
    a, _ = rows_of(path, 5)
    f = chunk_file(path, "data/obs/joints", chunk_of(path, "data/obs/joints", a + 10))
    raw = bytearray(f.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 4] = bytes(b ^ 0xA5 for b in raw[mid : mid + 4])
    f.write_bytes(bytes(raw))
    return []  # other values (a digest mismatch) or an undecodable chunk, whichever the bytes give: see the test


def header_overwritten(path: Path) -> list[str]:
    """The blosc header of a chunk overwritten: zarr cannot decode it (``verify`` used to crash with rc 2)."""
    a, _ = rows_of(path, 7)
    k = chunk_of(path, "data/obs/joints", a)
    f = chunk_file(path, "data/obs/joints", k)
    raw = bytearray(f.read_bytes())
    raw[:16] = b"\xff" * 16
    f.write_bytes(bytes(raw))
    return [f"array data/obs/joints chunk {k} (rows", "cannot be decoded", "episode"]


def chunk_deleted(path: Path) -> list[str]:
    """A data chunk file deleted: it reads as zeros, so only the digests can tell."""
    a, _ = rows_of(path, 4)
    k = chunk_of(path, "data/actions", a + 1)
    chunk_file(path, "data/actions", k).unlink()
    return ["content digest mismatch", f"array data/actions chunk {k}", "is missing"]


def array_metadata_deleted(path: Path) -> list[str]:
    """``data/rewards/zarr.json`` deleted (``verify`` used to crash with ArrayNotFoundError)."""
    (path / "data/rewards/zarr.json").unlink()
    return ["array data/rewards cannot be opened", "data/rewards/zarr.json"]


def ends_chunk_deleted(path: Path) -> list[str]:
    """The chunk of ``episodes/ends`` deleted: it reads as zeros (``info`` used to report 0 transitions)."""
    chunk_file(path, "episodes/ends", 0).unlink()
    return ["episodes/ends does not increase", "episode boundaries are lost"]


def returns_changed(path: Path) -> list[str]:
    """An episode's stored return edited: its record no longer matches its digest."""
    arr = zarr.open_array(str(path / "episodes/returns"), mode="r+")
    arr[2] = arr[2] + 1.0
    return ["content digest mismatch in 1 episode (2)"]


def digest_changed(path: Path) -> list[str]:
    """One episode's stored digest edited: its content and the chain no longer agree with it."""
    arr = zarr.open_array(str(path / "episodes/digest"), mode="r+")
    row = np.asarray(arr[3]).copy()
    row[0] ^= 0xFF
    arr[3] = row
    return ["content digest mismatch in 1 episode (3)", "fingerprint chain broken at episode 3"]


def index_fingerprint_changed(path: Path) -> list[str]:
    """``index.json`` names another history than the one stored."""
    import json

    index = json.loads((path / "index.json").read_text())
    index["fingerprint"] = "0123456789ab" + index["fingerprint"][12:]
    (path / "index.json").write_text(json.dumps(index))
    return ["index.json fingerprint 0123456789ab != the chain value"]


def root_metadata_deleted(path: Path) -> list[str]:
    """The root ``zarr.json`` (schema, env) deleted (a failed ``collect`` used to rewrite it, then verify said OK)."""
    (path / "zarr.json").unlink()
    return ["zarr.json", "missing"]


def index_deleted(path: Path) -> list[str]:
    (path / "index.json").unlink()
    return ["index.json", "missing"]


DAMAGE = [
    values_changed,
    bytes_overwritten,
    header_overwritten,
    chunk_deleted,
    array_metadata_deleted,
    ends_chunk_deleted,
    returns_changed,
    digest_changed,
    index_fingerprint_changed,
    root_metadata_deleted,
    index_deleted,
]
# Damage to what loading reads as content (not the structure every open checks): verify=False gets past it.
CONTENT_ONLY = {values_changed, chunk_deleted, returns_changed}


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_damage_is_reported_refused_and_never_used(fresh, damage, capsys, snapshot):
    want = damage(fresh)
    before = snapshot(fresh)

    # verify lists it and exits 1; it never crashes.
    report = verify_report(fresh)
    text = "\n".join(report.problems)
    assert report.problems and "check stopped early" not in text, text
    if damage is bytes_overwritten:  # the flipped bytes either decode to other values or do not decode
        assert "content digest mismatch" in text or "cannot be decoded" in text, text
    for fragment in want:
        assert fragment in text, (fragment, text)
    assert main(["dataset", "verify", str(fresh)]) == 1
    assert "FAIL" in capsys.readouterr().err

    # Loading refuses (at open or at load), naming the damage and what to run.
    with pytest.raises(DatasetDamagedError) as err:
        with EpisodeStore.open(fresh) as store:
            store.load_transitions()
    assert "o2o dataset verify" in str(err.value) and str(fresh) in str(err.value), err.value
    with pytest.raises(DatasetDamagedError):
        with EpisodeStore.open(fresh) as store:
            list(store.iter_episodes())

    # info says so, with a non-zero exit.
    assert main(["dataset", "info", str(fresh)]) != 0
    captured = capsys.readouterr()
    assert "damaged" in (captured.err + captured.out).lower()

    # Appending refuses before writing anything (every episode of this store shares the tail chunks).
    with pytest.raises(DatasetDamagedError):
        EpisodeStore.open(fresh, mode="a")
    after = snapshot(fresh)
    after.pop(".o2o.lock", None)
    before.pop(".o2o.lock", None)
    assert after == before

    if damage in CONTENT_ONLY:  # the explicit opt-out for people who know
        with EpisodeStore.open(fresh, verify=False) as store:
            assert len(store.load_transitions()) == store.num_steps


def test_the_damaged_episodes_are_named_and_the_intact_ones_still_load(fresh, capsys):
    values_changed(fresh)
    assert main(["dataset", "verify", str(fresh)]) == 1
    err = capsys.readouterr().err
    assert f"episodes affected: 5 (1 of {EPISODES}; the other {EPISODES - 1} are intact" in err, err
    with EpisodeStore.open(fresh) as store:
        assert len(store.load_transitions(np.arange(5))) > 0  # what does not touch episode 5 loads
        with pytest.raises(DatasetDamagedError, match=r"content digest mismatch in 1 episode \(5\)"):
            store.load_transitions(np.arange(4, 7))
        with pytest.raises(DatasetDamagedError, match=r"\(5\)"):
            store.episode(5)
        store.episode(6)


def test_damage_outside_the_tail_is_found_when_loaded_not_when_appended(tmp_path):
    """A writer checks the chunks an append rewrites; older damage is left to loading (and verify)."""
    import gymnasium as gym

    from o2o.datasets import Episode, Schema

    schema = Schema.from_spaces(gym.spaces.Box(-5, 5, (3,), np.float32), gym.spaces.Box(-1, 1, (2,), np.float32))

    def episode(i: int) -> Episode:
        rng = np.random.default_rng(i)
        return Episode(
            rng.normal(size=(3, 3)).astype(np.float32),
            rng.uniform(-1, 1, (3, 2)).astype(np.float32),
            rng.normal(size=3).astype(np.float32),
            np.zeros(3, bool),
            np.arange(3) == 2,
            rng.normal(size=3).astype(np.float32),
            {"source": "scripted", "policy_id": "p"},
        )

    path = tmp_path / "small-chunks.zarr"
    # 64-byte chunks: 64 episodes per chunk of episodes/success (one byte a row: the most rows per chunk).
    with EpisodeStore.create(path, schema, chunk_bytes=64) as store:
        store.append_many([episode(i) for i in range(70)])
    arr = zarr.open_array(str(path / "data/rewards"), mode="r+")
    arr[2] = arr[2] + 1.0  # episode 0: outside the tail (episodes 64-69)
    with EpisodeStore.open(path, mode="a") as w:
        w.append(episode(70))
    with EpisodeStore.open(path) as r:
        with pytest.raises(DatasetDamagedError, match=r"content digest mismatch in 1 episode \(0\)"):
            r.load_transitions()
        assert len(r.load_transitions(np.arange(1, 71))) == 210
    assert verify_report(path).affected == {0}
    arr = zarr.open_array(str(path / "data/rewards"), mode="r+")
    arr[200] = arr[200] + 1.0  # episode 66, in the tail: the next writer refuses
    with pytest.raises(DatasetDamagedError, match=r"\(66\).*Nothing was appended"):
        EpisodeStore.open(path, mode="a")


def test_verify_lists_every_problem_not_the_first(fresh):
    header_overwritten(fresh)
    returns_changed(fresh)
    (fresh / "data/rewards/zarr.json").unlink()
    text = "\n".join(verify_report(fresh).problems)
    assert "cannot be decoded" in text and "data/rewards cannot be opened" in text, text


def test_an_undecodable_chunk_stops_only_the_loads_that_need_it(fresh, store_writer):
    """The intact episodes are rescued by a selection without the damaged ones, whatever the damage."""
    with EpisodeStore.open(fresh) as store:
        want = store.load_transitions(np.array([3, 11]))
    f = chunk_file(fresh, "data/obs/joints", 0)  # episode 0's first rows
    raw = bytearray(f.read_bytes())
    raw[:16] = b"\xff" * 16
    f.write_bytes(bytes(raw))
    with EpisodeStore.open(fresh) as store:
        got = store.load_transitions(np.array([3, 11]))
        for field in (
            "observations",
            "next_observations",
            "actions",
            "rewards",
            "terminals",
            "timeouts",
            "episode_index",
        ):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
        assert len(store.load_transitions(np.arange(1, EPISODES))) > 0
        with pytest.raises(DatasetDamagedError, match="chunk 0 .*cannot be decoded"):
            store.load_transitions(np.array([0, 11]))
