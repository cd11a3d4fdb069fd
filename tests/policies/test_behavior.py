"""Behaviour policies: random, learned (torch / TorchScript / ONNX), mixture, and the config factory."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from o2o.policies.behavior.base import BehaviorPolicy
from o2o.policies.behavior.factory import make_behavior
from o2o.policies.behavior.learned import LearnedPolicy, weights_hash
from o2o.policies.behavior.mixture import MixturePolicy
from o2o.policies.behavior.random_policy import RandomPolicy

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BEHAVIOR_CONFIGS = sorted(p.stem for p in (CONFIGS / "behavior").glob("*.yaml"))
OBS_DIM = 5


def box(low, high) -> gym.spaces.Box:
    return gym.spaces.Box(np.asarray(low, np.float32), np.asarray(high, np.float32), dtype=np.float32)


def mlp(obs_dim: int = OBS_DIM, act_dim: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(obs_dim, 16), torch.nn.Tanh(), torch.nn.Linear(16, act_dim), torch.nn.Tanh()
    )


def observations(n: int = 20, dim: int = OBS_DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def rollout(policy: BehaviorPolicy, obs: np.ndarray, seed: int | None) -> np.ndarray:
    policy.reset(seed)
    return np.stack([policy.act(o) for o in obs])


def in_bounds(actions: np.ndarray, space: gym.spaces.Box) -> bool:
    return bool(np.all(actions >= space.low) and np.all(actions <= space.high))


def compose_behavior(name: str, overrides: tuple[str, ...] = ()):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(overrides=[f"+behavior={name}", *overrides]).behavior


# -- random --------------------------------------------------------------------------------


def test_random_within_bounds_and_seeded():
    space = box([-2.0, -0.5, 0.0], [2.0, 0.5, 3.0])
    policy = RandomPolicy(space, seed=1)
    obs = observations(500, 3)
    a = rollout(policy, obs, seed=7)
    assert a.dtype == np.float32 and a.shape == (500, 3)
    assert in_bounds(a, space)
    # It covers the box, not a corner of it.
    assert np.all(a.min(0) < space.low + 0.1 * (space.high - space.low))
    assert np.all(a.max(0) > space.high - 0.1 * (space.high - space.low))
    np.testing.assert_array_equal(a, rollout(RandomPolicy(space, seed=99), obs, seed=7))
    assert not np.array_equal(a, rollout(policy, obs, seed=8))
    prov = policy.provenance
    assert (prov.source, prov.policy_id) == ("random", "random")


def test_random_rejects_unbounded_space():
    with pytest.raises(ValueError, match="infinite bounds"):
        RandomPolicy(gym.spaces.Box(-np.inf, np.inf, (2,), np.float32))


# -- learned -------------------------------------------------------------------------------


def test_learned_from_module_scales_and_clips():
    net, obs = mlp(), observations()
    with torch.no_grad():
        out = net(torch.from_numpy(obs)).numpy()
    space = box([-2.0, 0.0], [2.0, 4.0])
    unit = rollout(LearnedPolicy(net, space, action_scale="unit"), obs, seed=0)
    np.testing.assert_allclose(unit, space.low + (out + 1.0) / 2.0 * (space.high - space.low), atol=1e-6)
    env_units = rollout(LearnedPolicy(net, space, action_scale="env"), obs, seed=0)
    np.testing.assert_allclose(env_units, np.clip(out, space.low, space.high), atol=1e-6)
    assert unit.dtype == np.float32 and in_bounds(env_units, space)


def test_learned_on_gym_env_drives_episode():
    env = gym.make("Pendulum-v1")
    policy = LearnedPolicy(mlp(3, 1), env.action_space, action_scale="unit", policy_id="pendulum_mlp")
    obs, _ = env.reset(seed=0)
    policy.reset(0)
    for _ in range(20):
        obs, *_ = env.step(policy.act(obs))
    assert policy.provenance.policy_id == "pendulum_mlp"
    env.close()


# torch deprecates the TorchScript exporters o2o still supports as deployment formats.
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
def test_learned_onnx_and_torchscript_match_module(tmp_path):
    net, obs = mlp(), observations()
    space = box([-1.0, -1.0], [1.0, 1.0])
    onnx_path = tmp_path / "actor.onnx"
    # The dynamo exporter (torch's default) needs onnxscript, which o2o does not depend on.
    torch.onnx.export(
        net,
        (torch.zeros(1, OBS_DIM),),
        str(onnx_path),
        dynamo=False,
        input_names=["obs"],
        output_names=["action"],
        dynamic_axes={"obs": {0: "batch"}},
    )
    ts_path = tmp_path / "actor.pt"
    torch.jit.script(net).save(str(ts_path))

    reference = LearnedPolicy(net, space, action_scale="unit", policy_id="actor")
    expected = rollout(reference, obs, seed=0)
    from_onnx = LearnedPolicy.from_onnx(onnx_path, space, action_scale="unit")
    np.testing.assert_allclose(rollout(from_onnx, obs, seed=0), expected, atol=1e-5)
    from_ts = LearnedPolicy.from_file(ts_path, space, action_scale="unit")
    np.testing.assert_allclose(rollout(from_ts, obs, seed=0), expected, atol=1e-6)

    assert from_onnx.provenance.policy_id == "actor"  # the file's stem
    assert from_onnx.provenance.policy_version != reference.provenance.policy_version  # file hash
    assert from_ts.provenance.policy_version == reference.provenance.policy_version  # same weights
    assert len(reference.provenance.policy_version) == 12


def test_version_hash_follows_weights():
    net = mlp()
    before = weights_hash(net)
    assert weights_hash(mlp()) == before  # same init, same hash
    assert weights_hash(mlp(seed=1)) != before
    with torch.no_grad():
        net[0].bias[0] += 1e-3
    assert weights_hash(net) != before
    policy = LearnedPolicy(net, box([-1.0, -1.0], [1.0, 1.0]), action_scale="unit")
    assert policy.provenance.policy_version == weights_hash(net)


@pytest.mark.parametrize("exploration, params", [("gaussian", {"noise_std": 0.3}), ("epsilon", {"epsilon": 0.5})])
def test_exploration_changes_actions_stays_in_bounds_and_is_seeded(exploration, params):
    net, obs = mlp(), observations(400)
    space = box([-1.0, -0.5], [1.0, 0.5])
    greedy = rollout(LearnedPolicy(net, space, action_scale="unit"), obs, seed=0)
    policy = LearnedPolicy(net, space, action_scale="unit", exploration=exploration, **params)
    explored = rollout(policy, obs, seed=3)
    assert in_bounds(explored, space)
    changed = np.any(explored != greedy, axis=1).mean()
    if exploration == "gaussian":
        assert changed == 1.0
    else:  # about half the steps replaced by a uniform action
        assert 0.4 < changed < 0.6
    np.testing.assert_array_equal(explored, rollout(policy, obs, seed=3))
    assert not np.array_equal(explored, rollout(policy, obs, seed=4))
    assert policy.provenance.source == "learned"
    assert policy.provenance.params == {"exploration": exploration, **params}


def test_learned_errors_are_clear(tmp_path):
    space = box([-1.0, -1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="pass policy_version"):
        LearnedPolicy(lambda o: o[:, :2], space, action_scale="env")
    with pytest.raises(ValueError, match="action_scale"):
        LearnedPolicy(mlp(), space, action_scale="tanh")
    with pytest.raises(ValueError, match="exploration 'ou'"):
        LearnedPolicy(mlp(), space, action_scale="unit", exploration="ou")
    nan_policy = LearnedPolicy(lambda o: np.full((1, 2), np.nan), space, action_scale="env", policy_version="x")
    with pytest.raises(FloatingPointError, match="non-finite"):
        nan_policy.act(np.zeros(OBS_DIM, np.float32))
    wrong = LearnedPolicy(lambda o: np.zeros((1, 3)), space, action_scale="env", policy_version="x")
    with pytest.raises(ValueError, match="does not fit action space"):
        wrong.act(np.zeros(OBS_DIM, np.float32))
    (tmp_path / "actor.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported format '.safetensors'"):
        LearnedPolicy.from_file(tmp_path / "actor.safetensors", space, action_scale="unit")
    lightning_style = tmp_path / "last.ckpt"
    torch.save({"state_dict": mlp().state_dict()}, lightning_style)
    with pytest.raises(ValueError, match="not a TorchScript module"):
        LearnedPolicy.from_file(lightning_style, space, action_scale="unit")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LearnedPolicy.from_file(tmp_path / "missing.onnx", space, action_scale="unit")


# -- mixture -------------------------------------------------------------------------------


def three_way_mixture(seed=None) -> MixturePolicy:
    space = box([-1.0], [1.0])
    components = [RandomPolicy(space, policy_id=name) for name in ("a", "b", "c")]
    return MixturePolicy(components, [5.0, 3.0, 2.0], seed=seed)


def test_mixture_frequencies_match_weights():
    mix, n = three_way_mixture(), 4000
    counts = {"a": 0, "b": 0, "c": 0}
    for episode in range(n):
        mix.reset(seed=episode)
        counts[mix.provenance.policy_id] += 1
    for name, p in zip("abc", (0.5, 0.3, 0.2)):
        assert abs(counts[name] / n - p) < 4 * np.sqrt(p * (1 - p) / n), counts


def test_mixture_is_reproducible_and_delegates():
    obs = observations(5, 1)

    def episodes(mix: MixturePolicy, seeds) -> list:
        out = []
        for s in seeds:
            actions = rollout(mix, obs, seed=s)  # reset(s) then act
            out.append((mix.provenance.policy_id, actions.tolist()))
        return out

    seeds = [0, 1, 2, 3, 4, 5, 6, 7]
    assert episodes(three_way_mixture(), seeds) == episodes(three_way_mixture(), seeds)
    # Unseeded resets continue the stream of the constructor's seed.
    assert episodes(three_way_mixture(seed=3), [None] * 8) == episodes(three_way_mixture(seed=3), [None] * 8)
    mix = three_way_mixture()
    mix.reset(0)
    assert mix.provenance is not None and mix.human_in_control is False
    assert mix.current is mix.components[mix.index]


def test_mixture_validates_inputs():
    space = box([-1.0], [1.0])
    r = RandomPolicy(space)
    with pytest.raises(ValueError, match="> 0"):
        MixturePolicy([r, r], [1.0, 0.0])
    with pytest.raises(ValueError, match="2 components but 1 weights"):
        MixturePolicy([r, r], [1.0])
    with pytest.raises(ValueError, match="at least one"):
        MixturePolicy([], [])
    with pytest.raises(RuntimeError, match="call reset"):
        MixturePolicy([r], [1.0]).provenance
    np.testing.assert_allclose(MixturePolicy([r, r], [2.0, 6.0]).weights, [0.25, 0.75])


# -- factory -------------------------------------------------------------------------------

PENDULUM_CFG = OmegaConf.create({"name": "pendulum", "scripted_controller": None})


def test_every_behavior_config_composes_with_a_comment():
    assert {"scripted", "noisy", "random", "learned", "mixed"} <= set(BEHAVIOR_CONFIGS)
    for name in BEHAVIOR_CONFIGS:
        assert (CONFIGS / "behavior" / f"{name}.yaml").read_text().startswith("# "), name
        assert compose_behavior(name).kind in {"scripted", "random", "learned", "mixture", "human"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")
def test_factory_builds_random_and_learned(tmp_path):
    env = gym.make("Reacher-v5")
    obs_dim = env.observation_space.shape[0]
    policy = make_behavior(compose_behavior("random"), env, PENDULUM_CFG, seed=0)
    assert isinstance(policy, RandomPolicy)

    ckpt = tmp_path / "reacher_actor.pt"
    torch.jit.script(mlp(obs_dim, 2)).save(str(ckpt))
    cfg = compose_behavior("learned", (f"behavior.checkpoint={ckpt}", "behavior.exploration=gaussian"))
    learned = make_behavior(cfg, env, seed=0)
    assert isinstance(learned, LearnedPolicy)
    assert learned.provenance.policy_id == "reacher_actor"
    assert learned.provenance.params == {"exploration": "gaussian", "noise_std": 0.1}
    obs, _ = env.reset(seed=0)
    learned.reset(0)
    assert in_bounds(learned.act(obs)[None], env.action_space)
    env.close()


def test_factory_errors_are_clear():
    env = gym.make("Pendulum-v1")
    with pytest.raises(ValueError, match="no checkpoint given"):
        make_behavior(compose_behavior("learned"), env, PENDULUM_CFG)
    with pytest.raises(
        ValueError, match=r"unknown kind 'teleop'.*\['human', 'learned', 'mixture', 'random', 'scripted'\]"
    ):
        make_behavior({"kind": "teleop"}, env, PENDULUM_CFG)
    with pytest.raises(ValueError, match=r"unknown keys \['noise_stdd'\]"):
        make_behavior({"kind": "scripted", "noise_stdd": 0.3}, env, PENDULUM_CFG)
    for name in ("scripted", "noisy", "mixed"):  # mixed builds its scripted components recursively
        with pytest.raises(ValueError, match="env 'pendulum' has no scripted controller"):
            make_behavior(compose_behavior(name), env, PENDULUM_CFG)
    outside = OmegaConf.create({"name": "pendulum", "scripted_controller": "os.system"})
    with pytest.raises(ValueError, match=r"env 'pendulum': scripted controller 'os.system' refused"):
        make_behavior({"kind": "scripted"}, env, outside)
    not_a_policy = OmegaConf.create(
        {"name": "pendulum", "scripted_controller": "o2o.policies.behavior.scripted.ScriptedController.act"}
    )
    with pytest.raises(ValueError, match="not a ScriptedController subclass|not found"):
        make_behavior({"kind": "scripted"}, env, not_a_policy)
    with pytest.raises(ValueError, match="component 0 must have exactly the keys"):
        make_behavior({"kind": "mixture", "components": [{"kind": "random"}]}, env, PENDULUM_CFG)
    env.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
def test_factory_builds_every_config_on_pointmaze(tmp_path):
    """The real path: an o2o env from configs/env/pointmaze.yaml, its scripted controller, each behavior."""
    from o2o.envs import make_env

    env_cfg = OmegaConf.load(CONFIGS / "env" / "pointmaze.yaml")
    env = make_env(env_cfg, seed=0)
    obs_dim = env.observation_space.shape[0]
    ckpt = tmp_path / "maze_actor.onnx"
    torch.onnx.export(mlp(obs_dim, env.action_space.shape[0]), (torch.zeros(1, obs_dim),), str(ckpt), dynamo=False)
    overrides = {"learned": (f"behavior.checkpoint={ckpt}",)}
    for name in sorted(set(BEHAVIOR_CONFIGS) - {"human"}):  # a person at a terminal: test_teleop_tmux.py
        policy = make_behavior(compose_behavior(name, overrides.get(name, ())), env, env_cfg, seed=0)
        assert isinstance(policy, BehaviorPolicy), name
        sources = set()
        for episode in range(20):  # seeded: the mixture draws random 20% of the time
            obs, _ = env.reset(seed=episode)
            policy.reset(seed=episode)
            sources.add(policy.provenance.source)
            for _ in range(5):
                action = policy.act(obs)
                assert action.dtype == np.float32 and in_bounds(action[None], env.action_space), name
                obs, *_ = env.step(action)
        expected = {"scripted": {"scripted"}, "noisy": {"scripted"}, "random": {"random"}, "learned": {"learned"}}
        assert sources == expected.get(name, {"scripted", "random"}), (name, sources)
    env.close()
