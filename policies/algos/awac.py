"""Advantage-Weighted Actor-Critic (Nair et al. 2020).

The critics learn Q of the *current* policy by TD (targets at actions the policy samples
at s'); the actor maximises the likelihood of dataset actions weighted by
``exp(A(s, a) / lambda)`` with ``A(s, a) = Q(s, a) - Q(s, a_pi)``: an implicit KL
constraint to the data (CS 285 offline RL lecture), which makes it a natural offline-to-online method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from o2o.policies.algos import losses as L
from o2o.policies.algos.base import AlgoConfig, OfflineAlgorithm, Scratch
from o2o.policies.data import Batch
from o2o.policies.networks import QEnsemble, make_actor


@dataclass(frozen=True)
class AWACConfig(AlgoConfig):
    """AWAC's hyperparameters."""

    awac_lambda: float = 1.0  # temperature: weights exp(A / lambda)
    max_weight: float = 100.0  # clip of the weights
    tau: float = 0.005  # Polyak rate of the target critics
    n_critics: int = 2
    actor_kind: str = "gaussian"
    critic_lr: float = 3e-4
    actor_lr: float = 3e-4


class AWAC(OfflineAlgorithm):
    """AWAC with twin critics and a Gaussian actor."""

    config = AWACConfig
    hp: AWACConfig
    update_order = ("critic", "actor")

    def build(self) -> None:
        hp = self.hp
        self.critic = QEnsemble(self.obs_dim, self.act_dim, hp.hidden, hp.n_critics, hp.activation)
        self.critic_target = self.add_target(self.critic, hp.tau)
        self.actor = make_actor(hp.actor_kind, self.obs_dim, self.act_dim, hidden=hp.hidden, act=hp.activation)

    def critic_loss(self, batch: Batch, scratch: Scratch) -> L.LossOut:
        with torch.no_grad():
            nxt = self.actor(batch.next_observations)
            q_next = self.critic_target(batch.next_observations, nxt.action).min(dim=0).values
            target = L.td_target(batch.rewards, q_next, batch.terminals, self.hp.gamma)
        q = self.critic(batch.observations, batch.actions)
        return L.LossOut(L.critic_regression(q, target), {"q_mean": q.detach().mean()})

    def actor_loss(self, batch: Batch, scratch: Scratch) -> L.LossOut:
        with torch.no_grad():
            pi = self.actor(batch.observations)
            # One critic call for the dataset action and the policy's action (the V baseline).
            both = (
                self.critic(torch.cat([batch.observations, batch.observations]), torch.cat([batch.actions, pi.action]))
                .min(dim=0)
                .values
            )
            q_data, v = both.chunk(2)
            adv = q_data - v
            w = L.awr_weights(adv, 1.0 / self.hp.awac_lambda, self.hp.max_weight)
        log_prob = self.actor.log_prob(batch.observations, batch.actions)
        return L.LossOut(L.weighted_nll(log_prob, w), {"adv_mean": adv.mean(), "weight_mean": w.mean()})
