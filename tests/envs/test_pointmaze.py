"""The built-in point maze: geometry, options, rewards, success and speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from o2o.envs import make_env
from o2o.envs.pointmaze import MAZES, MazeMap, PointMazeEnv, make

CFG = {
    "name": "pointmaze",
    "factory": "o2o.envs.pointmaze.make",
    "id": "UMaze",
    "max_episode_steps": 150,
    "kwargs": {},
}


@pytest.mark.parametrize("name", sorted(MAZES))
def test_maze_geometry(name):
    maze = MazeMap(MAZES[name], cell_size=0.7)
    free = [(r, c) for r in range(maze.shape[0]) for c in range(maze.shape[1]) if maze.is_free((r, c))]
    for cell in free:
        assert maze.cell_of(maze.center(cell)) == cell
        path = maze.path(free[0], cell)  # every free cell is reachable
        assert path[0] == free[0] and path[-1] == cell
        assert all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in zip(path, path[1:]))


def test_umaze_path_goes_round():
    assert MazeMap(MAZES["UMaze"]).path((3, 1), (1, 1)) == [(3, 1), (3, 2), (3, 3), (2, 3), (1, 3), (1, 2), (1, 1)]


def test_bad_maps_and_cells_refused():
    with pytest.raises(ValueError, match="equal length"):
        MazeMap(["###", "#."])
    with pytest.raises(ValueError, match="wall"):
        PointMazeEnv(start_cells=[[0, 0]])
    with pytest.raises(ValueError, match="unknown maze"):
        make("Nope", 10)
    with pytest.raises(ValueError, match="reward_type"):
        PointMazeEnv(reward_type="shaped")


def test_reset_options_and_noise():
    env = make("UMaze", 50, start_cells=[[1, 1], [3, 1]], goal_cells=[[1, 3]], position_noise=0.1)
    layout = env.get_wrapper_attr("obs_layout")
    obs, info = env.reset(seed=0, options={"start_cell": (3, 3), "goal_cell": (1, 1)})
    assert tuple(info["start_cell"]) == (3, 3) and tuple(info["goal_cell"]) == (1, 1)
    maze = env.get_wrapper_attr("maze")
    assert np.abs(layout.get(obs, "position") - maze.center((3, 3))).max() <= 0.1 + 1e-6
    assert np.abs(layout.get(obs, "goal") - maze.center((1, 1))).max() <= 0.1 + 1e-6
    starts = {tuple(env.reset(seed=s)[1]["start_cell"]) for s in range(20)}
    assert starts == {(1, 1), (3, 1)}


def test_walls_block():
    env = make("UMaze", 100, position_noise=0.0)
    env.reset(seed=0)  # start (3, 1): the wall row 2 is above it
    for _ in range(60):
        obs, *_ = env.step(np.array([0.0, 1.0], dtype=np.float32))
    top_of_corridor = env.unwrapped.maze.center((3, 1))[1] + 0.5 - 0.1  # cell edge minus ball radius
    assert obs[1] <= top_of_corridor + 0.02


def test_rewards_and_success():
    dense = make("UMaze", 10, position_noise=0.0)
    dense.reset(seed=0, options={"goal_cell": (3, 1)})  # goal on the start: success at once
    _, r, terminated, _, info = dense.step(np.zeros(2, dtype=np.float32))
    assert info["is_success"] is True and r == pytest.approx(-info["distance"]) and not terminated

    sparse = make("UMaze", 10, reward_type="sparse", terminate_on_success=True, position_noise=0.0)
    sparse.reset(seed=0, options={"goal_cell": (3, 1)})
    _, r, terminated, _, info = sparse.step(np.zeros(2, dtype=np.float32))
    assert r == 1.0 and terminated and info["is_success"] is True
    sparse.reset(seed=0)
    _, r, terminated, _, info = sparse.step(np.zeros(2, dtype=np.float32))
    assert r == 0.0 and not terminated and info["is_success"] is False


def test_speed():
    env = make_env(CFG, seed=0)
    env.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, size=(3000, 2)).astype(np.float32)
    start = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    rate = len(actions) / (time.perf_counter() - start)
    print(f"pointmaze: {rate:.0f} steps/s")
    assert rate > 2000, f"pointmaze stepped at {rate:.0f} steps/s, expected thousands"
