"""A fast built-in MuJoCo task: a point mass in a small maze.

The ball (radius 0.1 m, 1 kg) slides on x/y, pushed by two force motors (action in
[-1, 1]^2, 6 N per unit, joint damping 2 N s/m: top speed 3 m/s, time constant 0.5 s).
Walls are boxes filling the ``#`` cells of a maze map; every cell is ``cell_size`` wide.
Control runs at 20 Hz (5 physics steps of 10 ms).

Episodes start in one of ``start_cells`` and aim for one of ``goal_cells`` (chosen per
episode by the seeded env RNG, each position jittered by up to ``position_noise``), so
datasets for *stitching* are made by giving different start/goal cells to different
collection runs. ``reset(options={"start_cell": (r, c), "goal_cell": (r, c)})`` pins
them for one episode (:data:`RESET_OPTIONS`; :meth:`PointMazeEnv.check_options` checks them), which
is how one collection varies the task per episode (``collect.tasks``) without changing the env.

Observation fields: ``position`` (2), ``velocity`` (2), ``goal`` (2).
Reward: ``"dense"`` = -distance to the goal; ``"sparse"`` = 1 inside the goal radius,
else 0. ``info["is_success"]``: distance to the goal < ``goal_radius``.
"""

from __future__ import annotations

from collections import deque
from importlib import resources
from typing import Any, Mapping, Sequence

import gymnasium as gym
import mujoco
import numpy as np

from o2o.envs.spaces import ObsLayout

# '#' wall, '.' free. Rows run top (row 0, +y) to bottom, columns left (-x) to right.
MAZES: dict[str, tuple[str, ...]] = {
    # The D4RL U-maze: start bottom-left, goal top-left, the way round is 6 cells.
    "UMaze": ("#####", "#...#", "###.#", "#...#", "#####"),
    # A 3x3-cell maze (cells at odd rows/columns, passages between them).
    "Medium": ("#######", "#.....#", "#.###.#", "#...#.#", "###.#.#", "#.....#", "#######"),
    # An empty 3x3 room: no planning needed, for smoke tests.
    "Open": ("#####", "#...#", "#...#", "#...#", "#####"),
}

OBS_LAYOUT = ObsLayout([("position", (2,)), ("velocity", (2,)), ("goal", (2,))])
#: What ``reset(options=...)`` takes: each a free cell ``[row, col]`` of the maze.
RESET_OPTIONS = {"start_cell": "the cell the ball starts in", "goal_cell": "the cell of the goal"}


