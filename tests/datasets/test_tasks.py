"""Per-episode tasks in the store: each episode's reset options are kept in its provenance
(``provenance.task``), covered by its content digest, read back, summarised by ``o2o dataset info``,
and refused before anything is written when they are not plain values. They are not part of the
dataset's env: one dataset holds episodes of many tasks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from o2o.datasets import Episode, EpisodeStore, Schema
from o2o.datasets.inspect import dataset_info, verify_dataset
from o2o.envs import env_metadata, make_env
from o2o.pipeline.config import load_config, plain

UMAZE_TASKS = [{"start_cell": [3, 1], "goal_cell": [3, 3]}, {"start_cell": [1, 3], "goal_cell": [1, 1]}]


@pytest.fixture(scope="module")
def maze():
    cfg = plain(load_config("collect", ["env=pointmaze"]).env)
    env = make_env(cfg)
    schema = Schema.from_spaces(env.observation_space, env.action_space, env.get_wrapper_attr("obs_layout"))
    yield cfg, schema, env_metadata(env, cfg)
    env.close()


def episode(k: int, task: dict | None, T: int = 6) -> Episode:
    rng = np.random.default_rng(k)
    prov = {"source": "scripted", "policy_id": "maze", "params": {}}
    if task is not None:
        prov["task"] = task
    return Episode(
        observations=rng.uniform(-1, 1, (T, 6)).astype(np.float32),
        actions=rng.uniform(-1, 1, (T, 2)).astype(np.float32),
        rewards=rng.normal(size=T).astype(np.float32),
        terminals=np.zeros(T, bool),
        timeouts=np.eye(1, T, T - 1, dtype=bool)[0],
        final_observation=rng.uniform(-1, 1, 6).astype(np.float32),
        provenance=prov,
        seed=k,
        success=bool(k % 2),
    )


def test_tasks_are_recorded_read_back_and_summarised(maze, tmp_path):
    cfg, schema, meta = maze
    path = tmp_path / "mixed.zarr"
    # Episodes from the env's own reset first (as in a dataset made before per-episode tasks), then two tasks.
    with EpisodeStore.create(path, schema, env=meta) as store:
        store.append_many([episode(0, None), episode(1, None)])
    with EpisodeStore.open(path, mode="a") as store:
        store.append_many([episode(2 + i, UMAZE_TASKS[i % 2]) for i in range(5)])
    with EpisodeStore.open(path) as store:
        assert store.env == meta and "task" not in json.dumps(store.env)  # the env knows nothing of tasks
        assert [store.episode(i).task for i in range(7)] == [None, None] + [UMAZE_TASKS[i % 2] for i in range(5)]
        assert list(store.episodes_table()["task"]) == [None, None] + [UMAZE_TASKS[i % 2] for i in range(5)]
        assert len(store.load_transitions()) == 7 * 6  # every content digest checked on the way
        info = dataset_info(store)
    assert info["integrity"]["problems"] == []
    assert info["tasks"] == [
        {"task": UMAZE_TASKS[0], "episodes": 3, "success_rate": 0.0},  # episodes 2, 4, 6: odd ones succeed
        {"task": UMAZE_TASKS[1], "episodes": 2, "success_rate": 1.0},
    ]
    assert info["episodes_without_task"] == 2
    assert verify_dataset(path) == ([], [])


def test_a_task_is_covered_by_the_episode_digest(maze, tmp_path):
    cfg, schema, meta = maze
    path = tmp_path / "d.zarr"
    with EpisodeStore.create(path, schema, env=meta) as store:
        store.append_many([episode(0, UMAZE_TASKS[0]), episode(1, UMAZE_TASKS[1])])
    index = json.loads((path / "index.json").read_text())
    row = next(p for p in index["provenance"] if p.get("task") == UMAZE_TASKS[1])
    row["task"]["goal_cell"] = [3, 1]  # another goal written over the record
    (path / "index.json").write_text(json.dumps(index))
    problems, _ = verify_dataset(path)
    assert any("content digest mismatch in 1 episode (1)" in p for p in problems), problems
    with EpisodeStore.open(path) as store, pytest.raises(Exception, match="digest"):
        store.load_transitions()


@pytest.mark.parametrize(
    "task, message",
    [
        ([1, 2], "must be a non-empty mapping"),
        ({}, "must be a non-empty mapping"),
        ({"goal_cell": [1, float("nan")]}, "goal_cell holds a non-finite number"),
        ({"goal_cell": {"row": 1}}, "goal_cell must be numbers, strings, booleans or lists"),
        ({3: [1, 1]}, "keys must be non-empty strings"),
    ],
)
def test_a_bad_task_is_refused_before_anything_is_written(maze, tmp_path, snapshot, task, message):
    cfg, schema, meta = maze
    path = tmp_path / "d.zarr"
    with EpisodeStore.create(path, schema, env=meta) as store:
        store.append(episode(0, UMAZE_TASKS[0]))
    data = lambda: {k: v for k, v in snapshot(path).items() if k != ".o2o.lock"}  # noqa: E731 (the lock names its holder)
    before = data()
    with EpisodeStore.open(path, mode="a") as store:
        with pytest.raises(ValueError, match=message) as err:
            store.append_many([episode(1, UMAZE_TASKS[1]), episode(2, task)])
        assert "episode 2" in str(err.value) and "task" in str(err.value)
    assert data() == before
    with EpisodeStore.open(path) as store:
        assert store.num_episodes == 1
