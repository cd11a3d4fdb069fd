"""The math of off-policy evaluation, as pure functions of tensors.

Nothing here owns a network or a dataset: the FQE target and loss take critic outputs;
the importance-sampling estimators take per-step log-ratios and rewards laid out per
episode as ``[E, T]`` matrices (episode x time step, ``mask`` marking real steps), so
each can be checked against hand-computed numbers (tests/policies/test_ope.py).

Conventions of the IS family (Precup et al. 2000; Thomas & Brunskill 2016; Jiang & Li
2016): ``w_t = prod_{k<=t} rho_k`` with ``rho_k = pi(a_k|s_k) / mu(a_k|s_k)``. Weights
are handled as logs (a 150-step product of ratios over/underflows float32 long before it
is clipped). After an episode ends it sits in an absorbing state: reward 0, ratio 1, so
its weight carries over, which is what the weighted estimator normalises with.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def fqe_target(rewards: Tensor, next_q: Tensor, bootstrap: Tensor, gamma: float) -> Tensor:
    """Per-member FQE target ``r + gamma * bootstrap * Q_target(s', pi(s'))``.

    ``rewards, bootstrap [B]`` (bootstrap is 0 at a terminal state or at the evaluation
    horizon, else 1); ``next_q [n, B]``, or ``[n, B, K]`` for K sampled target actions
    (averaged: the expectation over a stochastic pi). Returns ``[n, B]``: each member
    regresses on its own target network, so the members stay independent estimates.
    """
    if next_q.dim() == 3:
        next_q = next_q.mean(dim=-1)
    return rewards.unsqueeze(0) + gamma * bootstrap.unsqueeze(0) * next_q


def fqe_loss(q: Tensor, target: Tensor) -> Tensor:
    """Sum over members of each member's MSE to its own (detached) target: ``q, target [n, B]``."""
    return (q - target.detach()).pow(2).mean(dim=1).sum()


