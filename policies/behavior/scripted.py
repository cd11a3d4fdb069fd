"""Scripted controllers: hand-written behaviour policies with optional action noise.

A subclass writes only :meth:`ScriptedController.clean_action` (and, if it keeps
per-episode state such as a phase, :meth:`ScriptedController.reset_state`). The base
class adds Gaussian noise, clips to the action space, owns the noise RNG and reports
provenance. Controllers read observation fields by name through the env's
:class:`~o2o.envs.spaces.ObsLayout`, never by index, so a reordered layout still works.

Env configs name their controller by dotted path (``scripted_controller:`` in
``configs/env/*.yaml``); :func:`load_scripted_controller` resolves it, refusing paths
outside this package, and :meth:`ScriptedController.from_env` builds it for an env.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from o2o.core.resolve import resolve
from o2o.envs.spaces import ObsLayout
from o2o.policies.behavior.base import BehaviorPolicy, Provenance

CONTROLLER_PREFIX = "o2o.policies.behavior.scripted"


class ScriptedController(BehaviorPolicy):
    """Base of scripted controllers.

    ``noise_std`` is the standard deviation of Gaussian action noise in units of half
    the action range (so 0.3 on a [-1, 1] action is sigma 0.3), drawn independently per
    action dimension and step; the noisy action is clipped to the action space.
    ``policy_id`` defaults to ``<task>_scripted`` (``<task>_scripted_noise<std>`` with
    noise). ``seed`` seeds the noise RNG; ``reset(seed)`` re-seeds it.
    """

    #: Short task name used in the default policy id (``lift`` -> ``lift_scripted``).
    task: ClassVar[str] = "scripted"
    #: Bump when the controller's behaviour changes: stored as ``policy_version``.
    version: ClassVar[str] = "1"
    #: Observation fields the controller reads; checked against the layout at construction.
    required_fields: ClassVar[tuple[str, ...]] = ()
    #: The controller's own keyword options (a behaviour config's ``controller`` mapping), by meaning.
    options: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        obs_layout: ObsLayout,
        action_space: gym.spaces.Box,
        noise_std: float = 0.0,
        policy_id: str | None = None,
        seed: int | None = None,
    ):
        if not isinstance(action_space, gym.spaces.Box):
            raise TypeError(f"{type(self).__name__}: action space must be a Box, got {action_space}")
        missing = [k for k in self.required_fields if k not in obs_layout]
        if missing:
            raise ValueError(
                f"{type(self).__name__}: observation layout {obs_layout.keys} lacks fields {missing} it reads"
            )
        if noise_std < 0:
            raise ValueError(f"{type(self).__name__}: noise_std must be >= 0, got {noise_std}")
        self.obs_layout = obs_layout
        self.action_space = action_space
        self.noise_std = float(noise_std)
        self._low = np.asarray(action_space.low, dtype=np.float64)
        self._high = np.asarray(action_space.high, dtype=np.float64)
        self._half_range = (self._high - self._low) / 2.0
        if self.noise_std > 0 and not np.all(np.isfinite(self._half_range)):
            raise ValueError(f"{type(self).__name__}: action noise needs a bounded action space, got {action_space}")
        if policy_id is None:
            policy_id = f"{self.task}_scripted" + (f"_noise{self.noise_std:g}" if self.noise_std > 0 else "")
        self._policy_id = policy_id
        self._rng = np.random.default_rng(seed)
        self.reset_state()

    @classmethod
    def from_env(cls, env: gym.Env, **kwargs: Any) -> "ScriptedController":
        """Build the controller for an o2o env (its ``obs_layout`` and action space)."""
        return cls(env.get_wrapper_attr("obs_layout"), env.action_space, **kwargs)

    # -- what subclasses write -------------------------------------------------------
    @abstractmethod
    def clean_action(self, obs: np.ndarray) -> np.ndarray:
        """The noise-free action for one flat observation (may exceed bounds: it is clipped)."""

    def reset_state(self) -> None:
        """Forget per-episode state (phases, plans). Called by :meth:`reset`."""

    # -- BehaviorPolicy ---------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Start an episode: clear the controller state; ``seed`` re-seeds the noise RNG."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.reset_state()

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Clean action plus scaled Gaussian noise, clipped to the action space."""
        obs = np.asarray(obs, dtype=np.float64)
        if obs.shape != (self.obs_layout.dim,):
            raise ValueError(
                f"{type(self).__name__}: observation shape {obs.shape} != ({self.obs_layout.dim},) of the layout"
            )
        action = np.asarray(self.clean_action(obs), dtype=np.float64).reshape(self.action_space.shape)
        if self.noise_std > 0:
            action = action + self._rng.normal(0.0, self.noise_std, size=action.shape) * self._half_range
        return np.clip(action, self._low, self._high).astype(self.action_space.dtype)

    @property
    def provenance(self) -> Provenance:
        """``source='scripted'``, the policy id, the controller version and its noise."""
        return Provenance(
            source="scripted",
            policy_id=self._policy_id,
            policy_version=f"{type(self).__name__}-{self.version}",
            params={"noise_std": self.noise_std, **self.option_params()},
        )

    def option_params(self) -> dict[str, Any]:
        """The controller's own options that shape its behaviour, recorded in provenance ``params``."""
        return {}

    # -- helpers ----------------------------------------------------------------------
    def field(self, obs: np.ndarray, key: str) -> np.ndarray:
        """Field ``key`` of a flat observation."""
        return self.obs_layout.get(obs, key)


def load_scripted_controller(path: str) -> type[ScriptedController]:
    """The controller class at dotted ``path`` (inside ``o2o.policies.behavior.scripted*``).

    Paths come from env configs stored with datasets, hence the prefix check: a config
    may name a controller, not arbitrary code.
    """
    return resolve(
        path,
        CONTROLLER_PREFIX,
        base=ScriptedController,
        what="scripted controller",
        rule=f"it must be a class inside '{CONTROLLER_PREFIX}*' "
        "(e.g. 'o2o.policies.behavior.scripted_lift.LiftController')",
        kind="a ScriptedController subclass",
    )
