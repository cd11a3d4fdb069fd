"""`o2o export`: ONNX + TorchScript + manifest, verified against the torch policy, refused when they differ."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata, resources
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from o2o.datasets import EpisodeStore
from o2o.deploy import export as deploy_export
from o2o.deploy.export import ExportRefused, ExportSpec, export_policy
from o2o.deploy.manifest import REQUIRED_SECTIONS, load_manifest
from o2o.deploy.runtime import PolicyRuntime
from o2o.envs import make_env
from o2o.pipeline.cli import main
from o2o.pipeline.config import load_config
from o2o.pipeline.stages.export import export
from o2o.policies.algos.base import load_algorithm

ALGOS = sorted(
    p.name.removesuffix(".yaml")
    for p in resources.files("o2o.configs").joinpath("algo").iterdir()
    if p.name.endswith(".yaml")
)
# Keys that keep a run tiny, for the algorithms that know them.
TINY_FOR = {
    "combo": [
        "algo.dynamics_hidden=[32,32]",
        "algo.dynamics_weight_decay=0.0",
        "algo.dynamics_max_epochs=5",
        "algo.rollout_batch_size=256",
    ]
}


def overrides(ckpt, out, *extra: str) -> list[str]:
    return [f"ckpt={ckpt}", f"out={out}", "parity.observations=256", "closed_loop.episodes=0", *extra]


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def dataset_observations(path: str, n: int = 200) -> np.ndarray:
    with EpisodeStore.open(path) as store:
        obs = store.load_transitions().observations
    return np.asarray(obs[np.random.default_rng(1).choice(len(obs), n, replace=False)], np.float32)


def test_every_algorithm_config_is_covered():
    assert {"bc", "bc_filtered", "iql", "cql", "awac", "sac", "combo"} <= set(ALGOS)


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:DeprecationWarning")
@pytest.mark.parametrize("algo", ALGOS)
def test_parity_torch_onnxruntime_torchscript(algo, maze_data, trainer, tmp_path):
    run = trainer(
        maze_data, tmp_path / "run", algo, 5, "algo.hidden=[32,32]", "algo.batch_size=32", *TINY_FOR.get(algo, [])
    )
    res = export(load_config("export", overrides(run.last_checkpoint, tmp_path / "out")))
    assert res.parity["onnxruntime"] <= 1e-5 and res.parity["torchscript"] <= 1e-5
    assert res.observations_source.startswith(f"dataset {maze_data}")

    # Independently of export's own check: fresh observations, the files loaded here.
    obs = dataset_observations(maze_data)
    module = load_algorithm(run.last_checkpoint)
    want = module.act(obs, deterministic=True)
    sess = ort.InferenceSession(str(Path(res.out_dir) / "policy.onnx"), providers=["CPUExecutionProvider"])
    got_onnx = sess.run(None, {"obs": obs})[0]
    got_ts = torch.jit.load(str(Path(res.out_dir) / "policy.pt"))(torch.from_numpy(obs)).detach().numpy()
    np.testing.assert_allclose(got_onnx, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_ts, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(sess.run(None, {"obs": obs[:1]})[0], want[:1], rtol=0, atol=1e-5)  # batch of one
    manifest = json.loads(Path(res.manifest_path).read_text())
    assert manifest["policy"]["algorithm"] == module.hp.name
    assert manifest["policy"]["class"].endswith(type(module).__name__)


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:DeprecationWarning")
def test_the_exported_policy_clips_observations_as_training_did(maze_export, bc_run, recorded):
    """A state far outside the data (500 standard deviations) acts as the clip's edge in the ONNX
    and TorchScript files, as it did for the trained policy (``data.obs_clip``, default 10)."""
    module = load_algorithm(bc_run.last_checkpoint)
    assert module.norm.obs_clip == 10.0 and load_manifest(maze_export.out_dir)["policy"]["obs_clip"] == 10.0
    far, edge = recorded[:8].copy(), recorded[:8].copy()
    far[:, 0] = module.norm.obs_mean[0] + 500.0 * module.norm.obs_std[0]
    edge[:, 0] = module.norm.obs_mean[0] + 10.0 * module.norm.obs_std[0]
    want = module.act(edge)
    assert not np.allclose(want, module.act(recorded[:8]), atol=1e-3)  # the feature matters to the policy
    sess = ort.InferenceSession(str(Path(maze_export.out_dir) / "policy.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"obs": far})[0], want, rtol=0, atol=1e-5)
    scripted = torch.jit.load(str(Path(maze_export.out_dir) / "policy.pt"))
    np.testing.assert_allclose(scripted(torch.from_numpy(far)).detach().numpy(), want, rtol=0, atol=1e-5)


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    bad = copy.deepcopy(model)
    with torch.no_grad():
        last = [m for m in bad.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias += 1e-3  # a silent weight change of the kind a faulty export could make
    return bad


@pytest.mark.parametrize("which,fn", [("onnxruntime", "export_onnx"), ("torchscript", "export_torchscript")])
def test_a_broken_export_is_refused(which, fn, bc_run, tmp_path, monkeypatch):
    real = getattr(deploy_export, fn)
    monkeypatch.setattr(deploy_export, fn, lambda model, example, path, *a: real(_perturbed(model), example, path, *a))
    out = tmp_path / "out"
    with pytest.raises(ExportRefused) as err:
        export(load_config("export", overrides(bc_run.last_checkpoint, out)))
    msg = str(err.value)
    name = "policy.onnx" if which == "onnxruntime" else "policy.pt"
    assert f"{which} output of" in msg and name in msg and "max abs diff" in msg and "tolerance 1e-05" in msg, msg
    diff = float(msg.split("max abs diff ")[1].split()[0])
    assert 1e-5 < diff < 1e-2
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing written, no staging left


def test_a_refused_export_leaves_the_previous_one_in_place(bc_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    export(load_config("export", overrides(bc_run.last_checkpoint, out)))
    before = {p.name: sha256(p) for p in out.iterdir()}
    real = deploy_export.export_onnx
    monkeypatch.setattr(deploy_export, "export_onnx", lambda m, e, p, *a: real(_perturbed(m), e, p, *a))
    with pytest.raises(ExportRefused):
        export(load_config("export", overrides(bc_run.last_checkpoint, out)))
    assert {p.name: sha256(p) for p in out.iterdir()} == before
    PolicyRuntime(out)  # still loads


def test_a_stochastic_policy_is_refused(bc_run, tmp_path):
    module = load_algorithm(bc_run.last_checkpoint)

    class Noisy(torch.nn.Module):  # the mistake of exporting a sampling actor
        def __init__(self, policy):
            super().__init__()
            self.policy = policy

        def forward(self, obs):
            return self.policy(obs) + 0.1 * torch.randn(obs.shape[0], 2)

    spec = ExportSpec(
        obs_layout=[{"key": "x", "shape": [6], "start": 0, "stop": 6}],
        action_low=[-1, -1],
        action_high=[1, 1],
        control_frequency_hz=20.0,
        controller_type="force",
        policy={},
        env={},
    )
    with pytest.raises(ExportRefused, match="not deterministic"):
        export_policy(Noisy(module.policy()), tmp_path / "out", np.zeros((8, 6), np.float32), spec)
    assert not (tmp_path / "out").exists()


def test_manifest_is_complete_and_hashes_match(maze_export, maze_data):
    out = Path(maze_export.out_dir)
    m = json.loads((out / "manifest.json").read_text())
    assert set(REQUIRED_SECTIONS) <= set(m)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "policy.onnx", "policy.pt", "reference.npz"]
    for name, entry in m["files"].items():
        assert entry == {"sha256": sha256(out / name), "bytes": (out / name).stat().st_size}
    assert m["observation"]["keys"] == ["position", "velocity", "goal"]
    assert [(f["key"], f["shape"], f["start"], f["stop"]) for f in m["observation"]["layout"]] == [
        ("position", [2], 0, 2),
        ("velocity", [2], 2, 4),
        ("goal", [2], 4, 6),
    ]
    assert m["observation"]["dim"] == 6 and m["action"]["dim"] == 2
    assert m["action"]["low"] == [-1.0, -1.0] and m["action"]["high"] == [1.0, 1.0]
    assert m["control"] == {"frequency_hz": 20.0, "period_s": 0.05, "controller_type": "force"}
    assert m["policy"]["algorithm"] == "bc" and m["policy"]["updates"] == 400
    assert m["policy"]["checkpoint_sha256"] == sha256(maze_export.checkpoint)
    with EpisodeStore.open(maze_data) as store:
        assert m["dataset"]["version"] == store.version.to_dict()
    assert m["env"]["name"] == "pointmaze" and m["env"]["factory"] == "o2o.envs.pointmaze.make"
    assert m["parity"]["observations"] == 256 and m["parity"]["max_abs_diff"]["onnxruntime"] <= 1e-5
    cl = m["evaluation"]["closed_loop"]
    assert cl["episodes"] == 5 and cl["runtime"]["success_rate"] is not None
    assert m["evaluation"]["training"]["selection"].startswith("last checkpoint")
    assert m["versions"]["torch"] == torch.__version__
    assert m["versions"]["onnx"] == onnx.__version__ and m["versions"]["onnxruntime"] == ort.__version__
    assert m["versions"]["o2o"] == metadata.version("o2o")
    assert m["onnx"]["opset"] == 18
    proto = onnx.load(str(out / "policy.onnx"))
    assert {o.domain: o.version for o in proto.opset_import}[""] == 18
    assert [i.name for i in proto.graph.input] == ["obs"] and [o.name for o in proto.graph.output] == ["action"]
    # What a pipeline stage records (JSON) and how it re-checks the folder later.
    recorded = json.loads(json.dumps(maze_export.to_dict()))
    assert recorded["files"] == m["files"] and recorded["out_dir"] == str(out)
    assert load_manifest(out, verify=True) == m


def test_observation_layout_rebuilds_the_env_observation(maze_export):
    """A controller that assembles the observation from named values by the manifest gets the env's vector."""
    runtime = PolicyRuntime(maze_export.out_dir)
    env = make_env(load_config("pretrain", ["env=pointmaze"]).env)
    obs, _ = env.reset(seed=3)
    sim = env.unwrapped
    for _ in range(20):
        named = {"goal": sim.goal.copy(), "velocity": sim.data.qvel[:2].copy(), "position": sim.data.qpos[:2].copy()}
        np.testing.assert_array_equal(runtime.flatten(named), obs)
        np.testing.assert_array_equal(runtime.act(named), runtime.act(obs))
        obs, *_ = env.step(runtime.act(obs))
    env.close()


