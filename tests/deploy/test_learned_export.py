"""An o2o export as a learned behaviour policy loads through the runtime: manifest, hashes, seal and
self-test checked, so a modified export is refused; a bare .onnx file still loads as it is
(tests/policies/test_behavior.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from omegaconf import OmegaConf

from o2o.core.hashing import sha256_file
from o2o.deploy.manifest import ManifestError
from o2o.deploy.runtime import PolicyRuntime
from o2o.policies.algos.base import load_algorithm
from o2o.policies.behavior.factory import make_behavior
from o2o.policies.behavior.learned import LearnedPolicy


def action_space(folder) -> gym.spaces.Box:
    rt = PolicyRuntime(folder)
    return gym.spaces.Box(rt.low.astype(np.float32), rt.high.astype(np.float32), dtype=np.float32)


def acts(policy: LearnedPolicy, observations: np.ndarray) -> np.ndarray:
    policy.reset(0)
    return np.stack([policy.act(o) for o in observations])


def test_an_export_folder_or_its_onnx_file_acts_as_the_checkpoint(maze_export, recorded):
    folder = Path(maze_export.out_dir)
    space = action_space(folder)
    want = load_algorithm(maze_export.checkpoint).act(recorded)
    # action_scale "unit" (the config's default) would rescale env-unit outputs: exports always use "env".
    by_folder = LearnedPolicy.from_file(folder, space, action_scale="unit")
    by_file = LearnedPolicy.from_file(folder / "policy.onnx", space, action_scale="unit")
    for policy in (by_folder, by_file):
        assert policy.action_scale == "env"
        np.testing.assert_allclose(acts(policy, recorded), want, rtol=0, atol=1e-5)
    assert by_file.provenance.policy_id == "policy" and by_folder.provenance.policy_id == folder.name
    # The version is the ONNX file's hash, as for any ONNX policy (and as the manifest records it).
    assert (
        by_file.provenance.policy_version
        == by_folder.provenance.policy_version
        == sha256_file(folder / "policy.onnx")[:12]
    )


def test_collect_builds_an_export_as_a_learned_behaviour(maze_export, recorded):
    from o2o.envs import make_env

    env_cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "env" / "pointmaze.yaml")
    env = make_env(env_cfg, seed=0)
    cfg = OmegaConf.create({"kind": "learned", "checkpoint": str(maze_export.out_dir), "action_scale": "unit"})
    policy = make_behavior(cfg, env, env_cfg, seed=0)
    obs, _ = env.reset(seed=0)
    action = policy.act(obs)
    env.close()
    assert policy.provenance.source == "learned" and action.dtype == np.float32
    np.testing.assert_allclose(action, load_algorithm(maze_export.checkpoint).act(obs[None])[0], atol=1e-5)


@pytest.mark.parametrize("given", ["folder", "policy.onnx"])
def test_a_modified_export_is_refused(export_copy, given):
    data = bytearray((export_copy / "policy.onnx").read_bytes())
    data[-10] ^= 0x01
    (export_copy / "policy.onnx").write_bytes(bytes(data))
    path = export_copy if given == "folder" else export_copy / given
    with pytest.raises(ManifestError, match=r"file 'policy.onnx' sha256 [0-9a-f]{16}\.\.\. != manifest's"):
        LearnedPolicy.from_file(path, gym.spaces.Box(-1.0, 1.0, (2,), np.float32), action_scale="env")


def test_another_onnx_file_in_an_export_folder_is_refused(export_copy):
    shutil.copy(export_copy / "policy.onnx", export_copy / "other.onnx")
    with pytest.raises(
        ValueError,
        match=r"lies in the o2o export .* but is not its model 'policy.onnx'; pass the "
        r"export folder",
    ):
        LearnedPolicy.from_onnx(
            export_copy / "other.onnx", gym.spaces.Box(-1.0, 1.0, (2,), np.float32), action_scale="env"
        )


def test_a_folder_that_is_not_an_export_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json .*not an o2o export folder"):
        LearnedPolicy.from_file(tmp_path, gym.spaces.Box(-1.0, 1.0, (2,), np.float32), action_scale="env")
