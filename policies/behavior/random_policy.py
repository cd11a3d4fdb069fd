"""Uniform random actions: the cheapest behaviour, and the 'random' part of mixed datasets."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from o2o.policies.behavior.base import BehaviorPolicy, Provenance


def check_bounded_box(action_space: gym.Space, what: str) -> gym.spaces.Box:
    """Return ``action_space`` if it is a Box with finite bounds, else raise a clear error.

    Uniform sampling (random actions, epsilon exploration, unit-scale mapping) needs both
    bounds; ``what`` names the caller in the message.
    """
    if not isinstance(action_space, gym.spaces.Box):
        raise TypeError(f"{what}: needs a Box action space, got {type(action_space).__name__}: {action_space}")
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise ValueError(
            f"{what}: action space {action_space} has infinite bounds; uniform sampling needs finite "
            "low/high (bound the env's action space, e.g. with gymnasium.wrappers.ClipAction)"
        )
    return action_space


class RandomPolicy(BehaviorPolicy):
    """Actions drawn uniformly from a bounded Box, independent of the observation.

    Reproducible: after ``reset(seed)`` the action sequence depends only on ``seed``;
    ``reset(None)`` continues the current random stream (seeded by the constructor).
    """

    def __init__(self, action_space: gym.spaces.Box, seed: int | None = None, policy_id: str = "random"):
        self.action_space = check_bounded_box(action_space, f"RandomPolicy {policy_id!r}")
        self.policy_id = policy_id
        # Bounds come from the float32 space, so a float64 draw in [low, high) rounds to
        # a float32 that is still within [low, high]: no clip needed after the cast.
        self._low = np.asarray(action_space.low, dtype=np.float64)
        self._high = np.asarray(action_space.high, dtype=np.float64)
        self._rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        """Start an episode; a given ``seed`` restarts the random stream."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """A uniform sample from the action space (``obs`` is ignored)."""
        return self._rng.uniform(self._low, self._high).astype(self.action_space.dtype)

    @property
    def provenance(self) -> Provenance:
        """Source ``random``; no parameters beyond the action space itself."""
        return Provenance(source="random", policy_id=self.policy_id, policy_version="1", params={})
