"""Per-episode task variation in collection: ``collect.tasks`` (``o2o collect``) and an entry's
``tasks`` (``o2o run``) give reset options, one drawn per episode from its seed and recorded as
its task; the dataset's env stays the config's, so training and evaluation use the configured
task. Real point-maze episodes into real Zarr stores."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from o2o.datasets import EpisodeStore
from o2o.envs import make_env
from o2o.pipeline import run as R
from o2o.pipeline.cli import main
from o2o.pipeline.config import load_config, plain
from o2o.pipeline.stages.collect import episode_task
from o2o.policies.evaluation import Evaluator
from o2o.policies.training import check_env

TASKS = "[{start_cell: [3, 3], goal_cell: [1, 1]}, {start_cell: [1, 1], goal_cell: [3, 1]}, {goal_cell: [1, 3]}]"
PLAIN_TASKS = [
    {"start_cell": [3, 3], "goal_cell": [1, 1]},
    {"start_cell": [1, 1], "goal_cell": [3, 1]},
    {"goal_cell": [1, 3]},
]


def collect_args(path, *extra: str) -> list[str]:
    return ["collect", "env=pointmaze", f"dataset.path={path}", "collect.progress=false", *extra]


def test_collect_varies_the_task_per_episode_and_records_it(tmp_path, capsys):
    path = tmp_path / "maze.zarr"
    assert main(collect_args(path, "behavior=scripted", "collect.episodes=12", f"collect.tasks={TASKS}")) == 0
    # A second collection of other tasks (and one from the env's own reset) appends to the same dataset.
    assert (
        main(collect_args(path, "behavior=scripted", "collect.episodes=2", "collect.tasks=[{start_cell: [2, 3]}]")) == 0
    )
    assert main(collect_args(path, "behavior=random", "collect.episodes=2")) == 0
    cfg = load_config("collect", ["env=pointmaze"])
    env = make_env(plain(cfg.env))
    maze, layout = env.get_wrapper_attr("maze"), env.get_wrapper_attr("obs_layout")
    env.close()
    with EpisodeStore.open(path) as store:
        assert store.num_episodes == 16
        # The dataset's env is the config's, whatever tasks its episodes had: training accepts it.
        assert store.env["kwargs"] == plain(cfg.env.kwargs)
        check_env(store, cfg.env)
        table = store.episodes_table()
        tasks = list(table["task"])
        # Each episode's task is the one its seed draws, so a rerun or a resumed collection repeats it.
        assert tasks[:12] == [episode_task(PLAIN_TASKS, s) for s in table["seed"][:12]]
        assert {json.dumps(t, sort_keys=True) for t in tasks[:12]} == {
            json.dumps(t, sort_keys=True) for t in PLAIN_TASKS
        }
        assert tasks[12:] == [{"start_cell": [2, 3]}] * 2 + [None, None]
        for i in range(14):
            ep = store.episode(i)
            start, goal = (layout.get(ep.observations[0], k) for k in ("position", "goal"))
            want_goal = ep.task.get("goal_cell", [1, 1])  # the config's goal where the task gives none
            assert maze.cell_of(goal) == tuple(want_goal)
            if "start_cell" in ep.task:
                assert maze.cell_of(start) == tuple(ep.task["start_cell"])
            # The scripted controller follows each episode's goal, wherever it is.
            assert ep.success, (i, ep.task)
    capsys.readouterr()
    assert main(["dataset", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert sum(t["episodes"] for t in info["tasks"]) == 14 and info["episodes_without_task"] == 2
    assert main(["dataset", "info", str(path)]) == 0
    assert '{"goal_cell": [1, 1], "start_cell": [3, 3]}' in capsys.readouterr().out


@pytest.mark.parametrize(
    "tasks, message",
    [
        ("[{start_cell: [0, 0]}]", r"collect.tasks\[0\]: start_cell \[0, 0\] is a wall"),
        ("[{goal_cell: [1, 1]}, {goal: [1, 1]}]", r"collect.tasks\[1\]: unknown reset option 'goal'"),
        ("[{goal_cell: [1]}]", r"collect.tasks\[0\]: goal_cell must be a cell \[row, col\]"),
        ("[]", "collect.tasks must be a non-empty list"),
    ],
)
def test_bad_tasks_are_refused_before_a_dataset_is_made(tmp_path, capsys, tasks, message):
    path = tmp_path / "maze.zarr"
    assert main(collect_args(path, "behavior=scripted", "collect.episodes=2", f"collect.tasks={tasks}")) != 0
    assert re.search(message, capsys.readouterr().err)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_an_env_without_reset_options_refuses_tasks(tmp_path, capsys):
    path = tmp_path / "reacher.zarr"
    args = ["collect", "env=reacher", "behavior=random", f"dataset.path={path}", "collect.progress=false"]
    assert main([*args, "collect.tasks=[{start_cell: [1, 1]}]"]) != 0
    assert "collect.tasks[0]: env 'Reacher-v5' takes no reset options" in capsys.readouterr().err
    assert not path.exists()


def run_cfg(tmp_path, behaviors: str, *extra: str):
    return load_config(
        "run",
        [
            "env=pointmaze",
            f"dataset.path={tmp_path / 'data.zarr'}",
            f"run_dir={tmp_path / 'run'}",
            f"state_dir={tmp_path / '.state'}",
            "pipeline.stages=[collect]",
            "collect.progress=false",
            f"collect.behaviors={behaviors}",
            *extra,
        ],
    )


def test_run_entries_take_tasks_and_behaviour_nodes(tmp_path):
    behaviors = (
        "[{behavior: scripted, episodes: 4, tasks: [{start_cell: [1, 3]}]},"
        " {behavior: {kind: scripted, noise_std: 0.1, controller: {target_cell: [3, 3]}}, episodes: 3},"
        " {behavior: random, episodes: 2}]"
    )
    res = R.run(run_cfg(tmp_path, behaviors, "collect.tasks=[{start_cell: [2, 3]}]"))
    assert res.record("collect").status == "ran"
    with EpisodeStore.open(tmp_path / "data.zarr") as store:
        t = store.episodes_table()
        # The first entry's own tasks; the others fall back to collect.tasks.
        assert list(t["task"]) == [{"start_cell": [1, 3]}] * 4 + [{"start_cell": [2, 3]}] * 5
        commanded = [store.episode(i) for i in range(4, 7)]
    for ep in commanded:  # driven to (3, 3) and held there, while the task's goal stays (1, 1)
        assert ep.provenance["params"] == {"noise_std": 0.1, "target_cell": [3, 3]}
        pos = ep.final_observation[:2]
        assert np.abs(pos - np.array([1.0, -1.0])).max() < 0.3, pos
        assert not ep.success


@pytest.mark.parametrize(
    "behaviors, message",
    [
        (
            "[{behavior: scripted, episodes: 2}, {behavior: scripted, episodes: 2, tasks: [{start_cell: [2, 2]}]}]",
            r"collect.behaviors\[1\].tasks\[0\]: start_cell \[2, 2\] is a wall",
        ),
        (
            "[{behavior: scripted, episodes: 2}, {behavior: random, episode: 2}]",
            r"collect.behaviors\[1\]: entries take",
        ),
        ("[{behavior: scripted, episodes: -1}]", r"collect.behaviors\[0\].episodes must be an integer >= 0"),
        (
            "[{behavior: scripted, episodes: 2}, {behavior: {kind: scripted, noise: 0.3}, episodes: 2}]",
            r"collect.behaviors\[1\].behavior: unknown keys \['noise'\] for kind 'scripted'",
        ),
    ],
)
def test_a_bad_entry_is_refused_before_any_entry_is_collected(tmp_path, behaviors, message):
    with pytest.raises(ValueError, match=message):
        R.run(run_cfg(tmp_path, behaviors))
    assert not (tmp_path / "data.zarr").exists()  # the good entry before it was not collected either


def test_evaluation_runs_the_configured_task_not_the_datasets(tmp_path):
    path = tmp_path / "maze.zarr"
    # Episodes of other starts and goals only.
    assert main(collect_args(path, "behavior=scripted", "collect.episodes=3", f"collect.tasks={TASKS}")) == 0
    cfg = load_config("collect", ["env=pointmaze"])
    with EpisodeStore.open(path) as store:
        check_env(store, cfg.env)  # the configured env is the dataset's
        assert all(t is not None for t in store.episodes_table()["task"])
    env = make_env(plain(cfg.env))
    maze, layout = env.get_wrapper_attr("maze"), env.get_wrapper_attr("obs_layout")
    env.close()
    evaluator = Evaluator(plain(cfg.env), episodes=4, seed=20000)
    try:
        res = evaluator(lambda obs: np.zeros((len(obs), 2), np.float32))
    finally:
        evaluator.close()
    for obs in res.start_observations:  # the env config's start (3, 1) and goal (1, 1)
        assert maze.cell_of(layout.get(obs, "position")) == (3, 1)
        assert maze.cell_of(layout.get(obs, "goal")) == (1, 1)
