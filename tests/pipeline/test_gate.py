"""The gate's decision on hand-made evidence: which criterion, which threshold, by how much, and why.

The numbers of the named cases were measured (o2o run, 2 cores): the point-maze room on poor data
(40 random + 10 noisy episodes), naive offline SAC on scripted-only data, IQL on Lift, Reacher."""

from __future__ import annotations

import math
from importlib import resources

import pytest
import yaml

from o2o.pipeline.config import UnknownConfigKeyError, load_config
from o2o.pipeline.gate import Evidence, coverage, decide, value_range

CFG = yaml.safe_load(resources.files("o2o.configs").joinpath("gate", "default.yaml").read_text())
GOOD = dict(
    sim={
        "return_mean": -90.0,
        "return_std": 4.0,
        "episodes": 20.0,
        "success_rate": 1.0,
        "q_start_mean": -40.0,
        "mc_discounted_return_mean": -41.0,
    },
    data_return_mean=-150.0,
    data_return_std=30.0,
    data_episodes=50,
    data_success_rate=0.3,
    reward_min=-3.0,
    reward_max=0.0,
    gamma=0.95,
    horizon=60,
    actions_finite=True,
    actions_in_bounds=True,
)
# o2o run +experiment=room with 40 random + 10 noisy episodes (data success 0.20), IQL 2000 updates.
ROOM_POOR = dict(
    sim={
        "return_mean": -135.33,
        "return_std": 5.285,
        "episodes": 20.0,
        "success_rate": 0.0,
        "q_start_mean": -20.66,
        "mc_discounted_return_mean": -48.08,
    },
    data_return_mean=-150.17,
    data_return_std=33.2,
    data_episodes=50,
    data_success_rate=0.2,
    reward_min=-3.389,
    reward_max=-0.02243,
    gamma=0.95,
    horizon=60,
    actions_finite=True,
    actions_in_bounds=True,
    q_initial=0.0,
    q_data_start=-20.62,
    data_discounted_return_mean=-50.86,
)


def by_name(d) -> dict:
    return {c.name: c for c in d.criteria}


def test_a_good_policy_passes_with_every_criterion_reported():
    d = decide(CFG, Evidence(**GOOD))
    assert d.passed, d.summary()
    assert [c.name for c in d.criteria] == [
        "return_mean vs data",
        "success_rate vs data",
        "Q(start) <= max value",
        "Q(start) >= min value",
        "Q(start) vs achieved",
        "actions finite",
        "actions within bounds",
    ]
    ret = by_name(d)["return_mean vs data"]
    # SE of the difference: sqrt(sd_p^2/n_p + sd_d^2/n_d), sd_p as the sample deviation of 20 episodes.
    se = math.sqrt(4.0**2 * 20 / 19 / 20 + 30.0**2 / 50)
    assert ret.threshold == pytest.approx(-150.0 - 2 * se) and ret.margin == pytest.approx(60.0 + 2 * se)
    assert "tolerance 2 SE = 8.68" in ret.message() and "over 50 episodes" in ret.message()
    assert by_name(d)["success_rate vs data"].judged is False
    assert "consistent with what the policy achieves" in by_name(d)["Q(start) vs achieved"].detail
    assert d.summary() == "gate passed (6 criteria judged, 1 reported)"
    # Every criterion, passed ones too, says value, threshold and verdict in decision.json's form.
    for c in d.to_dict()["criteria"]:
        assert c["message"].startswith(c["name"] + ": ") and c["detail"]


def test_the_room_poor_data_policy_goes_online_with_its_unconverged_critic_reported():
    d = decide(CFG, Evidence(**ROOM_POOR))
    assert d.passed, d.summary()
    c = by_name(d)
    assert c["return_mean vs data"].passed and c["return_mean vs data"].threshold == pytest.approx(-159.9, abs=0.1)
    succ = c["success_rate vs data"]
    assert succ.passed and not succ.judged and succ.value == 0.0 and succ.threshold == 0.2
    assert "data 0.2 over 50 episodes, policy over 20; 2.2 pooled SE below" in succ.message()
    assert succ.message().startswith("success_rate vs data: reported, not judged: 0 (")
    q = c["Q(start) vs achieved"]
    assert q.passed
    assert "unconverged, not over-optimistic: Q(start) -20.66 covers 43% of the achieved -48.08" in q.message()
    assert "on the data's own start actions Q -20.62 covers 41% of their discounted return -50.86" in q.message()


