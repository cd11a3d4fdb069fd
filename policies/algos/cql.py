"""Conservative Q-Learning for continuous actions, CQL(H) (Kumar et al. 2020).

SAC plus a regulariser on the critics: push down a soft maximum of Q over actions
(log-sum-exp, importance-sampled from uniform actions and from the policy at s and s')
and push up Q on dataset actions. ``lagrange: true`` tunes the regulariser's weight so
that the gap stays near ``target_action_gap`` instead of fixing ``cql_alpha``.

The family's math is in ``losses.py``; its members change two hooks: what bounds the
policy proposals' values (:meth:`CQL.proposal_lower_bound`, Cal-QL) and which states and
pairs the gap compares (:meth:`CQL.cql_penalty_per_member`, COMBO).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from o2o.policies.algos import losses as L
from o2o.policies.algos.base import Scratch
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

    def soft_max_q(
        self,
        obs: torch.Tensor,
        next_obs: torch.Tensor,
        data_actions: torch.Tensor | None = None,
        lower_bound: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """CQL(H)'s importance-sampled log-sum-exp of Q over actions at ``obs``, per critic ``[n, B]``
        (K uniform actions, K from pi(.|s), K from pi(.|s'), all valued at s); Q(obs, data_actions)
        ``[n, B]`` from the same critic call when ``data_actions`` are given; and metrics.

        With ``lower_bound [B]`` (Cal-QL) the proposals from pi(.|s) and pi(.|s') are bounded below by
        it before the log-sum-exp (uniform proposals are not, as in the reference implementation);
        the metrics then hold how often the bound was active (``calql_bound_rate``)."""
        B, K, A = obs.shape[0], int(self.hp.n_actions), self.act_dim
        with torch.no_grad():  # K proposals at s and at s' from one actor pass over [s; s']
            both = self.actor.sample_n(torch.cat([obs, next_obs]), K)
        (a_pi, a_next), (lp_pi, lp_next) = both.action.split(B), both.log_prob.split(B)
        uniform = torch.empty(B, K, A, device=obs.device, dtype=obs.dtype).uniform_(-1.0, 1.0)
        parts = [uniform, a_pi, a_next] + ([data_actions.unsqueeze(1)] if data_actions is not None else [])
        acts = torch.cat(parts, dim=1)  # [B, 3K(+1), A]: one critic call for everything
        q_all = self.critic(obs.unsqueeze(1).expand(B, acts.shape[1], obs.shape[-1]), acts)
        q_uni, q_pi, q_next_pi, *q_data = q_all.split([K, K, K] + [1] * len(parts[3:]), dim=-1)
        metrics = {}
        if lower_bound is not None:
            metrics["calql_bound_rate"] = L.calql_bound_rate(q_pi, q_next_pi, lower_bound)
            q_pi, q_next_pi = L.calql_lower_bound(q_pi, lower_bound), L.calql_lower_bound(q_next_pi, lower_bound)
        soft = L.cql_logsumexp(q_uni, q_pi, lp_pi, q_next_pi, lp_next, A, self.hp.temperature)
        return soft, (q_data[0].squeeze(-1) if q_data else None), metrics

    def proposal_lower_bound(self, batch: Batch) -> torch.Tensor | None:
        """A hook: the lower bound ``[B]`` on the policy proposals' Q-values (Cal-QL), or None (CQL)."""
        return None

    def cql_penalty_per_member(
        self, batch: Batch, scratch: Scratch
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """A hook: the gap the regulariser weighs, per critic ``[n]``; Q(s, a) ``[n, B]`` of the batch's
        pairs for the TD loss; metrics. CQL: ``soft max_a Q - Q(s, a_data)`` averaged over the batch,
        Q(s, a_data) from the same critic call."""
        soft, q_data, metrics = self.soft_max_q(
            batch.observations, batch.next_observations, batch.actions, self.proposal_lower_bound(batch)
        )
        assert q_data is not None  # data actions given
        return L.cql_penalty_per_member(soft, q_data), q_data, metrics

    def critic_loss(self, batch: Batch, scratch: Scratch) -> L.LossOut:
        hp = self.hp
        if not hp.lagrange and hp.cql_alpha == 0.0:  # no regulariser (WSRL online): SAC's critic, no proposals
            return super().critic_loss(batch, scratch)
        target = self.critic_target_value(batch)
        gap, q, metrics = self.cql_penalty_per_member(batch, scratch)
        td = L.critic_regression(q, target)
        reg, alpha_prime = L.cql_regularizer(
            gap, hp.cql_alpha, self.log_alpha_prime if hp.lagrange else None, hp.target_action_gap
        )
        scratch["cql_gap"] = gap = gap.detach()  # alpha' moves on this update's gap
        return L.LossOut(
            td + reg,
            {
                "td_loss": td.detach(),
                "cql_gap": gap.mean(),
                "q_mean": q.detach().mean(),
                "alpha_prime": alpha_prime,
                **metrics,
            },
        )

    def alpha_prime_loss(self, batch: Batch, scratch: Scratch) -> L.LossOut:
        return L.LossOut(L.cql_lagrange_loss(self.log_alpha_prime, scratch["cql_gap"], self.hp.target_action_gap))
