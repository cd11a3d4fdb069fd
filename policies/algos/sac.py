"""Soft Actor-Critic (Haarnoja et al. 2018) with twin critics and automatic entropy tuning.

Online, SAC is the workhorse of finetuning. Offline, as is, it is the textbook failure
(offline RL lecture notes, exercise 1): its backups query Q at the policy's own actions, which the
data never covers, and the overestimation feeds on itself. CQL builds on this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from o2o.policies.algos import losses as L
from o2o.policies.algos.base import AlgoConfig, OfflineAlgorithm, Scratch
from o2o.policies.data import Batch
from o2o.policies.networks import QEnsemble, make_actor


@dataclass(frozen=True)
class SACConfig(AlgoConfig):
    """SAC's hyperparameters."""

    tau: float = 0.005  # Polyak rate of the target critics
    n_critics: int = 2
    actor_kind: str = "tanh_gaussian"
    critic_lr: float = 3e-4
    actor_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float = 1.0
    auto_alpha: bool = True  # tune alpha towards target_entropy
    target_entropy: float | None = None  # null: -act_dim
    backup_entropy: bool = True  # subtract alpha * log pi(a'|s') in the critic target
    critic_layer_norm: bool = False
    target_action: str = "sample"  # a' in the critic target: sample (SAC) | mode (tanh of the mean, d3rlpy's CQL)
    # The critic target's minimum over a random subset of this many target critics, drawn anew each
    # update (REDQ, RLPD: 2 of 10); null: over all of them (clipped double Q).
    target_critics: int | None = None
    actor_q: str = "min"  # how the actor reduces the critics' Q: min (SAC) | mean (RLPD, REDQ)


class SAC(OfflineAlgorithm):
    """SAC: critics on the soft Bellman target, a tanh-Gaussian actor, learned temperature."""

    config = SACConfig
    hp: SACConfig
    update_order = ("critic", "actor", "alpha")

    def build(self) -> None:
        hp = self.hp
        self.critic = QEnsemble(
            self.obs_dim, self.act_dim, hp.hidden, hp.n_critics, hp.activation, layer_norm=hp.critic_layer_norm
        )
        self.critic_target = self.add_target(self.critic, hp.tau)
        self.actor = make_actor(hp.actor_kind, self.obs_dim, self.act_dim, hidden=hp.hidden, act=hp.activation)
        self.log_alpha = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(float(hp.init_alpha))))))
        self.target_entropy = float(-self.act_dim if hp.target_entropy is None else hp.target_entropy)
        if not hp.auto_alpha:
            self.update_order = tuple(n for n in type(self).update_order if n != "alpha")
        if hp.target_critics is not None and not 1 <= int(hp.target_critics) <= hp.n_critics:
            raise ValueError(
                f"algorithm {hp.name}: target_critics must be between 1 and n_critics ({hp.n_critics}), "
                f"got {hp.target_critics!r}"
            )
        if hp.actor_q not in ("min", "mean"):
            raise ValueError(f"algorithm {hp.name}: actor_q must be 'min' or 'mean', got {hp.actor_q!r}")

    def target_subset(self, q: torch.Tensor) -> torch.Tensor:
        """``q [n, ...]`` reduced to the minimum over ``target_critics`` randomly drawn members (all
        when None): the pessimism of the critic target."""
        k = self.hp.target_critics
        if k is not None and k < q.shape[0]:
            gen = getattr(getattr(self, "replay", None), "generator", None)  # the batches' stream: seeded
            pick = torch.randperm(q.shape[0], device=q.device, generator=gen)[:k]
            q = q.index_select(0, pick)
        return q.min(dim=0).values

    def actor_q_value(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The critics' value of the actor's actions ``[B]``: their minimum (SAC) or mean (RLPD)."""
        q = self.critic_q_for_actor(obs, action)
        return q.min(dim=0).values if self.hp.actor_q == "min" else q.mean(dim=0)

    def parameters_for(self, name: str):
        return [self.log_alpha] if name == "alpha" else super().parameters_for(name)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def critic_target_value(self, batch: Batch) -> torch.Tensor:
        """The soft Bellman target ``r + gamma (1 - d) (min Q'(s', a') - alpha log pi(a'|s'))``."""
        with torch.no_grad():
            nxt = self.actor(batch.next_observations, deterministic=self.hp.target_action == "mode")
            q_next = self.critic_target(batch.next_observations, nxt.action)
            alpha = self.alpha if self.hp.backup_entropy else 0.0
            v_next = L.soft_value(self.target_subset(q_next)[None], nxt.log_prob, alpha)
            return L.td_target(batch.rewards, v_next, batch.terminals, self.hp.gamma)

    def critic_loss(self, batch: Batch, scratch: Scratch) -> L.LossOut:
        target = self.critic_target_value(batch)
        q = self.critic(batch.observations, batch.actions)
        return L.LossOut(L.critic_regression(q, target), {"q_mean": q.detach().mean(), "target_mean": target.mean()})

    def actor_loss(self, batch: Batch, scratch: Scratch) -> L.LossOut:
        pi = self.actor(batch.observations)
        q = self.actor_q_value(batch.observations, pi.action)
        scratch["log_prob"] = log_prob = pi.log_prob.detach()  # the temperature's step uses the actor's samples
        loss = L.sac_actor_loss(q, pi.log_prob, self.alpha)
        return L.LossOut(loss, {"entropy": -log_prob.mean(), "alpha": self.alpha})

    def alpha_loss(self, batch: Batch, scratch: Scratch) -> L.LossOut:
        return L.LossOut(L.entropy_alpha_loss(self.log_alpha, scratch["log_prob"], self.target_entropy))
