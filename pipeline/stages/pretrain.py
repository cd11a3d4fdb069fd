"""The pretrain stage: an offline algorithm trained on (a selection of) the dataset.

Reads: the dataset (a version of it). Writes: a run folder with checkpoints (best and
last), TensorBoard and CSV logs, and ``summary.json`` naming the best checkpoint, how it
was chosen, and the dataset version it was trained on.
"""

from __future__ import annotations

import itertools
import json
import logging
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from o2o.datasets import EpisodeStore
from o2o.datasets.reading import parse_version
from o2o.deploy.manifest import file_unchanged, sha256_file
from o2o.pipeline.config import plain
from o2o.pipeline.dag import Stage
from o2o.pipeline.progress import Progress
from o2o.pipeline.stages import dataset_verify
from o2o.policies.algos.base import OfflineAlgorithm, read_checkpoint, resolve_algorithm
from o2o.policies.allocator import tune_cpu_allocator
from o2o.policies.callbacks import SimEvaluation, TrainingProgress, UpdateRate, best_from_history
from o2o.policies.data import Normalization, TensorReplay, fit_normalization
from o2o.policies.evaluation import Evaluator

log = logging.getLogger(__name__)

ENV_IDENTITY_KEYS = ("name", "id", "kwargs")


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
    module: Any = field(default=None, repr=False, compare=False)  # the trained module (last state), not saved

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "module"}


class _Steps(torch.utils.data.IterableDataset):
    """An endless stream of placeholders: batches are sampled on the device by the module."""

    def __iter__(self):
        return itertools.repeat(0)


def select_episodes(store: EpisodeStore, data_cfg: Any) -> np.ndarray:
    """Episode indices chosen by ``data.{sources, episodes, version, success}``."""
    ep = data_cfg.get("episodes")
    episodes = None if ep is None else range(int(ep[0]), int(ep[1]))
    idx = store.select(sources=plain(data_cfg.get("sources")), episodes=episodes,
                       version=parse_version(data_cfg.get("version")), success=data_cfg.get("success"))
    if len(idx) == 0:
        raise ValueError(f"dataset {store.path!r}: the selection {plain(data_cfg)} holds no episodes "
                         f"(the dataset has {store.num_episodes}); collect data first or widen the selection")
    return idx


def check_env(store: EpisodeStore, env_cfg: Any) -> None:
    """The dataset must come from the env the config names (it is rebuilt for evaluation)."""
    have = store.env or {}
    want = plain(env_cfg)
    diff = [f"{k} {want.get(k)!r} != dataset's {have.get(k)!r}" for k in ENV_IDENTITY_KEYS
            if k in have and have.get(k) != want.get(k)]
    if diff:
        raise ValueError(f"dataset {store.path!r} was collected in env {have.get('name')!r}, not the configured "
                         f"env {want.get('name')!r}: " + "; ".join(diff) + f" (pass env={have.get('name')})")


def build_module(cfg: DictConfig, store: EpisodeStore, idx: np.ndarray, device: str = "cpu"
                 ) -> tuple[OfflineAlgorithm, TensorReplay]:
    """Load the selection once, fit normalisation, and build the algorithm and its replay buffer."""
    algo_cfg = plain(cfg.algo)
    algo_cfg.setdefault("seed", int(cfg.trainer.seed))
    cls = resolve_algorithm(algo_cfg["cls"])
    tr = store.load_transitions(idx)
    mask = cls.transition_mask(algo_cfg, tr)
    if mask is not None:
        tr = type(tr)(**{k: np.asarray(v)[mask] for k, v in tr.__dict__.items()})
    space = store.schema.action_space
    init = cfg.get("init_from")
    warm = _warm_start_checkpoint(str(init), cls, tr) if init else None
    if warm is not None:  # keep the weights' input scaling: the previous run's normalisation
        norm = Normalization.from_dict(warm["hyper_parameters"]["normalization"])
    else:
        norm = fit_normalization(tr, space.low, space.high, bool(cfg.data.normalize_obs),
                                 str(cfg.data.reward_scaling), int(cfg.env.max_episode_steps),
                                 obs_clip=_obs_clip(cfg))
    replay = TensorReplay.from_transitions(tr, norm, device=device, seed=int(cfg.trainer.seed))
    # The version that contains every selected episode: a later run can reload exactly this data.
    version = store.version_at(int(idx.max()) + 1)
    meta = {
        "dataset": {"path": str(store.path), "version": version.to_dict(), "episodes": int(len(idx)),
                    "transitions": int(len(tr)), "selection": plain(cfg.data)},
        "env": store.env,
        "config": plain(cfg),
    }
    if warm is not None:
        meta["init_from"] = {"path": str(init), "sha256": sha256_file(str(init)),
                             "dataset": warm["hyper_parameters"].get("meta", {}).get("dataset")}
    module = cls(int(tr.observations.shape[1]), int(tr.actions.shape[1]), algo_cfg, norm.to_dict(), meta)
    if warm is not None:
        state = dict(warm["state_dict"])
        state["updates"] = torch.zeros((), dtype=torch.long)  # a new run: its step count starts at 0
        module.load_state_dict(state)
    module.attach_replay(replay)
    return module, replay


