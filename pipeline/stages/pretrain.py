"""The pretrain stage: an offline algorithm trained on (a selection of) the dataset.

Reads: the dataset (a version of it). Writes: a run folder with checkpoints (best and
last), TensorBoard and CSV logs, and ``summary.json`` naming the best checkpoint, how it
was chosen, and the dataset version it was trained on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from o2o.datasets import EpisodeStore
from o2o.deploy.manifest import file_unchanged, sha256_file
from o2o.pipeline.artifacts import CheckpointArtifact, TrainedOn
from o2o.pipeline.config import plain
from o2o.pipeline.dag import Stage
from o2o.pipeline.progress import Progress
from o2o.pipeline.stages import dataset_verify
from o2o.policies.algos.base import OfflineAlgorithm, read_checkpoint
from o2o.policies.allocator import tune_cpu_allocator
from o2o.policies.callbacks import SimEvaluation, UpdateRate, best_from_history
from o2o.policies.evaluation import Evaluator
from o2o.policies.training import (
    TrainerSpec,
    build_module,
    check_env,
    compile_if_asked,
    make_trainer,
    measure_precision,
    select_episodes,
    step_loader,
)

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    """What a pretraining run produced."""

    run_dir: str
    best_checkpoint: str | None
    last_checkpoint: str | None
    selection: str  # how the best checkpoint was chosen
    dataset: dict
    updates: int
    best_eval: dict | None = None
    evaluations: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    ope: list[dict] | None = None  # FQE estimate of each candidate when chosen without a simulator
    cpu_allocator: str = ""  # what trainer.cpu_allocator did
    precision: str = ""  # the precision trained in (trainer.precision, auto resolved)
    precision_rates: dict = field(default_factory=dict)  # trainer.precision=auto: updates/s measured per candidate
    module: Any = field(default=None, repr=False, compare=False)  # the trained module (last state), not saved

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "module"}


def select_without_simulator(
    cfg: DictConfig, run_dir: Path, module: OfflineAlgorithm, idx: np.ndarray
) -> tuple[str | None, str, list[dict] | None]:
    """Best checkpoint by FQE over the periodic candidates (``ope`` config), or the last one if there are none."""
    from o2o.policies.ope.selection import describe_choice, select_by_ope

    last = str(run_dir / "checkpoints" / "last.ckpt")
    paths = sorted(
        (str(p) for p in (run_dir / "checkpoints").glob("step-*.ckpt")), key=lambda p: int(Path(p).stem.split("-")[-1])
    )
    if not cfg.ope.get("select", True) or not paths:
        return (
            (last if Path(last).exists() else None),
            "last checkpoint (no simulator evaluation, no OPE selection)",
            None,
        )
    ope = {k: v for k, v in plain(cfg.ope).items() if k != "select"}
    ope["gamma"] = float(module.hp.gamma)  # judge every candidate by the return it was trained to maximise
    # The store selection, not the module's replay: filtered BC trains on a subset, OPE needs whole episodes.
    best, table = select_by_ope(paths, cfg.dataset.path, ope, episodes=idx, device=module.device)
    return (
        best,
        (
            f"OPE: highest ope/fqe_value over {len(paths)} checkpoints (no simulator evaluation): "
            f"{describe_choice(table)}"
        ),
        table,
    )


def training_progress(label: str):
    """The display of a fit's progress: ``[label] 1,200/3,000 updates ...`` (o2o.pipeline.progress)."""
    return lambda done, total: Progress(label, total, "updates", initial=done)


