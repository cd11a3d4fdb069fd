"""The gate: an offline policy goes online only on evidence.

:func:`decide` turns the evidence about a policy (simulated evaluation, OPE, the dataset's
behaviour, the policy's own value estimate, its actions on recorded observations) into a
:class:`GateDecision`: every criterion with its value, its threshold, whether it passed
and by how much. Criteria (``configs/gate/*.yaml``; a null threshold disables one):

* **success / return** in simulation: absolute minimums, and relative to the dataset's
  behaviour (``min_success_vs_data``: at least the data's success rate minus a margin;
  ``min_return_vs_data``: at least the data's mean return minus a margin in
  ``|mean return|`` units).
* **OPE**: the FQE estimate of the policy's discounted return at least ``min_ope_value``.
* **value sanity**: the policy's own Q on start states must not exceed what rewards allow
  (``r_max * (1 - gamma^H) / (1 - gamma)`` from the dataset's largest reward and the
  episode limit), nor the discounted return it actually achieves by more than
  ``max_q_overestimation`` (relative to ``|achieved|``, at least ``q_abs_tolerance``):
  diverged or over-optimistic critics (naive offline SAC) fail here.
* **action sanity**: every action on recorded observations finite and within bounds.

A missing piece of evidence fails its criterion when the criterion is required
(``require_simulation`` etc.) and is skipped otherwise, and the decision says which.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Criterion:
    """One check: ``value`` against ``threshold`` in direction ``op`` (``>=`` or ``<=``)."""

    name: str
    value: float | None
    threshold: float | None
    op: str
    passed: bool
    detail: str = ""

    @property
    def margin(self) -> float | None:
        """How far on the right side (positive) or wrong side (negative) of the threshold."""
        if self.value is None or self.threshold is None:
            return None
        return self.value - self.threshold if self.op == ">=" else self.threshold - self.value

    def message(self) -> str:
        if self.value is None:
            return f"{self.name}: {'skipped' if self.passed else 'FAILED'} ({self.detail})"
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
            return f"gate passed ({len(self.criteria)} criteria)"
        return "gate failed: " + "; ".join(c.message() for c in self.failed)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "criteria": [{**asdict(c), "margin": c.margin, "message": c.message()} for c in self.criteria],
        }


@dataclass(frozen=True)
class Evidence:
    """What is known about the policy and its data (``None``: not available)."""

    sim: Mapping[str, float] | None = None  # Evaluator summary: return_mean, success_rate, q_start_mean, mc_...
    ope_value: float | None = None  # FQE estimate of the discounted return
    data_return_mean: float | None = None  # the dataset's mean episode return
    data_success_rate: float | None = None
    reward_max: float | None = None  # largest reward in the dataset (env units)
    gamma: float = 0.99
    horizon: int | None = None  # episode step limit
    actions_finite: bool | None = None
    actions_in_bounds: bool | None = None
    action_violation: float = 0.0  # largest distance outside the bounds


def _check(
    name: str, value: float | None, threshold: float | None, op: str, required: bool, missing: str, detail: str = ""
) -> Criterion | None:
    if threshold is None:
        return None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Criterion(name, None, threshold, op, not required, missing + (" (required)" if required else ""))
    ok = value >= threshold if op == ">=" else value <= threshold
    return Criterion(name, float(value), float(threshold), op, bool(ok), detail)


def value_upper_bound(reward_max: float, gamma: float, horizon: int | None) -> float:
    """The largest discounted return rewards allow: ``r_max (1 - gamma^H) / (1 - gamma)``."""
    if horizon is None:
        return reward_max / (1.0 - gamma)
    return reward_max * (1.0 - gamma**horizon) / (1.0 - gamma)


def decide(cfg: Mapping[str, Any], ev: Evidence) -> GateDecision:
    """The gate's decision on ``ev`` under ``cfg`` (``configs/gate``)."""
    g = lambda k, d=None: cfg.get(k, d)  # noqa: E731
    sim = ev.sim or {}
    need_sim = bool(g("require_simulation", True))
    out: list[Criterion | None] = []
    no_sim = "no simulated evaluation"
    out.append(_check("success_rate", sim.get("success_rate"), g("min_success"), ">=", need_sim, no_sim))
    out.append(_check("return_mean", sim.get("return_mean"), g("min_return"), ">=", need_sim, no_sim))
    if g("min_success_vs_data") is not None and ev.data_success_rate is not None:
        out.append(
            _check(
                "success_rate vs data",
                sim.get("success_rate"),
                ev.data_success_rate - float(g("min_success_vs_data")),
                ">=",
                need_sim,
                no_sim,
                f"data success {ev.data_success_rate:.3g} minus margin {g('min_success_vs_data')}",
            )
        )
    if g("min_return_vs_data") is not None and ev.data_return_mean is not None:
        thr = ev.data_return_mean - float(g("min_return_vs_data")) * abs(ev.data_return_mean)
        out.append(
            _check(
                "return_mean vs data",
                sim.get("return_mean"),
                thr,
                ">=",
                need_sim,
                no_sim,
                f"data mean {ev.data_return_mean:.4g} minus {g('min_return_vs_data')} x |mean|",
            )
        )
    out.append(
        _check("ope_value", ev.ope_value, g("min_ope_value"), ">=", bool(g("require_ope", False)), "no OPE estimate")
    )

    q = sim.get("q_start_mean")
    if g("value_bound", True) and ev.reward_max is not None:
        bound = value_upper_bound(ev.reward_max, ev.gamma, ev.horizon) + float(g("q_abs_tolerance", 1.0))
        out.append(
            _check(
                "Q(start) <= reward bound",
                q,
                bound,
                "<=",
                False,
                "the algorithm has no critic",
                f"r_max {ev.reward_max:.4g}, gamma {ev.gamma}, horizon {ev.horizon}",
            )
        )
    mc = sim.get("mc_discounted_return_mean")
    if g("max_q_overestimation") is not None and mc is not None:
        slack = max(float(g("q_abs_tolerance", 1.0)), float(g("max_q_overestimation")) * abs(mc))
        out.append(
            _check(
                "Q(start) vs achieved",
                q,
                mc + slack,
                "<=",
                False,
                "the algorithm has no critic",
                f"achieved discounted return {mc:.4g} + {slack:.4g}",
            )
        )
    if g("check_actions", True):
        out.append(
            _check(
                "actions finite",
                None if ev.actions_finite is None else float(ev.actions_finite),
                1.0,
                ">=",
                True,
                "no actions checked",
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