def _obs_clip(cfg: DictConfig) -> float:
    """``data.obs_clip`` as a number (null: 0, no clipping), refused by name when it is not one >= 0."""
    value = cfg.data.get("obs_clip")
    try:
        clip = 0.0 if value is None else float(value)
    except (TypeError, ValueError):
        clip = float("nan")
    if not (np.isfinite(clip) and clip >= 0):
        raise ValueError(f"data.obs_clip must be a number >= 0 (0 or null: no clipping), got {value!r}")
    return clip


def _warm_start_checkpoint(path: str, cls: type, tr) -> dict:
    """The checkpoint to initialise the weights from (``init_from``), checked against this run."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"init_from {path!r}: no such checkpoint file")
    ckpt = read_checkpoint(path, "init_from")
    want = f"{cls.__module__}.{cls.__qualname__}"
    if ckpt["o2o"]["cls"] != want:
        raise ValueError(f"init_from {path!r} holds a {ckpt['o2o']['cls']}, this run trains a {want}")
    hp = ckpt["hyper_parameters"]
    dims = (int(np.asarray(tr.observations).shape[1]), int(np.asarray(tr.actions).shape[1]))
    if (int(hp["obs_dim"]), int(hp["act_dim"])) != dims:
        raise ValueError(f"init_from {path!r}: obs/action dims {(hp['obs_dim'], hp['act_dim'])} != this "
                         f"dataset's {dims}")
    return ckpt


class _QuietLightning(logging.Filter):
    """Drops Lightning's advertising tips; its other messages still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.getMessage())


def quiet_lightning() -> None:
    """Silence warnings that do not apply to o2o's design (data sampled on the device, manual optimisation)."""
    for pattern in (".*does not have many workers.*", ".*is an invalid value for `num_workers`.*",
                    ".*no pre-optimization state was saved.*", ".*isinstance\\(treespec, LeafSpec\\).*",
                    ".*`training_step` returned `None`.*"):
        warnings.filterwarnings("ignore", pattern)
    for name in ("lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        lg.propagate = False  # Lightning has its own handler; the CLI's root handler would print twice
        if not any(isinstance(f, _QuietLightning) for f in lg.filters):
            lg.addFilter(_QuietLightning())
    rz = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _QuietLightning) for f in rz.filters):
        rz.addFilter(_QuietLightning())


def native_bf16(accelerator: str = "auto") -> bool:
    """Whether ``accelerator`` computes bfloat16 natively: a CUDA GPU with bf16 (Ampere and later),
    or a CPU with AVX512-BF16 or AMX (where bf16 matmuls run ~2x float32; bench/README.md)."""
    acc = str(accelerator).lower()
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if acc not in ("cpu", "auto"):
        return False
    cpu = torch.cpu  # private probes (torch >= 2.1); absent means unknown, i.e. no
    return any(bool(getattr(cpu, probe, lambda: False)()) for probe in ("_is_avx512_bf16_supported",
                                                                         "_is_amx_tile_supported"))


def resolve_precision(precision: Any, accelerator: str = "auto") -> str:
    """``trainer.precision`` as Lightning takes it: ``auto`` is ``bf16-mixed`` where the hardware
    computes bf16 natively (:func:`native_bf16`), else ``32-true``; other values pass through
    (Lightning checks them)."""
    if str(precision) == "auto":
        return "bf16-mixed" if native_bf16(accelerator) else "32-true"
    return precision


