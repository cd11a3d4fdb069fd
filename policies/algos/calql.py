"""Calibrated Q-Learning, Cal-QL (Nakamoto et al. 2023): CQL whose push-down stops at the
value of the data's own behaviour.

CQL's regulariser pushes Q down on the policy's actions without limit, so an offline CQL
critic is typically far below the true values; when online finetuning starts, the first
real returns look like large positive surprises, the critic "unlearns" its conservatism
and the policy degrades before it improves. Cal-QL bounds the pushed-down values from
below by a reference value function — the Monte-Carlo discounted return-to-go of the
dataset's behaviour from each state — so the learned Q is conservative *and* calibrated
(not below what the data already achieves). Everything else is :class:`CQL`.

The replay carries each row's return-to-go (:class:`~o2o.policies.data.MCBatch`): computed
from whole episodes when the data is attached, in the critic's (scaled) reward units;
online rows get theirs when their episode ends (``-inf``, no bound, until then).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from o2o.policies.algos import losses as L
from o2o.policies.algos.cql import CQL, CQLConfig
from o2o.policies.data import Batch, MCBatch, return_to_go


@dataclass(frozen=True)
class CalQLConfig(CQLConfig):
    """Cal-QL's hyperparameters: CQL's (the paper uses its weight: 5 on AntMaze, 1 on Adroit/Kitchen)
    and how the MC returns end."""

    # How an episode cut by a time limit continues after its last step in the MC return:
    # repeat_last (its last reward forever; Cal-QL's rule for failed sparse episodes) | zero (a plain sum)
    mc_tail: str = "repeat_last"


class CalQL(CQL):
    """CQL(H) with the policy proposals' Q-values lower-bounded by the data's MC returns."""

    config = CalQLConfig
    hp: CalQLConfig

    def attach_replay(self, replay) -> None:
        """Attach the data, first computing each row's MC return-to-go if the buffer has none."""
        if not getattr(replay, "has_mc_returns", False):
            episodes = getattr(replay, "episode_index", None)
            if episodes is None:
                raise ValueError(f"Cal-QL: the replay buffer ({type(replay).__name__}) carries no MC returns and no "
                                 "episode structure to compute them from; build it with TensorReplay.from_transitions "
                                 "from whole episodes of the store")
            n = len(replay)
            mc = return_to_go(replay.rewards[:n].cpu().numpy(), episodes, replay.terminals[:n].cpu().numpy(),
                              float(self.hp.gamma), str(self.hp.mc_tail))
            replay.enable_mc_returns(mc)
        super().attach_replay(replay)

    def soft_max_q(self, obs: torch.Tensor, next_obs: torch.Tensor, data_actions: torch.Tensor | None = None,
                   mc_returns: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`CQL.soft_max_q` with the K proposals from pi(.|s) and pi(.|s') bounded below by
        ``mc_returns [B]`` before the importance-sampled log-sum-exp (uniform proposals are not
        bounded, as in the reference implementation)."""
        if mc_returns is None:
            return super().soft_max_q(obs, next_obs, data_actions)
        B, K, A = obs.shape[0], int(self.hp.n_actions), self.act_dim
        with torch.no_grad():
            both = self.actor.sample_n(torch.cat([obs, next_obs]), K)
        (a_pi, a_next), (lp_pi, lp_next) = both.action.split(B), both.log_prob.split(B)
        uniform = torch.empty(B, K, A, device=obs.device, dtype=obs.dtype).uniform_(-1.0, 1.0)
        parts = [uniform, a_pi, a_next] + ([data_actions.unsqueeze(1)] if data_actions is not None else [])
        acts = torch.cat(parts, dim=1)
        q_all = self.critic(obs.unsqueeze(1).expand(B, acts.shape[1], obs.shape[-1]), acts)
        q_uni, q_pi, q_next_pi, *q_data = q_all.split([K, K, K] + [1] * len(parts[3:]), dim=-1)
        with torch.no_grad():
            bound = mc_returns.view(1, -1, 1)
            self._bound_rate = torch.cat([q_pi < bound, q_next_pi < bound], dim=-1).float().mean()
        q_pi, q_next_pi = L.calql_lower_bound(q_pi, mc_returns), L.calql_lower_bound(q_next_pi, mc_returns)
        soft = L.cql_logsumexp(q_uni, q_pi, lp_pi, q_next_pi, lp_next, A, self.hp.temperature)
        return soft, (q_data[0].squeeze(-1) if q_data else None)

    def cql_penalty_per_member(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, MCBatch):
            raise ValueError("Cal-QL: the batch carries no mc_returns (an MCBatch is needed); attach the data with "
                             "attach_replay so the MC returns are computed")
        soft, q_data = self.soft_max_q(batch.observations, batch.next_observations, batch.actions, batch.mc_returns)
        return (soft - q_data).mean(dim=1), q_data

    def critic_loss(self, batch: Batch) -> L.LossOut:
        out = super().critic_loss(batch)
        # How often the bound was active: the share of policy-action Q-values below the data's return.
        return L.LossOut(out.loss, {**out.metrics, "calql_bound_rate": self._bound_rate})
