"""Gymnasium MuJoCo tasks (Reacher, HalfCheetah, Hopper, ...) under the o2o contract.

``make("Reacher-v5", 50)`` returns ``gym.make`` wrapped so that the observation is
float32 with a named :class:`ObsLayout` and, for tasks that define success, every reset
and step reports ``info["is_success"]``.

Reacher success: the fingertip is within ``success_distance`` of the target (default
0.02 m). The arm reaches 0.21 m and targets lie within 0.2 m of the base, so 0.02 m is
"on the target" (the target sphere has radius 0.009 m, the fingertip 0.01 m) while still
being reachable by a scripted controller within the 50-step episode. Success is judged
on the current step, so an episode "succeeds" when its final step does.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np

from o2o.envs.spaces import ObsLayout
from o2o.envs.wrappers import FlatObs, SuccessInfo

REACHER_SUCCESS_DISTANCE = 0.02

# Named parts of the Reacher-v5 observation, in the order ReacherEnv._get_obs builds it.
REACHER_LAYOUT = ObsLayout(
    [
        ("joint_cos", (2,)),
        ("joint_sin", (2,)),
        ("target_pos", (2,)),
        ("joint_vel", (2,)),
        ("fingertip_minus_target", (2,)),
    ]
)


def reacher_distance(env: gym.Env) -> float:
    """Fingertip-to-target distance (m) of an unwrapped Reacher env."""
    delta = env.get_body_com("fingertip") - env.get_body_com("target")
    return float(np.linalg.norm(delta[:2]))


def _reacher_success(env: gym.Env, threshold: float) -> bool:
    return reacher_distance(env) < threshold


def make(env_id: str, max_episode_steps: int, success_distance: float | None = None, **kwargs: Any) -> gym.Env:
    """A Gymnasium MuJoCo env by id, with a float32 flat observation and a named layout.

    ``kwargs`` go to ``gym.make`` (e.g. ``frame_skip``, ``reset_noise_scale``).
    ``success_distance`` applies to Reacher only (default 0.02 m); other tasks here have
    no success notion and report no ``is_success``.
    """
    env = gym.make(env_id, max_episode_steps=int(max_episode_steps), **kwargs)
    is_reacher = env_id.split("-")[0] == "Reacher"
    if is_reacher:
        threshold = REACHER_SUCCESS_DISTANCE if success_distance is None else float(success_distance)
        env = SuccessInfo(env, partial(_reacher_success, threshold=threshold))
        layout = REACHER_LAYOUT
    else:
        if success_distance is not None:
            raise ValueError(f"env {env_id!r} has no success notion; remove 'success_distance' from its config")
        layout = ObsLayout.single("state", int(np.prod(env.observation_space.shape)))
    return FlatObs(env, layout)