def make_trainer(cfg: DictConfig, run_dir: Path, callbacks: list, label: str = "pretrain",
                 stats: Callable[[], dict] | None = None) -> L.Trainer:
    """The Lightning trainer of ``cfg.trainer``; with ``trainer.progress`` its progress (updates,
    rate, ETA, losses and ``stats()``) as ``[label]`` (o2o.pipeline.progress). Lightning's own
    checkpointing only where ``callbacks`` hold a ModelCheckpoint (finetune saves its one checkpoint itself)."""
    t = cfg.trainer
    quiet_lightning()
    loggers = [TensorBoardLogger(str(run_dir), name="tb", version=""), CSVLogger(str(run_dir), name="csv", version="")]
    if t.progress:
        callbacks = callbacks + [TrainingProgress(lambda done, total: Progress(label, total, "updates", initial=done),
                                                  stats)]
    strategy = t.strategy
    if strategy == "ddp":
        # Every update runs one backward pass per network (critic, actor, ...), each touching only
        # that network's parameters: DDP must treat the others as unused in that pass.
        strategy = "ddp_find_unused_parameters_true"
    return L.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=strategy,
        precision=resolve_precision(t.precision, t.accelerator),
        max_steps=int(t.max_steps), max_epochs=-1, logger=loggers, callbacks=callbacks,
        log_every_n_steps=int(cfg.algo.get("log_every", 50)), enable_progress_bar=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks), enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(run_dir),
        use_distributed_sampler=False, deterministic=False,
    )


def select_without_simulator(cfg: DictConfig, run_dir: Path, module: OfflineAlgorithm, idx: np.ndarray
                             ) -> tuple[str | None, str, list[dict] | None]:
    """Best checkpoint by FQE over the periodic candidates (``ope`` config), or the last one if there are none."""
    from o2o.policies.ope.selection import describe_choice, select_by_ope

    last = str(run_dir / "checkpoints" / "last.ckpt")
    paths = sorted((str(p) for p in (run_dir / "checkpoints").glob("step-*.ckpt")),
                   key=lambda p: int(Path(p).stem.split("-")[-1]))
    if not cfg.ope.get("select", True) or not paths:
        return (last if Path(last).exists() else None), "last checkpoint (no simulator evaluation, no OPE selection)", None
    ope = {k: v for k, v in plain(cfg.ope).items() if k != "select"}
    ope["gamma"] = float(module.hp.gamma)  # judge every candidate by the return it was trained to maximise
    # The store selection, not the module's replay: filtered BC trains on a subset, OPE needs whole episodes.
    best, table = select_by_ope(paths, cfg.dataset.path, ope, episodes=idx, device=module.device)
    return best, (f"OPE: highest ope/fqe_value over {len(paths)} checkpoints (no simulator evaluation): "
                  f"{describe_choice(table)}"), table


