"""Observation normalisation: standardised and clipped the same way in every place the networks
are fed (replay rows, acting, the exported policy), and kept in checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from o2o.datasets import EpisodeStore
from o2o.datasets.reading import Transitions
from o2o.pipeline.config import load_config
from o2o.pipeline.stages.pretrain import pretrain
from o2o.policies.algos.base import load_algorithm
from o2o.policies.algos.iql import IQL
from o2o.policies.behavior.learned import weights_hash
from o2o.policies.data import Normalization, TensorReplay, fit_normalization
from o2o.policies.training import build_module


def narrow_transitions(n: int = 200) -> Transitions:
    """Demonstration-like data: feature 0 varies, feature 1 is all but constant (std 1e-4, floored to 1e-3)."""
    rng = np.random.default_rng(0)
    obs = np.stack([rng.normal(0.0, 1.0, n), 0.5 + rng.normal(0.0, 1e-4, n)], axis=1).astype(np.float32)
    z = np.zeros(n, np.float32)
    return Transitions(
        observations=obs,
        actions=rng.uniform(-1, 1, (n, 1)).astype(np.float32),
        rewards=z,
        next_observations=obs,
        terminals=z,
        timeouts=z,
        episode_index=np.zeros(n, np.int64),
    )


def test_a_state_the_data_never_showed_reaches_the_networks_clipped():
    tr = narrow_transitions()
    norm = fit_normalization(tr, [-1.0], [1.0], obs_clip=10.0)
    unclipped = fit_normalization(tr, [-1.0], [1.0])
    assert norm.obs_std[1] == pytest.approx(1e-3) and unclipped.obs_clip == 0.0
    # The near-constant feature moves by 0.5 online (a tilted cube): 500 standard deviations.
    seen, unseen = tr.observations[:1], np.array([[0.3, 1.0]], np.float32)
    assert unclipped.normalize_obs(unseen)[0, 1] == pytest.approx(500.0, rel=1e-3)
    np.testing.assert_allclose(norm.normalize_obs(unseen), [[unclipped.normalize_obs(unseen)[0, 0], 10.0]], rtol=1e-6)
    np.testing.assert_array_equal(norm.normalize_obs(seen), unclipped.normalize_obs(seen))  # inside: untouched

    # Replay rows (offline and online alike) are stored clipped.
    buf = TensorReplay.from_transitions(tr, norm, capacity=len(tr) + 1)
    buf.add_raw(unseen, [[0.0]], [0.0], unseen, [0.0], [0.0], norm)
    assert float(buf.observations[: buf.size].abs().max()) <= 10.0
    assert float(buf.next_observations[buf.size - 1, 1]) == 10.0

    # Acting and the exported policy see what training saw: the unseen state acts as the clip's edge.
    module = IQL(2, 1, {"hidden": [16, 16]}, norm.to_dict())
    edge = norm.obs_mean + 10.0 * norm.obs_std
    edge_state = np.array([[0.3, edge[1]]], np.float32)
    np.testing.assert_array_equal(module.act(unseen), module.act(edge_state))
    policy = module.policy()
    with torch.no_grad():
        np.testing.assert_array_equal(policy(torch.from_numpy(unseen)).numpy(), module.act(edge_state))
    plain = IQL(2, 1, {"hidden": [16, 16]}, unclipped.to_dict())
    plain.load_state_dict(module.state_dict())
    assert not np.array_equal(plain.act(unseen), plain.act(edge_state))  # without the clip it extrapolates
    with torch.no_grad():
        np.testing.assert_array_equal(plain.policy()(torch.from_numpy(unseen)).numpy(), plain.act(unseen))
    # The clip is part of the policy's identity (the provenance hash of a learned behaviour policy).
    assert weights_hash(plain.policy()) != weights_hash(policy)


def test_the_clip_is_kept_in_the_dict_and_an_old_dict_without_it_loads_unclipped():
    norm = fit_normalization(narrow_transitions(), [-1.0], [1.0], obs_clip=5.0)
    assert Normalization.from_dict(norm.to_dict()).obs_clip == 5.0
    old = {k: v for k, v in norm.to_dict().items() if k != "obs_clip"}  # a checkpoint from before the clip
    assert Normalization.from_dict(old).obs_clip == 0.0
    with pytest.raises(KeyError):
        Normalization.from_dict({k: v for k, v in old.items() if k != "obs_std"})


def test_without_standardisation_nothing_is_clipped():
    norm = fit_normalization(narrow_transitions(), [-1.0], [1.0], normalize_obs=False, obs_clip=10.0)
    assert norm.obs_clip == 0.0
    np.testing.assert_array_equal(norm.normalize_obs([[1e4, -1e4]]), [[1e4, -1e4]])


@pytest.mark.parametrize("value", [-1.0, float("inf"), float("nan")])
def test_a_bad_clip_is_refused(value):
    with pytest.raises(ValueError, match="obs_clip must be a finite number >= 0"):
        fit_normalization(narrow_transitions(), [-1.0], [1.0], obs_clip=value)


@pytest.mark.parametrize("value", ["-2", "abc"])
def test_pretrain_refuses_a_bad_data_obs_clip_by_name(maze_dataset, tmp_path, value):
    cfg = load_config(
        "pretrain",
        ["algo=bc", "env=pointmaze", f"dataset.path={maze_dataset}", f"run_dir={tmp_path}", f"data.obs_clip={value}"],
    )
    with EpisodeStore.open(maze_dataset) as store:
        with pytest.raises(ValueError, match="data.obs_clip must be a number >= 0"):
            build_module(cfg, store, np.arange(store.num_episodes))


def test_pretrain_saves_the_configured_clip_in_the_checkpoint(maze_dataset, tmp_path):
    cfg = load_config(
        "pretrain",
        [
            "algo=bc",
            "env=pointmaze",
            f"dataset.path={maze_dataset}",
            f"run_dir={tmp_path}",
            "algo.hidden=[16,16]",
            "trainer.max_steps=2",
            "eval.enabled=false",
            "trainer.progress=false",
            "data.obs_clip=3.5",
        ],
    )
    assert load_config("pretrain", []).data.obs_clip == 10.0  # the default
    module = load_algorithm(pretrain(cfg).last_checkpoint)
    assert module.norm.obs_clip == 3.5 and float(module.policy().obs_clip) == 3.5


def test_the_numpy_and_torch_maps_agree_and_invert_each_other():
    """policies/data.py writes the maps once: NumPy (replay rows, OPE data, behaviour policies) and torch
    (acting, the exported graph) give the same numbers."""
    from o2o.policies.data import (
        action_center_halfrange,
        action_from_unit_np,
        action_from_unit_t,
        action_to_unit_np,
        denormalize_obs_t,
        normalize_obs_np,
        normalize_obs_t,
    )

    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=3).astype(np.float32), rng.uniform(0.1, 2.0, 3).astype(np.float32)
    obs = rng.normal(scale=10.0, size=(50, 3)).astype(np.float32)
    t = torch.from_numpy
    for clip in (0.0, 2.0):
        z = normalize_obs_np(obs, mean, std, clip)
        assert z.dtype == np.float32 and (clip == 0.0 or np.abs(z).max() == clip)
        np.testing.assert_array_equal(normalize_obs_t(t(obs), t(mean), t(std), clip).numpy(), z)
        as_buffer = torch.tensor(clip if clip > 0 else float("inf"))  # the exported graph's form
        np.testing.assert_array_equal(normalize_obs_t(t(obs), t(mean), t(std), as_buffer).numpy(), z)
    z = normalize_obs_np(obs, mean, std, 0.0)
    np.testing.assert_allclose(denormalize_obs_t(t(z), t(mean), t(std)).numpy(), obs, rtol=1e-5, atol=1e-5)

    low, high = np.array([-1.0, 0.0], np.float32), np.array([1.0, 4.0], np.float32)
    center, half = action_center_halfrange(low, high)
    assert center.tolist() == [0.0, 2.0] and half.tolist() == [1.0, 2.0] and center.dtype == np.float32
    actions = np.array([[-1.0, 0.0], [0.5, 3.0], [1.0, 4.0], [2.0, -1.0]], np.float32)  # the last one outside
    unit = action_to_unit_np(actions, center, half)
    np.testing.assert_array_equal(unit, [[-1.0, -1.0], [0.5, 0.5], [1.0, 1.0], [1.0, -1.0]])
    back = np.clip(actions, low, high)
    np.testing.assert_array_equal(action_from_unit_t(t(unit), t(center), t(half)).numpy(), back)
    np.testing.assert_array_equal(action_from_unit_np(unit, low.astype(np.float64), high.astype(np.float64)), back)
