"""Conservative Q-Learning for continuous actions, CQL(H) (Kumar et al. 2020).

SAC plus a regulariser on the critics: push down a soft maximum of Q over actions
(log-sum-exp, importance-sampled from uniform actions and from the policy at s and s')
and push up Q on dataset actions. ``lagrange: true`` tunes the regulariser's weight so
that the gap stays near ``target_action_gap`` instead of fixing ``cql_alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from o2o.policies.algos import losses as L
from o2o.policies.algos.sac import SAC, SACConfig
from o2o.policies.data import Batch


@dataclass(frozen=True)
class CQLConfig(SACConfig):
    """CQL's hyperparameters: SAC's, with the reference code's choices, and the regulariser's."""

    actor_lr: float = 1e-4
    alpha_lr: float = 1e-4
    backup_entropy: bool = False  # the CQL reference code drops it offline
    # tanh(mean) at s' in the critic target (d3rlpy's CQL): a lower-variance target; on the
    # point-maze room benchmark it scored -132.5 vs -134.9 for a sampled a' (3 seeds).
    target_action: str = "mode"
    cql_alpha: float = 5.0  # weight of the regulariser (fixed) / its initial value (Lagrangian)
    n_actions: int = 10  # K samples per proposal (uniform, pi(s), pi(s'))
    temperature: float = 1.0  # of the log-sum-exp over actions
    lagrange: bool = False  # true: tune the weight so the gap stays near target_action_gap
    target_action_gap: float = 10.0  # Lagrangian threshold on the per-critic gap
    alpha_prime_lr: float = 3e-4


class CQL(SAC):
    """CQL(H) on top of :class:`SAC` (fixed alpha or Lagrangian)."""

    config = CQLConfig
    hp: CQLConfig
    update_order = ("critic", "actor", "alpha", "alpha_prime")

    def build(self) -> None:
        super().build()
        hp = self.hp
        self.log_alpha_prime = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(float(hp.cql_alpha))))))
        if not hp.lagrange:
            self.update_order = tuple(n for n in self.update_order if n != "alpha_prime")

    def parameters_for(self, name: str):
        return [self.log_alpha_prime] if name == "alpha_prime" else super().parameters_for(name)

    def soft_max_q(self, obs: torch.Tensor, next_obs: torch.Tensor, data_actions: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """CQL(H)'s importance-sampled log-sum-exp of Q over actions at ``obs``, per critic ``[n, B]``
        (K uniform actions, K from pi(.|s), K from pi(.|s'), all valued at s); and Q(obs, data_actions)
        ``[n, B]`` from the same critic call when ``data_actions`` are given."""
        B, K, A = obs.shape[0], int(self.hp.n_actions), self.act_dim
        with torch.no_grad():  # K proposals at s and at s' from one actor pass over [s; s']
            both = self.actor.sample_n(torch.cat([obs, next_obs]), K)
        (a_pi, a_next), (lp_pi, lp_next) = both.action.split(B), both.log_prob.split(B)
        uniform = torch.empty(B, K, A, device=obs.device, dtype=obs.dtype).uniform_(-1.0, 1.0)
        parts = [uniform, a_pi, a_next] + ([data_actions.unsqueeze(1)] if data_actions is not None else [])
        acts = torch.cat(parts, dim=1)  # [B, 3K(+1), A]: one critic call for everything
        q_all = self.critic(obs.unsqueeze(1).expand(B, acts.shape[1], obs.shape[-1]), acts)
        q_uni, q_pi, q_next_pi, *q_data = q_all.split([K, K, K] + [1] * len(parts[3:]), dim=-1)
        soft = L.cql_logsumexp(q_uni, q_pi, lp_pi, q_next_pi, lp_next, A, self.hp.temperature)
        return soft, (q_data[0].squeeze(-1) if q_data else None)

    def cql_penalty_per_member(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(soft max_a Q - Q(s, a_data))`` averaged over the batch, per critic ``[n]``; and Q(s, a_data)."""
        soft, q_data = self.soft_max_q(batch.observations, batch.next_observations, batch.actions)
        return (soft - q_data).mean(dim=1), q_data

    def critic_loss(self, batch: Batch) -> L.LossOut:
        target = self.critic_target_value(batch)
        gap, q = self.cql_penalty_per_member(batch)
        td = L.critic_regression(q, target)
        if self.hp.lagrange:
            alpha_prime = self.log_alpha_prime.detach().exp().clamp(0.0, 1e6)
            reg = (alpha_prime * (gap - self.hp.target_action_gap)).sum()
        else:
            alpha_prime = torch.full((), float(self.hp.cql_alpha), device=q.device)  # no host copy
            reg = alpha_prime * gap.sum()
        self._gap = gap.detach()
        return L.LossOut(td + reg, {"td_loss": td.detach(), "cql_gap": self._gap.mean(), "q_mean": q.detach().mean(),
                                    "alpha_prime": alpha_prime})

    def alpha_prime_loss(self, batch: Batch) -> L.LossOut:
        return L.LossOut(L.cql_lagrange_loss(self.log_alpha_prime, self._gap, self.hp.target_action_gap))
