"""Files made by the other tools themselves: Minari's DataCollector and robosuite's DataCollectionWrapper."""

from __future__ import annotations

import json

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest
from omegaconf import OmegaConf

from o2o.datasets import EpisodeStore
from o2o.datasets.formats import ForeignFormatError, import_file
from o2o.envs import make_env
from o2o.pipeline.cli import main
from o2o.pipeline.config import load_config
from o2o.policies.behavior.factory import make_behavior


def env_cfg(name: str) -> dict:
    return OmegaConf.to_container(load_config("collect", [f"env={name}"]).env, resolve=True)


@pytest.mark.parametrize("data_format", ["hdf5", "arrow"])
def test_minari_datacollector_dataset_imports(tmp_path, monkeypatch, data_format):
    """Gymnasium's own Reacher-v5 (float64 observations), recorded by Minari, into an o2o reacher store."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    # Reacher's reset info has no keys its step infos have; Minari needs them equal, so infos stay out.
    env = minari.DataCollector(
        gym.make("Reacher-v5", max_episode_steps=50), record_infos=False, data_format=data_format
    )
    for seed in range(3):
        env.reset(seed=seed)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
    with pytest.warns(UserWarning):  # Minari warns about the metadata not given (eval env...)
        env.create_dataset(
            dataset_id="gym/reacher/random-v0",
            algorithm_name="uniform",
            author="test",
            author_email="test@example.org",
            code_permalink="n/a",
            description="test data",
        )
    env.close()
    target = tmp_path / "reacher.zarr"
    r = import_file("minari", "gym/reacher/random-v0", target, env_cfg=env_cfg("reacher"))
    assert r.created and r.episodes == [0, 1, 2] and r.steps == 150
    ds = minari.load_dataset("gym/reacher/random-v0")
    with EpisodeStore.open(target) as store:
        assert store.env["name"] == "reacher"
        for i, theirs in enumerate(ds.iterate_episodes()):
            ep = store.episode(i)
            # Stored as float32, the o2o env's dtype: equal to the float64 values cast once.
            np.testing.assert_array_equal(ep.observations, theirs.observations[:-1].astype(np.float32))
            np.testing.assert_array_equal(ep.final_observation, theirs.observations[-1].astype(np.float32))
            np.testing.assert_array_equal(ep.actions, theirs.actions)
            np.testing.assert_array_equal(ep.rewards, theirs.rewards.astype(np.float32))
            np.testing.assert_array_equal(ep.timeouts, theirs.truncations)
            assert ep.seed == i and ep.provenance["policy_id"] == "uniform" and ep.provenance["source"] == "human"
    # The imported store is an ordinary o2o reacher dataset: collection appends to it.
    assert (
        main(
            [
                "collect",
                "env=reacher",
                "behavior=random",
                "collect.episodes=1",
                f"dataset.path={target}",
                "collect.progress=false",
            ]
        )
        == 0
    )
    with EpisodeStore.open(target) as store:
        assert store.num_episodes == 4


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory):
    """demo.hdf5 written by robosuite's DataCollectionWrapper + gather_demonstrations_as_hdf5.

    The o2o Lift controller drives (no human hardware here): two successful demos and one
    failed one, which robosuite drops.
    """
    from robosuite.scripts.collect_human_demonstrations import gather_demonstrations_as_hdf5
    from robosuite.wrappers import DataCollectionWrapper

    tmp = tmp_path_factory.mktemp("robosuite")
    cfg = env_cfg("lift")
    env = make_env(cfg)
    sim = env.unwrapped
    layout = sim.obs_layout
    rec = DataCollectionWrapper(sim.sim_env, str(tmp / "raw"))
    policy = make_behavior({"kind": "scripted", "noise_std": 0.1}, env, cfg)
    for ep, steps in enumerate((60, 8, 70)):
        obs = rec.reset()
        policy.reset(seed=ep)
        for _ in range(steps):
            obs, *_ = rec.step(policy.act(layout.flatten(obs)))
    rec.close()  # writes the last episode: robosuite flushes only on reset() or close()
    env_info = json.dumps({"env_name": "Lift", "robots": ["Panda"], "controller_configs": sim.controller_config})
    gather_demonstrations_as_hdf5(str(tmp / "raw"), str(tmp), env_info)
    return tmp / "demo.hdf5"


@pytest.mark.slow  # over ~5 s: outside the fast tier (pytest -m 'not slow'), in the full suite
def test_robosuite_demo_imports_by_replay(demo_file, tmp_path):
    with h5py.File(demo_file) as f:
        demos = sorted(f["data"].keys())
        lengths = sorted(len(f["data"][d]["actions"]) for d in demos)
    assert demos == ["demo_1", "demo_2"] and lengths == [60, 70]  # the failed demo was not kept
    target = tmp_path / "lift.zarr"
    r = import_file("robosuite", demo_file, target, env_cfg=env_cfg("lift"))
    print(
        f"robosuite replay: max state error {r.stats['max_state_error']:.3g}, "
        f"{r.stats['replay_steps_per_s']:.0f} steps/s"
    )
    assert r.stats["max_state_error"] <= 1e-9  # open-loop replay reproduces every recorded state
    with EpisodeStore.open(target) as store, h5py.File(demo_file) as f:
        assert store.num_episodes == 2 and store.env["name"] == "lift"
        for i, demo in enumerate(r.stats["demos"]):
            ep = store.episode(i)
            np.testing.assert_array_equal(ep.actions, f["data"][demo]["actions"][()].astype(np.float32))
            assert ep.success and ep.episode_return > 10 and ep.timeouts[-1] and not ep.terminals.any()
            assert ep.provenance["source"] == "human" and ep.provenance["params"]["imported"]["format"] == "robosuite"
    # The states route: rewards identical; observations at the recorded states differ from the live
    # ones only by robosuite sampling its observables before the end of a control step.
    s = import_file("robosuite", demo_file, tmp_path / "states.zarr", env_cfg=env_cfg("lift"), replay="states")
    with EpisodeStore.open(target) as a, EpisodeStore.open(tmp_path / "states.zarr") as b:
        vel = np.zeros(a.schema.obs_layout.dim, bool)
        for key in ("robot0_joint_vel", "robot0_gripper_qvel"):
            vel[a.schema.obs_layout.slice(key)] = True
        for i in range(2):
            diff = np.abs(a.episode(i).observations - b.episode(i).observations)
            assert diff[:, ~vel].max() < 5e-3 and diff[:, vel].max() < 5e-2, diff.max(0)
            np.testing.assert_array_equal(a.episode(i).rewards, b.episode(i).rewards)
    assert s.stats["replay"] == "states"


@pytest.mark.slow  # over ~5 s: outside the fast tier (pytest -m 'not slow'), in the full suite
def test_robosuite_demo_refused_with_the_store_unchanged(demo_file, tmp_path, snapshot):
    target = tmp_path / "lift.zarr"
    import_file("robosuite", demo_file, target, env_cfg=env_cfg("lift"))
    before = snapshot(target)
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(demo_file.read_bytes())
    with h5py.File(bad, "r+") as f:
        info = json.loads(f["data"].attrs["env_info"])
        info["controller_configs"]["body_parts"]["right"]["output_max"] = [0.1] * 6
        f["data"].attrs["env_info"] = json.dumps(info)
    with pytest.raises(
        ForeignFormatError,
        match=r"bad.hdf5: data.attrs\['env_info'\] controller_configs.body_parts."
        r"right.output_max",
    ):
        import_file("robosuite", bad, target, env_cfg=env_cfg("lift"))
    with h5py.File(bad, "r+") as f:
        f["data"].attrs["env_info"] = json.dumps(
            json.loads(f["data"].attrs["env_info"])
            | {"controller_configs": json.loads(h5py.File(demo_file)["data"].attrs["env_info"])["controller_configs"]}
        )
        states = f["data/demo_2/states"][()]
        states[30, 12] += 0.05  # a recorded state the actions do not lead to
        f["data/demo_2/states"][...] = states
    with pytest.raises(
        ForeignFormatError,
        match=r"bad.hdf5: data/demo_2/states: replaying the actions diverges from "
        r"the recorded state 30",
    ):
        import_file("robosuite", bad, target, env_cfg=env_cfg("lift"))
    with h5py.File(bad, "r+") as f:
        del f["data/demo_1/actions"]
    with pytest.raises(ForeignFormatError, match=r"key 'data/demo_1/actions' is missing"):
        import_file("robosuite", bad, target, env_cfg=env_cfg("lift"))
    with pytest.raises(ValueError, match="pass the env"):
        import_file("robosuite", demo_file, target)
    assert snapshot(target) == before
