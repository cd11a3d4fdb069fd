"""Closed loop in simulation: the exported policy through the runtime succeeds as often as the trained policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from o2o.deploy.check import closed_loop_check, run_policy, success_noise
from o2o.deploy.export import ExportRefused
from o2o.pipeline.config import load_config
from o2o.policies.algos.base import load_algorithm

EPISODES = 10


@pytest.fixture(scope="module")
def env_cfg():
    return load_config("pretrain", ["env=pointmaze"]).env


@pytest.fixture(scope="module")
def trained(maze_export):
    policy = load_algorithm(maze_export.checkpoint).policy()

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return policy(torch.as_tensor(obs)).numpy()

    return act


def test_export_records_the_closed_loop_check(maze_export):
    cl = maze_export.closed_loop
    assert cl["episodes"] == 5 and cl["guards"] == {}
    assert cl["trained"]["success_rate"] >= 0.8  # BC on scripted data solves the maze: the check means something
    assert abs(cl["runtime"]["success_rate"] - cl["trained"]["success_rate"]) <= 2 * cl["success_noise"]


def test_runtime_matches_the_trained_policy_in_closed_loop(maze_export, env_cfg, trained):
    out = closed_loop_check(maze_export.out_dir, env_cfg, trained, EPISODES, seed=30_000, max_success_drop=0.2)
    rt, tr = out["runtime"], out["trained"]
    assert tr["success_rate"] >= 0.8
    assert abs(rt["success_rate"] - tr["success_rate"]) <= 2 * success_noise(tr["success_rate"], EPISODES)
    # Same starts, same deterministic policy up to float rounding: the episodes themselves agree.
    assert rt["return_mean"] == pytest.approx(tr["return_mean"], rel=0.02)
    assert out["guards"] == {} and out["inference_median_s"] < 0.05


def test_the_check_judges_the_guards_as_deployed(maze_export, env_cfg, trained):
    # A moderate rate limit bites on the way yet keeps the task solved...
    ok = closed_loop_check(maze_export.out_dir, env_cfg, trained, 4, seed=30_000, max_success_drop=0.25, max_delta=0.2)
    assert ok["guards"]["RATE_LIMITED"] > 0 and ok["runtime"]["success_rate"] >= ok["trained"]["success_rate"] - 0.25
    # ...one too tight for the task (200 steps from rest to full force) is refused.
    with pytest.raises(ExportRefused, match=r"guards that fired: \{'RATE_LIMITED': \d+\}"):
        closed_loop_check(maze_export.out_dir, env_cfg, trained, 4, seed=30_000, max_success_drop=0.25, max_delta=0.005)


def test_a_runtime_that_cannot_act_fails_the_check(maze_export, env_cfg, trained):
    # Every inference misses an impossible deadline: the safe action (zero force) throughout.
    with pytest.raises(ExportRefused, match=r"succeeds in 0\.00 of 4 episodes, the trained policy in 1\.00.*WATCHDOG"):
        with pytest.warns(Warning):
            closed_loop_check(
                maze_export.out_dir, env_cfg, trained, 4, seed=30_000, max_success_drop=0.2, deadline_s=1e-9
            )


def test_the_trained_policy_alone_is_not_a_random_walk(env_cfg, trained):
    zero = run_policy(lambda o: np.zeros((1, 2), np.float32), env_cfg, 4, seed=30_000)
    learned = run_policy(trained, env_cfg, 4, seed=30_000)
    assert zero.success_rate == 0.0 and learned.success_rate >= 0.75
