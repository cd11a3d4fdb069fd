"""A robosuite Lift export: the manifest names robosuite's own observation keys, OSC_POSITION and 20 Hz, and a
controller that assembles robosuite's observation dict by the manifest gets exactly the env's vector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from o2o.deploy.runtime import PolicyRuntime
from o2o.envs import make_env
from o2o.pipeline.config import load_config
from o2o.pipeline.stages.collect import collect
from o2o.pipeline.stages.export import export
from o2o.pipeline.stages.pretrain import pretrain


@pytest.fixture(scope="module")
def lift_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("lift")
    data = root / "lift.zarr"
    collect(
        load_config(
            "collect",
            ["env=lift", "behavior=scripted", "collect.episodes=1", f"dataset.path={data}", "collect.progress=false"],
        )
    )
    run = pretrain(
        load_config(
            "pretrain",
            [
                "env=lift",
                "algo=iql",
                f"dataset.path={data}",
                f"run_dir={root / 'run'}",
                "algo.hidden=[32,32]",
                "algo.batch_size=32",
                "trainer.max_steps=5",
                "eval.enabled=false",
                "ope.select=false",
                "trainer.progress=false",
            ],
        )
    )
    return export(
        load_config(
            "export",
            [
                f"ckpt={run.last_checkpoint}",
                f"out={root / 'export'}",
                "parity.observations=128",
                "closed_loop.episodes=0",
            ],
        )
    )


def test_lift_manifest_describes_the_robot_interface(lift_export):
    m = json.loads(Path(lift_export.manifest_path).read_text())
    keys = list(load_config("pretrain", ["env=lift"]).env.kwargs.obs_keys)
    assert m["observation"]["keys"] == keys
    shapes = {f["key"]: f["shape"] for f in m["observation"]["layout"]}
    assert shapes["robot0_eef_pos"] == [3] and shapes["robot0_eef_quat"] == [4] and shapes["robot0_joint_vel"] == [7]
    assert m["control"] == {"frequency_hz": 20.0, "period_s": 0.05, "controller_type": "OSC_POSITION"}
    assert m["action"]["dim"] == 4 and m["action"]["low"] == [-1.0] * 4 and m["action"]["high"] == [1.0] * 4
    assert m["policy"]["algorithm"] == "iql" and m["policy"]["actor"] == "GaussianActor"
    assert lift_export.parity["onnxruntime"] <= 1e-5 and lift_export.parity["torchscript"] <= 1e-5


def test_lift_layout_rebuilds_robosuites_observation(lift_export):
    runtime = PolicyRuntime(lift_export.out_dir)
    env = make_env(load_config("pretrain", ["env=lift"]).env)
    obs, _ = env.reset(seed=5)
    suite = env.unwrapped.sim_env
    for _ in range(3):
        named = suite._get_observations()  # robosuite's own dict of named sensor values (as last sampled)
        np.testing.assert_array_equal(runtime.flatten(named), obs)
        action = runtime.act(named)
        assert action.shape == (4,) and np.all(np.abs(action) <= 1.0)
        obs, *_ = env.step(action)
    env.close()
