"""RLPD, Reinforcement Learning with Prior Data (Ball, Smith, Kostrikov & Levine 2023).

SAC made to learn fast from a mix of prior (offline) and online data: a LayerNorm critic
ensemble (10 critics; LayerNorm bounds Q-values on actions the data never covers, the
failure of naive offline SAC), the critic target's minimum over a random pair of them
(REDQ), the actor on the ensemble's mean, symmetric sampling (half of every batch offline,
half online: the finetune stage's ``ratio``) and several updates per env step
(``finetune.updates_per_env_step``, ``configs/online/rlpd.yaml``). The paper trains from
scratch online with the prior data in the replay; in o2o the pretrain stage first trains
the same losses on the offline data (LayerNorm keeps that stable), so the gate has a
policy to judge and the online phase starts from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from o2o.policies.algos.sac import SAC, SACConfig


@dataclass(frozen=True)
class RLPDConfig(SACConfig):
    """RLPD's hyperparameters (the paper's: 10 LayerNorm critics, target over 2, actor on the mean)."""

    n_critics: int = 10
    critic_layer_norm: bool = True
    target_critics: int | None = 2
    actor_q: str = "mean"
    # null: -act_dim / 2 (the paper's target entropy), else this value
    target_entropy: float | None = None


class RLPD(SAC):
    """SAC with RLPD's critic ensemble, target and actor objective."""

    config = RLPDConfig
    hp: RLPDConfig

    def build(self) -> None:
        super().build()
        if self.hp.target_entropy is None:
            self.target_entropy = -self.act_dim / 2.0
