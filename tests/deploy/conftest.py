"""Shared fixtures of the deploy tests: a small real point-maze dataset, a trained checkpoint, its export.

Everything is real and tiny: scripted point-maze episodes, behaviour cloning for a few
hundred updates (it solves the maze), the real exporters, onnxruntime and MuJoCo.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from o2o.pipeline.config import load_config
from o2o.pipeline.stages.collect import collect
from o2o.pipeline.stages.pretrain import pretrain

# Modules the controller-side runtime must never need (docs/architecture.md: Import rules, deploy/).
BLOCKED = ("torch", "lightning", "pytorch_lightning", "hydra", "omegaconf", "zarr", "gymnasium", "mujoco", "robosuite")


def make_maze_dataset(path, behavior: str = "scripted", episodes: int = 10) -> str:
    collect(
        load_config(
            "collect",
            [
                "env=pointmaze",
                f"behavior={behavior}",
                f"collect.episodes={episodes}",
                f"dataset.path={path}",
                "collect.progress=false",
            ],
        )
    )
    return str(path)


def train(dataset: str, run_dir, algo: str = "bc", steps: int = 400, *extra: str):
    """A real `o2o pretrain` run on ``dataset`` (no simulator evaluation, no OPE selection)."""
    return pretrain(
        load_config(
            "pretrain",
            [
                f"algo={algo}",
                "env=pointmaze",
                f"dataset.path={dataset}",
                f"run_dir={run_dir}",
                "algo.hidden=[64,64]",
                "algo.log_every=100",
                f"trainer.max_steps={steps}",
                "eval.enabled=false",
                "ope.select=false",
                "trainer.progress=false",
                *extra,
            ],
        )
    )


def export_overrides(ckpt, out, *extra: str) -> list[str]:
    return [f"ckpt={ckpt}", f"out={out}", "parity.observations=256", *extra]


@pytest.fixture(scope="session")
def maze_data(tmp_path_factory) -> str:
    """10 scripted point-maze episodes (1500 transitions)."""
    return make_maze_dataset(tmp_path_factory.mktemp("deploy") / "maze.zarr")


@pytest.fixture(scope="session")
def bc_run(maze_data, tmp_path_factory):
    """Behaviour cloning on the scripted data: reaches the goal in (nearly) every episode."""
    return train(maze_data, tmp_path_factory.mktemp("deploy") / "bc", "bc", 400)


@pytest.fixture(scope="session")
def maze_export(bc_run, tmp_path_factory):
    """The BC checkpoint exported with `o2o export`'s code (closed loop 5 episodes); returns the ExportResult."""
    from o2o.pipeline.stages.export import export

    out = tmp_path_factory.mktemp("deploy") / "export"
    return export(load_config("export", export_overrides(bc_run.last_checkpoint, out, "closed_loop.episodes=5")))


@pytest.fixture()
def export_copy(maze_export, tmp_path) -> Path:
    """A private copy of the export folder (tests that tamper with files)."""
    dst = tmp_path / "export"
    shutil.copytree(maze_export.out_dir, dst)
    return dst


@pytest.fixture(scope="session")
def torch_blocker(tmp_path_factory) -> dict:
    """Environment for a subprocess in which importing torch (and the other training modules) fails."""
    site = tmp_path_factory.mktemp("blocker")
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(f"""
        import sys

        BLOCKED = {BLOCKED!r}

        class _Blocker:
            # Raises on import of any blocked top-level module, as if it were not installed.
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked in this process (deploy runtime test)")
                return None

        sys.meta_path.insert(0, _Blocker())
    """)
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    return env


@pytest.fixture(scope="session")
def trainer():
    """The :func:`train` function (tests train their own checkpoints with it)."""
    return train


@pytest.fixture()
def recorded(maze_export) -> np.ndarray:
    """The recorded observations stored with the export (reference.npz)."""
    with np.load(Path(maze_export.out_dir) / "reference.npz") as data:
        return np.asarray(data["observations"])


class SqrtPolicy:
    """Builds an export whose policy leaves its bounds and can return NaN: ``action = gain * sqrt(obs[:, :2])``.

    o2o's own exports clamp inside the graph; this one (exported with the same exporters,
    without :class:`ExportGraph`) exercises the runtime's clamp and non-finite-action guards.
    """

    obs_dim, act_dim = 3, 2

    @staticmethod
    def write(folder: Path, gain: float = 4.0, frequency_hz: float = 20.0, **runtime) -> Path:
        import torch

        from o2o.deploy.export import ExportSpec, build_manifest, export_onnx, export_torchscript, seal_export

        class Sqrt(torch.nn.Module):
            def forward(self, obs):
                return torch.sqrt(obs[:, :2]) * gain

        folder.mkdir(parents=True, exist_ok=True)
        example = torch.rand(2, 3)
        export_onnx(Sqrt(), example, folder / "policy.onnx")
        export_torchscript(Sqrt(), example, folder / "policy.pt")
        spec = ExportSpec(
            obs_layout=[
                {"key": "a", "shape": [2], "start": 0, "stop": 2},
                {"key": "b", "shape": [1], "start": 2, "stop": 3},
            ],
            action_low=[-1.0, -1.0],
            action_high=[1.0, 1.0],
            control_frequency_hz=frequency_hz,
            controller_type="test",
            policy={"algorithm": "sqrt"},
            env={"name": "none"},
            runtime={"safe_action": None, "max_delta": None, "deadline_s": None, **runtime},
        )
        manifest = build_manifest(spec, np.zeros((1, 3), np.float32), 2, {}, 1e-5, 18, 0)
        manifest["parity"]["reference_file"] = None
        seal_export(folder, manifest, ["policy.onnx", "policy.pt"])
        return folder


@pytest.fixture()
def sqrt_export(tmp_path) -> Path:
    """An export of :class:`SqrtPolicy` (gain 4, bounds [-1, 1], 20 Hz)."""
    return SqrtPolicy.write(tmp_path / "sqrt")
