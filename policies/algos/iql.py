"""Implicit Q-Learning (Kostrikov, Nair & Levine 2021), in-sample.

Per update, in order: V(s) regresses to an upper expectile of the target critics' Q(s, a)
on dataset actions; the critics regress to ``r + gamma V(s')``; the actor maximises the
advantage-weighted likelihood of dataset actions (weights ``exp(beta A)`` clipped).
Q and V are trained only on the dataset's actions. With ``actor_q_weight`` > 0 (an option,
off by default; measured in docs/results.md) the actor also climbs Q at its own mean action,
as TD3+BC's actor does; the critics stay in-sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from o2o.policies.algos import losses as L
from o2o.policies.algos.base import AlgoConfig, OfflineAlgorithm, Scratch
from o2o.policies.data import Batch
from o2o.policies.networks import QEnsemble, ValueMLP, make_actor


@dataclass(frozen=True)
class IQLConfig(AlgoConfig):
    """IQL's hyperparameters (the paper's for locomotion, but for the target rate ``tau``)."""

    expectile: float = 0.7  # tau of the expectile regression (0.5 = mean, -> 1 = max)
    beta: float = 3.0  # inverse temperature of the advantage weights
    max_weight: float = 100.0  # clip of exp(beta * A)
    # Polyak rate of the target critics. The paper's 0.005 is for 1M updates; o2o trains thousands, and at
    # 0.005 the critic had barely left its start after 3,000 (Q(start) 0.5 vs an achieved ~50 on Lift): at
    # 0.1 it levels off by 3,000 updates (docs/results.md, "IQL's target rate")
    tau: float = 0.1
    n_critics: int = 2
    # LayerNorm in the critics and V (as RLPD's and WSRL's critics): bounds Q's growth on states far from the
    # data, which online finetuning visits
    critic_layer_norm: bool = False
    actor_kind: str = "gaussian"
    # Online, the actor may also climb the critic (TD3+BC's term): loss = AWR + actor_q_weight * (-Q(s, mu(s)) /
    # mean |Q|). 0 (the paper's IQL) keeps the actor in-sample; the critics stay in-sample either way
    actor_q_weight: float = 0.0
    actor_dropout: float = 0.0
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    actor_lr: float = 3e-4
    actor_lr_schedule: str = "cosine"  # cosine decay over trainer.max_steps (paper) or constant


class IQL(OfflineAlgorithm):
    """IQL with twin critics, a V network and a Gaussian actor (paper defaults)."""

    config = IQLConfig
    hp: IQLConfig
    update_order = ("value", "critic", "actor")
    in_sample_critic = True  # V is an expectile of Q on the data's actions; Q backs up V

    def build(self) -> None:
        hp = self.hp
        ln = hp.critic_layer_norm
        self.critic = QEnsemble(self.obs_dim, self.act_dim, hp.hidden, hp.n_critics, hp.activation, layer_norm=ln)
        self.critic_target = self.add_target(self.critic, hp.tau)
        self.value = ValueMLP(self.obs_dim, hp.hidden, hp.activation, layer_norm=ln)
        kw = {"dropout": hp.actor_dropout} if hp.actor_kind != "tanh_gaussian" else {}
        self.actor = make_actor(hp.actor_kind, self.obs_dim, self.act_dim, hidden=hp.hidden, act=hp.activation, **kw)

    def value_loss(self, batch: Batch, scratch: Scratch) -> L.LossOut:
        with torch.no_grad():
            q = self.critic_target(batch.observations, batch.actions).min(dim=0).values
        scratch["q_target"] = q  # the actor's advantage reuses it: the target critics move only after the update
        v = self.value(batch.observations)
        diff = q - v
        return L.LossOut(L.expectile_loss(diff, self.hp.expectile), {"v_mean": v.detach().mean()})

    def critic_loss(self, batch: Batch, scratch: Scratch) -> L.LossOut:
        with torch.no_grad():  # V(s') for the target and V(s) for the actor's advantage, in one pass
            v_next, v = self.value(torch.cat([batch.next_observations, batch.observations])).split(len(batch))
            target = L.td_target(batch.rewards, v_next, batch.terminals, self.hp.gamma)
        scratch["v"] = v
        q = self.critic(batch.observations, batch.actions)
        return L.LossOut(L.critic_regression(q, target), {"q_mean": q.detach().mean()})

    def actor_loss(self, batch: Batch, scratch: Scratch) -> L.LossOut:
        """AWR on dataset actions with ``A = min Q_target(s, a) - V(s)``, V after this update's value
        step (as the reference implementation): both as the value and critic steps computed them."""
        with torch.no_grad():
            adv = scratch["q_target"] - scratch["v"]
            w = L.awr_weights(adv, self.hp.beta, self.hp.max_weight)
        log_prob = self.actor.log_prob(batch.observations, batch.actions)
        loss = L.weighted_nll(log_prob, w)
        metrics = {"adv_mean": adv.mean(), "weight_mean": w.mean()}
        if self.hp.actor_q_weight:
            q = self.critic_q_for_actor(batch.observations, self.actor.act(batch.observations)).min(dim=0).values
            q_loss, _ = L.normalized_q_ascent(q, self.hp.actor_q_weight, min_scale=1e-6)
            loss = loss + q_loss
            metrics["actor_q"] = q.detach().mean()
        return L.LossOut(loss, metrics)

    def configure_optimizers(self):
        opts = super().configure_optimizers()
        if self.hp.actor_lr_schedule == "cosine" and self.trainer is not None and self.trainer.max_steps > 0:
            actor = opts[self._opt_index["actor"]]
            self._actor_sched = torch.optim.lr_scheduler.CosineAnnealingLR(actor, T_max=int(self.trainer.max_steps))
            return opts, [{"scheduler": self._actor_sched, "interval": "step"}]
        return opts

    def update(self, batch: Batch, scratch: Scratch | None = None):
        metrics = super().update(batch, scratch)
        sched = self.lr_schedulers()
        if sched is not None and not self.capturing:  # a captured update sets its rate in the graph
            sched.step()
        return metrics
