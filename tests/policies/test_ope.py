"""Off-policy evaluation: estimator math against hand-computed numbers, FQE against simulation.

The point-maze tests train a small BC policy on mixed data and check FQE's estimate of its
discounted return against the return it achieves in simulation from the same start-state
distribution. Measured (2 CPU threads shared, 20 mixed episodes, 3000 FQE updates, 30
simulated episodes): simulated -159.4 (standard error 3.8), FQE -156.4 / -157.1 / -152.4
for seeds 0 / 1 / 2, i.e. 2-5 % off; the test allows 12 %.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from o2o.datasets import EpisodeStore, Transitions
from o2o.pipeline.config import load_config
from o2o.pipeline.stages.pretrain import pretrain
from o2o.policies.data import Normalization, TensorReplay
from o2o.policies.ope import estimators as E
from o2o.policies.ope.config import OPEConfig
from o2o.policies.ope.data import OPEData, TargetPolicy
from o2o.policies.ope.fqe import fit_fqe
from o2o.policies.ope.importance import fit_behavior, importance_estimates, target_log_prob
from o2o.policies.ope.selection import describe_choice, evaluate_policy, select_by_ope


@pytest.fixture(autouse=True)
def one_thread():
    # Small networks on 2 shared cores: a second intra-op thread only adds contention.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------- hand-computed numbers
def test_fqe_target_and_loss():
    r = torch.tensor([1.0, 1.0])
    next_q = torch.tensor([[2.0, 2.0], [4.0, 4.0]])  # 2 members x 2 rows
    keep = torch.tensor([1.0, 0.0])  # the second row is terminal (or at the horizon)
    y = E.fqe_target(r, next_q, keep, gamma=0.5)
    assert y.tolist() == [[2.0, 1.0], [3.0, 1.0]]  # each member bootstraps from its own target
    # K sampled target actions are averaged: (2 + 6) / 2 = 4 -> 1 + 0.5 * 4.
    y3 = E.fqe_target(r[:1], torch.tensor([[[2.0, 6.0]]]), keep[:1], 0.5)
    assert y3.tolist() == [[3.0]]
    loss = E.fqe_loss(torch.tensor([[3.0, 1.0], [3.0, 3.0]]), y)
    assert loss.item() == pytest.approx((1.0 + 0.0) / 2 + (0.0 + 4.0) / 2)


def tiny_data(gamma_rewards=(1.0, 2.0, 3.0)) -> OPEData:
    """Episode A: 2 steps (rewards 1, 2, cut by the time limit); episode B: 1 step (reward 3, terminal)."""
    tr = Transitions(
        observations=np.array([[0.0], [1.0], [5.0]], np.float32),
        actions=np.zeros((3, 1), np.float32),
        rewards=np.array(gamma_rewards, np.float32),
        next_observations=np.array([[1.0], [2.0], [6.0]], np.float32),
        terminals=np.array([0, 0, 1], np.float32),
        timeouts=np.array([0, 1, 0], np.float32),
        episode_index=np.array([7, 7, 9]),
    )
    return OPEData.from_transitions(tr, [-1.0], [1.0], norm=Normalization.identity(1, [-1.0], [1.0]))


def test_episode_layout():
    d = tiny_data()
    assert d.num_episodes == 2 and d.episode.tolist() == [0, 0, 1] and d.step.tolist() == [0, 1, 0]
    assert d.starts.tolist() == [0, 2] and d.lengths.tolist() == [2, 1]
    pad, mask = d.padded(d.rewards)
    assert pad.tolist() == [[1.0, 2.0], [3.0, 0.0]] and mask.tolist() == [[True, True], [True, False]]


def test_importance_estimators_hand_computed():
    # ratios: A (2, 0.5) -> w = (2, 1); B (4) -> w = 4, carried through the absorbing state.
    d = tiny_data()
    log_mu = torch.zeros(3)
    log_pi = torch.log(torch.tensor([2.0, 0.5, 4.0]))
    q = torch.tensor([0.5, 1.5, 2.0])
    v = torch.tensor([1.0, 1.0, 2.5])
    cfg = OPEConfig(gamma=0.5, step_clip=None, cumulative_clip=None)
    res = importance_estimates(d, log_pi, log_mu, cfg, q, v)
    # PDIS: A = 2*1 + 0.5*1*2 = 3, B = 4*3 = 12 -> 7.5
    assert res.is_value == pytest.approx(7.5)
    # WPDIS: t0 (2*1 + 4*3) / 6 = 7/3; t1 (1*2 + 4*0) / 5 = 0.4 -> 7/3 + 0.5 * 0.4
    assert res.wis_value == pytest.approx(7 / 3 + 0.2)
    # DR: A = [2*(1-0.5) + 1*1] + 0.5*[1*(2-1.5) + 2*1] = 3.25, B = 4*(3-2) + 2.5 = 6.5 -> 4.875
    assert res.dr_value == pytest.approx(4.875)
    # ESS of final weights (1, 4): 25 / 17.
    assert res.ess == pytest.approx(25 / 17)
    assert res.clipped_step_fraction == 0.0 and res.clipped_cumulative_fraction == 0.0

    # Clipping: per-step ratios at 3 (B's 4 -> 3), then cumulative weights at 1.5 (A's 2 -> 1.5).
    clipped = importance_estimates(d, log_pi, log_mu, OPEConfig(gamma=0.5, step_clip=3.0, cumulative_clip=1.5), q, v)
    # A: w = (1.5, 1) -> 1.5 + 0.5*2 = 2.5; B: w = 1.5 -> 4.5; mean 3.5
    assert clipped.is_value == pytest.approx(3.5)
    assert clipped.clipped_step_fraction == pytest.approx(1 / 3)
    assert clipped.clipped_cumulative_fraction == pytest.approx(2 / 3)

    # A horizon of 1 step counts only t = 0: PDIS (2*1 + 4*3) / 2, WIS 14 / 6.
    short = importance_estimates(
        d, log_pi, log_mu, OPEConfig(gamma=0.5, horizon=1, step_clip=None, cumulative_clip=None)
    )
    assert short.is_value == pytest.approx(7.0) and short.wis_value == pytest.approx(7 / 3)

    # DR's tail: A was cut by the time limit, V(s_2) = 10 adds gamma^2 * w_1 * 10 = 2.5 to A -> mean +1.25.
    tail = importance_estimates(d, log_pi, log_mu, cfg, q, v, v_next=torch.tensor([0.0, 10.0, 0.0]))
    assert tail.dr_value == pytest.approx(4.875 + 1.25)


def test_bootstrap_intervals_over_episodes_hand_computed():
    # Per-episode values of test_importance_estimators_hand_computed: PDIS A = 3, B = 12; DR A = 3.25, B = 6.5;
    # a draw holds {A, A}, {A, B} or {B, B} (probabilities 1/4, 1/2, 1/4), so the central 95% of the draws'
    # means runs from the all-A to the all-B value. WIS of {A, A} is A's return 1 + 0.5 * 2 = 2, of {B, B} 3.
    d = tiny_data()
    log_pi, log_mu = torch.log(torch.tensor([2.0, 0.5, 4.0])), torch.zeros(3)
    q, v = torch.tensor([0.5, 1.5, 2.0]), torch.tensor([1.0, 1.0, 2.5])
    cfg = OPEConfig(gamma=0.5, step_clip=None, cumulative_clip=None, bootstrap=2000)
    m = importance_estimates(d, log_pi, log_mu, cfg, q, v).metrics()
    assert (m["ope/is_ci_low"], m["ope/is_ci_high"]) == pytest.approx((3.0, 12.0))
    assert (m["ope/dr_ci_low"], m["ope/dr_ci_high"]) == pytest.approx((3.25, 6.5))
    assert (m["ope/wis_ci_low"], m["ope/wis_ci_high"]) == pytest.approx((2.0, 3.0))
    none = importance_estimates(d, log_pi, log_mu, OPEConfig(gamma=0.5, bootstrap=0), q, v).metrics()
    assert not any(k.endswith(("_ci_low", "_ci_high")) for k in none)

    counts = E.bootstrap_counts(5, 300, seed=3)
    assert counts.shape == (300, 5) and (counts.sum(1) == 5).all()
    assert torch.equal(counts, E.bootstrap_counts(5, 300, seed=3)) and not torch.equal(
        counts, E.bootstrap_counts(5, 300, 4)
    )
    assert E.bootstrap_means(torch.tensor([1.0, 5.0]), torch.tensor([[2.0, 0.0], [1.0, 1.0]])).tolist() == [1.0, 3.0]
    # Drawing every episode once is the plain weighted estimate; long horizons stay finite.
    g = torch.Generator().manual_seed(0)
    log_w = torch.randn(5, 7, generator=g, dtype=torch.float64).cumsum(1) * 30
    r, mask = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.rand(5, 7, generator=g) > 0.2
    once = E.weighted_per_decision_is(log_w, r, mask, 0.9, torch.ones(1, 5, dtype=torch.float64))
    assert once.shape == (1,) and once.item() == pytest.approx(E.weighted_per_decision_is(log_w, r, mask, 0.9).item())
    assert torch.isfinite(E.weighted_per_decision_is(log_w, r, mask, 0.9, counts)).all()
    assert E.percentile_interval(torch.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))


def test_on_policy_weights_give_the_discounted_return():
    # pi == mu: every estimator is the mean discounted return (A: 1 + 0.5*2 = 2, B: 3); DR telescopes to it
    # for any model whose V equals Q at the taken action.
    d = tiny_data()
    cfg = OPEConfig(gamma=0.5)
    q = torch.tensor([4.0, -1.0, 7.0])
    res = importance_estimates(d, torch.zeros(3), torch.zeros(3), cfg, q, q.clone())
    assert res.is_value == pytest.approx(2.5) and res.dr_value == pytest.approx(2.5)
    assert res.wis_value == pytest.approx(2.5) and res.ess == pytest.approx(2.0)


def test_log_space_survives_long_horizons():
    log_w, _ = E.cumulative_log_weights(
        torch.full((2, 400), 2.0, dtype=torch.float64), torch.ones(2, 400, dtype=torch.bool)
    )
    assert torch.isfinite(
        E.weighted_per_decision_is(
            log_w, torch.ones(2, 400, dtype=torch.float64), torch.ones(2, 400, dtype=torch.bool), 0.99
        )
    )
    assert E.effective_sample_size(torch.tensor([800.0, 800.0], dtype=torch.float64)).item() == pytest.approx(2.0)
    lp = E.gaussian_log_prob(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), 1.0)
    assert lp.item() == pytest.approx(-math.log(2 * math.pi) - 0.5)


def test_replay_data_infers_episodes_and_undoes_reward_scaling():
    d = tiny_data()
    tr = Transitions(
        observations=np.array([[0.0], [1.0], [5.0]], np.float32),
        actions=np.zeros((3, 1), np.float32),
        rewards=np.array([1.0, 2.0, 3.0], np.float32),
        next_observations=np.array([[1.0], [2.0], [6.0]], np.float32),
        terminals=np.array([0, 0, 0], np.float32),
        timeouts=np.zeros(3, np.float32),
        episode_index=np.array([0, 0, 1]),
    )
    norm = Normalization(
        np.array([1.0], np.float32),
        np.array([2.0], np.float32),
        np.array([-1.0], np.float32),
        np.array([1.0], np.float32),
        reward_scale=0.5,
        reward_shift=-1.0,
    )
    replay = TensorReplay.from_transitions(tr, norm, capacity=10)
    r = OPEData.from_replay(replay, norm)
    # No end flag between the episodes: the broken observation chain (2 != 5) marks the second start.
    assert r.episode.tolist() == d.episode.tolist() and r.step.tolist() == d.step.tolist()
    assert r.rewards.tolist() == pytest.approx([1.0, 2.0, 3.0])
    assert r.raw(r.observations).squeeze(1).tolist() == pytest.approx([0.0, 1.0, 5.0])


def test_bad_input_is_refused_with_its_name():
    with pytest.raises(ValueError, match=r"unknown keys \['fqe_update'\]"):
        OPEConfig.from_mapping({"fqe_update": 10})
    with pytest.raises(ValueError, match="ope.target_std"):
        OPEConfig.from_mapping({"target_std": 0})
    with pytest.raises(ValueError, match="ope.bootstrap must be >= 0"):
        OPEConfig.from_mapping({"bootstrap": -1})
    with pytest.raises(ValueError, match=r"ope.confidence must be in \(0, 1\)"):
        OPEConfig.from_mapping({"confidence": 95})
    d = tiny_data()
    with pytest.raises(ValueError, match="log_mu holds non-finite"):
        importance_estimates(d, torch.zeros(3), torch.tensor([0.0, -math.inf, 0.0]))
    det = TargetPolicy(lambda obs: torch.zeros(obs.shape[0], 1), name="zero")
    with pytest.raises(ValueError, match="'zero' is deterministic"):
        fit_fqe(d, det, OPEConfig(stochastic=True, fqe_updates=1))
    tr = Transitions(**{**tiny_data_fields(), "episode_index": np.array([0, 1, 0])})
    with pytest.raises(ValueError, match="not contiguous"):
        OPEData.from_transitions(tr, [-1.0], [1.0])


def tiny_data_fields() -> dict:
    return dict(
        observations=np.zeros((3, 1), np.float32),
        actions=np.zeros((3, 1), np.float32),
        rewards=np.zeros(3, np.float32),
        next_observations=np.zeros((3, 1), np.float32),
        terminals=np.zeros(3, np.float32),
        timeouts=np.zeros(3, np.float32),
    )


# ---------------------------------------------------------------------- point maze, end to end
SMALL = dict(
    fqe_updates=3000, fqe_hidden=(64, 64), fqe_lr=1e-3, fqe_tau=0.05, behavior_updates=500, behavior_hidden=(64, 64)
)


@pytest.fixture(scope="module")
def bc_run(maze_dataset, tmp_path_factory):
    """A BC policy trained briefly on 20 mixed maze episodes, with checkpoints at 100, 200 and 300 updates."""
    run = tmp_path_factory.mktemp("bc")
    torch.set_num_threads(1)
    cfg = load_config(
        "pretrain",
        [
            "algo=bc",
            "env=pointmaze",
            f"dataset.path={maze_dataset}",
            f"run_dir={run}",
            "algo.hidden=[64,64]",
            "algo.batch_size=64",
            "algo.log_every=100",
            "trainer.max_steps=300",
            "eval.enabled=false",
            "ope.select=false",
            "eval.every=100",
            "trainer.progress=false",
        ],
    )
    return cfg, pretrain(cfg)


@pytest.mark.slow  # over ~5 s: outside the fast tier (pytest -m 'not slow'), in the full suite
def test_fqe_matches_the_simulated_discounted_return(maze_dataset, bc_run):
    from o2o.policies.evaluation import Evaluator

    cfg, res = bc_run
    module = res.module.eval()
    data = OPEData.from_store(maze_dataset)
    policy = TargetPolicy.from_module(module, data.norm)
    ope = OPEConfig(horizon=int(cfg.env.max_episode_steps), gamma=0.99, **SMALL)
    fqe = fit_fqe(data, policy, ope)
    # The dataset's starts and the evaluator's come from the same distribution (other seeds).
    sim = Evaluator(cfg.env, episodes=30, seed=10_000, gamma=0.99)(lambda o: module.act(o))
    truth = float(sim.discounted_returns.mean())
    assert abs(fqe.value - truth) <= 0.12 * abs(truth), (fqe.value, truth)
    assert fqe.start_values.shape == (data.num_episodes,) and fqe.value_std >= 0

    # IS family on the same data: finite, diagnostics in range, DR on FQE's scale.
    behavior = fit_behavior(data, ope)
    est = importance_estimates(
        data, target_log_prob(policy, data, ope), behavior.log_prob(data), ope, fqe.q_taken, fqe.v, fqe.v_next
    )
    m = est.metrics()
    assert all(math.isfinite(m[k]) for k in ("ope/is_value", "ope/wis_value", "ope/dr_value"))
    assert 1.0 <= est.ess <= data.num_episodes
    assert 0.0 <= est.clipped_step_fraction <= 1.0 and 0.0 <= est.clipped_cumulative_fraction <= 1.0
    # WIS is a weighted mean of per-step rewards: it stays within the dataset's discounted-return range.
    with EpisodeStore.open(maze_dataset) as store:
        worst = float(np.min(store.load_transitions().rewards)) / (1 - 0.99)
    assert worst <= est.wis_value <= 0.0


def test_select_by_ope_from_a_store_path_or_the_modules_replay(maze_dataset, bc_run):
    _, res = bc_run
    ckpts = sorted(str(p) for p in Path(res.run_dir, "checkpoints").glob("step-*.ckpt"))
    assert len(ckpts) == 3
    cfg = {**SMALL, "fqe_updates": 300, "horizon": 150}
    best, table = select_by_ope(ckpts, maze_dataset, cfg)
    values = [r["ope/fqe_value"] for r in table]
    assert best == table[int(np.argmax(values))]["checkpoint"] and sum(r["selected"] for r in table) == 1
    assert all(r["ope/is_value"] is None for r in table)  # FQE only unless asked

    module = res.module
    best2, table2 = select_by_ope(ckpts[:2], module.replay, cfg, norm=module.norm, metric="ope/dr_value")
    assert best2 in ckpts[:2] and all(math.isfinite(r["ope/dr_value"]) for r in table2)
    # Same data and seed, other normalisation: FQE lands close to the store-path run.
    assert table2[0]["ope/fqe_value"] == pytest.approx(table[0]["ope/fqe_value"], rel=0.1)


def test_bootstrapped_fqe_refits_widen_the_start_state_interval(maze_dataset, bc_run):
    """The maze has one start state, so resampling FQE's start values gives an interval of almost no
    width; refitting FQE on resampled episodes (ope.fqe_refits) shows the critic's own spread."""
    _, res = bc_run
    data = OPEData.from_store(maze_dataset)
    policy = TargetPolicy.from_module(res.module.eval(), data.norm)
    base = {**SMALL, "fqe_updates": 300, "horizon": 150}
    fixed = evaluate_policy(policy, data, OPEConfig.from_mapping(base), importance=False)
    refit = evaluate_policy(policy, data, OPEConfig.from_mapping({**base, "fqe_refits": 3}), importance=False)
    assert fixed["ope/fqe_value"] == refit["ope/fqe_value"]  # the point estimate is the same fit
    assert "ope/fqe_refits" not in fixed and refit["ope/fqe_refits"] == 3 and refit["ope/fqe_refit_std"] > 0
    width = lambda r: r["ope/fqe_ci_high"] - r["ope/fqe_ci_low"]  # noqa: E731
    assert 0 <= width(fixed) < width(refit), (fixed, refit)
    with pytest.raises(ValueError, match="ope.fqe_refits must be 0"):
        OPEConfig.from_mapping({"fqe_refits": 1})


