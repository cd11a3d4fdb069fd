"""Fitted Q evaluation (Le et al. 2019; Voloshin et al. 2021): the value of a fixed policy from data.

A critic ensemble regresses, by TD on dataset transitions, to ``r + gamma (1 - done)
Q_target(s', pi(s'))`` where ``pi`` is the *evaluated* policy (not the behaviour's next
action, and no max: it evaluates, it does not improve). The estimate is the mean over the
dataset's episode start states of ``Q(s0, pi(s0))``, undone from the reward scaling: an
expected discounted return in env reward units.

With a finite ``horizon`` (the env's time limit) the critic also sees the time step
``t / horizon`` and does not bootstrap past the limit, so the estimate is the discounted
return of an episode *as the env runs it* — the number a simulated evaluation reports. With
``horizon=None`` it is the usual infinite-horizon value (time-limit cuts bootstrap).

Everything runs on the data's device; the policy's actions at every dataset state are
computed once up front (the policy is fixed), so an update costs one critic and one
target-critic pass.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from o2o.policies.networks import QEnsemble, adam, soft_update
from o2o.policies.ope import estimators as E
from o2o.policies.ope.config import OPEConfig
from o2o.policies.ope.data import OPEData, TargetPolicy, policy_actions


@dataclass
class FQEResult:
    """An FQE estimate and what DR needs from the fitted critic (all in env reward units)."""

    value: float
    """Mean over episode start states of Q(s0, pi(s0)), ensemble-averaged: the discounted return."""
    value_std: float
    """Spread of the estimate across ensemble members (a cheap uncertainty signal, not a CI)."""
    start_values: np.ndarray
    """Per-episode Q(s0, pi(s0))."""
    q_taken: Tensor
    """Q(s_t, a_t) at every dataset row ``[N]``."""
    v: Tensor
    """V(s_t) = Q(s_t, pi(s_t)) at every row ``[N]`` (mean over sampled actions if stochastic)."""
    v_next: Tensor
    """V(s_{t+1}) at every row ``[N]``, 0 where nothing is bootstrapped (terminal or horizon)."""
    reward_scale: float
    updates: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    critic: QEnsemble | None = field(default=None, repr=False)


def bootstrap_mask(data: OPEData, horizon: int | None) -> Tensor:
    """1 where the next state's value counts: not terminal and (finite horizon) ``t + 1 < horizon``."""
    keep = 1.0 - data.terminals
    if horizon is not None:
        keep = keep * (data.step + 1 < horizon).to(keep.dtype)
    return keep


def _with_time(obs: Tensor, step: Tensor, horizon: int | None) -> Tensor:
    # The time left changes the value of a state under a time limit: the critic must see it.
    if horizon is None:
        return obs
    return torch.cat([obs, (step.to(obs.dtype) / horizon).unsqueeze(-1)], dim=-1)


def reward_scale_for(data: OPEData, cfg: OPEConfig) -> float:
    """``cfg.reward_scale``, or 1/std of the data's rewards (1 when they are constant)."""
    if cfg.reward_scale is not None:
        return float(cfg.reward_scale)
    std = float(data.rewards.float().std()) if len(data) > 1 else 0.0
    return 1.0 / std if std > 1e-6 else 1.0


@torch.no_grad()
def _q_over(critic: QEnsemble, obs: Tensor, actions: Tensor, chunk: int) -> Tensor:
    """Ensemble Q at every row, ``[n, N]`` (actions ``[N, A]``, or ``[N, K, A]`` averaged over K)."""
    outs = []
    for i in range(0, obs.shape[0], chunk):
        o, a = obs[i : i + chunk], actions[i : i + chunk]
        if a.dim() == 3:
            o = o.unsqueeze(1).expand(-1, a.shape[1], -1)
            outs.append(critic(o, a).mean(dim=-1))
        else:
            outs.append(critic(o, a))
    return torch.cat(outs, dim=1)


