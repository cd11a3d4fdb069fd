"""Scripted navigation for the built-in point maze: BFS over cells, PD to waypoints.

The controller plans the shortest cell path from the ball's cell to the goal's cell and
keeps only its corners as waypoints, so the ball runs straight down corridors and slows
only where it must turn. It steers with a PD law on the next waypoint (the goal itself
in the last cell), advances when within ``switch_radius`` of a waypoint, and replans
whenever noise pushes the ball off the planned path or the goal moves to another cell, so it
follows each episode's goal (``goal_cell`` reset options, ``collect.tasks``).

With ``target_cell`` it drives to that cell instead of the goal and stays there: the goal in the
observation (and the env's reward and success) stay the task's. That is how D4RL's antmaze
"diverse" data was made — the behaviour commanded elsewhere while the task keeps its goal — and
what ``configs/experiment/stitching.yaml`` collects its segments with.
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from o2o.envs.pointmaze import MAZES, MazeMap
from o2o.envs.spaces import ObsLayout
from o2o.policies.behavior.scripted import ScriptedController


class PointMazeController(ScriptedController):
    """Waypoint follower for :class:`o2o.envs.pointmaze.PointMazeEnv`.

    ``maze_map``/``cell_size`` must describe the env's maze; :meth:`from_env` reads them
    from the env so they cannot disagree.
    """

    task = "pointmaze"
    version = "1"
    required_fields = ("position", "velocity", "goal")
    options = {"target_cell": "a cell [row, col] to drive to and hold instead of the goal (null: the goal)"}

    # Force 6 N per unit, damping 2 N s/m, 1 kg: kp 1.5 / kd 0.65 is about critically damped.
    kp = 1.5  # action per metre
    kd = 0.65  # action per m/s
    switch_radius = 0.3  # m from a corner's centre before turning to the next waypoint

    def __init__(
        self,
        obs_layout: ObsLayout,
        action_space: gym.spaces.Box,
        noise_std: float = 0.0,
        policy_id: str | None = None,
        seed: int | None = None,
        maze_map: Sequence[str] = MAZES["UMaze"],
        cell_size: float = 1.0,
        target_cell: Sequence[int] | None = None,
    ):
        self.maze = MazeMap(maze_map, cell_size)
        self.target_cell: tuple[int, int] | None = None
        if target_cell is not None:
            if (
                isinstance(target_cell, (str, bytes))
                or len(target_cell) != 2
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in target_cell)
            ):
                raise ValueError(f"{type(self).__name__}: target_cell must be a cell [row, col], got {target_cell!r}")
            if not self.maze.is_free(target_cell):
                raise ValueError(
                    f"{type(self).__name__}: target_cell {list(target_cell)} is a wall or outside the maze "
                    f"{list(self.maze.rows)}"
                )
            self.target_cell = (int(target_cell[0]), int(target_cell[1]))
        super().__init__(obs_layout, action_space, noise_std=noise_std, policy_id=policy_id, seed=seed)

    @classmethod
    def from_env(cls, env: gym.Env, **kwargs: Any) -> "PointMazeController":
        """Build the controller for a point-maze env, taking the maze geometry from it."""
        maze: MazeMap = env.get_wrapper_attr("maze")
        kwargs.setdefault("maze_map", maze.rows)
        kwargs.setdefault("cell_size", maze.cell_size)
        return super().from_env(env, **kwargs)

    def option_params(self) -> dict[str, Any]:
        return {} if self.target_cell is None else {"target_cell": list(self.target_cell)}

    def reset_state(self) -> None:
        self._path: list[tuple[int, int]] | None = None
        self._corners: list[int] = []
        self._k = 0  # index into self._path of the current waypoint
        self._goal_cell: tuple[int, int] | None = None

    def _plan(self, cell: tuple[int, int], goal_cell: tuple[int, int]) -> None:
        self._path = self.maze.path(cell, goal_cell)
        self._goal_cell = goal_cell
        # A corner is where the direction of travel changes; the last cell always counts.
        self._corners = [
            i
            for i in range(1, len(self._path) - 1)
            if np.subtract(self._path[i], self._path[i - 1]).tolist()
            != np.subtract(self._path[i + 1], self._path[i]).tolist()
        ] + [len(self._path) - 1]
        self._k = self._corners[0]

    def _next_corner(self, index: int) -> int:
        return next(i for i in self._corners if i >= index)

    def clean_action(self, obs: np.ndarray) -> np.ndarray:
        pos = self.field(obs, "position")
        vel = self.field(obs, "velocity")
        if self.target_cell is not None:
            goal, goal_cell = self.maze.center(self.target_cell), self.target_cell
        else:
            goal = self.field(obs, "goal")
            goal_cell = self.maze.cell_of(goal)
        cell = self.maze.cell_of(pos)
        if not self.maze.is_free(cell):  # numerically inside a wall's cell: stay with the plan
            cell = self._path[self._k] if self._path else cell
        if self._path is None or goal_cell != self._goal_cell or cell not in self._path:
            self._plan(cell, goal_cell)
        i = self._path.index(cell)
        if i > self._k:  # ran past the waypoint
            self._k = self._next_corner(i)
        last = len(self._path) - 1
        if self._k < last and np.linalg.norm(self.maze.center(self._path[self._k]) - pos) < self.switch_radius:
            self._k = self._next_corner(self._k + 1)
        target = goal if self._k == last else self.maze.center(self._path[self._k])
        return self.kp * (target - pos) - self.kd * vel