def test_describe_choice_says_when_the_runner_up_is_inside_the_interval():
    rows = [
        {"checkpoint": "/r/step-10.ckpt", "ope/fqe_value": 5.0, "ope/fqe_ci_low": 4.0, "ope/fqe_ci_high": 6.0},
        {"checkpoint": "/r/step-20.ckpt", "ope/fqe_value": 4.5, "ope/fqe_ci_low": 3.0, "ope/fqe_ci_high": 6.0},
        {"checkpoint": "/r/step-30.ckpt", "ope/fqe_value": float("nan")},
    ]
    assert describe_choice(rows) == (
        "step-10.ckpt 5 [4, 6]; runner-up step-20.ckpt 4.5 [3, 6], inside the chosen one's interval"
    )
    rows[1]["ope/fqe_value"] = 3.5
    assert describe_choice(rows).endswith("runner-up step-20.ckpt 3.5 [3, 6]")
    assert describe_choice([{"checkpoint": "a.ckpt", "ope/dr_value": 1.0}], "ope/dr_value") == "a.ckpt 1"
    assert describe_choice(rows[2:]) == "no finite ope/fqe_value"


def test_resample_keeps_whole_episodes_in_order():
    d = tiny_data()  # A: rows 0-1, B: row 2
    r = d.resample([1, 1, 0])
    assert r.rewards.tolist() == [3.0, 3.0, 1.0, 2.0] and r.starts.tolist() == [0, 1, 2]
    assert r.step.tolist() == [0, 0, 0, 1] and r.timeouts.tolist() == [0.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match=r"resample needs episode indices in \[0, 2\)"):
        d.resample([0, 2])


