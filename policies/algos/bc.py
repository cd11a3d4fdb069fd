"""Behaviour cloning and filtered behaviour cloning.

BC regresses dataset actions (MSE for a deterministic actor, negative log-likelihood for
a Gaussian one). Filtered BC (``top_fraction < 1``) first keeps only the episodes whose
returns are in the top fraction of the selection — the simplest way to "find the good
stuff" in mixed data (CS 285 offline RL lecture), and the baseline every offline RL method must beat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

from o2o.policies.algos import losses as L
from o2o.policies.algos.base import AlgoConfig, OfflineAlgorithm, Scratch
from o2o.policies.data import Batch, episode_returns
from o2o.policies.networks import make_actor


@dataclass(frozen=True)
class BCConfig(AlgoConfig):
    """BC's hyperparameters."""

    actor_kind: str = "deterministic"  # deterministic (MSE) | gaussian | tanh_gaussian (NLL)
    actor_lr: float = 1e-3
    actor_dropout: float = 0.0
    top_fraction: float = 1.0  # keep the episodes with the top x of returns (filtered BC)


class BC(OfflineAlgorithm):
    """Behaviour cloning; ``top_fraction`` < 1 makes it filtered BC."""

    config = BCConfig
    hp: BCConfig
    update_order = ("actor",)

    def build(self) -> None:
        hp = self.hp
        if not 0.0 < float(hp.top_fraction) <= 1.0:
            raise ValueError(f"bc: top_fraction must be in (0, 1], got {hp.top_fraction}")
        kw = {"dropout": hp.actor_dropout} if hp.actor_kind != "tanh_gaussian" else {}
        self.actor = make_actor(hp.actor_kind, self.obs_dim, self.act_dim, hidden=hp.hidden, act=hp.activation, **kw)

    @classmethod
    def transition_mask(cls, algo: dict, transitions) -> np.ndarray | None:
        """Rows to train on: those of the top ``top_fraction`` episodes by return (None = all)."""
        frac = float(cast(BCConfig, cls.merge_config(algo)).top_fraction)
        if frac >= 1.0:
            return None
        ep = np.asarray(transitions.episode_index)
        ids, inverse = np.unique(ep, return_inverse=True)
        rets = episode_returns(np.asarray(transitions.rewards), ep)
        k = max(1, int(np.ceil(frac * len(ids))))
        keep = np.zeros(len(ids), bool)
        keep[np.argsort(-rets, kind="stable")[:k]] = True
        return keep[inverse]

    def actor_loss(self, batch: Batch, scratch: Scratch) -> L.LossOut:
        if self.hp.actor_kind == "deterministic":
            return L.LossOut(L.bc_mse(self.actor.act(batch.observations), batch.actions))
        log_prob = self.actor.log_prob(batch.observations, batch.actions)
        return L.LossOut(-log_prob.mean(), {"log_prob": log_prob.detach().mean()})