def test_success_vs_data_is_a_statistical_test_when_configured():
    cfg = {**CFG, "success_vs_data_se": 2.0}
    room = by_name(decide(cfg, Evidence(**ROOM_POOR)))["success_rate vs data"]
    # 0/20 vs 10/50: pooled p 1/7, SE 0.0926; 0.2 - 2 SE = 0.015 > 0.
    assert room.judged and not room.passed and room.threshold == pytest.approx(0.2 - 2 * 0.09258, abs=1e-4)
    # Reacher (measured 2026-11-23): 16/20 against the data's 80/80 is 4 SE below: refused.
    reacher = {
        **GOOD,
        "sim": {**GOOD["sim"], "success_rate": 0.8},
        "data_success_rate": 1.0,
        "data_episodes": 80,
    }
    d = decide(cfg, Evidence(**reacher))
    assert [c.name for c in d.failed] == ["success_rate vs data"]
    assert "tolerance 2 pooled binomial SE = 0.098" in d.failed[0].message()
    assert decide(CFG, Evidence(**reacher)).passed  # by default the return judges, success is reported


def test_a_clearly_worse_policy_is_refused_on_return():
    # Naive offline SAC on 20 scripted episodes (1000 updates): return -167.4 against the data's -91.1.
    sac = dict(
        sim={
            "return_mean": -167.4,
            "return_std": 6.0,
            "episodes": 5.0,
            "success_rate": 0.0,
            "q_start_mean": -4.83,
            "mc_discounted_return_mean": -53.19,
        },
        data_return_mean=-91.12,
        data_return_std=3.5,
        data_episodes=20,
        data_success_rate=1.0,
        reward_min=-2.97,
        reward_max=-0.0857,
        gamma=0.95,
        horizon=60,
        actions_finite=True,
        actions_in_bounds=True,
        q_data_start=-5.2,
        data_discounted_return_mean=-41.0,
    )
    d = decide(CFG, Evidence(**sac))
    assert not d.passed and [c.name for c in d.failed] == ["return_mean vs data"]
    assert "worse than the data beyond sampling error" in d.failed[0].message()
    assert d.failed[0].threshold > -100 and d.failed[0].margin < -60
    # Its critic moves from 0 towards the achieved return and covers 13% of the data's own: unconverged.
    assert "unconverged" in by_name(d)["Q(start) vs achieved"].detail
    # A margin-only comparison without standard errors still judges (old records lack them).
    old = decide(CFG, Evidence(**{**sac, "data_return_std": None}))
    assert "no standard errors" in by_name(old)["return_mean vs data"].detail and not old.passed


