"""TD3+BC (Fujimoto & Gu 2021): TD3 with a behaviour-cloning term in the actor's loss.

The minimalist policy-constraint baseline: the actor maximises ``lambda Q1(s, pi(s))`` while
staying close to the dataset action (squared error), with ``lambda = alpha / mean|Q1|`` so that
``alpha`` sets the balance whatever the scale of the rewards. The critics learn TD3's target:
the target actor's action at s' plus clipped Gaussian noise (target policy smoothing), the
minimum of two target critics. The actor and the target networks move every ``policy_freq``
updates. The paper's other change, normalised observations, is what every o2o algorithm does.
Online (``o2o finetune``) it explores as TD3 does: Gaussian noise on the actor's action.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from o2o.policies.algos import losses as L
from o2o.policies.algos.base import AlgoConfig, OfflineAlgorithm, Scratch
from o2o.policies.data import Batch
from o2o.policies.networks import QEnsemble, make_actor


@dataclass(frozen=True)
class TD3BCConfig(AlgoConfig):
    """TD3+BC's hyperparameters (the paper's)."""

    alpha: float = 2.5  # Q's weight against BC: lambda = alpha / mean|Q1(s, pi(s))|
    policy_noise: float = 0.2  # std of the target policy smoothing noise (actions in [-1, 1])
    noise_clip: float = 0.5  # the noise is clipped to +-noise_clip
    policy_freq: int = 2  # the actor and the targets move every policy_freq updates
    tau: float = 0.005  # Polyak rate of the target networks
    n_critics: int = 2
    critic_lr: float = 3e-4
    actor_lr: float = 3e-4
    explore_noise: float = 0.1  # std of TD3's Gaussian exploration noise when acting online (finetune)


class TD3BC(OfflineAlgorithm):
    """TD3+BC with twin critics and a deterministic tanh actor (paper defaults)."""

    config = TD3BCConfig
    hp: TD3BCConfig
    update_order = ("critic", "actor")

    def build(self) -> None:
        hp = self.hp
        if int(hp.policy_freq) < 1 or int(hp.policy_freq) != hp.policy_freq:
            raise ValueError(f"td3bc: policy_freq must be a whole number >= 1, got {hp.policy_freq!r}")
        for key in ("alpha", "policy_noise", "noise_clip", "explore_noise"):
            if float(getattr(hp, key)) < 0:
                raise ValueError(f"td3bc: {key} must be >= 0, got {getattr(hp, key)!r}")
        self.update_every = {"actor": int(hp.policy_freq)}
        self.critic = QEnsemble(self.obs_dim, self.act_dim, hp.hidden, hp.n_critics, hp.activation)
        self.critic_target = self.add_target(self.critic, hp.tau)
        self.actor = make_actor("deterministic", self.obs_dim, self.act_dim, hidden=hp.hidden, act=hp.activation)
        self.actor_target = self.add_target(self.actor, hp.tau)

    def targets_due(self, n: int) -> bool:
        return n % self.update_every["actor"] == 0  # with the delayed actor

    def explore_action(self, obs_norm: torch.Tensor) -> torch.Tensor:
        """TD3's exploration: the actor's action plus Gaussian noise of std ``explore_noise``."""
        a = self.actor.act(obs_norm)
        return a + float(self.hp.explore_noise) * torch.randn_like(a)

    def critic_loss(self, batch: Batch, scratch: Scratch) -> L.LossOut:
        hp = self.hp
        with torch.no_grad():
            a_next = self.actor_target.act(batch.next_observations)
            noise = (torch.randn_like(a_next) * float(hp.policy_noise)).clamp(
                -float(hp.noise_clip), float(hp.noise_clip)
            )
            a_next = (a_next + noise).clamp(-1.0, 1.0)
            q_next = self.critic_target(batch.next_observations, a_next).min(dim=0).values
            target = L.td_target(batch.rewards, q_next, batch.terminals, hp.gamma)
        q = self.critic(batch.observations, batch.actions)
        return L.LossOut(L.critic_regression(q, target), {"q_mean": q.detach().mean()})

    def actor_loss(self, batch: Batch, scratch: Scratch) -> L.LossOut:
        pi = self.actor.act(batch.observations)
        q1 = self.critic_q_for_actor(batch.observations, pi)[0]
        loss, lam, bc = L.td3_bc_actor_loss(q1, pi, batch.actions, float(self.hp.alpha))
        return L.LossOut(loss, {"lambda": lam, "bc_mse": bc})
