"""WSRL, Warm-Start RL (Zhou, Peng, Li, Levine & Kumar 2024): online finetuning that keeps no
offline data.

Offline, WSRL is Cal-QL (conservative, calibrated critics) with RLPD's critic ensemble:
10 LayerNorm critics, the target's minimum over a random pair, the actor on their mean.
Online it drops what only the offline phase needs: no conservative regulariser
(``cql_alpha: 0``: plain SAC updates), no offline rows in the batches (``ratio`` 1), and a
*warm-up* of rollouts by the pretrained policy before the first update, which recalibrates
the critic on online data instead of retaining the offline data; then several updates per
env step. The online recipe is ``configs/online/wsrl.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass

from o2o.policies.algos.calql import CalQL, CalQLConfig


@dataclass(frozen=True)
class WSRLConfig(CalQLConfig):
    """WSRL's hyperparameters: Cal-QL's, with the LayerNorm ensemble of RLPD."""

    n_critics: int = 10
    critic_layer_norm: bool = True
    target_critics: int | None = 2
    actor_q: str = "mean"


class WSRL(CalQL):
    """Cal-QL offline with an RLPD-style ensemble; SAC online (``cql_alpha: 0`` in its online recipe)."""

    config = WSRLConfig
    hp: WSRLConfig
