"""Creating a dataset: whole or not at all, one creator wins a race, and nothing else is turned into one.

A store is built beside its path and renamed into place with its writer lock held, so a
second creator racing for the same path gets the lock error (never "does not exist" or
zarr's ContainsGroupError); a failed import or collection into a new path leaves nothing;
a folder holding other files, or a damaged dataset, is refused instead of being (re)made.
"""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys

import gymnasium as gym
import minari
import numpy as np
import pytest
from omegaconf import OmegaConf

from o2o.datasets import EpisodeStore, StoreLockedError
from o2o.datasets.formats import import_file
from o2o.datasets.store import NotADatasetError
from o2o.pipeline.cli import main
from o2o.pipeline.config import load_config


def _race(path: str, store_writer_file: str, start, release, results) -> None:
    """One contender: create the store (or, having lost, open it to append), as ``o2o collect`` does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sw", store_writer_file)
    sw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sw)
    start.wait()
    try:
        try:
            store = sw.create_store(path)
            outcome = "created"
        except FileExistsError:
            store = EpisodeStore.open(path, mode="a")
            outcome = "appended"
        with store:
            store.append(sw.make_episode(store.num_episodes))
            if outcome == "created":
                release.wait(30)  # hold the lock until every other contender has tried
        results.put(outcome)
    except StoreLockedError:
        results.put("locked")
    except BaseException as e:  # anything else is the bug this test is about
        results.put(f"{type(e).__name__}: {e}")


@pytest.mark.parametrize("trial", range(4))
def test_racing_creators_one_wins_the_others_get_the_lock_error(tmp_path, store_writer, trial):
    ctx = mp.get_context("fork")
    n = 3
    start, release, results = ctx.Barrier(n), ctx.Event(), ctx.Queue()
    path = str(tmp_path / "race.zarr")
    procs = [ctx.Process(target=_race, args=(path, store_writer.__file__, start, release, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = []
    for _ in range(n - 1):  # the two losers report while the winner holds the lock
        outcomes.append(results.get(timeout=60))
    release.set()
    outcomes.append(results.get(timeout=60))
    for p in procs:
        p.join(30)
    assert sorted(outcomes) == ["created", "locked", "locked"], outcomes
    with EpisodeStore.open(path) as store:
        assert store.num_episodes == 1
    assert [p.name for p in (tmp_path).iterdir()] == ["race.zarr"]  # no staging folder left


def test_two_collect_commands_on_a_new_path(tmp_path):
    """The CLI race of the issue: each `o2o collect` either succeeds or says another process writes."""
    path = tmp_path / "maze.zarr"
    cmd = [
        sys.executable,
        "-m",
        "o2o.pipeline.cli",
        "collect",
        "env=pointmaze",
        "behavior=random",
        "collect.episodes=30",
        f"dataset.path={path}",
        "collect.progress=false",
    ]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    out = [p.communicate(timeout=300) for p in procs]
    rcs = [p.returncode for p in procs]
    for rc, (_, err) in zip(rcs, out):
        assert rc == 0 or (rc == 2 and "being written by another process" in err), (rc, err)
    assert 0 in rcs
    with EpisodeStore.open(path) as store:
        assert store.num_episodes == 30 * rcs.count(0)
    assert main(["dataset", "verify", str(path)]) == 0


def test_a_folder_with_other_files_is_not_turned_into_a_dataset(tmp_path, store_writer, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("mine")
    with pytest.raises(NotADatasetError, match="is not empty and is not an o2o dataset .*readme.txt"):
        store_writer.create_store(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["readme.txt"]
    assert (
        main(
            [
                "collect",
                "env=pointmaze",
                "behavior=random",
                "collect.episodes=1",
                f"dataset.path={folder}",
                "collect.progress=false",
            ]
        )
        == 2
    )
    assert "not an o2o dataset" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["readme.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["notes"]


def test_an_empty_folder_becomes_a_dataset_and_a_file_is_refused(tmp_path, store_writer):
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    with store_writer.create_store(empty) as store:
        store.append(store_writer.make_episode(0))
    with EpisodeStore.open(empty) as store:
        assert store.num_episodes == 1
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(NotADatasetError, match="is a file"):
        store_writer.create_store(tmp_path / "file.zarr")


def test_a_damaged_dataset_is_not_recreated_by_collect(tmp_path, capsys):
    """A deleted root zarr.json: collect used to rewrite it (then verify said OK)."""
    path = tmp_path / "maze.zarr"
    args = [
        "collect",
        "env=pointmaze",
        "behavior=random",
        "collect.episodes=2",
        f"dataset.path={path}",
        "collect.progress=false",
    ]
    assert main(args) == 0
    (path / "zarr.json").unlink()
    capsys.readouterr()
    assert main(args) == 2
    assert "is damaged: zarr.json" in capsys.readouterr().err
    assert not (path / "zarr.json").exists()
    assert main(["dataset", "verify", str(path)]) == 1


def test_a_collection_that_fails_before_its_first_episode_leaves_nothing(tmp_path, capsys):
    path = tmp_path / "new.zarr"
    assert (
        main(
            [
                "collect",
                "env=pointmaze",
                "behavior=learned",
                f"behavior.checkpoint={tmp_path / 'no.onnx'}",
                "collect.episodes=2",
                f"dataset.path={path}",
                "collect.progress=false",
            ]
        )
        == 2
    )
    assert "no.onnx" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _reacher_env_cfg() -> dict:
    return OmegaConf.to_container(load_config("collect", ["env=reacher"]).env, resolve=True)


def _minari_reacher(tmp_path, monkeypatch, dataset_id: str, seeds) -> None:
    """Reacher episodes recorded by Minari's own DataCollector; seed None = Minari's automatic 64-bit seed."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = minari.DataCollector(gym.make("Reacher-v5", max_episode_steps=20), record_infos=False)
    for seed in seeds:
        env.reset(seed=seed)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
    with pytest.warns(UserWarning):
        env.create_dataset(
            dataset_id=dataset_id,
            algorithm_name="uniform",
            author="test",
            author_email="test@example.org",
            code_permalink="n/a",
            description="test data",
        )
    env.close()


