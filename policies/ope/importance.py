"""Importance-sampling estimates per episode: per-decision IS, weighted per-decision IS, doubly robust.

The behaviour policy mu is rarely known for robot data (scripted + noisy + human
episodes), so it is estimated by Gaussian behaviour cloning on the same data
(:func:`fit_behavior`); a known ``log mu(a_t|s_t)`` per row can be passed instead.

A deterministic target has no density, so pi(a|s)/mu(a|s) is undefined; it is treated as
``N(pi(s), target_std^2)`` per action dimension in the normalised action space (see
:attr:`OPEConfig.target_std`). IS, WIS and DR then estimate the value of that smoothed
policy, which approaches the deterministic one as ``target_std -> 0`` at the price of
weights that vanish for every dataset action not close to ``pi(s)``.

All three sum rewards over each *recorded* episode, so they estimate the discounted return
up to the episode's end (the env's time limit); only DR, which has a value model, adds the
value of what lies past an episode cut short of the horizon.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from o2o.policies.networks import adam, make_actor
from o2o.policies.ope import estimators as E
from o2o.policies.ope.config import OPEConfig
from o2o.policies.ope.data import OPEData, TargetPolicy


@dataclass
class BehaviorModel:
    """A Gaussian behaviour-cloning estimate of mu on normalised observations and [-1, 1] actions."""

    actor: torch.nn.Module
    nll: float
    """Final mean negative log-likelihood of the dataset actions (lower: a tighter fit)."""
    updates: int
    seconds: float

    @torch.no_grad()
    def log_prob(self, data: OPEData, chunk: int = 65_536) -> Tensor:
        """``log mu(a_t | s_t)`` at every row ``[N]``."""
        return torch.cat(
            [
                self.actor.log_prob(data.observations[i : i + chunk], data.actions[i : i + chunk])
                for i in range(0, len(data), chunk)
            ]
        )


def fit_behavior(
    data: OPEData, cfg: OPEConfig | None = None, progress: Callable[[int], None] | None = None
) -> BehaviorModel:
    """Fit mu by maximum likelihood (Gaussian, state-independent std) for ``cfg.behavior_updates`` updates
    (``progress(updates done)`` after each).

    A Gaussian, not a tanh-Gaussian: dataset actions often sit exactly on the bounds
    (saturated controllers, clipped noise), where a tanh-Gaussian's density is unbounded.
    """
    cfg = cfg or OPEConfig()
    start = time.perf_counter()
    device = data.device
    gen = torch.Generator(device=device)
    gen.manual_seed(int(cfg.seed) + 1)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(cfg.seed) + 1)
        actor = make_actor(
            "gaussian", data.observations.shape[1], data.actions.shape[1], hidden=cfg.behavior_hidden
        ).to(device)
    opt = adam(actor.parameters(), lr=cfg.behavior_lr)
    for i in range(int(cfg.behavior_updates)):
        idx = torch.randint(0, len(data), (cfg.behavior_batch_size,), device=device, generator=gen)
        loss = -actor.log_prob(data.observations.index_select(0, idx), data.actions.index_select(0, idx)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress(i + 1)
    actor.eval().requires_grad_(False)
    model = BehaviorModel(actor, 0.0, int(cfg.behavior_updates), 0.0)
    model.nll = float(-model.log_prob(data, cfg.chunk).mean())
    model.seconds = time.perf_counter() - start
    return model


@torch.no_grad()
def target_log_prob(policy: TargetPolicy, data: OPEData, cfg: OPEConfig) -> Tensor:
    """``log pi(a_t | s_t)`` of every dataset action ``[N]``: the policy's own density when
    ``cfg.stochastic``, else the Gaussian smoothing of its deterministic action."""
    outs = []
    for i in range(0, len(data), cfg.chunk):
        raw = data.raw(data.observations[i : i + cfg.chunk])
        a = data.actions[i : i + cfg.chunk]
        if cfg.stochastic:
            if not policy.stochastic:
                raise ValueError(
                    f"ope.stochastic=true but policy {policy.name!r} has no density; "
                    "set ope.stochastic=false (it is then smoothed by ope.target_std)"
                )
            outs.append(policy.log_prob(raw, a))
        else:
            outs.append(E.gaussian_log_prob(a, policy.mean(raw), cfg.target_std))
    return torch.cat(outs)


@dataclass
class ISResult:
    """Importance-sampling estimates (discounted returns, env reward units) and their diagnostics."""

    is_value: float
    wis_value: float
    dr_value: float | None
    ess: float
    """Kish effective sample size of the episodes' final weights (out of ``episodes``)."""
    episodes: int
    clipped_step_fraction: float
    clipped_cumulative_fraction: float
    log_ratio_mean: float
    """Mean per-step log(pi/mu): very negative means the dataset rarely took the target's actions."""
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Bootstrap confidence intervals over episodes, by estimator (``is``, ``wis``, ``dr``)."""

    def metrics(self) -> dict[str, float | None]:
        """The figures under their ``ope/`` metric names."""
        out = {
            "ope/is_value": self.is_value,
            "ope/wis_value": self.wis_value,
            "ope/dr_value": self.dr_value,
            "ope/ess": self.ess,
            "ope/ess_fraction": self.ess / max(self.episodes, 1),
            "ope/clipped_step_fraction": self.clipped_step_fraction,
            "ope/clipped_cumulative_fraction": self.clipped_cumulative_fraction,
            "ope/log_ratio_mean": self.log_ratio_mean,
        }
        for name, (lo, hi) in self.intervals.items():
            out[f"ope/{name}_ci_low"], out[f"ope/{name}_ci_high"] = lo, hi
        return out


@torch.no_grad()
def importance_estimates(
    data: OPEData,
    log_pi: Tensor,
    log_mu: Tensor,
    cfg: OPEConfig | None = None,
    q_taken: Tensor | None = None,
    v: Tensor | None = None,
    v_next: Tensor | None = None,
) -> ISResult:
    """Per-decision IS, WIS and (given a value model ``q_taken, v`` per row) DR estimates.

    ``log_pi, log_mu [N]`` are per-row log densities of the dataset actions; ``v_next``
    (FQE's ``V(s_{t+1})``, 0 where not bootstrapped) gives DR the value past an episode cut
    before the horizon. Per episode the weights are clipped as ``cfg`` says; steps past
    ``cfg.horizon`` are ignored.
    """
    cfg = cfg or OPEConfig()
    for name, t in (("log_pi", log_pi), ("log_mu", log_mu)):
        if t.shape != (len(data),):
            raise ValueError(f"importance_estimates: {name} has shape {tuple(t.shape)}, expected ({len(data)},)")
        if not torch.isfinite(t).all():
            raise ValueError(
                f"importance_estimates: {name} holds non-finite log-densities "
                f"(first at row {int((~torch.isfinite(t)).nonzero()[0])})"
            )
    log_ratio, mask = data.padded((log_pi - log_mu).double())
    rewards, _ = data.padded(data.rewards.double())
    if cfg.horizon is not None:
        mask[:, cfg.horizon :] = False  # the value counts the first `horizon` steps, as FQE's does
    log_w, clip = E.cumulative_log_weights(log_ratio, mask, cfg.step_clip, cfg.cumulative_clip)
    pdis_ep = E.per_decision_is(log_w, rewards, mask, cfg.gamma)
    pdis = pdis_ep.mean()
    wis = E.weighted_per_decision_is(log_w, rewards, mask, cfg.gamma)
    counts = (
        E.bootstrap_counts(data.num_episodes, int(cfg.bootstrap), cfg.seed, log_w.device)
        if cfg.bootstrap and data.num_episodes > 1
        else None
    )
    intervals: dict[str, tuple[float, float]] = {}
    if counts is not None:
        intervals["is"] = E.percentile_interval(E.bootstrap_means(pdis_ep, counts), cfg.confidence)
        intervals["wis"] = E.percentile_interval(
            E.weighted_per_decision_is(log_w, rewards, mask, cfg.gamma, counts), cfg.confidence
        )
    dr = None
    if q_taken is not None and v is not None:
        q_pad, _ = data.padded(q_taken.double())
        v_pad, _ = data.padded(v.double())
        tail = None
        if v_next is not None:
            last = data.starts + data.lengths - 1
            # Only a time-limit cut leaves value behind; a terminal's v_next is 0 already.
            tail = (v_next.double() * data.timeouts.double())[last]
        dr_ep = E.doubly_robust(log_w, rewards, mask, q_pad, v_pad, cfg.gamma, tail)
        dr = float(dr_ep.mean())
        if counts is not None:
            intervals["dr"] = E.percentile_interval(E.bootstrap_means(dr_ep, counts), cfg.confidence)
    return ISResult(
        is_value=float(pdis),
        wis_value=float(wis),
        dr_value=dr,
        ess=float(E.effective_sample_size(log_w[:, -1])),
        episodes=data.num_episodes,
        clipped_step_fraction=float(clip["clipped_step_fraction"]),
        clipped_cumulative_fraction=float(clip["clipped_cumulative_fraction"]),
        log_ratio_mean=float(log_ratio[mask].mean()),
        intervals=intervals,
    )
