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
                raise ValueError(
                    f"Cal-QL: the replay buffer ({type(replay).__name__}) carries no MC returns and no "
                    "episode structure to compute them from; build it with TensorReplay.from_transitions "
                    "from whole episodes of the store"
                )
            n = len(replay)
            mc = return_to_go(
                replay.rewards[:n].cpu().numpy(),
                episodes,
                replay.terminals[:n].cpu().numpy(),
                float(self.hp.gamma),
                str(self.hp.mc_tail),
            )
            replay.enable_mc_returns(mc)
        super().attach_replay(replay)

    def proposal_lower_bound(self, batch: Batch) -> torch.Tensor:
        """The batch's MC returns: :meth:`CQL.soft_max_q` bounds the K proposals from pi(.|s) and pi(.|s')
        below by them before the log-sum-exp, and logs how often the bound was active
        (``calql_bound_rate``: the share of policy-action Q-values below the data's return)."""
        if not isinstance(batch, MCBatch):
            raise ValueError(
                "Cal-QL: the batch carries no mc_returns (an MCBatch is needed); attach the data with "
                "attach_replay so the MC returns are computed"
            )
        return batch.mc_returns