def test_minari_automatic_64_bit_seeds_import_and_round_trip(tmp_path, monkeypatch):
    """Minari seeds episodes with 64-bit random numbers (many >= 2**63); o2o stores them exactly."""
    _minari_reacher(tmp_path, monkeypatch, "gym/reacher/autoseed-v0", [None] * 4 + [2**63 + 5])
    ds = minari.load_dataset("gym/reacher/autoseed-v0")
    theirs = [int(ep.seed) if hasattr(ep, "seed") else None for ep in ds.iterate_episodes()]
    target = tmp_path / "reacher.zarr"
    r = import_file("minari", "gym/reacher/autoseed-v0", target, env_cfg=_reacher_env_cfg())
    assert r.episodes == [0, 1, 2, 3, 4]
    with EpisodeStore.open(target) as store:
        seeds = [store.episode(i).seed for i in range(5)]
        assert store.episodes_table()["seed"].tolist() == seeds
    assert seeds[4] == 2**63 + 5 and all(s is not None and 0 <= s < 2**64 for s in seeds)
    if all(t is not None for t in theirs):
        assert seeds == theirs
    assert main(["dataset", "verify", str(target)]) == 0


def test_a_failed_import_into_a_new_path_leaves_nothing(tmp_path, monkeypatch, snapshot):
    """The one seed o2o cannot store (2**64 - 1 means "none" in its column) is refused at commit: no empty dataset."""
    _minari_reacher(tmp_path, monkeypatch, "gym/reacher/maxseed-v0", [1, 2**64 - 1])
    target = tmp_path / "out" / "reacher.zarr"
    with pytest.raises(ValueError, match=f"seed must be a non-negative integer < 2\\*\\*64 - 1 .*got {2**64 - 1}"):
        import_file("minari", "gym/reacher/maxseed-v0", target, env_cfg=_reacher_env_cfg())
    assert not target.exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no staging folder either


def test_an_older_store_with_int64_seeds_refuses_a_64_bit_seed_by_name(tmp_path, store_writer):
    """Stores made before seeds went uint64 keep working; a seed they cannot hold is refused, not wrapped."""
    import zarr

    path = tmp_path / "old.zarr"
    with store_writer.create_store(path) as store:
        store.append(store_writer.make_episode(0))
    old = zarr.open_array(str(path / "episodes/seed"), mode="r")
    values = np.asarray(old[:]).astype(np.int64)
    zarr.create_array(
        str(path / "episodes/seed"), shape=(1,), chunks=(1024,), dtype="int64", overwrite=True, fill_value=0
    )[:] = values
    with EpisodeStore.open(path, mode="a") as store:
        ep = store_writer.make_episode(1)
        ep.seed = 2**63
        with pytest.raises(ValueError, match="older o2o that stores seeds as int64"):
            store.append(ep)
        ep.seed = 7
        store.append(ep)
        assert store.episode(1).seed == 7
    assert main(["dataset", "verify", str(path)]) == 0


@pytest.fixture
def mount_point(tmp_path):
    """An empty tmpfs mount point (a Docker volume, say): a rename cannot replace it."""
    point = tmp_path / "volume"
    point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "o2o-test", str(point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], capture_output=True)


def test_a_dataset_on_an_empty_mount_point_is_built_in_place(mount_point, store_writer, tmp_path):
    with EpisodeStore.create(mount_point, store_writer.make_schema(), remove_if_empty=True) as store:
        store.append(store_writer.make_episode(0))
    with EpisodeStore.open(mount_point) as store:
        assert store.num_episodes == 1
    assert main(["dataset", "verify", str(mount_point)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["volume"]  # no staging folder left beside it


def test_an_empty_mount_point_stays_a_mount_point_when_nothing_was_committed(mount_point, store_writer):
    EpisodeStore.create(mount_point, store_writer.make_schema(), remove_if_empty=True).close()
    assert mount_point.is_dir() and list(mount_point.iterdir()) == []
