"""Cal-QL: the Monte-Carlo return-to-go it is calibrated with, the bounded penalty, and what
calibration does to the learned Q compared with plain CQL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from o2o.datasets import EpisodeStore
from o2o.pipeline.config import load_config
from o2o.pipeline.stages.pretrain import pretrain
from o2o.policies.algos import losses as L
from o2o.policies.algos.base import Scratch
from o2o.policies.data import MCBatch, TensorReplay, return_to_go
from o2o.policies.training import build_module


# ---------------------------------------------------------------------------- return-to-go by hand
def test_return_to_go_of_a_terminated_episode():
    # gamma 0.5, rewards 1, 2, 3, terminal: G2 = 3, G1 = 2 + 1.5 = 3.5, G0 = 1 + 1.75 = 2.75
    g = return_to_go(np.array([1.0, 2.0, 3.0]), np.zeros(3, int), np.array([0, 0, 1]), gamma=0.5)
    np.testing.assert_allclose(g, [2.75, 3.5, 3.0])


def test_return_to_go_after_a_time_limit_cut():
    r, ep, term = np.array([1.0, 2.0]), np.zeros(2, int), np.zeros(2, bool)
    # zero tail: the truncated sum. G1 = 2, G0 = 1 + 0.5 * 2 = 2
    np.testing.assert_allclose(return_to_go(r, ep, term, 0.5, tail="zero"), [2.0, 2.0])
    # repeat_last: after the cut the last reward 2 continues forever: G1 = 2 / (1 - 0.5) = 4, G0 = 1 + 2 = 3
    np.testing.assert_allclose(return_to_go(r, ep, term, 0.5, tail="repeat_last"), [3.0, 4.0])
    # A failed sparse episode (constant reward -1): -1 / (1 - gamma) at every step, Cal-QL's rule.
    np.testing.assert_allclose(return_to_go(-np.ones(4), np.zeros(4, int), np.zeros(4), 0.9), [-10.0] * 4, rtol=1e-6)


def test_return_to_go_restarts_at_every_episode():
    r = np.array([1.0, 1.0, 5.0, 2.0, 4.0])
    ep = np.array([7, 7, 7, 9, 9])  # store indices, not necessarily 0-based or consecutive
    term = np.array([0, 0, 1, 0, 1])
    np.testing.assert_allclose(return_to_go(r, ep, term, 0.5), [1 + 0.5 * (1 + 0.5 * 5), 1 + 2.5, 5, 2 + 2, 4])


def test_return_to_go_refuses_interleaved_episodes():
    with pytest.raises(ValueError, match="not contiguous"):
        return_to_go(np.ones(3), np.array([0, 1, 0]), np.zeros(3), 0.9)
    with pytest.raises(ValueError, match="tail must be"):
        return_to_go(np.ones(3), np.zeros(3), np.zeros(3), 0.9, tail="bootstrap")


# ---------------------------------------------------------------------------- the calibrated penalty
def test_calibrated_soft_max_by_hand():
    # One critic, one state, one proposal of each kind, 1-D actions (uniform density 0.5).
    q_uni, q_pi, q_next = torch.zeros(1, 1, 1), torch.full((1, 1, 1), -5.0), torch.full((1, 1, 1), -5.0)
    lp = torch.zeros(1, 1)
    plain = L.cql_logsumexp(q_uni, q_pi, lp, q_next, lp, act_dim=1)
    # log(exp(0 - log 0.5) + exp(-5) + exp(-5)) = log(2 + 2 e^-5)
    assert plain.item() == pytest.approx(math.log(2 + 2 * math.exp(-5)), rel=1e-6)
    mc = torch.tensor([2.0])  # the data's return from this state: the policy's Q may not be pushed below it
    bounded = L.cql_logsumexp(q_uni, L.calql_lower_bound(q_pi, mc), lp, L.calql_lower_bound(q_next, mc), lp, act_dim=1)
    assert bounded.item() == pytest.approx(math.log(2 + 2 * math.exp(2)), rel=1e-6)  # = 2.8203
    # A bound below Q changes nothing; -inf (an online row whose episode is still running) neither.
    for low in (-10.0, -math.inf):
        same = L.cql_logsumexp(
            q_uni,
            L.calql_lower_bound(q_pi, torch.tensor([low])),
            lp,
            L.calql_lower_bound(q_next, torch.tensor([low])),
            lp,
            act_dim=1,
        )
        assert same.item() == pytest.approx(plain.item(), rel=1e-6)


def test_bounded_values_get_no_push_down_gradient():
    q_pi = torch.tensor([[[-5.0, 3.0]]], requires_grad=True)  # [n=1, B=1, K=2]: one below the bound, one above
    bounded = L.calql_lower_bound(q_pi, torch.tensor([0.0]))
    soft = L.cql_logsumexp(
        torch.zeros(1, 1, 1), bounded, torch.zeros(1, 2), torch.zeros(1, 1, 1) - 50, torch.zeros(1, 1), act_dim=1
    )
    soft.sum().backward()
    assert q_pi.grad[0, 0, 0].item() == 0.0 and q_pi.grad[0, 0, 1].item() > 0.0


# ---------------------------------------------------------------------------- on real data
def _module(algo: str, maze_dataset: str, tmp_path, *extra: str):
    cfg = load_config(
        "pretrain",
        [
            "env=pointmaze",
            f"algo={algo}",
            f"dataset.path={maze_dataset}",
            f"run_dir={tmp_path}",
            "algo.hidden=[32,32]",
            "algo.batch_size=64",
            "algo.gamma=0.9",
            *extra,
        ],
    )
    with EpisodeStore.open(maze_dataset) as store:
        module, replay = build_module(cfg, store, store.select())
    return module, replay


def test_calql_replay_carries_each_episodes_return_to_go(maze_dataset, tmp_path):
    module, replay = _module("calql", maze_dataset, tmp_path)
    assert replay.has_mc_returns
    gamma, norm = 0.9, module.norm
    with EpisodeStore.open(maze_dataset) as store:
        row = 0
        for i in range(store.num_episodes):
            ep = store.episode(i)
            r = np.asarray(ep.rewards, np.float64) * norm.reward_scale + norm.reward_shift
            g = 0.0 if ep.terminated else r[-1] / (1 - gamma)  # the default tail: repeat_last
            expected = np.empty(len(r))
            for t in reversed(range(len(r))):
                g = r[t] + gamma * g
                expected[t] = g
            np.testing.assert_allclose(replay.mc_returns[row : row + len(r)].numpy(), expected, rtol=1e-5, atol=1e-4)
            row += len(r)
    assert row == len(replay)
    batch = replay.sample(8)
    assert isinstance(batch, MCBatch) and batch.mc_returns.shape == (8,)


def test_calql_needs_episodes_to_compute_its_returns(maze_dataset, tmp_path):
    module, _ = _module("calql", maze_dataset, tmp_path)
    bare = TensorReplay(module.obs_dim, module.act_dim, 16)
    with pytest.raises(ValueError, match="no episode structure"):
        module.attach_replay(bare)
    with pytest.raises(ValueError, match="carries no mc_returns"):
        module.critic_loss(
            TensorReplay.from_transitions(_plain_transitions(maze_dataset), module.norm).sample(4), Scratch()
        )


def _plain_transitions(path):
    with EpisodeStore.open(path) as store:
        return store.load_transitions(np.arange(2))


@pytest.mark.slow  # over ~5 s: outside the fast tier (pytest -m 'not slow'), in the full suite
def test_calibration_keeps_policy_values_above_the_data_return_where_cql_sinks_below(maze_dataset, tmp_path):
    """Same data, seed and a strong penalty: CQL pushes Q(s, pi(s)) far below the return the data
    achieved from s; Cal-QL's bound stops the push-down there (Nakamoto et al. 2023, fig. 2)."""
    gaps = {}
    for algo in ("cql", "calql"):
        cfg = load_config(
            "pretrain",
            [
                "env=pointmaze",
                f"algo={algo}",
                f"dataset.path={maze_dataset}",
                f"run_dir={tmp_path / algo}",
                "algo.hidden=[32,32]",
                "algo.batch_size=64",
                "algo.gamma=0.9",
                "algo.cql_alpha=50.0",
                "algo.n_actions=4",
                "algo.critic_lr=1e-3",
                "algo.tau=0.1",
                "trainer.max_steps=800",
                "eval.enabled=false",
                "ope.select=false",
                "trainer.progress=false",
            ],
        )
        module = pretrain(cfg).module
        replay, n = module.replay, len(module.replay)
        mc = return_to_go(replay.rewards[:n].numpy(), replay.episode_index, replay.terminals[:n].numpy(), 0.9)
        with torch.no_grad():
            obs = replay.observations[:n]
            q = module.critic(obs, module.actor.act(obs)).min(dim=0).values.numpy()
        gaps[algo] = float(np.mean(q - mc))
    # Measured: CQL -7.0, Cal-QL +4.4 (mean MC return -13.2).
    assert gaps["cql"] < -3.0, gaps  # plain CQL: values well below what the data achieved
    assert gaps["calql"] > -1.0 and gaps["calql"] > gaps["cql"] + 5.0, gaps  # calibrated: not below it