def test_stochastic_target_uses_its_own_density(maze_dataset):
    from o2o.policies.algos.bc import BC

    data = OPEData.from_store(maze_dataset)
    module = BC(
        data.observations.shape[1],
        data.actions.shape[1],
        {"actor_kind": "gaussian", "hidden": [16, 16]},
        data.norm.to_dict(),
    ).eval()
    policy = TargetPolicy.from_module(module, data.norm)
    assert policy.stochastic
    cfg = OPEConfig(stochastic=True, policy_samples=3, fqe_updates=20, fqe_hidden=(16, 16), horizon=150)
    fqe = fit_fqe(data, policy, cfg)
    assert math.isfinite(fqe.value)
    lp = target_log_prob(policy, data, cfg)
    with torch.no_grad():
        own = module.actor.log_prob(module.normalize_obs(data.raw(data.observations)), data.actions)
    torch.testing.assert_close(lp, own)


def test_numpy_policy_function_is_mapped_to_normalised_actions():
    policy = TargetPolicy.from_numpy(lambda obs: np.tile([0.5, 3.0], (len(obs), 1)), [-1.0, 0.0], [1.0, 2.0])
    assert not policy.stochastic
    a = policy.mean(torch.zeros(4, 6))
    assert a.shape == (4, 2) and a[0].tolist() == [0.5, 1.0]  # 3.0 lies past the bound 2.0: clipped
