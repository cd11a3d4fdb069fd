"""The one interface every behaviour policy implements.

A behaviour policy drives an env while o2o logs what happens. Scripted controllers,
random actions, learned checkpoints, mixtures and (later) human teleoperation all
implement :class:`BehaviorPolicy`, so ``o2o collect`` never needs to know which it has.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from o2o.datasets.schema import SOURCES


@dataclass(frozen=True)
class Provenance:
    """Who produced an episode: stored with every episode in the dataset.

    ``source`` is one of :data:`SOURCES`; ``policy_id`` names the behaviour (e.g.
    ``lift_scripted``); ``policy_version`` identifies its exact build (a checkpoint hash,
    a controller version); ``params`` holds whatever else defines it (noise scale...).
    """

    source: str
    policy_id: str
    policy_version: str = "1"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"provenance source {self.source!r} is not one of {SOURCES}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EpisodeControl(Exception):
    """Raised by :meth:`BehaviorPolicy.act` when the one acting (a person) ends the episode early.

    The collector handles each kind: it is a signal, not an error.
    """


class KeepEpisode(EpisodeControl):
    """Finish the episode now and keep it; its last recorded step is marked truncated."""


class DiscardEpisode(EpisodeControl):
    """Drop the episode and go on with the next one."""


class RestartEpisode(EpisodeControl):
    """Drop the episode and run it again from the same seed."""


class StopCollection(EpisodeControl):
    """Drop the running episode and stop collecting (episodes already kept are committed)."""


class BehaviorPolicy(ABC):
    """A policy that acts in an env for data collection.

    Call :meth:`reset` at the start of every episode (it may pick a new mode, e.g. a
    mixture component), then :meth:`act` once per step. :attr:`provenance` describes the
    behaviour of the *current* episode. :attr:`human_in_control` is True on steps a human
    drove (interventions); the collector stores it per step. A policy driven by a person
    may raise an :class:`EpisodeControl` from :meth:`act` to keep, discard or restart the
    episode, or to stop collecting.
    """

    human_in_control: bool = False

    @abstractmethod
    def reset(self, seed: int | None = None) -> None:
        """Start a new episode; ``seed`` makes any randomness of the policy reproducible."""

    @abstractmethod
    def act(self, obs: np.ndarray) -> np.ndarray:
        """The action for one flat observation."""

    @property
    @abstractmethod
    def provenance(self) -> Provenance:
        """Provenance of the current episode."""

    def observe(self, obs: np.ndarray, reward: float, terminated: bool, truncated: bool, info: dict) -> None:
        """The outcome of the last action (a teleoperation status line shows it); ignored by default."""

    def close(self) -> None:
        """Release devices or processes the policy holds."""
