"""A mixture of behaviour policies, one drawn per episode (D4RL-style mixed datasets)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from o2o.policies.behavior.base import BehaviorPolicy, Provenance


class MixturePolicy(BehaviorPolicy):
    """Draws one component per episode, then behaves exactly like it.

    Each :meth:`reset` picks a component with probability proportional to its weight
    and resets it with a seed drawn from the mixture's own stream, so after
    ``reset(seed)`` the whole episode (which component, and its randomness) depends
    only on ``seed``. ``act``, ``provenance`` and ``human_in_control`` are the current
    component's: every episode records the provenance of the policy that really acted
    (e.g. 50% scripted, 30% noisy scripted, 20% random).
    """

    def __init__(self, components: Sequence[BehaviorPolicy], weights: Sequence[float], seed: int | None = None):
        components = list(components)
        w = np.asarray(list(weights), dtype=np.float64)
        if not components:
            raise ValueError("MixturePolicy: needs at least one component")
        if w.shape != (len(components),):
            raise ValueError(f"MixturePolicy: {len(components)} components but {w.size} weights ({list(weights)})")
        if not (np.all(np.isfinite(w)) and np.all(w > 0)):
            raise ValueError(f"MixturePolicy: weights must be finite and > 0, got {list(weights)}")
        bad = [type(c).__name__ for c in components if not isinstance(c, BehaviorPolicy)]
        if bad:
            raise TypeError(f"MixturePolicy: components must be BehaviorPolicy instances, got {bad}")
        self.components = components
        self.weights = w / w.sum()
        self._rng = np.random.default_rng(seed)
        self._index: int | None = None

    def reset(self, seed: int | None = None) -> None:
        """Pick this episode's component and reset it with a derived seed."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._index = int(self._rng.choice(len(self.components), p=self.weights))
        # Always pass the component a seed: its randomness then follows from the mixture's
        # seed alone, whatever seeds the components were built with.
        self.components[self._index].reset(seed=int(self._rng.integers(2**31 - 1)))

    @property
    def index(self) -> int:
        """Index of the current episode's component."""
        if self._index is None:
            raise RuntimeError("MixturePolicy: call reset() before act()/provenance (no component drawn yet)")
        return self._index

    @property
    def current(self) -> BehaviorPolicy:
        """The component acting in the current episode."""
        return self.components[self.index]

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The current component's action."""
        return self.current.act(obs)

    @property
    def provenance(self) -> Provenance:
        """The current component's provenance (not the mixture's)."""
        return self.current.provenance

    @property
    def human_in_control(self) -> bool:  # type: ignore[override]
        """Whether a human drives the current component at this step (False before reset)."""
        return self._index is not None and self.current.human_in_control

    def observe(self, obs: np.ndarray, reward: float, terminated: bool, truncated: bool, info: dict) -> None:
        """Pass the step's outcome to the current component."""
        self.current.observe(obs, reward, terminated, truncated, info)

    def close(self) -> None:
        """Close every component."""
        for c in self.components:
            c.close()
