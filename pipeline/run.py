"""``o2o run``: build the stage DAG from config, run it, write the run manifest.

Stages are the modules ``o2o.pipeline.stages.<name>`` named in ``pipeline.stages``; each
declares ``STAGE`` (what it reads and writes) and ``CONFIG_KEYS`` (the parts of the run
config it depends on: its fingerprint covers exactly those, so changing ``algo`` reruns
pretraining and what follows, not collection).
"""

from __future__ import annotations

import importlib
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from o2o.core.versions import package_versions
from o2o.pipeline import lineage
from o2o.pipeline.dag import GraphError, Pipeline, RunResult, StageCache, code_digest

STAGE_PACKAGE = "o2o.pipeline.stages."
KEY_PACKAGES = (
    "torch",
    "lightning",
    "numpy",
    "zarr",
    "mujoco",
    "robosuite",
    "gymnasium",
    "hydra-core",
    "onnx",
    "onnxruntime",
)


@dataclass
class StageModule:
    name: str
    stage: Any
    config_keys: tuple[str, ...]


def load_stages(names: list[str]) -> list[StageModule]:
    """The stage modules named ``names``; an unknown name is a :class:`GraphError` listing the known ones."""
    known = sorted(p.stem for p in Path(__file__).with_name("stages").glob("*.py") if not p.stem.startswith("_"))
    out = []
    for name in names:
        try:
            mod = importlib.import_module(STAGE_PACKAGE + str(name))
        except ModuleNotFoundError as e:
            if e.name == STAGE_PACKAGE + str(name):
                raise GraphError(f"unknown stage {name!r} in pipeline.stages; known stages: {known}") from None
            raise
        if not hasattr(mod, "STAGE"):
            raise GraphError(f"module {mod.__name__} is not a pipeline stage (no STAGE); known stages: {known}")
        out.append(StageModule(str(name), mod.STAGE, tuple(getattr(mod, "CONFIG_KEYS", ()))))
    return out


def stage_configs(cfg: DictConfig, modules: list[StageModule]) -> dict[str, DictConfig]:
    """Each stage's slice of the run config (its ``CONFIG_KEYS``), resolved."""
    out = {}
    for m in modules:
        part = {
            k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in m.config_keys
            if k in cfg
        }
        out[m.name] = OmegaConf.create(part)
    return out


def versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), **package_versions(("o2o", *KEY_PACKAGES))}


def build(cfg: DictConfig) -> tuple[Pipeline, dict[str, DictConfig]]:
    modules = load_stages(list(cfg.pipeline.stages))
    return Pipeline([m.stage for m in modules]), stage_configs(cfg, modules)


def plan(cfg: DictConfig) -> list[tuple[str, str]]:
    pipe, configs = build(cfg)
    return pipe.plan(configs, StageCache(cfg.state_dir))


def run(cfg: DictConfig, log: Callable[[str], None] = print, force: tuple[str, ...] = ()) -> RunResult:
    """Run the pipeline of ``cfg``; the manifest is ``<run_dir>/manifest.json``, rewritten after every stage."""
    pipe, configs = build(cfg)
    run_dir = Path(str(cfg.run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    info = {
        "command": " ".join(sys.argv),
        "versions": {**versions(), "o2o_code_sha256": code_digest()},
        "state_dir": str(cfg.state_dir),
        "stages_selected": list(cfg.pipeline.stages),
    }

    evaluation_seed = int(cfg.evaluation.seed) if "evaluation" in cfg else None

    def manifest(res: RunResult) -> None:
        data = res.artifact("dataset")
        res.write(
            run_dir / "manifest.json",
            **info,
            dataset_version=None if data is None else data.selector,
            lineage=_lineage(res, evaluation_seed),
        )

    res = pipe.run(configs, StageCache(cfg.state_dir), run_dir, log=log, force=force, manifest=manifest)
    entry = _lineage(res, evaluation_seed)
    if entry is not None and any(r.name == "pretrain" and r.status == "ran" for r in res.records):
        policy = res.artifact("policy")
        lineage.append(
            cfg.state_dir, {**entry, "run_dir": str(run_dir), "policy": None if policy is None else policy.path}
        )
    return res


def _lineage(res: RunResult, evaluation_seed: int | None = None) -> dict | None:
    """Which dataset version produced which policy, and how the offline and finetuned policies scored on
    the evaluate stage's seeds (what the next run's report compares its own offline policy with)."""
    ckpt = res.artifact("checkpoint")
    if ckpt is None:
        return None
    return lineage.entry(
        ckpt,
        res.artifact("evaluation"),
        res.artifact("finetune"),
        res.artifact("policy"),
        evaluation_seed=evaluation_seed,
    )