def test_export_command_line(bc_run, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(
        ["export", f"ckpt={Path(bc_run.run_dir)}", f"out={out}", "parity.observations=128", "closed_loop.episodes=2"]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    for part in (
        "policy.onnx",
        "policy.pt",
        "reference.npz",
        "parity on dataset",
        "closed loop, 2 episodes",
        f"o2o serve export_dir={out}",
    ):
        assert part in text, f"{part!r} missing from:\n{text}"
    assert (out / "manifest.json").is_file()
    rc = main(["export"])
    err = capsys.readouterr().err
    assert rc == 2 and "no checkpoint given" in err and "ckpt=" in err


def test_missing_dataset_falls_back_to_env_rollouts(bc_run, tmp_path):
    res = export(
        load_config(
            "export",
            overrides(
                bc_run.last_checkpoint,
                tmp_path / "out",
                f"parity.dataset={tmp_path / 'moved.zarr'}",
                "parity.rollout_episodes=2",
            ),
        )
    )
    assert "env rollouts" in res.observations_source and res.parity["onnxruntime"] <= 1e-5
    assert any("moved.zarr" in n and "rollouts" in n for n in res.notes)
    m = json.loads(Path(res.manifest_path).read_text())
    assert m["parity"]["source"] == res.observations_source and m["notes"] == res.notes


def test_a_checkpoint_whose_env_changed_is_refused(bc_run, tmp_path):
    ckpt = torch.load(bc_run.last_checkpoint, weights_only=True)
    ckpt["hyper_parameters"]["meta"]["env"]["obs_layout"] = [
        {"key": "position", "shape": [2], "start": 0, "stop": 2},
        {"key": "goal", "shape": [2], "start": 2, "stop": 4},
        {"key": "velocity", "shape": [2], "start": 4, "stop": 6},
    ]
    path = tmp_path / "reordered.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(ExportRefused, match="now produces observation layout"):
        export(load_config("export", overrides(path, tmp_path / "out")))


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export(load_config("export", overrides(tmp_path / "nope.ckpt", tmp_path / "out")))