def gaussian_log_prob(actions: Tensor, mean: Tensor, std: float | Tensor) -> Tensor:
    """``log N(actions; mean, std^2 I)`` summed over the last dim (the smoothed deterministic target)."""
    std = torch.as_tensor(std, dtype=actions.dtype, device=actions.device)
    z = (actions - mean) / std
    return (-0.5 * z.pow(2) - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


def cumulative_log_weights(
    log_ratio: Tensor, mask: Tensor, step_clip: float | None = None, cumulative_clip: float | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """``log w_t = sum_{k<=t} log rho_k`` per episode with optional upper clips, ``[E, T] -> [E, T]``.

    ``step_clip`` caps each ratio (``rho_k <= c``), ``cumulative_clip`` each cumulative
    weight (``w_t <= C``, the running product itself is not altered, so the cap does not
    compound). Padding steps (``mask`` False) contribute ratio 1. The metrics are the
    fractions of real steps whose ratio / cumulative weight was clipped.
    """
    mask = mask.bool()
    lr = log_ratio.masked_fill(~mask, 0.0)
    n = mask.sum().clamp(min=1)
    step_clipped = torch.zeros((), device=lr.device)
    if step_clip is not None:
        cap = math.log(step_clip)
        step_clipped = ((lr > cap) & mask).sum() / n
        lr = lr.clamp(max=cap)
    log_w = torch.cumsum(lr, dim=1)
    cum_clipped = torch.zeros((), device=lr.device)
    if cumulative_clip is not None:
        cap = math.log(cumulative_clip)
        cum_clipped = ((log_w > cap) & mask).sum() / n
        log_w = log_w.clamp(max=cap)
    return log_w, {"clipped_step_fraction": step_clipped, "clipped_cumulative_fraction": cum_clipped}


def discounts(steps: int, gamma: float, like: Tensor) -> Tensor:
    """``[gamma^0, ..., gamma^(T-1)]`` with the dtype and device of ``like``."""
    return gamma ** torch.arange(steps, dtype=like.dtype, device=like.device)


def per_decision_is(log_w: Tensor, rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Per-decision importance sampling, per episode: ``sum_t gamma^t w_t r_t`` -> ``[E]``.

    Unbiased for the target's value when mu is right and nothing is clipped; the
    estimate is the mean over episodes.
    """
    r = rewards.masked_fill(~mask.bool(), 0.0)
    return (discounts(r.shape[1], gamma, r) * torch.exp(log_w) * r).sum(dim=1)


def weighted_per_decision_is(
    log_w: Tensor, rewards: Tensor, mask: Tensor, gamma: float, counts: Tensor | None = None
) -> Tensor:
    """Weighted (self-normalised) per-decision IS: ``sum_t gamma^t sum_i w_it r_it / sum_i w_it``.

    The normaliser at step t runs over all episodes (ended ones carry their weight in the
    absorbing state). Biased but consistent, and bounded by the rewards' range; a scalar.
    Weights are shifted by their per-step maximum (it cancels in the ratio): no overflow.
    ``counts [B, E]`` (bootstrap draws, :func:`bootstrap_counts`): the estimate under each draw,
    episode i counted ``c_i`` times, ``[B]``; a draw that holds no episode with weight at step t
    contributes 0 there.
    """
    c = counts if counts is not None else torch.ones(1, log_w.shape[0], dtype=log_w.dtype, device=log_w.device)
    r = rewards.masked_fill(~mask.bool(), 0.0).to(c)
    w = torch.exp((log_w - log_w.max(dim=0, keepdim=True).values).to(c))  # [E, T], max 1 per step
    num, den = c @ (w * r), c @ w  # [B, T]
    step = torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), torch.zeros_like(num))
    out = step @ discounts(r.shape[1], gamma, r)
    return out if counts is not None else out[0]


def doubly_robust(
    log_w: Tensor, rewards: Tensor, mask: Tensor, q_taken: Tensor, v: Tensor, gamma: float, tail: Tensor | None = None
) -> Tensor:
    """Jiang & Li (2016)'s per-decision doubly robust estimate per episode, ``[E]``.

    ``V_DR = sum_t gamma^t [ w_t (r_t - Q(s_t, a_t)) + w_{t-1} V(s_t) ]`` with ``w_{-1} = 1``,
    the unrolled form of ``V_DR(t) = V(s_t) + rho_t (r_t + gamma V_DR(t+1) - Q(s_t, a_t))``:
    the model's value corrected by importance-weighted TD errors. ``q_taken, v [E, T]``.
    ``tail [E]`` (optional): ``V(s_T)`` of episodes cut before the evaluation horizon, added
    as ``gamma^T w_{T-1} V(s_T)`` so the estimate values what lies past the cut (0 elsewhere).
    """
    m = mask.bool()
    r = rewards.masked_fill(~m, 0.0)
    w = torch.exp(log_w)
    w_prev = torch.exp(torch.cat([torch.zeros_like(log_w[:, :1]), log_w[:, :-1]], dim=1))
    terms = (w * (r - q_taken) + w_prev * v).masked_fill(~m, 0.0)
    out = (discounts(r.shape[1], gamma, r) * terms).sum(dim=1)
    if tail is not None:
        length = m.sum(dim=1)
        out = out + gamma ** length.to(out.dtype) * w[:, -1] * tail
    return out


def effective_sample_size(log_w: Tensor) -> Tensor:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of weights given as logs ``[E]``."""
    return torch.exp(2 * torch.logsumexp(log_w, dim=0) - torch.logsumexp(2 * log_w, dim=0))


def bootstrap_counts(items: int, resamples: int, seed: int, device: torch.device | str | None = None) -> Tensor:
    """How often each of ``items`` episodes appears in each of ``resamples`` bootstrap draws (with
    replacement, ``items`` per draw): ``[resamples, items]`` float64, rows summing to ``items``.

    The same ``seed`` and sizes give the same draws, so every estimator of one policy (and every
    policy on one dataset) is resampled with the same episodes.
    """
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(items, (resamples, items), generator=g)
    ones = torch.ones(idx.shape, dtype=torch.float64)
    counts = torch.zeros(resamples, items, dtype=torch.float64).scatter_add_(1, idx, ones)
    return counts.to(device) if device is not None else counts


def bootstrap_means(per_episode: Tensor, counts: Tensor) -> Tensor:
    """The mean of ``per_episode [E]`` under each bootstrap draw: ``counts [B, E] -> [B]``."""
    return counts @ per_episode.to(counts) / counts.shape[1]


def percentile_interval(samples: Tensor, level: float) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap ``samples`` (percentile method)."""
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(samples.double().cpu(), q).tolist()
    return float(lo), float(hi)


def undo_reward_scale(value: Tensor | float, reward_scale: float) -> Tensor | float:
    """A value learned on rewards ``r * reward_scale`` (no shift), back in env reward units."""
    return value / reward_scale
