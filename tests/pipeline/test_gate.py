"""The gate's decision on hand-made evidence: which criterion, which threshold, by how much."""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from o2o.pipeline.gate import Evidence, decide, value_upper_bound

CFG = yaml.safe_load(resources.files("o2o.configs").joinpath("gate", "default.yaml").read_text())
GOOD = dict(
    sim={"return_mean": -90.0, "success_rate": 1.0, "q_start_mean": -40.0, "mc_discounted_return_mean": -41.0},
    data_return_mean=-150.0,
    data_success_rate=0.3,
    reward_max=0.0,
    gamma=0.95,
    horizon=60,
    actions_finite=True,
    actions_in_bounds=True,
)


def test_a_good_policy_passes_with_every_criterion_reported():
    d = decide(CFG, Evidence(**GOOD))
    assert d.passed, d.summary()
    names = [c.name for c in d.criteria]
    assert names == [
        "success_rate vs data",
        "return_mean vs data",
        "Q(start) <= reward bound",
        "Q(start) vs achieved",
        "actions finite",
        "actions within bounds",
    ]
    ret = next(c for c in d.criteria if c.name == "return_mean vs data")
    assert ret.threshold == pytest.approx(-165.0) and ret.margin == pytest.approx(75.0)


def test_a_diverged_critic_fails_value_sanity_by_how_much():
    # Naive offline SAC on narrow data (measured: Q(start) -12 vs achieved -55): over-optimistic.
    ev = Evidence(
        **{
            **GOOD,
            "sim": {
                "return_mean": -172.0,
                "success_rate": 0.0,
                "q_start_mean": -12.0,
                "mc_discounted_return_mean": -55.0,
            },
        }
    )
    d = decide(CFG, ev)
    assert not d.passed
    failed = {c.name: c for c in d.failed}
    assert set(failed) == {"success_rate vs data", "return_mean vs data", "Q(start) vs achieved"}
    over = failed["Q(start) vs achieved"]
    assert over.threshold == pytest.approx(-55.0 + 27.5) and over.margin == pytest.approx(-15.5)
    assert "Q(start) vs achieved: FAILED: -12 <= -27.5 required, by 15.5" in d.summary()
    # Rewards bound the value: with r_max 0 no return can exceed 0 (+ tolerance 1).
    d2 = decide(CFG, Evidence(**{**GOOD, "sim": {**GOOD["sim"], "q_start_mean": 350.0}}))
    assert "Q(start) <= reward bound" in {c.name for c in d2.failed}


def test_bad_actions_and_missing_simulation_fail():
    d = decide(CFG, Evidence(**{**GOOD, "actions_finite": False, "actions_in_bounds": False, "action_violation": 0.3}))
    assert {c.name for c in d.failed} == {"actions finite", "actions within bounds"}
    d = decide(CFG, Evidence(**{**GOOD, "sim": None}))
    assert not d.passed and "no simulated evaluation (required)" in d.summary()
    d = decide({**CFG, "require_simulation": False}, Evidence(**{**GOOD, "sim": None}))
    assert d.passed and all(c.value is None for c in d.criteria if "vs data" in c.name)


def test_absolute_thresholds_and_ope():
    cfg = {**CFG, "min_success": 0.9, "min_ope_value": -30.0, "require_ope": True}
    d = decide(cfg, Evidence(**GOOD, ope_value=-45.0))
    assert [c.name for c in d.failed] == ["ope_value"]
    assert d.failed[0].margin == pytest.approx(-15.0)
    assert "no OPE estimate (required)" in decide(cfg, Evidence(**GOOD)).summary()


def test_value_upper_bound():
    assert value_upper_bound(1.0, 0.5, None) == pytest.approx(2.0)
    assert value_upper_bound(1.0, 0.5, 2) == pytest.approx(1.5)
