"""The gate: an offline policy goes online when it is safe and no worse than the data it came from.

:func:`decide` turns the evidence about a policy (simulated evaluation, OPE, the dataset's
behaviour, the policy's own value estimate, its actions on recorded observations) into a
:class:`GateDecision`: every criterion with its value, its threshold, whether it passed, by
how much and why. Criteria (``configs/gate/default.yaml``; a null threshold disables one):

**Performance: no worse than the behaviour data** — judged on the data's *mean*, not on its
best episodes, with a tolerance for sampling error on both sides:

* ``return_mean vs data``: the simulated mean return at least the data's mean return minus
  ``return_vs_data_se`` standard errors of the difference,
  ``SE = sqrt(sd_policy^2 / n_policy + sd_data^2 / n_data)`` (sample standard deviations, the
  evaluation's and the dataset's episode counts), minus ``return_vs_data_margin x |data mean|``.
  20 evaluation episodes and 50 recorded ones do not pin a mean down to a few percent; a fixed
  relative margin (the old ``0.1 x |mean|``) is too strict for noisy data and too loose for
  precise data, a standard error is neither.
* ``success_rate vs data``: reported by default (value, the data's rate and episode count, how
  many standard errors apart), judged only with ``success_vs_data_se`` set: then at least the
  data's rate minus that many pooled binomial standard errors. The success rate of a mixed
  dataset is decided by its best episodes (40 random and 10 scripted episodes succeed 20% of the
  time because of the 10), and a binary outcome over 20 evaluation episodes is a coarse test;
  the return already judges the policy against the data's average behaviour. Reacher shows
  what the option is for: a policy that beats the data's return but is less precise than all
  of its episodes (0.8 vs 80/80 is 4 SE apart).
* absolute ``min_success`` / ``min_return`` and an OPE floor ``min_ope_value``, off by default.

**Safety** — what must hold before a policy acts in the world:

* **actions**: finite and within the action bounds on recorded observations.
* **value range** (``value_bound``): the critic's Q on start states (in env reward units) within
  the discounted returns the rewards allow. The critic bootstraps through time-limit
  truncations, so its fixed point is an infinite-horizon sum with the episode possibly ending at
  any step: with the data's rewards in ``[r_min, r_max]`` it lies in
  ``[min(r_min, r_min / (1 - gamma)), max(r_max, r_max / (1 - gamma))]``. Outside that range
  (plus ``value_bound_tolerance`` of its width), or not finite, no Bellman backup of these
  rewards can have produced it: the critic has diverged. The range is widened to reach the
  critic's starting level (below), so a critic that has barely moved is not called diverged.
* **Q vs achieved** (``max_q_overestimation``): the critic's Q(start) against the discounted
  return the policy achieves from those starts, ``G``. A critic starts at ``Q0`` (its networks'
  output near 0, in env units ``-reward_shift / ((1 - gamma) reward_scale)``) and moves
  towards its targets. So:

  - ``Q <= G + slack`` (slack ``max(max_q_overestimation x |G|, q_abs_tolerance)``): consistent,
    or pessimistic, or — when ``Q`` lies between ``Q0`` and ``G`` — unconverged (positive-reward
    tasks: Lift's Q 0.5 against an achieved 49.9). Passes, with how much of the way from ``Q0``
    to ``G`` the critic has come.
  - ``Q`` between ``G`` and ``Q0`` (negative-reward tasks, where ``Q0 = 0`` lies above every
    return): the gap is what an unconverged critic shows, not over-optimism (the room's Q -20.7
    covers 43% of an achieved -48.1). It passes and is reported as unconverged — unless the
    critic has demonstrably converged on the data: its Q on the data's own start states and
    actions covers at least ``q_converged`` of the data's discounted return from there. A
    critic that has learnt the data's values yet expects far more of the policy than it gets is
    over-optimistic about the policy's own actions (the offline failure), and fails.
  - ``Q`` above both ``G`` and ``Q0`` (plus slack): no incomplete convergence explains it; the
    critic over-estimates, and fails.

  - An **in-sample** critic (IQL: its value is an upper expectile of Q on the data's own actions,
    so no action outside the data enters a target) is optimistic about the data by design: on
    Lift's poor data its Q on the data's start actions is 2.5x their mean discounted return,
    the level of the data's better episodes. Its Q(start) up to the best discounted return an
    episode of the data achieved (``q_in_sample_ceiling``) is that optimism, not extrapolation
    error: it passes, and says so. Above that ceiling the rules above apply.

  From Q(start) alone an unconverged critic and an over-optimistic one below ``Q0`` look the
  same; the data-side coverage is the evidence that tells them apart, and the messages print it.

A missing piece of evidence fails its criterion when the criterion is required
(``require_simulation`` etc.) and is skipped otherwise, and the decision says which. Every
criterion's message states its value, threshold, verdict and why; the gate stage prints them
all, passed ones too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from o2o.core.stats import mean_difference_se, pooled_rate_se, sample_std


@dataclass(frozen=True)
class Criterion:
    """One check: ``value`` against ``threshold`` in direction ``op`` (``>=`` or ``<=``).

    ``judged=False``: reported with its numbers but not part of the decision (``passed`` is True)."""

    name: str
    value: float | None
    threshold: float | None
    op: str
    passed: bool
    detail: str = ""
    judged: bool = True

    @property
    def margin(self) -> float | None:
        """How far on the right side (positive) or wrong side (negative) of the threshold."""
        if self.value is None or self.threshold is None:
            return None
        return self.value - self.threshold if self.op == ">=" else self.threshold - self.value

    def message(self) -> str:
        if self.value is None:
            return f"{self.name}: {'skipped' if self.passed else 'FAILED'} ({self.detail})"
        if not self.judged:
            return f"{self.name}: reported, not judged: {self.value:.4g} ({self.detail})"
        verdict = "ok" if self.passed else "FAILED"
        by = f", by {abs(self.margin):.4g}" if self.margin is not None else ""
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.name}: {verdict}: {self.value:.4g} {self.op} {self.threshold:.4g} required{by}{extra}"


@dataclass
class GateDecision:
    """Whether the policy may go online, and every reason."""

    passed: bool
    criteria: list[Criterion] = field(default_factory=list)

    @property
    def failed(self) -> list[Criterion]:
        return [c for c in self.criteria if not c.passed]

    def summary(self) -> str:
        if self.passed:
            judged = sum(c.judged for c in self.criteria)
            return f"gate passed ({judged} criteria judged, {len(self.criteria) - judged} reported)"
        return "gate failed: " + "; ".join(c.message() for c in self.failed)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "criteria": [{**asdict(c), "margin": c.margin, "message": c.message()} for c in self.criteria],
        }


@dataclass(frozen=True)
class Evidence:
    """What is known about the policy and its data (``None``: not available)."""

    sim: Mapping[str, float] | None = None  # Evaluator summary: return_mean/std, episodes, success, Q(start), mc_...
    ope_value: float | None = None  # FQE estimate of the discounted return
    data_return_mean: float | None = None  # the dataset's mean episode return
    data_success_rate: float | None = None
    reward_max: float | None = None  # largest reward in the dataset (env units)
    gamma: float = 0.99
    horizon: int | None = None  # episode step limit
    actions_finite: bool | None = None
    actions_in_bounds: bool | None = None
    action_violation: float = 0.0  # largest distance outside the bounds
    data_return_std: float | None = None  # sample standard deviation of the dataset's episode returns
    data_episodes: int | None = None  # how many episodes the data figures are over
    reward_min: float | None = None  # smallest reward in the dataset (env units)
    q_initial: float = 0.0  # the critic's starting level in env units (networks output ~0 before training)
    q_data_start: float | None = None  # the critic's mean Q on the data's start states and recorded actions
    data_discounted_return_mean: float | None = None  # the data's mean discounted return from those starts
    data_discounted_return_max: float | None = None  # the best discounted return an episode of the data achieved
    critic_in_sample: bool = False  # the critic never backs up actions outside the data (IQL)


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(float(v))


def _check(
    name: str, value: float | None, threshold: float | None, op: str, required: bool, missing: str, detail: str = ""
) -> Criterion | None:
    if threshold is None:
        return None
    if value is None:
        return Criterion(name, None, threshold, op, not required, missing + (" (required)" if required else ""))
    if isinstance(value, float) and math.isnan(value):  # measured, and broken: never a pass
        return Criterion(name, None, threshold, op, False, f"{name} is nan")
    ok = value >= threshold if op == ">=" else value <= threshold
    return Criterion(name, float(value), float(threshold), op, bool(ok), detail)


def value_range(reward_min: float, reward_max: float, gamma: float) -> tuple[float, float]:
    """The discounted returns rewards in ``[reward_min, reward_max]`` allow when the critic bootstraps
    through time limits and an episode may end at any step: ``sum_{t<k} gamma^t r_t`` over every ``k >= 1``."""
    lo = reward_min / (1.0 - gamma) if reward_min < 0 else reward_min
    hi = reward_max / (1.0 - gamma) if reward_max > 0 else reward_max
    return lo, hi


def _return_vs_data(g, sim: Mapping[str, float], ev: Evidence, need_sim: bool) -> Criterion | None:
    z = g("return_vs_data_se")
    if z is None or ev.data_return_mean is None:
        return None
    mean_d, margin = float(ev.data_return_mean), float(g("return_vs_data_margin", 0.0) or 0.0)
    n_p = sim.get("episodes")
    sd_p = sample_std(sim.get("return_std"), n_p)
    n_d, sd_d = ev.data_episodes, ev.data_return_std
    slack_margin = margin * abs(mean_d)
    if sd_p is not None and n_p and sd_d is not None and n_d:
        se = mean_difference_se(sd_p, n_p, float(sd_d), n_d)
        how = (
            f"data mean {mean_d:.4g} over {n_d} episodes (sd {sd_d:.3g}), policy over {n_p:.0f} (sd {sd_p:.3g}); "
            f"tolerance {float(z):g} SE = {float(z) * se:.3g}"
        )
    else:
        se = 0.0
        how = f"data mean {mean_d:.4g}; no standard errors (episode counts or deviations unknown): margin only"
    if slack_margin:
        how += f" + {margin:g} x |mean| = {slack_margin:.3g}"
    thr = mean_d - float(z) * se - slack_margin
    c = _check("return_mean vs data", sim.get("return_mean"), thr, ">=", need_sim, "no simulated evaluation", how)
    if c is not None and c.value is not None:
        verdict = "no worse than the data" if c.passed else "worse than the data beyond sampling error"
        c = Criterion(c.name, c.value, c.threshold, c.op, c.passed, f"{verdict}: {how}")
    return c


def _success_vs_data(g, sim: Mapping[str, float], ev: Evidence, need_sim: bool) -> Criterion | None:
    p_d = ev.data_success_rate
    if p_d is None:
        return None
    p_p, n_p, n_d = sim.get("success_rate"), sim.get("episodes"), ev.data_episodes
    z = g("success_vs_data_se")
    se = None
    if p_p is not None and n_p and n_d:
        se = pooled_rate_se(p_p, n_p, p_d, n_d)
    counts = f"data {p_d:.3g} over {n_d} episodes" if n_d else f"data {p_d:.3g}"
    if p_p is not None and n_p:
        counts += f", policy over {n_p:.0f}"
    if z is None:
        if p_p is None:
            return None
        apart = (
            f"; {abs(p_p - p_d) / se:.2g} pooled SE {'below' if p_p < p_d else 'above'}" if se and p_p != p_d else ""
        )
        return Criterion(
            "success_rate vs data",
            float(p_p),
            float(p_d),
            ">=",
            True,
            f"{counts}{apart}; success_vs_data_se is null: the return judges the policy against the data",
            judged=False,
        )
    tol = float(z) * (se or 0.0)
    how = f"{counts}; tolerance {float(z):g} pooled binomial SE = {tol:.3g}"
    return _check("success_rate vs data", p_p, p_d - tol, ">=", need_sim, "no simulated success rate", how)


def _value_range(g, q: float | None, ev: Evidence) -> list[Criterion]:
    if not g("value_bound", True) or ev.reward_max is None:
        return []
    if q is None:
        return [Criterion("Q(start) within the value range", None, None, "<=", True, "the algorithm has no critic")]
    r_min = ev.reward_min if ev.reward_min is not None else None
    lo, hi = value_range(r_min if r_min is not None else -math.inf, ev.reward_max, ev.gamma)
    rewards = f"rewards in [{_g(r_min)}, {ev.reward_max:.4g}], gamma {ev.gamma}"
    span = f"discounted returns lie in [{_g(lo)}, {hi:.4g}] (any episode length)"
    # A critic that has not moved from where it started is unconverged, not diverged (Q vs achieved says so):
    # the range reaches its starting level (a fresh critic under rewards that are all positive sits below r_min).
    q0 = float(ev.q_initial) + 0.0
    if not lo <= q0 <= hi:
        lo, hi = min(lo, q0), max(hi, q0)
        span += f", widened to the critic's starting level {q0:.4g}"
    width = hi - lo if math.isfinite(lo) else abs(hi)
    tol = max(float(g("q_abs_tolerance", 1.0)), float(g("value_bound_tolerance", 0.05)) * width)
    span += f", tolerance {tol:.3g}"
    if not _finite(q):
        return [Criterion("Q(start) within the value range", None, hi + tol, "<=", False, f"Q(start) is {q}: diverged")]
    out = []
    for name, thr, op in (("Q(start) <= max value", hi + tol, "<="), ("Q(start) >= min value", lo - tol, ">=")):
        if not math.isfinite(thr):
            continue
        ok = q <= thr if op == "<=" else q >= thr
        why = "within what the rewards allow" if ok else "outside what any backup of these rewards gives: diverged"
        out.append(Criterion(name, float(q), float(thr), op, bool(ok), f"{why}; {rewards}: {span}"))
    return out


def _g(v: float | None) -> str:
    return "?" if v is None or not math.isfinite(v) else f"{v:.4g}"


def coverage(q: float, target: float, start: float) -> float | None:
    """How much of the way from ``start`` to ``target`` ``q`` has come (1: there); None when they coincide."""
    span = target - start
    return None if abs(span) < 1e-9 else (q - start) / span


def _q_vs_achieved(g, q: float | None, mc: float | None, ev: Evidence) -> Criterion | None:
    rel = g("max_q_overestimation")
    if rel is None or not _finite(mc):
        return None
    name = "Q(start) vs achieved"
    if q is None:
        return Criterion(name, None, None, "<=", True, "the algorithm has no critic")
    if not _finite(q):
        return Criterion(name, None, None, "<=", False, f"Q(start) is {q}: diverged")
    q0 = float(ev.q_initial) + 0.0  # -0.0 (no reward shift) prints as 0
    mc = float(mc)  # type: ignore[arg-type]
    slack = max(float(g("q_abs_tolerance", 1.0)), float(rel) * abs(mc))
    cov = coverage(q, mc, q0)
    cov_txt = f"{cov:.0%}" if cov is not None else "-"
    data_cov = None
    data_txt = ""
    if _finite(ev.q_data_start) and _finite(ev.data_discounted_return_mean):
        data_cov = coverage(float(ev.q_data_start), float(ev.data_discounted_return_mean), q0)  # type: ignore[arg-type]
        if data_cov is not None:
            data_txt = (
                f"; on the data's own start actions Q {ev.q_data_start:.4g} covers {data_cov:.0%} of their "
                f"discounted return {ev.data_discounted_return_mean:.4g}"
            )
    conv = float(g("q_converged", 0.8))
    converged_on_data = data_cov is not None and data_cov >= conv
    base = f"achieved discounted return {mc:.4g}, critic's starting level {q0:.4g}, slack {slack:.3g}"
    if q <= mc + slack:
        if cov is not None and 0.0 <= cov < conv:
            why = f"unconverged, not over-optimistic: Q(start) {q:.4g} covers {cov_txt} of the achieved {mc:.4g}"
        elif q < mc - slack:
            why = f"pessimistic: Q(start) {q:.4g} below the achieved {mc:.4g}"
        else:
            why = f"consistent with what the policy achieves ({cov_txt} of the way from {q0:.4g})"
        return Criterion(name, q, mc + slack, "<=", True, f"{why}{data_txt}; {base}")
    if q <= max(mc, q0) + slack and not converged_on_data:
        why = (
            f"unconverged, not over-optimistic: Q(start) {q:.4g} covers {cov_txt} of the achieved {mc:.4g} "
            f"from the critic's starting level {q0:.4g}"
        )
        if data_cov is not None:
            data_txt += f" (below {conv:.0%}: not converged on the data either)"
        return Criterion(name, q, max(mc, q0) + slack, "<=", True, f"{why}{data_txt}; {base}")
    ceiling = ev.data_discounted_return_max
    if bool(g("q_in_sample_ceiling", True)) and ev.critic_in_sample and _finite(ceiling) and q <= ceiling + slack:  # type: ignore[operator]
        why = (
            f"optimistic within the data, not extrapolating: an in-sample critic (no action outside the data enters "
            f"its targets) expects Q(start) {q:.4g}, no more than the best discounted return an episode of the data "
            f"achieved from its start ({ceiling:.4g}); the policy achieves {mc:.4g} of it"
        )
        return Criterion(name, q, float(ceiling) + slack, "<=", True, f"{why}{data_txt}; {base}")  # type: ignore[arg-type]
    if q <= max(mc, q0) + slack:  # between G and Q0, but converged on the data
        why = (
            f"over-optimistic about the policy's own actions: converged on the data ({data_cov:.0%} >= {conv:.0%}) "
            f"yet Q(start) {q:.4g} is {q - mc:.3g} above what the policy achieves"
        )
        return Criterion(name, q, mc + slack, "<=", False, f"{why}{data_txt}; {base}")
    why = f"over-optimistic: Q(start) {q:.4g} above both what the policy achieves and the critic's starting level"
    return Criterion(name, q, max(mc, q0) + slack, "<=", False, f"{why}{data_txt}; {base}")


def decide(cfg: Mapping[str, Any], ev: Evidence) -> GateDecision:
    """The gate's decision on ``ev`` under ``cfg`` (``configs/gate``)."""
    g = lambda k, d=None: cfg.get(k, d)  # noqa: E731
    sim = ev.sim or {}
    need_sim = bool(g("require_simulation", True))
    out: list[Criterion | None] = []
    no_sim = "no simulated evaluation"
    out.append(_check("success_rate", sim.get("success_rate"), g("min_success"), ">=", need_sim, no_sim))
    out.append(_check("return_mean", sim.get("return_mean"), g("min_return"), ">=", need_sim, no_sim))
    out.append(_return_vs_data(g, sim, ev, need_sim))
    out.append(_success_vs_data(g, sim, ev, need_sim))
    out.append(
        _check("ope_value", ev.ope_value, g("min_ope_value"), ">=", bool(g("require_ope", False)), "no OPE estimate")
    )
    q = sim.get("q_start_mean")
    out += _value_range(g, q, ev)
    out.append(_q_vs_achieved(g, q, sim.get("mc_discounted_return_mean"), ev))
    if g("check_actions", True):
        out.append(
            _check(
                "actions finite",
                None if ev.actions_finite is None else float(ev.actions_finite),
                1.0,
                ">=",
                True,
                "no actions checked",
                "every action on recorded observations" if ev.actions_finite else "NaN or infinite actions",
            )
        )
        out.append(
            _check(
                "actions within bounds",
                ev.action_violation if ev.actions_in_bounds is not None else None,
                float(g("action_tolerance", 1e-6)),
                "<=",
                True,
                "no actions checked",
                "largest distance outside the action bounds",
            )
        )
    criteria = [c for c in out if c is not None]
    return GateDecision(all(c.passed for c in criteria), criteria)