def test_a_diverged_critic_fails_on_either_side_of_the_value_range_and_when_not_finite():
    lo, hi = value_range(-3.0, 0.0, 0.95)
    assert (lo, hi) == (pytest.approx(-60.0), 0.0)
    tol = 0.05 * 60.0
    up = decide(CFG, Evidence(**{**GOOD, "sim": {**GOOD["sim"], "q_start_mean": 350.0}}))
    assert not up.passed and {"Q(start) <= max value", "Q(start) vs achieved"} <= {c.name for c in up.failed}
    c = by_name(up)["Q(start) <= max value"]
    assert c.threshold == pytest.approx(hi + tol) and "diverged" in c.detail
    down = decide(CFG, Evidence(**{**GOOD, "sim": {**GOOD["sim"], "q_start_mean": -5000.0}}))
    assert [c.name for c in down.failed] == ["Q(start) >= min value"]
    assert by_name(down)["Q(start) >= min value"].threshold == pytest.approx(lo - tol)
    nan = decide(CFG, Evidence(**{**GOOD, "sim": {**GOOD["sim"], "q_start_mean": float("nan")}}))
    assert {c.name for c in nan.failed} == {"Q(start) within the value range", "Q(start) vs achieved"}
    assert "Q(start) is nan: diverged" in nan.summary()
    # Positive rewards: the ceiling is r_max / (1 - gamma).
    assert value_range(0.0, 1.0, 0.99) == (0.0, pytest.approx(100.0))
    assert value_range(0.5, 1.0, 0.9) == (0.5, pytest.approx(10.0))
    # Rewards all well above 0: a fresh critic (Q near its starting level 0) is below r_min yet not diverged.
    alive = dict(
        GOOD,
        sim={**GOOD["sim"], "return_mean": -90.0, "q_start_mean": 0.3, "mc_discounted_return_mean": 15.0},
        reward_min=10.0,
        reward_max=10.1,
        gamma=0.5,
    )
    d = decide(CFG, Evidence(**alive))
    low = by_name(d)["Q(start) >= min value"]
    assert (
        d.passed
        and low.threshold == pytest.approx(-0.05 * 20.2)
        and "widened to the critic's starting level 0" in low.detail
    )
    assert not decide(CFG, Evidence(**{**alive, "sim": {**alive["sim"], "q_start_mean": -3.0}})).passed
    # A measured NaN return fails even where the simulation is not required.
    nan_ret = decide(
        {**CFG, "require_simulation": False}, Evidence(**{**GOOD, "sim": {**GOOD["sim"], "return_mean": float("nan")}})
    )
    assert [c.name for c in nan_ret.failed] == [
        "return_mean vs data"
    ] and "return_mean vs data is nan" in nan_ret.summary()


def test_positive_rewards_an_unconverged_critic_passes_an_overestimating_one_fails():
    # IQL on Lift: Q(start) 0.5 against an achieved 49.9 (rewards in [0, 1], gamma 0.99).
    lift = dict(
        GOOD,
        sim={**GOOD["sim"], "return_mean": 170.0, "q_start_mean": 0.5, "mc_discounted_return_mean": 49.9},
        data_return_mean=150.0,
        reward_min=0.0,
        reward_max=1.0,
        gamma=0.99,
        horizon=500,
    )
    d = decide(CFG, Evidence(**lift))
    assert d.passed, d.summary()
    q = by_name(d)["Q(start) vs achieved"]
    assert "unconverged, not over-optimistic: Q(start) 0.5 covers 1% of the achieved 49.9" in q.detail
    over = decide(CFG, Evidence(**{**lift, "sim": {**lift["sim"], "q_start_mean": 90.0}}))
    assert [c.name for c in over.failed] == ["Q(start) vs achieved"]
    c = over.failed[0]
    assert c.threshold == pytest.approx(49.9 * 1.5) and "above both what the policy achieves" in c.detail


def test_an_in_sample_critic_may_expect_what_the_datas_best_episodes_achieved():
    """Measured (bench_o2o lift_poor, Lift on OSC_POSITION, 15 noisy + 25 random episodes, IQL seed 1):
    Q(start) 38.66 against an achieved 22.39; on the data's start actions Q 39.55 against their mean
    discounted return 16.15 (245%: the expectile's optimism, the level of the data's better episodes)."""
    ev = dict(
        GOOD,
        sim={**GOOD["sim"], "return_mean": 54.0, "q_start_mean": 38.66, "mc_discounted_return_mean": 22.39},
        data_return_mean=48.8,
        reward_min=0.0,
        reward_max=2.25,
        gamma=0.99,
        horizon=200,
        q_data_start=39.55,
        data_discounted_return_mean=16.15,
        data_discounted_return_max=45.0,
    )
    # Without knowing the critic is in-sample: above what the policy achieves, over-optimistic.
    d = decide(CFG, Evidence(**ev))
    assert [c.name for c in d.failed] == ["Q(start) vs achieved"] and "over-optimistic" in d.failed[0].detail
    # IQL's critic: within the best discounted return of the data's episodes, it passes and says why.
    d = decide(CFG, Evidence(**ev, critic_in_sample=True))
    c = by_name(d)["Q(start) vs achieved"]
    assert d.passed and c.threshold == pytest.approx(45.0 + 0.5 * 22.39)
    assert "optimistic within the data, not extrapolating" in c.detail and "(45)" in c.detail
    # Past that ceiling (plus the slack) the critic extrapolates: it fails as before.
    d = decide(CFG, Evidence(**{**ev, "sim": {**ev["sim"], "q_start_mean": 60.0}}, critic_in_sample=True))
    assert [c.name for c in d.failed] == ["Q(start) vs achieved"] and "over-optimistic" in d.failed[0].detail
    # The ceiling can be switched off.
    d = decide({**CFG, "q_in_sample_ceiling": False}, Evidence(**ev, critic_in_sample=True))
    assert not d.passed