def compile_if_asked(cfg: DictConfig, trainer: L.Trainer, module: OfflineAlgorithm) -> None:
    """``trainer.compile``: compile ``module``'s networks for ``trainer``'s run. It is meant for
    GPUs: on a CPU the compiled networks measured slower than eager, which a warning says."""
    if not cfg.trainer.get("compile"):
        return
    if trainer.strategy.root_device.type == "cpu":
        warnings.warn("trainer.compile=true on a CPU: torch.compile'd networks measured slower than eager "
                      "there (bf16 CQL ~1.5x slower, IQL/AWAC slower, float32 CQL level; bench/README.md); "
                      "it is meant for GPUs", UserWarning, stacklevel=3)
    module.compile_networks()


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
        evaluator = Evaluator(plain(cfg.env), episodes=int(ev.episodes), num_envs=int(ev.num_envs),
                              seed=int(ev.seed), gamma=float(module.hp.gamma), asynchronous=bool(ev.asynchronous))
        cb_eval = SimEvaluation(evaluator, every, references=plain(cfg.env.get("reference_returns")))
        callbacks.append(cb_eval)
        ckpt = ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="best-{step}", monitor=cfg.checkpoint.monitor,
                               mode=cfg.checkpoint.mode, save_top_k=1, every_n_train_steps=every, save_last=True,
                               auto_insert_metric_name=False)
    else:  # keep every candidate; an OPE estimate picks among them after training
        ckpt = ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="step-{step}", save_top_k=-1,
                               every_n_train_steps=every, save_last=True, auto_insert_metric_name=False)
    callbacks.append(ckpt)
    trainer = make_trainer(cfg, run_dir, callbacks)
    compile_if_asked(cfg, trainer, module)
    ckpt_path = cfg.trainer.ckpt_path
    if ckpt_path and Path(str(ckpt_path)).exists():  # a clear refusal of an empty, damaged or changed file
        read_checkpoint(str(ckpt_path), "trainer.ckpt_path")
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(_Steps(), batch_size=None),
                ckpt_path=ckpt_path, weights_only=True)
    module.compile_networks(False)  # the returned module runs eagerly (export traces it)

    if trainer.global_rank != 0:  # DDP: the other processes trained in lockstep; rank 0 selects and reports
        return PretrainResult(run_dir=str(run_dir), best_checkpoint=None, last_checkpoint=None,
                              selection=f"process {trainer.global_rank}: rank 0 selects and reports",
                              dataset=module.hparams["meta"]["dataset"], updates=module.update_count,
                              seconds=time.perf_counter() - start, cpu_allocator=allocator,
                              precision=str(trainer.precision), module=module)
    history = cb_eval.history if cb_eval is not None else []
    best_eval = best_from_history(history, str(cfg.checkpoint.monitor).removeprefix("eval/"))
    ope_table = None
    if ev.enabled and ckpt.best_model_path:
        best, selection = ckpt.best_model_path, f"simulation: best {cfg.checkpoint.monitor} over {len(history)} evaluations"
    else:
        best, selection, ope_table = select_without_simulator(cfg, run_dir, module, idx)
    result = PretrainResult(
        run_dir=str(run_dir), best_checkpoint=best or None, last_checkpoint=ckpt.last_model_path or None,
        selection=selection, dataset=module.hparams["meta"]["dataset"], updates=module.update_count,
        best_eval=best_eval, evaluations=history, seconds=time.perf_counter() - start, ope=ope_table, cpu_allocator=allocator,
        precision=str(trainer.precision), module=module,
    )
    (run_dir / "summary.json").write_text(json.dumps(result.to_dict(), indent=2, default=float))
    return result


# ---------------------------------------------------------------------------- as a pipeline stage
def run_stage(ctx) -> dict:
    """``o2o run``'s pretrain: train on exactly the dataset version the collect stage reported."""
    from o2o.pipeline import lineage

    data = ctx.inputs["dataset"]
    init_from = None
    if str(ctx.config.get("pretrain", {}).get("init", "fresh")) == "previous":
        prev = lineage.latest_checkpoint(str(ctx.config.state_dir), str(ctx.config.algo.name))
        if prev is not None:
            init_from = prev["checkpoint"]
            ctx.log(f"  warm start from {init_from} (trained on dataset version {prev.get('dataset_version')})")
        else:
            ctx.log("  pretrain.init=previous: no earlier checkpoint of this algorithm; training from scratch")
    cfg = OmegaConf.merge(ctx.config, {"dataset": {"path": data["path"], "verify": bool(data.get("verify", True))},
                                       "data": {"version": f"{data['episodes']}@{data['fingerprint']}"},
                                       "run_dir": str(ctx.out_dir), "init_from": init_from})
    res = pretrain(cfg)
    if res.best_checkpoint is None:
        raise RuntimeError(f"pretrain produced no checkpoint in {ctx.out_dir}")
    best = res.best_eval or {}
    ctx.log(f"  {cfg.algo.name}: {res.updates} updates in {res.seconds:.0f} s; best checkpoint by {res.selection}"
            + (f": return {best['return_mean']:.1f}" if "return_mean" in best else "")
            + (f", success {best['success_rate']:.2f}" if best.get("success_rate") is not None else ""))
    return {"checkpoint": {"path": res.best_checkpoint, "fingerprint": sha256_file(res.best_checkpoint),
                           "last": res.last_checkpoint, "algo": str(cfg.algo.name), "updates": res.updates,
                           "selection": res.selection, "dataset": res.dataset, "best_eval": res.best_eval,
                           "evaluations": res.evaluations, "summary": str(Path(res.run_dir) / "summary.json")}}


def _valid(outputs: dict) -> bool:
    c = outputs["checkpoint"]
    return file_unchanged(c["path"], c["fingerprint"])


STAGE = Stage("pretrain", reads=("dataset",), writes=("checkpoint",), run=run_stage, valid=_valid,
              doc="offline RL on the dataset version collect reported; best checkpoint by simulation or OPE")
CONFIG_KEYS = ("env", "algo", "trainer", "ope", "data", "eval", "checkpoint", "pretrain", "state_dir")
