"""Small wrappers that bring any simulator to the o2o env contract.

The contract (docs/architecture.md: Layers, envs/): one flat float32 Box observation whose fields are named
by an :class:`~o2o.envs.spaces.ObsLayout` (``env.get_wrapper_attr("obs_layout")``), a
float32 Box action space, ``info["is_success"]`` where the task defines success, and
``reset(seed=...)`` reproducibility.
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np

from o2o.envs.spaces import ObsLayout


def float32_box(space: gym.spaces.Box) -> gym.spaces.Box:
    """``space`` with float32 dtype (bounds cast, infinities kept)."""
    if not isinstance(space, gym.spaces.Box):
        raise TypeError(f"o2o envs need Box spaces, got {type(space).__name__}: {space}")
    return gym.spaces.Box(
        low=space.low.astype(np.float32), high=space.high.astype(np.float32), shape=space.shape, dtype=np.float32
    )


class FlatObs(gym.ObservationWrapper):
    """Casts a flat Box observation to float32 and names its fields with ``obs_layout``.

    The action space is cast to float32 too: stored actions and exported policies then
    share one dtype whatever the simulator declared.
    """

    def __init__(self, env: gym.Env, obs_layout: ObsLayout):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise TypeError(f"FlatObs needs a flat Box observation, got {space}")
        if space.shape[0] != obs_layout.dim:
            raise ValueError(
                f"observation dim {space.shape[0]} != layout dim {obs_layout.dim} ({obs_layout}); fix the layout"
            )
        self.observation_space = float32_box(space)
        self.action_space = float32_box(env.action_space)
        self.obs_layout = obs_layout

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.asarray(observation, dtype=np.float32)


class SuccessInfo(gym.Wrapper):
    """Adds ``info["is_success"]`` (a Python bool) on reset and on every step.

    ``is_success`` is called with the unwrapped env, after the reset or step, so it reads
    the simulator state rather than a (possibly truncated) observation.
    """

    def __init__(self, env: gym.Env, is_success: Callable[[gym.Env], bool]):
        super().__init__(env)
        self._is_success = is_success

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        info["is_success"] = bool(self._is_success(self.env.unwrapped))
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["is_success"] = bool(self._is_success(self.env.unwrapped))
        return obs, reward, terminated, truncated, info


class SeedOnFirstReset(gym.Wrapper):
    """Uses ``seed`` for the first ``reset()`` that is not given one.

    Gymnasium seeds an env through ``reset(seed=...)``; ``make_env(cfg, seed)`` must
    therefore remember the seed until the caller's first reset. Later resets without a
    seed continue the env's random stream, as Gymnasium specifies. The action space is
    seeded too, so ``action_space.sample()`` is reproducible.
    """

    def __init__(self, env: gym.Env, seed: int | None):
        super().__init__(env)
        self._pending_seed = seed
        if seed is not None:
            self.action_space.seed(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None:
            seed = self._pending_seed
        self._pending_seed = None
        return self.env.reset(seed=seed, options=options)