class MazeMap:
    """Geometry of a grid maze: free cells, cell centres and shortest cell paths."""

    def __init__(self, rows: Sequence[str], cell_size: float = 1.0):
        rows = tuple(str(r) for r in rows)
        if not rows or len({len(r) for r in rows}) != 1:
            raise ValueError(f"maze map rows must be non-empty and of equal length, got {rows}")
        bad = {ch for r in rows for ch in r} - {"#", "."}
        if bad:
            raise ValueError(f"maze map may hold only '#' and '.', found {sorted(bad)} in {rows}")
        self.rows = rows
        self.cell_size = float(cell_size)
        self.shape = (len(rows), len(rows[0]))

    def is_free(self, cell: Sequence[int]) -> bool:
        """True for a free cell inside the map."""
        r, c = int(cell[0]), int(cell[1])
        return 0 <= r < self.shape[0] and 0 <= c < self.shape[1] and self.rows[r][c] == "."

    def center(self, cell: Sequence[int]) -> np.ndarray:
        """World (x, y) of a cell's centre; the map is centred on the origin."""
        r, c = int(cell[0]), int(cell[1])
        x = (c - (self.shape[1] - 1) / 2.0) * self.cell_size
        y = ((self.shape[0] - 1) / 2.0 - r) * self.cell_size
        return np.array([x, y], dtype=np.float64)

    def cell_of(self, xy: Sequence[float]) -> tuple[int, int]:
        """The cell containing world point ``xy``."""
        c = int(np.floor(xy[0] / self.cell_size + self.shape[1] / 2.0))
        r = int(np.floor(self.shape[0] / 2.0 - xy[1] / self.cell_size))
        return r, c

    def walls(self) -> list[tuple[int, int]]:
        """All wall cells."""
        return [(r, c) for r in range(self.shape[0]) for c in range(self.shape[1]) if self.rows[r][c] == "#"]

    def path(self, start: Sequence[int], goal: Sequence[int]) -> list[tuple[int, int]]:
        """Shortest 4-connected cell path from ``start`` to ``goal`` (both included), by BFS."""
        start, goal = (int(start[0]), int(start[1])), (int(goal[0]), int(goal[1]))
        for cell in (start, goal):
            if not self.is_free(cell):
                raise ValueError(f"cell {cell} is a wall or outside the maze {self.rows}")
        parent: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
        queue = deque([start])
        while queue:
            cell = queue.popleft()
            if cell == goal:
                break
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                nxt = (cell[0] + dr, cell[1] + dc)
                if nxt not in parent and self.is_free(nxt):
                    parent[nxt] = cell
                    queue.append(nxt)
        if goal not in parent:
            raise ValueError(f"no path from {start} to {goal} in maze {self.rows}")
        out, cell = [], goal
        while cell is not None:
            out.append(cell)
            cell = parent[cell]
        return out[::-1]


def _cells(value: Any, maze: MazeMap, what: str) -> list[tuple[int, int]]:
    cells = [(int(v[0]), int(v[1])) for v in value]
    if not cells:
        raise ValueError(f"pointmaze: {what} is empty")
    for cell in cells:
        if not maze.is_free(cell):
            raise ValueError(f"pointmaze: {what} cell {cell} is a wall or outside the maze {maze.rows}")
    return cells


