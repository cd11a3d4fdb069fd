"""Scripted controllers solve their tasks, add bounded noise and report provenance.

Success is "reached ``is_success`` within the episode" (episodes stop there to keep the
suite fast). Figures measured on this machine are in the module docstrings of the
controllers and in the report of the change that added them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml

from o2o.envs import make_env
from o2o.envs.spaces import ObsLayout
from o2o.policies.behavior.base import BehaviorPolicy
from o2o.policies.behavior.scripted import ScriptedController, load_scripted_controller
from o2o.policies.behavior.scripted_lift import APPROACH, LiftController
from o2o.policies.behavior.scripted_maze import PointMazeController
from o2o.policies.behavior.scripted_reacher import ReacherController

CONFIG_DIR = Path(str(resources.files("o2o.configs").joinpath("env")))
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def load(name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())


@pytest.fixture(scope="module")
def envs():
    """One env per controller task, built once (robosuite takes seconds to make)."""
    made = {name: make_env(load(name)) for name in ("lift", "reacher", "pointmaze")}
    yield made
    for env in made.values():
        env.close()


def success_rate(env, ctl: ScriptedController, episodes: int, seed: int = 100) -> float:
    """Fraction of episodes that reach ``is_success`` (stopping at the first success)."""
    hits = 0
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        ctl.reset(seed=ep)
        while True:
            action = ctl.act(obs)
            assert env.action_space.contains(action)
            obs, _, terminated, truncated, info = env.step(action)
            if info["is_success"]:
                hits += 1
                break
            if terminated or truncated:
                break
    return hits / episodes


WITH_CONTROLLER = [p for p in CONFIGS if yaml.safe_load(p.read_text())["scripted_controller"]]


@pytest.mark.parametrize("path", WITH_CONTROLLER, ids=lambda p: p.stem)
def test_config_controller_builds(envs, path):
    cfg = yaml.safe_load(path.read_text())
    env = envs[cfg["name"]] if cfg["name"] in envs else make_env(cfg)
    ctl = load_scripted_controller(cfg["scripted_controller"]).from_env(env, seed=0)
    assert isinstance(ctl, BehaviorPolicy)
    obs, _ = env.reset(seed=0)
    ctl.reset()
    assert env.action_space.contains(ctl.act(obs))


@pytest.mark.parametrize(
    "cls, name, episodes, need",
    [(ReacherController, "reacher", 30, 27), (PointMazeController, "pointmaze", 30, 27)],
)
@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_fast_controllers_succeed(envs, cls, name, episodes, need, noise):
    ctl = cls.from_env(envs[name], noise_std=noise)
    rate = success_rate(envs[name], ctl, episodes)
    print(f"{name} noise {noise}: success {rate:.2f} over {episodes} episodes")
    assert rate * episodes >= need


def test_lift_clean(envs):
    ctl = load_scripted_controller(load("lift")["scripted_controller"]).from_env(envs["lift"])
    assert isinstance(ctl, LiftController)
    rate = success_rate(envs["lift"], ctl, 10)
    print(f"lift clean: success {rate:.2f} over 10 episodes")
    assert rate >= 0.8


def test_lift_on_the_pose_controller():
    """The config's arm runs OSC_POSITION (4-dim actions: position deltas and gripper; the arm holds its
    orientation); on OSC_POSE (7-dim: with rotation deltas) the controller also servoes the gripper's
    orientation to pointing down, and lifts the cube as well."""
    assert make_env(load("lift")).action_space.shape == (4,)
    cfg = load("lift")
    cfg["kwargs"] = {**cfg["kwargs"], "controller": "OSC_POSE"}
    env = make_env(cfg)
    try:
        assert env.action_space.shape == (7,)
        ctl = LiftController.from_env(env)
        rate = success_rate(env, ctl, 5)
        print(f"lift on OSC_POSE, clean: success {rate:.2f} over 5 episodes")
        assert rate >= 0.8
    finally:
        env.close()
    with pytest.raises(ValueError, match=r"action shape \(3,\) is neither"):
        LiftController(env.get_wrapper_attr("obs_layout"), gym.spaces.Box(-1.0, 1.0, (3,)))


@pytest.mark.slow
@pytest.mark.parametrize("noise, need", [(0.3, 0.7), (0.6, 0.1)])
def test_lift_noisy(envs, noise, need):
    ctl = LiftController.from_env(envs["lift"], noise_std=noise)
    rate = success_rate(envs["lift"], ctl, 20)
    print(f"lift noise {noise}: success {rate:.2f} over 20 episodes")
    assert rate >= need


def test_lift_phases_reset(envs):
    env = envs["lift"]
    ctl = LiftController.from_env(env)
    obs, _ = env.reset(seed=0)
    for _ in range(30):
        obs, *_ = env.step(ctl.act(obs))
    assert ctl.phase != APPROACH
    ctl.reset()
    assert ctl.phase == APPROACH


def test_noise_changes_actions_within_bounds(envs):
    env = envs["lift"]
    obs, _ = env.reset(seed=0)
    clean = LiftController.from_env(env)
    noisy = LiftController.from_env(env, noise_std=0.6, seed=1)
    a_clean = clean.act(obs)
    a_noisy = np.stack([noisy.act(obs) for _ in range(50)])
    assert a_clean.dtype == np.float32 == a_noisy.dtype
    assert np.all(a_noisy >= env.action_space.low) and np.all(a_noisy <= env.action_space.high)
    assert not np.allclose(a_noisy, a_clean)
    assert np.std(a_noisy[:, :3], axis=0).min() > 0.1  # position dims: 0.6 sigma before clipping
    # Same seed, same noise: reset(seed) re-seeds the generator.
    noisy.reset(seed=3)
    first = [noisy.act(obs) for _ in range(5)]
    noisy.reset(seed=3)
    np.testing.assert_array_equal(first, [noisy.act(obs) for _ in range(5)])


def test_provenance(envs):
    clean = ReacherController.from_env(envs["reacher"])
    noisy = LiftController.from_env(envs["lift"], noise_std=0.3)
    named = PointMazeController.from_env(envs["pointmaze"], policy_id="maze_expert")
    assert clean.provenance.source == "scripted"
    assert clean.provenance.policy_id == "reacher_scripted"
    assert clean.provenance.params == {"noise_std": 0.0}
    assert noisy.provenance.policy_id == "lift_scripted_noise0.3"
    assert noisy.provenance.policy_version == f"LiftController-{LiftController.version}"
    assert noisy.provenance.params == {"noise_std": 0.3}
    assert named.provenance.policy_id == "maze_expert"
    assert noisy.provenance.to_dict()["source"] == "scripted"


def test_fields_by_name_not_index(envs):
    # The same controller on a reordered layout gives the same action.
    env = envs["pointmaze"]
    obs, _ = env.reset(seed=0)
    layout = env.get_wrapper_attr("obs_layout")
    reordered = ObsLayout([(k, layout.get(obs, k).shape) for k in reversed(layout.keys)])
    flipped = reordered.flatten(layout.unflatten(obs))
    a = PointMazeController.from_env(env).act(obs)
    maze = env.get_wrapper_attr("maze")
    b = PointMazeController(reordered, env.action_space, maze_map=maze.rows, cell_size=maze.cell_size).act(flipped)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_missing_fields_and_foreign_paths_refused(envs):
    with pytest.raises(ValueError, match="lacks fields"):
        LiftController(ObsLayout.single("state", 10), envs["lift"].action_space)
    with pytest.raises(ValueError, match="refused"):
        load_scripted_controller("os.path.join")
    with pytest.raises(ValueError, match="not a ScriptedController"):
        load_scripted_controller("o2o.policies.behavior.scripted.np")


def test_maze_controller_drives_to_a_commanded_cell_and_holds_there(envs):
    # target_cell: the behaviour is sent elsewhere while the task (the goal in the observation) stays.
    env = envs["pointmaze"]
    maze, layout = env.get_wrapper_attr("maze"), env.get_wrapper_attr("obs_layout")
    ctl = PointMazeController.from_env(env, noise_std=0.1, target_cell=[2, 3])
    assert ctl.provenance.params == {"noise_std": 0.1, "target_cell": [2, 3]}
    for seed in range(3):
        obs, _ = env.reset(seed=seed, options={"start_cell": [1, 1], "goal_cell": [3, 1]})
        ctl.reset(seed=seed)
        cells = []
        for _ in range(150):
            obs, _, _, _, info = env.step(ctl.act(obs))
            cells.append(maze.cell_of(layout.get(obs, "position")))
            assert maze.cell_of(layout.get(obs, "goal")) == (3, 1)
        assert cells[-40:] == [(2, 3)] * 40, cells[-40:]  # arrived and stays
        assert np.linalg.norm(layout.get(obs, "position") - maze.center((2, 3))) < 0.2


def test_maze_controller_options_are_checked(envs):
    env = envs["pointmaze"]
    with pytest.raises(ValueError, match=r"target_cell \[2, 2\] is a wall"):
        PointMazeController.from_env(env, target_cell=[2, 2])
    with pytest.raises(ValueError, match="target_cell must be a cell"):
        PointMazeController.from_env(env, target_cell=[1, 1, 1])
    from o2o.policies.behavior.factory import make_behavior

    cfg = {"name": "pointmaze", "scripted_controller": "o2o.policies.behavior.scripted_maze.PointMazeController"}
    with pytest.raises(ValueError, match=r"controller options \['target'\] are not options of PointMazeController"):
        make_behavior({"kind": "scripted", "controller": {"target": [1, 1]}}, env, cfg)
    with pytest.raises(ValueError, match=r"controller options \['target_cell'\] are not options of LiftController"):
        make_behavior(
            {"kind": "scripted", "controller": {"target_cell": [1, 1]}},
            envs["lift"],
            {"name": "lift", "scripted_controller": "o2o.policies.behavior.scripted_lift.LiftController"},
        )
    built = make_behavior({"kind": "scripted", "controller": {"target_cell": [3, 3]}}, env, cfg)
    assert built.provenance.params["target_cell"] == [3, 3]