def pretrain(cfg: DictConfig) -> PretrainResult:
    """Train ``cfg.algo`` on ``cfg.dataset.path`` for ``cfg.trainer.max_steps`` updates."""
    import time

    start = time.perf_counter()
    allocator = tune_cpu_allocator(str(cfg.trainer.get("cpu_allocator", "tuned")))
    L.seed_everything(int(cfg.trainer.seed), workers=False, verbose=False)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with EpisodeStore.open(cfg.dataset.path, mode="r", verify=dataset_verify(cfg)) as store:
        check_env(store, cfg.env)
        idx = select_episodes(store, cfg.data)
        module, replay = build_module(cfg, store, idx)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    ev, cb_eval = cfg.eval, None
    callbacks: list = [UpdateRate(every=int(cfg.algo.get("log_every", 50)))]
    every = int(ev.every)
    if ev.enabled:
        evaluator = Evaluator(
            plain(cfg.env),
            episodes=int(ev.episodes),
            num_envs=int(ev.num_envs),
            seed=int(ev.seed),
            gamma=float(module.hp.gamma),
            asynchronous=bool(ev.asynchronous),
        )
        cb_eval = SimEvaluation(evaluator, every, references=plain(cfg.env.get("reference_returns")))
        callbacks.append(cb_eval)
        ckpt = ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            filename="best-{step}",
            monitor=cfg.checkpoint.monitor,
            mode=cfg.checkpoint.mode,
            save_top_k=1,
            every_n_train_steps=every,
            save_last=True,
            auto_insert_metric_name=False,
        )
    else:  # keep every candidate; an OPE estimate picks among them after training
        ckpt = ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            filename="step-{step}",
            save_top_k=-1,
            every_n_train_steps=every,
            save_last=True,
            auto_insert_metric_name=False,
        )
    callbacks.append(ckpt)
    spec = TrainerSpec.from_config(cfg.trainer, log_every=int(cfg.algo.get("log_every", 50)))
    precision_rates: dict[str, float] = {}
    if str(spec.precision) == "auto":
        chosen, precision_rates = measure_precision(module, spec)
        spec = replace(spec, precision=chosen)
    trainer = make_trainer(spec, run_dir, callbacks, progress=training_progress("pretrain"))
    compile_if_asked(spec, trainer, module)
    ckpt_path = cfg.trainer.ckpt_path
    if ckpt_path and Path(str(ckpt_path)).exists():  # a clear refusal of an empty, damaged or changed file
        read_checkpoint(str(ckpt_path), "trainer.ckpt_path")
    trainer.fit(module, train_dataloaders=step_loader(), ckpt_path=ckpt_path, weights_only=True)
    module.compile_networks(False)  # the returned module runs eagerly (export traces it)
    if trainer.world_size == 1 and int(trainer.global_step) != getattr(ckpt, "_last_global_step_saved", -1):
        # Lightning saves last.ckpt only at its every_n_train_steps: the updates after the last multiple
        # (max_steps 10,500 at every 1,000) would be in no checkpoint. The final state is the last one.
        ckpt.last_model_path = str(run_dir / "checkpoints" / "last.ckpt")
        trainer.save_checkpoint(ckpt.last_model_path)

    if trainer.global_rank != 0:  # DDP: the other processes trained in lockstep; rank 0 selects and reports
        return PretrainResult(
            run_dir=str(run_dir),
            best_checkpoint=None,
            last_checkpoint=None,
            selection=f"process {trainer.global_rank}: rank 0 selects and reports",
            dataset=module.hparams["meta"]["dataset"],
            updates=module.update_count,
            seconds=time.perf_counter() - start,
            cpu_allocator=allocator,
            precision=str(trainer.precision),
            precision_rates=precision_rates,
            module=module,
        )
    history = cb_eval.history if cb_eval is not None else []
    best_eval = best_from_history(history, str(cfg.checkpoint.monitor).removeprefix("eval/"))
    ope_table = None
    if ev.enabled and ckpt.best_model_path:
        best, selection = (
            ckpt.best_model_path,
            f"simulation: best {cfg.checkpoint.monitor} over {len(history)} evaluations",
        )
    else:
        best, selection, ope_table = select_without_simulator(cfg, run_dir, module, idx)
    result = PretrainResult(
        run_dir=str(run_dir),
        best_checkpoint=best or None,
        last_checkpoint=ckpt.last_model_path or None,
        selection=selection,
        dataset=module.hparams["meta"]["dataset"],
        updates=module.update_count,
        best_eval=best_eval,
        evaluations=history,
        seconds=time.perf_counter() - start,
        ope=ope_table,
        cpu_allocator=allocator,
        precision=str(trainer.precision),
        precision_rates=precision_rates,
        module=module,
    )
    (run_dir / "summary.json").write_text(json.dumps(result.to_dict(), indent=2, default=float))
    return result


# ---------------------------------------------------------------------------- as a pipeline stage
def run_stage(ctx) -> dict:
    """``o2o run``'s pretrain: train on exactly the dataset version the collect stage reported."""
    from o2o.pipeline import lineage

    data = ctx.artifact("dataset")
    init_from = None
    if str(ctx.config.get("pretrain", {}).get("init", "fresh")) == "previous":
        prev = lineage.latest_checkpoint(str(ctx.config.state_dir), str(ctx.config.algo.name))
        if prev is not None:
            init_from = prev["checkpoint"]
            ctx.log(f"  warm start from {init_from} (trained on dataset version {prev.get('dataset_version')})")
        else:
            ctx.log("  pretrain.init=previous: no earlier checkpoint of this algorithm; training from scratch")
    cfg = OmegaConf.merge(
        ctx.config,
        {
            "dataset": {"path": data.path, "verify": data.verify},
            "data": {"version": data.selector},
            "run_dir": str(ctx.out_dir),
            "init_from": init_from,
        },
    )
    res = pretrain(cfg)
    if res.best_checkpoint is None:
        raise RuntimeError(f"pretrain produced no checkpoint in {ctx.out_dir}")
    best = res.best_eval or {}
    ctx.log(
        f"  {cfg.algo.name}: {res.updates} updates in {res.seconds:.0f} s; best checkpoint by {res.selection}"
        + (f": return {best['return_mean']:.1f}" if "return_mean" in best else "")
        + (f", success {best['success_rate']:.2f}" if best.get("success_rate") is not None else "")
    )
    return {
        "checkpoint": CheckpointArtifact(
            path=res.best_checkpoint,
            fingerprint=sha256_file(res.best_checkpoint),
            last=res.last_checkpoint,
            algo=str(cfg.algo.name),
            updates=res.updates,
            selection=res.selection,
            dataset=TrainedOn.from_dict(res.dataset),
            best_eval=res.best_eval,
            evaluations=res.evaluations,
            summary=str(Path(res.run_dir) / "summary.json"),
        )
    }


def _valid(outputs: dict) -> bool:
    c = CheckpointArtifact.from_dict(outputs["checkpoint"])
    return file_unchanged(c.path, c.fingerprint)


STAGE = Stage(
    "pretrain",
    reads=("dataset",),
    writes=("checkpoint",),
    run=run_stage,
    valid=_valid,
    doc="offline RL on the dataset version collect reported; best checkpoint by simulation or OPE",
)
CONFIG_KEYS = ("env", "algo", "trainer", "ope", "data", "eval", "checkpoint", "pretrain", "state_dir")