def test_a_critic_converged_on_the_data_yet_optimistic_about_the_policy_fails():
    # Negative rewards: Q(start) -12 lies between the achieved -55 and the starting level 0, which an
    # unconverged critic would explain; but on the data's own start actions it is at -40 of -41 (98%).
    ev = dict(
        GOOD,
        sim={**GOOD["sim"], "q_start_mean": -12.0, "mc_discounted_return_mean": -55.0},
        q_data_start=-40.0,
        data_discounted_return_mean=-41.0,
    )
    d = decide(CFG, Evidence(**ev))
    assert [c.name for c in d.failed] == ["Q(start) vs achieved"]
    c = d.failed[0]
    assert c.threshold == pytest.approx(-55.0 + 27.5) and c.margin == pytest.approx(-15.5)
    assert "over-optimistic about the policy's own actions: converged on the data (98% >= 80%)" in c.message()
    # The same Q(start) with a critic that has not converged on the data either: reported, passes.
    d2 = decide(CFG, Evidence(**{**ev, "q_data_start": -8.0}))
    assert d2.passed and "covers 20% of their discounted return" in by_name(d2)["Q(start) vs achieved"].detail


def test_the_starting_level_follows_the_reward_shift():
    # A standardised reward (shift != 0) puts a fresh critic at -shift / ((1 - gamma) scale), not at 0.
    ev = dict(GOOD, sim={**GOOD["sim"], "q_start_mean": -20.0, "mc_discounted_return_mean": -55.0})
    assert decide(CFG, Evidence(**{**ev, "q_initial": 0.0})).passed  # between -55 and 0: unconverged
    d = decide(CFG, Evidence(**{**ev, "q_initial": -60.0}))  # started below: -20 is above both (+ slack 27.5)
    assert [c.name for c in d.failed] == ["Q(start) vs achieved"]
    assert coverage(-30.0, -55.0, 0.0) == pytest.approx(30 / 55) and coverage(1.0, 2.0, 2.0) is None


def test_bad_actions_and_missing_simulation_fail():
    d = decide(CFG, Evidence(**{**GOOD, "actions_finite": False, "actions_in_bounds": False, "action_violation": 0.3}))
    assert {c.name for c in d.failed} == {"actions finite", "actions within bounds"}
    assert "NaN or infinite actions" in d.summary()
    d = decide(CFG, Evidence(**{**GOOD, "sim": None}))
    assert not d.passed and "no simulated evaluation (required)" in d.summary()
    d = decide({**CFG, "require_simulation": False}, Evidence(**{**GOOD, "sim": None}))
    assert d.passed and by_name(d)["return_mean vs data"].value is None
    assert "the algorithm has no critic" in by_name(d)["Q(start) within the value range"].message()


def test_absolute_thresholds_and_ope():
    cfg = {**CFG, "min_success": 0.9, "min_ope_value": -30.0, "require_ope": True}
    d = decide(cfg, Evidence(**GOOD, ope_value=-45.0))
    assert [c.name for c in d.failed] == ["ope_value"]
    assert d.failed[0].margin == pytest.approx(-15.0)
    assert "no OPE estimate (required)" in decide(cfg, Evidence(**GOOD)).summary()


def test_the_gate_config_refuses_unknown_and_retired_keys():
    cfg = load_config("run", ["gate.success_vs_data_se=2.0", "gate.return_vs_data_margin=0.1"])
    assert cfg.gate.success_vs_data_se == 2.0 and cfg.gate.return_vs_data_se == 2.0
    for key in ("gate.min_success_vs_data=0.1", "gate.min_return_vs_data=0.1", "+gate.return_vs_data=1"):
        with pytest.raises(UnknownConfigKeyError, match="gate"):
            load_config("run", [key])
