"""Episodes going into and coming out of a store, and a recorder that builds them step by step."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

Obs = "np.ndarray | dict[str, np.ndarray]"


@dataclass
class Episode:
    """One episode, time-major.

    ``observations[t]`` is the observation the action ``actions[t]`` was taken in;
    ``final_observation`` is the one after the last action, so that every step has a next
    observation. Flat observations are arrays; dict observations map key -> array.
    ``success`` is None when the task defines none. ``provenance`` is a dict with
    ``source``, ``policy_id``, ``policy_version``, ``params`` and optionally ``run`` (which
    run wrote the episode: ``id`` and, in a run of several parts, ``part``) and ``task`` (the
    reset options the episode started from, e.g. ``{"start_cell": [3, 1], "goal_cell": [1, 1]}``:
    what varied per episode within one env; see :attr:`task`).
    """

    observations: Any
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    final_observation: Any
    provenance: dict[str, Any]
    interventions: np.ndarray | None = None
    seed: int | None = None
    success: bool | None = None
    start_time: float = field(default_factory=time.time)
    end_time: float = field(default_factory=time.time)
    index: int | None = None  # position in the store, set when read back

    def __len__(self) -> int:
        return int(np.asarray(self.actions).shape[0])

    @property
    def episode_return(self) -> float:
        return float(np.sum(np.asarray(self.rewards, dtype=np.float64)))

    @property
    def task(self) -> dict[str, Any] | None:
        """The reset options this episode started from (``provenance["task"]``); None when it
        started from the env's own reset (or was written before per-episode tasks existed)."""
        task = self.provenance.get("task") if isinstance(self.provenance, Mapping) else None
        return dict(task) if task is not None else None

    @property
    def terminated(self) -> bool:
        return bool(np.asarray(self.terminals)[-1])

    @property
    def truncated(self) -> bool:
        return bool(np.asarray(self.timeouts)[-1])

    def next_observations(self):
        """Observation after each step (the last one is ``final_observation``)."""

        def shift(o, f):
            o = np.asarray(o)
            return np.concatenate([o[1:], np.asarray(f, o.dtype)[None]], axis=0)

        if isinstance(self.observations, Mapping):
            return {k: shift(v, self.final_observation[k]) for k, v in self.observations.items()}
        return shift(self.observations, self.final_observation)


class EpisodeRecorder:
    """Accumulates one episode from env steps; :meth:`finish` turns it into an :class:`Episode`.

    Used by collectors: ``start(obs)``, then ``add(action, reward, terminated, truncated,
    next_obs)`` per step. Only Python lists grow per step, so logging costs microseconds.
    """

    def __init__(self):
        self._obs: list = []
        self._actions: list = []
        self._rewards: list = []
        self._terminals: list = []
        self._timeouts: list = []
        self._interventions: list = []
        self._start = 0.0
        self.success: bool | None = None

    def start(self, obs) -> None:
        self.__init__()
        self._obs.append(obs)
        self._start = time.time()

    def add(
        self,
        action,
        reward: float,
        terminated: bool,
        truncated: bool,
        next_obs,
        info: Mapping | None = None,
        intervention: bool = False,
    ) -> None:
        """Record one step; ``info['is_success']`` (if present) updates the episode's success."""
        self._actions.append(np.asarray(action))
        self._rewards.append(float(reward))
        self._terminals.append(bool(terminated))
        self._timeouts.append(bool(truncated) and not bool(terminated))
        self._interventions.append(bool(intervention))
        self._obs.append(next_obs)
        if info is not None and "is_success" in info:
            # An episode succeeded if the task was solved at any step.
            self.success = bool(self.success) or bool(info["is_success"])

    def __len__(self) -> int:
        return len(self._actions)

    def mark_truncated(self) -> None:
        """End the episode at the last recorded step as cut short (a person kept it before the env ended it)."""
        if not self._actions:
            raise ValueError("no step recorded: nothing to mark truncated")
        self._timeouts[-1] = not self._terminals[-1]

    def finish(self, provenance: Mapping[str, Any], seed: int | None = None) -> Episode:
        if not self._actions:
            raise ValueError("cannot finish an episode with no steps")
        obs = self._obs
        if isinstance(obs[0], Mapping):
            observations = {k: np.stack([o[k] for o in obs[:-1]]) for k in obs[0]}
            final = {k: np.asarray(v) for k, v in obs[-1].items()}
        else:
            observations, final = np.stack(obs[:-1]), np.asarray(obs[-1])
        return Episode(
            observations=observations,
            actions=np.stack(self._actions),
            rewards=np.asarray(self._rewards, np.float32),
            terminals=np.asarray(self._terminals, bool),
            timeouts=np.asarray(self._timeouts, bool),
            final_observation=final,
            provenance=dict(provenance),
            interventions=np.asarray(self._interventions, bool),
            seed=seed,
            success=self.success,
            start_time=self._start,
            end_time=time.time(),
        )