class PointMazeEnv(gym.Env):
    """Point mass in a grid maze (see the module docstring for dynamics and reward)."""

    metadata = {"render_modes": []}
    obs_layout = OBS_LAYOUT
    controller_type = "force"

    def __init__(
        self,
        maze_map: Sequence[str] = MAZES["UMaze"],
        start_cells: Sequence[Sequence[int]] = ((3, 1),),
        goal_cells: Sequence[Sequence[int]] = ((1, 1),),
        cell_size: float = 1.0,
        position_noise: float = 0.1,
        goal_radius: float = 0.25,
        reward_type: str = "dense",
        terminate_on_success: bool = False,
        frame_skip: int = 5,
    ):
        if reward_type not in ("dense", "sparse"):
            raise ValueError(f"pointmaze: reward_type must be 'dense' or 'sparse', got {reward_type!r}")
        self.maze = MazeMap(maze_map, cell_size)
        self.start_cells = _cells(start_cells, self.maze, "start_cells")
        self.goal_cells = _cells(goal_cells, self.maze, "goal_cells")
        self.position_noise = float(position_noise)
        self.goal_radius = float(goal_radius)
        self.reward_type = reward_type
        self.terminate_on_success = bool(terminate_on_success)
        self.frame_skip = int(frame_skip)

        self.model = self._build_model()
        self.data = mujoco.MjData(self.model)
        self._goal_site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, "goal")
        self.dt = self.model.opt.timestep * self.frame_skip
        self.control_freq = 1.0 / self.dt
        self.goal = np.zeros(2)

        bound = np.array(self.maze.shape[::-1], dtype=np.float64) * self.maze.cell_size / 2.0
        lim = np.array([*bound, np.inf, np.inf, *bound], dtype=np.float32)
        self.observation_space = gym.spaces.Box(-lim, lim, dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def _build_model(self) -> mujoco.MjModel:
        xml = resources.files("o2o.envs.assets").joinpath("pointmaze.xml").read_text()
        spec = mujoco.MjSpec.from_string(xml)
        half = self.maze.cell_size / 2.0
        for r, c in self.maze.walls():
            x, y = self.maze.center((r, c))
            spec.worldbody.add_geom(
                name=f"wall_{r}_{c}",
                type=mujoco.mjtGeom.mjGEOM_BOX,
                size=[half, half, 0.2],
                pos=[x, y, 0.2],
                rgba=[0.6, 0.6, 0.65, 1.0],
            )
        return spec.compile()

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.data.qpos[:2], self.data.qvel[:2], self.goal]).astype(np.float32)

    def _distance(self) -> float:
        return float(np.linalg.norm(self.data.qpos[:2] - self.goal))

    def check_options(self, options: Any, where: str = "reset options") -> dict[str, list[int]]:
        """``options`` as ``reset`` takes them, in plain form (``{"start_cell": [r, c], ...}``), or a
        ValueError naming ``where`` and the key: an unknown key, a value that is not a cell, a wall."""
        if not isinstance(options, Mapping):
            raise ValueError(f"{where}: reset options must be a mapping of {sorted(RESET_OPTIONS)}, got {options!r}")
        out: dict[str, list[int]] = {}
        for key, value in options.items():
            if key not in RESET_OPTIONS:
                raise ValueError(f"{where}: unknown reset option {key!r}; the point maze takes {sorted(RESET_OPTIONS)}")
            if (
                isinstance(value, (str, bytes, Mapping))
                or not isinstance(value, Sequence | np.ndarray)
                or len(value) != 2
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
            ):
                raise ValueError(f"{where}: {key} must be a cell [row, col] of two integers, got {value!r}")
            cell = [int(value[0]), int(value[1])]
            if not self.maze.is_free(cell):
                raise ValueError(f"{where}: {key} {cell} is a wall or outside the maze {list(self.maze.rows)}")
            out[str(key)] = cell
        return out

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = self.check_options(options or {})
        rng = self.np_random
        # Draw in a fixed order whatever the options, so a seed fixes the noise too.
        start = self.start_cells[rng.integers(len(self.start_cells))]
        goal = self.goal_cells[rng.integers(len(self.goal_cells))]
        noise = rng.uniform(-self.position_noise, self.position_noise, size=4)
        if "start_cell" in options:
            start = tuple(options["start_cell"])
        if "goal_cell" in options:
            goal = tuple(options["goal_cell"])

        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:2] = self.maze.center(start) + noise[:2]
        self.goal = self.maze.center(goal) + noise[2:]
        self.model.site_pos[self._goal_site, :2] = self.goal
        mujoco.mj_forward(self.model, self.data)
        dist = self._distance()
        return self._obs(), {
            "is_success": dist < self.goal_radius,
            "start_cell": np.array(start),
            "goal_cell": np.array(goal),
        }

    def step(self, action):
        self.data.ctrl[:] = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        dist = self._distance()
        success = dist < self.goal_radius
        reward = -dist if self.reward_type == "dense" else float(success)
        terminated = success and self.terminate_on_success
        return self._obs(), float(reward), terminated, False, {"is_success": success, "distance": dist}


def make(env_id: str, max_episode_steps: int, maze_map: Sequence[str] | None = None, **kwargs: Any) -> gym.Env:
    """A point-maze env: ``env_id`` names a map in :data:`MAZES` unless ``maze_map`` is given.

    ``kwargs`` go to :class:`PointMazeEnv` (start/goal cells, reward type, ...).
    """
    if maze_map is None:
        if env_id not in MAZES:
            raise ValueError(f"pointmaze: unknown maze id {env_id!r}; known: {sorted(MAZES)} (or give maze_map)")
        maze_map = MAZES[env_id]
    env = PointMazeEnv(maze_map=maze_map, **kwargs)
    return gym.wrappers.TimeLimit(env, max_episode_steps=int(max_episode_steps))
