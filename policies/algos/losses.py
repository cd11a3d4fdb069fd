"""The math of every algorithm, as pure functions of tensors.

No function here owns a network, an optimiser or a step counter: each takes the values
it needs and returns a loss (or a target) so it can be checked against hand-computed
numbers (tests/policies/test_losses.py). The Lightning modules only decide which
networks produce those values and in which order the updates run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class LossOut:
    """A loss to minimise and the detached metrics worth logging with it."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def td_target(rewards: Tensor, next_value: Tensor, terminals: Tensor, gamma: float) -> Tensor:
    """``r + gamma * (1 - terminal) * V(s')``; time-limit cuts still bootstrap."""
    return rewards + gamma * (1.0 - terminals) * next_value


def expectile_loss(diff: Tensor, tau: float) -> Tensor:
    """IQL's asymmetric L2: ``mean(|tau - 1(diff < 0)| * diff^2)`` with ``diff = Q(s,a) - V(s)``.

    ``tau > 0.5`` weighs positive residuals more, so V tracks an upper expectile of Q
    over dataset actions (Kostrikov et al. 2021; the paper's sign convention, reference
    004 warns the lecture notes use the complement).
    """
    weight = torch.abs(tau - (diff < 0).to(diff.dtype))
    return (weight * diff.pow(2)).mean()


def awr_weights(advantage: Tensor, beta: float, max_weight: float) -> Tensor:
    """Advantage-weighted regression weights ``min(exp(beta * A), max_weight)``, no gradient."""
    return torch.exp(beta * advantage.detach()).clamp(max=max_weight)


def weighted_nll(log_prob: Tensor, weights: Tensor) -> Tensor:
    """``-mean(w * log pi(a|s))``: AWR / AWAC / filtered-BC policy extraction."""
    return -(weights.detach() * log_prob).mean()


def critic_regression(q: Tensor, target: Tensor) -> Tensor:
    """Sum over ensemble members of the MSE to one (detached) target: ``q [n, B]``, ``target [B]``."""
    return (q - target.detach().unsqueeze(0)).pow(2).mean(dim=1).sum()


def cql_logsumexp(
    q_uniform: Tensor,
    q_policy: Tensor,
    logp_policy: Tensor,
    q_next_policy: Tensor,
    logp_next_policy: Tensor,
    act_dim: int,
    temperature: float = 1.0,
) -> Tensor:
    """CQL(H)'s soft maximum of Q over actions, estimated by importance sampling.

    ``log E_{a~U}[exp(Q/T)]``-style estimate from K uniform actions (density ``0.5^A`` on
    [-1, 1]^A) and K actions each from the policy at ``s`` and at ``s'`` (evaluated at
    ``s``), every sample divided by its proposal density. Shapes: ``q_* [n, B, K]``,
    ``logp_* [B, K]``. Returns ``T * logsumexp(cat / T)`` of shape ``[n, B]`` (Kumar et
    al. 2020, appendix F; the constant ``log 3K`` is dropped as the reference code does).
    """
    log_uniform = act_dim * math.log(0.5)
    cat = torch.cat(
        [
            q_uniform - log_uniform,
            q_policy - logp_policy.detach().unsqueeze(0),
            q_next_policy - logp_next_policy.detach().unsqueeze(0),
        ],
        dim=-1,
    )
    return temperature * torch.logsumexp(cat / temperature, dim=-1)


def calql_bound_rate(q_policy: Tensor, q_next_policy: Tensor, mc_returns: Tensor) -> Tensor:
    """How often Cal-QL's bound is active: the share of the policy proposals' Q-values (``[n, B, K]``
    each, at s from pi(.|s) and pi(.|s')) below the data's return ``mc_returns [B]``; no gradient."""
    with torch.no_grad():
        bound = mc_returns.view(1, -1, 1)
        return torch.cat([q_policy < bound, q_next_policy < bound], dim=-1).float().mean()


def calql_lower_bound(q_policy: Tensor, mc_returns: Tensor) -> Tensor:
    """Cal-QL's calibration: ``max(Q(s, a_pi), V_ref(s))`` for the policy proposals ``q_policy
    [n, B, K]``, with ``mc_returns [B]`` the reference (data) policy's Monte-Carlo return from s.

    CQL pushes Q down on policy actions without limit; bounding the pushed-down values by
    the reference policy's value keeps the learned Q from falling below what the data
    already achieves, so online finetuning starts from calibrated values instead of
    "unlearning" first (Nakamoto et al. 2023, eq. 5.1). A ``-inf`` bound leaves Q as is.
    """
    return torch.maximum(q_policy, mc_returns.to(q_policy.dtype).view(1, -1, 1))


def cql_penalty_per_member(soft_max_q: Tensor, q_data: Tensor) -> Tensor:
    """CQL's gap ``mean_s(softmax_a Q(s, a) - Q(s, a_data))`` per member, both at the same states:
    ``[n, B] -> [n]`` (COMBO's, over different states: :func:`combo_penalty_per_member`)."""
    return (soft_max_q - q_data).mean(dim=1)


def lagrange_weight(log_alpha_prime: Tensor) -> Tensor:
    """Lagrangian CQL's weight ``alpha' = exp(log alpha')``, clamped to [0, 1e6]."""
    return log_alpha_prime.exp().clamp(0.0, 1e6)


