"""The offline/online batch mix: rows drawn from each part follow the configured ratio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from o2o.policies.data import MCBatch, Normalization, TensorReplay
from o2o.policies.online import MixedReplay, RatioSchedule

NORM = Normalization.identity(3, -np.ones(2), np.ones(2))


def buffer(rows: int, reward: float, capacity: int | None = None, seed: int = 0) -> TensorReplay:
    """A real replay buffer whose rows all carry ``reward`` (so a batch's rows can be told apart)."""
    buf = TensorReplay(3, 2, capacity or rows, seed=seed)
    if rows:
        buf.add_raw(
            np.random.default_rng(seed).normal(size=(rows, 3)),
            np.zeros((rows, 2)),
            np.full(rows, reward),
            np.zeros((rows, 3)),
            np.zeros(rows),
            np.zeros(rows),
            NORM,
        )
    return buf


def online_rows(batch) -> int:
    return int(batch.rewards.sum().item())  # online rows have reward 1, offline rows 0


def test_fixed_ratio_draws_that_share_of_every_batch_from_the_online_rows():
    mixed = MixedReplay(buffer(500, 0.0), buffer(40, 1.0, seed=1), RatioSchedule(0.25, 0.25))
    for _ in range(5):
        batch = mixed.sample(64)
        assert len(batch) == 64 and online_rows(batch) == 16
    assert mixed.rows == {"offline": 5 * 48, "online": 5 * 16}


def test_annealed_ratio_goes_linearly_from_start_to_end_then_stays():
    mixed = MixedReplay(buffer(500, 0.0), buffer(40, 1.0, seed=1), RatioSchedule(1.0, 0.0, anneal=4))
    counts = [online_rows(mixed.sample(40)) for _ in range(6)]
    assert counts == [40, 30, 20, 10, 0, 0]


def test_all_offline_until_the_online_buffer_holds_a_row():
    online = buffer(0, 1.0, capacity=10)
    mixed = MixedReplay(buffer(100, 0.0), online, RatioSchedule(0.5, 0.5))
    assert online_rows(mixed.sample(32)) == 0 and mixed.rows["online"] == 0
    online.add_raw(np.zeros((1, 3)), np.zeros((1, 2)), [1.0], np.zeros((1, 3)), [0], [0], NORM)
    assert online_rows(mixed.sample(32)) == 16  # the one online row, drawn 16 times


def test_mc_returns_travel_with_both_parts():
    offline, online = buffer(50, 0.0), buffer(5, 1.0, capacity=10, seed=1)
    offline.enable_mc_returns(np.full(50, -3.0))
    with pytest.raises(ValueError, match="both parts must carry MC returns"):
        MixedReplay(offline, online, RatioSchedule(0.5, 0.5))
    online.enable_mc_returns()
    online.set_mc_returns(0, np.full(5, 7.0))
    batch = MixedReplay(offline, online, RatioSchedule(0.5, 0.5)).sample(20)
    assert isinstance(batch, MCBatch)
    assert torch.equal(batch.mc_returns, torch.where(batch.rewards > 0, 7.0, -3.0))


def test_bad_ratios_and_mismatched_buffers_are_refused():
    with pytest.raises(ValueError, match=r"ratio.start must be a fraction in \[0, 1\], got 1.5"):
        RatioSchedule(1.5, 0.5)
    with pytest.raises(ValueError, match="differ"):
        MixedReplay(buffer(10, 0.0), TensorReplay(4, 2, 10), RatioSchedule(0.5, 0.5))


def test_exploration_temperature_scales_the_policys_own_deviation():
    from o2o.policies.algos.iql import IQL
    from o2o.policies.online import OnlineInteraction

    module = IQL(3, 2, {"hidden": [16, 16]}, Normalization.identity(3, -2 * np.ones(2), 2 * np.ones(2)).to_dict())
    obs = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)

    def acting(explore: bool, temperature: float) -> np.ndarray:
        cb = OnlineInteraction(
            {}, TensorReplay(3, 2, 10), NORM, print, total_steps=10, explore=explore, temperature=temperature
        )
        torch.manual_seed(1)
        return cb.action(module, obs)

    mode = module.act(obs, deterministic=True)
    torch.manual_seed(1)
    sample = module.act(obs, deterministic=False)
    assert np.abs(sample - mode).mean() > 0.1  # the policy's own noise is not negligible here
    np.testing.assert_allclose(acting(True, 1.0), sample)
    np.testing.assert_allclose(acting(True, 0.25), mode + 0.25 * (sample - mode), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(acting(True, 0.0), mode)
    np.testing.assert_allclose(acting(False, 1.0), mode)
    with pytest.raises(ValueError, match=r"explore_temperature must be in \[0, 1\]"):
        OnlineInteraction({}, TensorReplay(3, 2, 10), NORM, print, total_steps=10, temperature=1.5)


def test_rollback_threshold_allows_for_the_evaluations_own_noise():
    """Ten episodes with a return spread of 50 each: the means of two evaluations differ by
    sqrt(2 x 50^2 x 10/9 / 10) = 23.6 (one standard error) by chance, so at se=2 an evaluation 30
    below the pre-finetune 100 is not a collapse (the 10% margin alone would call it one), 50 below is."""
    from o2o.policies.online.safety import RollbackRule, difference_se

    before = {"return_mean": 100.0, "return_std": 50.0, "episodes": 10.0, "success_rate": 0.8}
    after = {"return_mean": 70.0, "return_std": 50.0, "episodes": 10.0, "success_rate": 0.5}
    se = difference_se(before, after, "return_mean")
    assert se == pytest.approx(np.sqrt(2 * 50.0**2 * 10 / 9 / 10))
    rule = RollbackRule(margin=0.1, se=2.0)
    assert rule.threshold(100.0, se) == pytest.approx(100.0 - 2 * se) and 70.0 > rule.threshold(100.0, se)
    assert 50.0 < rule.threshold(100.0, se)
    assert RollbackRule(margin=0.1).threshold(100.0, se) == pytest.approx(90.0)  # se=0: the margin alone
    # A precise evaluation leaves the margin in charge.
    assert RollbackRule(margin=0.1, se=2.0).threshold(100.0, 1.0) == pytest.approx(90.0)
    # Success: pooled binomial, p = 0.65 over 20 episodes.
    assert difference_se(before, after, "success_rate") == pytest.approx(np.sqrt(0.65 * 0.35 * 0.2))
    # Unknown spread or a single episode: no noise term, only the margin.
    assert difference_se(before, after, "length_mean") == 0.0
    assert difference_se({**before, "episodes": 1.0}, after, "return_mean") == 0.0
    with pytest.raises(ValueError, match="rollback.se"):
        RollbackRule(se=-1.0)