def fit_fqe(
    data: OPEData,
    policy: TargetPolicy,
    cfg: OPEConfig | None = None,
    keep_critic: bool = False,
    progress: Callable[[int], None] | None = None,
) -> FQEResult:
    """Fit FQE for ``policy`` on ``data`` with ``cfg.fqe_updates`` updates and return its estimate.

    ``cfg.stochastic`` evaluates the policy's sampled actions (needs a stochastic policy);
    otherwise its deterministic action. ``progress(updates done)`` after every update.
    """
    cfg = cfg or OPEConfig()
    if cfg.stochastic and not policy.stochastic:
        raise ValueError(
            f"ope.stochastic=true but policy {policy.name!r} is deterministic (no sampling/density); "
            "set ope.stochastic=false"
        )
    if len(data) == 0:
        raise ValueError(f"FQE of {policy.name!r}: dataset {data.source!r} holds no transitions")
    start = time.perf_counter()
    device, H = data.device, cfg.horizon
    gen = torch.Generator(device=device)
    gen.manual_seed(int(cfg.seed))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(cfg.seed))  # critic init and policy sampling, without touching the caller's RNG
        next_act = policy_actions(policy, data, data.next_observations, cfg.policy_samples, cfg.stochastic, cfg.chunk)
        cur_act = policy_actions(policy, data, data.observations, cfg.policy_samples, cfg.stochastic, cfg.chunk)
        obs_dim = data.observations.shape[1] + (0 if H is None else 1)
        critic = QEnsemble(
            obs_dim, data.actions.shape[1], cfg.fqe_hidden, n=cfg.fqe_critics, layer_norm=cfg.fqe_layer_norm
        ).to(device)
    target = copy.deepcopy(critic).requires_grad_(False)
    opt = adam(critic.parameters(), lr=cfg.fqe_lr)

    scale = reward_scale_for(data, cfg)
    s_in = _with_time(data.observations, data.step, H)
    s2_in = _with_time(data.next_observations, data.step + 1, H)
    rewards = data.rewards * scale
    keep = bootstrap_mask(data, H)
    losses: list[float] = []
    n, every = len(data), max(1, cfg.fqe_updates // 50)
    for i in range(int(cfg.fqe_updates)):
        idx = torch.randint(0, n, (cfg.fqe_batch_size,), device=device, generator=gen)
        take = lambda t: t.index_select(0, idx)  # noqa: E731  (index_select: ~20x faster than x[idx] on CPU)
        with torch.no_grad():
            a2 = take(next_act)
            s2 = take(s2_in)
            if a2.dim() == 3:
                s2 = s2.unsqueeze(1).expand(-1, a2.shape[1], -1)
            y = E.fqe_target(take(rewards), target(s2, a2), take(keep), cfg.gamma)
        loss = E.fqe_loss(critic(take(s_in), take(data.actions)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        soft_update(target, critic, cfg.fqe_tau)
        if i % every == 0:
            losses.append(loss.detach())
        if progress is not None:
            progress(i + 1)
    critic.eval()
    q_taken = _q_over(critic, s_in, data.actions, cfg.chunk)  # [n, N]
    v_all = _q_over(critic, s_in, cur_act, cfg.chunk)
    v_next = _q_over(critic, s2_in, next_act, cfg.chunk).mean(0) * keep
    starts = v_all[:, data.starts]  # [n, E]
    per_member = starts.mean(dim=1) / scale
    value = float(per_member.mean())
    return FQEResult(
        value=value,
        value_std=float(per_member.std()) if per_member.numel() > 1 else 0.0,
        start_values=(starts.mean(0) / scale).cpu().numpy(),
        q_taken=q_taken.mean(0) / scale,
        v=v_all.mean(0) / scale,
        v_next=v_next / scale,
        reward_scale=scale,
        updates=int(cfg.fqe_updates),
        seconds=time.perf_counter() - start,
        losses=[float(x) for x in losses],
        critic=critic if keep_critic else None,
    )
