"""Contract test run over every env config in configs/env/*.yaml.

Every o2o env: Gymnasium API, one flat float32 observation matching its ObsLayout,
float32 Box actions, ``is_success`` where the task has success, truncation at
``max_episode_steps``, reproducible ``reset(seed)``, vectorisable.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from o2o.envs import check_reset_options, env_metadata, make_env, make_vector_env
from o2o.envs.spaces import ObsLayout, space_from_dict
from o2o.policies.behavior.scripted import load_scripted_controller

CONFIG_DIR = Path(str(resources.files("o2o.configs").joinpath("env")))
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
# Tasks that define success; every other config must not pretend to.
SUCCESS_TASKS = {"reacher", "lift", "pointmaze"}
SHORT_HORIZON = 25  # keeps truncation tests fast on 1000-step tasks


def load(path: Path, max_episode_steps: int | None = None) -> dict:
    cfg = yaml.safe_load(path.read_text())
    if max_episode_steps is not None:
        cfg["max_episode_steps"] = min(cfg["max_episode_steps"], max_episode_steps)
    return cfg


def rollout(env: gym.Env, seed: int, actions: np.ndarray) -> np.ndarray:
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for a in actions:
        obs, *_ = env.step(a)
        out.append(obs)
    return np.stack(out)


def test_configs_found():
    assert {"lift", "reacher", "halfcheetah", "hopper", "pointmaze"} <= {p.stem for p in CONFIGS}


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda p: p.stem)
def made(request):
    """(config, env) per env config, built once per module: robosuite takes seconds to make."""
    cfg = load(request.param, SHORT_HORIZON)
    env = make_env(cfg, seed=0)
    yield cfg, env
    env.close()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_shape(path):
    cfg = yaml.safe_load(path.read_text())
    for key in ("name", "factory", "id", "max_episode_steps", "kwargs", "scripted_controller"):
        assert key in cfg, f"{path.name} lacks {key!r}"
    assert cfg["name"] == path.stem
    assert cfg["factory"].startswith("o2o.envs.")
    if cfg["scripted_controller"] is not None:
        load_scripted_controller(cfg["scripted_controller"])


def test_reset_and_step(made):
    cfg, env = made
    layout = env.get_wrapper_attr("obs_layout")
    assert isinstance(layout, ObsLayout)
    for space in (env.observation_space, env.action_space):
        assert isinstance(space, gym.spaces.Box) and space.dtype == np.float32
    assert env.observation_space.shape == (layout.dim,)
    obs, info = env.reset(seed=1)
    has_success = "is_success" in info
    assert has_success == (cfg["name"] in SUCCESS_TASKS)
    for _ in range(5):
        assert obs.dtype == np.float32 and obs.shape == (layout.dim,)
        assert env.observation_space.contains(obs)
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert np.isfinite(reward)
        assert ("is_success" in info) == has_success
        if has_success:
            assert type(info["is_success"]) is bool
        if terminated or truncated:
            obs, _ = env.reset()


def test_truncation(made):
    cfg, env = made
    env.reset(seed=2)
    for t in range(1, cfg["max_episode_steps"] + 1):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated:  # Hopper may fall first; then truncation is not reached
            assert not truncated
            return
        assert truncated == (t == cfg["max_episode_steps"]), f"step {t}"


def test_reproducible(made):
    _, env = made
    rng = np.random.default_rng(0)
    actions = rng.uniform(env.action_space.low, env.action_space.high, size=(10, *env.action_space.shape))
    actions = actions.astype(np.float32)
    first = rollout(env, 7, actions)
    rollout(env, 8, actions)  # other history in between must not matter
    env.reset()
    np.testing.assert_array_equal(rollout(env, 7, actions), first)
    assert not np.array_equal(rollout(env, 9, actions)[0], first[0]), "seed has no effect on the initial state"


def test_reproducible_across_instances(made):
    # Randomness drawn when the simulator is built (robosuite's cube size) must be seeded
    # too: a dataset's episode is rebuilt by a new env in another process.
    cfg, env = made
    other = make_env(cfg)
    try:
        actions = np.zeros((5, *env.action_space.shape), dtype=np.float32)
        np.testing.assert_array_equal(rollout(other, 11, actions), rollout(env, 11, actions))
    finally:
        other.close()


def test_metadata(made):
    cfg, env = made
    meta = json.loads(json.dumps(env_metadata(env, cfg)))
    assert meta["name"] == cfg["name"] and meta["max_episode_steps"] == cfg["max_episode_steps"]
    assert ObsLayout.from_dict(meta["obs_layout"]) == env.get_wrapper_attr("obs_layout")
    assert space_from_dict(meta["action_space"]) == env.action_space
    assert space_from_dict(meta["observation_space"]) == env.observation_space
    assert meta["control_freq"] > 0


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_vector_env(path):
    cfg = load(path, SHORT_HORIZON)
    venv = make_vector_env(cfg, 2, seed=3)
    try:
        assert isinstance(venv, gym.vector.AsyncVectorEnv)
        obs, info = venv.reset()
        assert obs.shape == (2, *venv.single_observation_space.shape) and obs.dtype == np.float32
        assert not np.array_equal(obs[0], obs[1]), "copies must get different seeds"
        for _ in range(3):
            obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())
        assert reward.shape == (2,)
        assert ("is_success" in info) == (cfg["name"] in SUCCESS_TASKS)
    finally:
        venv.close()


def test_single_vector_env_is_sync():
    venv = make_vector_env(load(CONFIG_DIR / "pointmaze.yaml"), 1, seed=0)
    assert isinstance(venv, gym.vector.SyncVectorEnv)
    venv.close()


def test_seed_at_make_is_used_by_first_reset():
    cfg = load(CONFIG_DIR / "pointmaze.yaml")
    a, _ = make_env(cfg, seed=5).reset()
    b, _ = make_env(cfg, seed=5).reset()
    c, _ = make_env(cfg).reset(seed=5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_dictconfig_accepted():
    cfg = OmegaConf.load(CONFIG_DIR / "pointmaze.yaml")
    env = make_env(cfg, seed=0)
    env.reset()
    assert env.get_wrapper_attr("_max_episode_steps") == cfg.max_episode_steps
    assert env_metadata(env, cfg)["kwargs"]["start_cells"] == [[3, 1]]


@pytest.mark.parametrize(
    "factory", ["os.system", "builtins.eval", "o2o.envsx.evil.make", "o2o.pipeline.cli.main", "o2o.envs"]
)
def test_foreign_factory_refused(factory):
    with pytest.raises(ValueError, match="refused"):
        make_env({"factory": factory, "id": "x", "max_episode_steps": 1, "kwargs": {}})
    with pytest.raises(ValueError, match="refused"):
        make_vector_env({"factory": factory, "id": "x", "max_episode_steps": 1, "kwargs": {}}, 2)


def test_missing_factory_reported():
    with pytest.raises(ValueError, match="not found"):
        make_env({"factory": "o2o.envs.pointmaze.nope", "id": "UMaze", "max_episode_steps": 1})


# Per env: a task (reset options) it takes, where the observation shows it, and a bad task with the
# message that refuses it. Envs not listed take no reset options.
RESET_OPTIONS = {
    "pointmaze": (
        {"start_cell": [1, 3], "goal_cell": [3, 3]},
        {"position": [1.0, 1.0], "goal": [1.0, -1.0]},
        {"start_cell": [2, 1]},
        r"tasks\[4\]: start_cell \[2, 1\] is a wall",
    ),
    "lift": (
        {"cube_xy": [0.12, -0.07], "cube_yaw": 0.5},
        {"cube_pos": [0.12, -0.07], "cube_quat": [0.0, 0.0, float(np.sin(0.25)), float(np.cos(0.25))]},
        {"cube_xy": [0.1, 0.6]},
        r"tasks\[4\]: cube_xy \[0.1, 0.6\] is off the table",
    ),
}


def test_reset_options_set_the_task_of_one_episode(made):
    cfg, env = made
    where = "collect.tasks[4]"
    if cfg["name"] not in RESET_OPTIONS:
        with pytest.raises(ValueError, match=r"collect.tasks\[4\]: .* takes no reset options"):
            check_reset_options(env, {"start_cell": [1, 1]}, where)
        return
    task, shown, bad, message = RESET_OPTIONS[cfg["name"]]
    assert check_reset_options(env, task, where) == task
    with pytest.raises(ValueError, match=message):
        check_reset_options(env, bad, where)
    with pytest.raises(ValueError, match=r"collect.tasks\[4\]: unknown reset option 'nope'"):
        check_reset_options(env, {"nope": 1}, where)
    layout = env.get_wrapper_attr("obs_layout")
    obs, _ = env.reset(seed=5, options=task)
    for field, value in shown.items():  # where the task put things (the maze jitters by position_noise)
        np.testing.assert_allclose(layout.get(obs, field)[: len(value)], value, atol=0.101)
    # The same seed and task give the same episode start; without options the env's own draw is back.
    np.testing.assert_array_equal(obs, env.reset(seed=5, options=task)[0])
    plain_obs, _ = env.reset(seed=5)
    assert not np.allclose(plain_obs, obs)
    np.testing.assert_array_equal(plain_obs, env.reset(seed=5)[0])