def cql_regularizer(
    gap_per_member: Tensor, cql_alpha: float, log_alpha_prime: Tensor | None = None, target_gap: float = 0.0
) -> tuple[Tensor, Tensor]:
    """The conservative term added to the critics' loss, and its weight (for the log).

    With a fixed weight: ``cql_alpha * sum(gap)``. Lagrangian (``log_alpha_prime`` given):
    ``sum(alpha' * (gap - target_gap))``, ``alpha'`` not differentiated here
    (:func:`cql_lagrange_loss` moves it). ``gap_per_member [n]``: :func:`cql_penalty_per_member`
    or :func:`combo_penalty_per_member`.
    """
    if log_alpha_prime is not None:
        alpha_prime = lagrange_weight(log_alpha_prime.detach())
        return (alpha_prime * (gap_per_member - target_gap)).sum(), alpha_prime
    alpha_prime = torch.full((), float(cql_alpha), device=gap_per_member.device)  # no host copy
    return alpha_prime * gap_per_member.sum(), alpha_prime


def cql_lagrange_loss(log_alpha_prime: Tensor, penalty_per_member: Tensor, target_gap: float) -> Tensor:
    """Lagrangian CQL: alpha' rises while the gap exceeds ``target_gap`` and falls below it.

    Minimised over ``log_alpha_prime``: ``-alpha' * (gap - target_gap)`` averaged over members.
    """
    return -(lagrange_weight(log_alpha_prime) * (penalty_per_member.detach() - target_gap)).mean()


def sac_actor_loss(q_policy: Tensor, log_prob: Tensor, alpha: Tensor | float) -> Tensor:
    """``mean(alpha * log pi(a|s) - Q(s, a))`` with ``a ~ pi`` (reparameterised)."""
    return (alpha * log_prob - q_policy).mean()


def normalized_q_ascent(q: Tensor, alpha: float, min_scale: float = 0.0) -> tuple[Tensor, Tensor]:
    """TD3+BC's Q term ``-lambda mean Q`` with ``lambda = alpha / max(mean|Q|, min_scale)`` (not
    differentiated): the actor climbs Q with a weight independent of the reward scale. Returns
    ``(loss, lambda)``."""
    lam = alpha / q.abs().mean().detach().clamp(min=min_scale)
    return -lam * q.mean(), lam


def td3_bc_actor_loss(
    q1: Tensor, pi_actions: Tensor, data_actions: Tensor, alpha: float
) -> tuple[Tensor, Tensor, Tensor]:
    """TD3+BC's actor loss ``-lambda mean Q1(s, pi(s)) + mean (pi(s) - a)^2`` (Fujimoto & Gu 2021), the
    squared error averaged over batch and action dimensions as the reference code's ``mse_loss``;
    ``lambda = alpha / mean|Q1|`` (:func:`normalized_q_ascent`). Returns ``(loss, lambda, bc_mse)``."""
    q_loss, lam = normalized_q_ascent(q1, alpha)
    bc = (pi_actions - data_actions).pow(2).mean()
    return q_loss + bc, lam, bc.detach()


def entropy_alpha_loss(log_alpha: Tensor, log_prob: Tensor, target_entropy: float) -> Tensor:
    """SAC's temperature loss: alpha grows when the policy's entropy is below the target."""
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


def soft_value(q_next: Tensor, logp_next: Tensor, alpha: Tensor | float) -> Tensor:
    """Soft state value of a sampled next action: ``min_i Q_i(s', a') - alpha * log pi(a'|s')``."""
    return q_next.min(dim=0).values - alpha * logp_next


def bc_mse(pred: Tensor, actions: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean squared action error (optionally per-sample weighted), for deterministic BC."""
    err = (pred - actions).pow(2).sum(-1)
    return (err if weights is None else weights.detach() * err).mean()


def gaussian_nll(mean: Tensor, log_std: Tensor, target: Tensor) -> Tensor:
    """Negative log-likelihood (up to a constant) of ``target`` under diagonal Gaussians,
    summed over the last dim: the dynamics models' training loss (Chua et al. 2018)."""
    inv_var = torch.exp(-2.0 * log_std)
    return ((mean - target).pow(2) * inv_var + 2.0 * log_std).sum(-1)


def dynamics_nll(
    mean: Tensor, log_std: Tensor, target: Tensor, max_log_std: Tensor, min_log_std: Tensor, bound_coef: float = 0.01
) -> Tensor:
    """An ensemble's training loss: :func:`gaussian_nll` averaged over rows and output dims
    per member, summed over members, plus ``bound_coef * (sum max_log_std - sum min_log_std)``.

    ``mean, log_std, target [n, B, D]``. Averaging over dims (not summing) and the bound
    term keep MBPO's relative weights (Janner et al. 2019; OfflineRL-Kit's
    ``EnsembleDynamics.learn``, there written with ``logvar = 2 log_std``): the term
    tightens the learned soft bounds on log-std, which otherwise only ever widen.
    """
    per_member = gaussian_nll(mean, log_std, target).mean(dim=1) / target.shape[-1]
    return per_member.sum() + bound_coef * (max_log_std.sum() - min_log_std.sum())


def combo_penalty_per_member(soft_max_q: Tensor, q_data: Tensor) -> Tensor:
    """COMBO's gap ``E_{s~rho}[softmax_a Q(s, a)] - E_{(s,a)~D}[Q(s, a)]`` per member ``[n]``.

    Unlike :func:`cql_penalty_per_member` the two expectations run over different states (``soft_max_q
    [n, B_model]`` at model-rollout states, ``q_data [n, B_real]`` at dataset pairs), so
    they are averaged separately (Yu et al. 2021, eq. 2).
    """
    return soft_max_q.mean(dim=1) - q_data.mean(dim=1)
