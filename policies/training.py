"""The training layer: what pretraining, finetuning, evaluation, export and the benchmarks share.

- :class:`TrainerSpec` — the trainer settings, typed (from the ``trainer`` config and the
  algorithm's ``log_every``), and :func:`make_trainer`, the Lightning ``Trainer`` they make;
- :func:`step_loader` — the endless stream a fit iterates over (batches are sampled on the
  device by the module, so each "batch" is a placeholder);
- :func:`select_episodes`, :func:`check_env`, :func:`algorithm_transitions` — the data an
  algorithm trains on: a dataset selection, its env checked, the algorithm's transition mask;
- :func:`build_module` — an offline algorithm with its normalisation and replay, optionally
  warm-started from a checkpoint;
- :func:`resolve_precision`, :func:`native_bf16`, :func:`quiet_lightning`, :func:`compile_if_asked`.

Stages (``o2o.pipeline.stages``) call this; it never imports them (``tests/test_layers.py``).
Progress display is the caller's: :func:`make_trainer` takes a factory for it.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import OmegaConf

from o2o.datasets import EpisodeStore
from o2o.datasets.reading import Transitions, parse_version
from o2o.policies.algos.base import OfflineAlgorithm, read_checkpoint, resolve_algorithm, updates_to_next
from o2o.policies.callbacks import FAST_PATH_MODES, FastPath, TrainingProgress, UpdateChunks
from o2o.policies.data import Normalization, TensorReplay, fit_normalization

ENV_IDENTITY_KEYS = ("name", "id", "kwargs")  # env settings that change what a logged step means


def _plain(cfg: Any) -> Any:
    """A config (DictConfig/ListConfig) as plain, resolved containers; anything else unchanged."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


# ---------------------------------------------------------------------------- the trainer
@dataclass(frozen=True)
class TrainerSpec:
    """What a Lightning ``Trainer`` of o2o is made from (one step = one update of every network)."""

    max_steps: int
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: Any = "32-true"  # Lightning's precision names, or "auto" (resolve_precision)
    log_every: int = 50
    progress: bool = True
    compile: bool = False
    updates_per_step: int = 1  # updates per Lightning step (its hooks, logging and progress paid once per step)
    fast_path: str = "auto"  # optimiser steps outside Lightning's wrappers where that is the same math (FastPath)
    cuda_graphs: bool = False  # on the fast path on CUDA, each update replayed as one captured CUDA graph

    @classmethod
    def from_config(cls, trainer: Mapping[str, Any], log_every: int = 50, **changes: Any) -> "TrainerSpec":
        """From a ``trainer`` config section (other keys of it are ignored), with ``changes`` applied."""
        t = dict(_plain(trainer))
        spec = cls(
            max_steps=int(t["max_steps"]),
            accelerator=str(t.get("accelerator", "auto")),
            devices=t.get("devices", 1),
            strategy=str(t.get("strategy", "auto")),
            precision=t.get("precision", "32-true"),
            log_every=int(log_every),
            progress=bool(t.get("progress", True)),
            compile=bool(t.get("compile", False)),
            updates_per_step=updates_per_step_of(t.get("updates_per_step", 1)),
            fast_path=fast_path_of(t.get("fast_path", "auto")),
            cuda_graphs=cuda_graphs_of(t.get("cuda_graphs", False)),
        )
        return spec if not changes else cls(**{**spec.__dict__, **changes})


def updates_per_step_of(value: Any) -> int:
    """``trainer.updates_per_step`` as an int >= 1, refused by name otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"trainer.updates_per_step must be an integer >= 1, got {value!r}")
    try:
        k = int(value)
    except ValueError:
        raise ValueError(f"trainer.updates_per_step must be an integer >= 1, got {value!r}") from None
    if k < 1 or float(value) != k:
        raise ValueError(f"trainer.updates_per_step must be an integer >= 1, got {value!r}")
    return k


def fast_path_of(value: Any) -> str:
    """``trainer.fast_path`` as ``auto``/``true``/``false`` (YAML booleans too), refused by name otherwise."""
    mode = ("true" if value else "false") if isinstance(value, bool) else str(value).lower()
    if mode not in FAST_PATH_MODES:
        raise ValueError(f"trainer.fast_path must be one of {list(FAST_PATH_MODES)}, got {value!r}")
    return mode


def cuda_graphs_of(value: Any) -> bool:
    """``trainer.cuda_graphs`` as a bool, refused by name otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"trainer.cuda_graphs must be true or false, got {value!r}")
    return value


def make_trainer(
    spec: TrainerSpec,
    run_dir: str | Path,
    callbacks: list,
    progress: Callable[[int, int], Any] | None = None,
    stats: Callable[[], dict] | None = None,
) -> L.Trainer:
    """The Lightning trainer of ``spec``, logging to ``run_dir`` (``tb/``, ``csv/``).

    With ``spec.progress`` and a ``progress(initial_updates, total_updates)`` factory of a
    display (``o2o.pipeline.progress.Progress``), training reports updates, rate, ETA, losses
    and ``stats()`` to it. Lightning's own checkpointing only where ``callbacks`` hold a
    ModelCheckpoint (finetuning saves its checkpoints itself)."""
    quiet_lightning()
    run_dir = str(run_dir)
    loggers = [TensorBoardLogger(run_dir, name="tb", version=""), CSVLogger(run_dir, name="csv", version="")]
    if spec.progress and progress is not None:
        callbacks = callbacks + [TrainingProgress(progress, stats)]
    if spec.updates_per_step > 1:
        callbacks = [UpdateChunks(spec.updates_per_step), *callbacks]
    callbacks = [FastPath(spec.fast_path, spec.cuda_graphs), *callbacks]
    strategy = spec.strategy
    if strategy == "ddp":
        # Every update runs one backward pass per network (critic, actor, ...), each touching only
        # that network's parameters: DDP must treat the others as unused in that pass.
        strategy = "ddp_find_unused_parameters_true"
    return L.Trainer(
        accelerator=spec.accelerator,
        devices=spec.devices,
        strategy=strategy,
        precision=resolve_precision(spec.precision, spec.accelerator),
        max_steps=int(spec.max_steps),
        max_epochs=-1,
        logger=loggers,
        callbacks=callbacks,
        log_every_n_steps=int(spec.log_every),
        enable_progress_bar=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=run_dir,
        use_distributed_sampler=False,
        deterministic=False,
    )


class StepStream(torch.utils.data.IterableDataset):
    """An endless stream of placeholders: batches are sampled on the device by the module."""

    def __iter__(self):
        return itertools.repeat(0)


def step_loader() -> torch.utils.data.DataLoader:
    """What ``trainer.fit`` iterates over: one placeholder per update."""
    return torch.utils.data.DataLoader(StepStream(), batch_size=None)


def compile_if_asked(spec: TrainerSpec, trainer: L.Trainer, module: OfflineAlgorithm) -> None:
    """``trainer.compile``: compile ``module``'s networks for ``trainer``'s run. It is meant for
    GPUs: on a CPU the compiled networks measured slower than eager, which a warning says."""
    if not spec.compile:
        return
    if trainer.strategy.root_device.type == "cpu":
        warnings.warn(
            "trainer.compile=true on a CPU: torch.compile'd networks measured slower than eager "
            "there (bf16 CQL ~1.5x slower, IQL/AWAC slower, float32 CQL level; bench/README.md); "
            "it is meant for GPUs",
            UserWarning,
            stacklevel=3,
        )
    module.compile_networks()


class _QuietLightning(logging.Filter):
    """Drops Lightning's advertising tips; its other messages still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.getMessage())


def quiet_lightning() -> None:
    """Silence warnings that do not apply to o2o's design (data sampled on the device, manual optimisation)."""
    for pattern in (
        ".*does not have many workers.*",
        ".*is an invalid value for `num_workers`.*",
        ".*no pre-optimization state was saved.*",
        ".*isinstance\\(treespec, LeafSpec\\).*",
        ".*`training_step` returned `None`.*",
    ):
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
    return any(
        bool(getattr(cpu, probe, lambda: False)()) for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )


def resolve_precision(precision: Any, accelerator: str = "auto") -> Any:
    """``trainer.precision`` as Lightning takes it: ``auto`` is ``bf16-mixed`` where the hardware
    computes bf16 natively (:func:`native_bf16`), else ``32-true``; other values pass through
    (Lightning checks them)."""
    if str(precision) == "auto":
        return "bf16-mixed" if native_bf16(accelerator) else "32-true"
    return precision


class _ProbeClock(L.Callback):
    """Wall time between updates ``start`` and ``stop`` of a probe fit (the device synchronised first)."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop, self.t0, self.t1 = start, stop, 0.0, 0.0

    def updates_to_boundary(self, trainer, pl_module) -> int | None:
        return updates_to_next(pl_module.update_count, (self.start, self.stop))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = pl_module.update_count
        if n in (self.start, self.stop):
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            if n == self.start:
                self.t0 = time.perf_counter()
            else:
                self.t1 = time.perf_counter()


def measure_precision(
    module: OfflineAlgorithm, spec: TrainerSpec, updates: int = 24, warmup: int = 4
) -> tuple[str, dict[str, float]]:
    """``trainer.precision=auto``: the precision ``module``'s updates run fastest in on this device, and
    the updates/s measured for each candidate (float32; bf16-mixed where the device computes bf16
    natively). Each candidate trains a copy of the module for ``warmup + updates`` updates in a
    throwaway fit as configured (fast path, updates per step); the module, the replay's random stream
    and torch's are left as they were. Without a second candidate, or where the update's work changes
    from one update to the next (COMBO's model), nothing is measured: :func:`resolve_precision`'s rule."""
    if not native_bf16(spec.accelerator) or not type(module).graph_safe or spec.devices not in (1, "1"):
        return str(resolve_precision("auto", spec.accelerator)), {}
    replay = module.replay
    if replay is None:
        raise RuntimeError(f"{type(module).__name__}: no training data attached (call attach_replay first)")
    home = replay.device  # the first probe may move the data to the training device; it stays there
    cpu_rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    rates: dict[str, float] = {}
    quiet_lightning()
    for precision in ("32-true", "bf16-mixed"):
        module.replay = None  # the copy shares the data instead of duplicating it
        try:
            probe = copy.deepcopy(module)
        finally:
            module.replay = replay
        probe.attach_replay(replay)
        generator = replay.generator.get_state()
        clock = _ProbeClock(warmup, warmup + updates)
        callbacks: list = [FastPath(spec.fast_path), clock]
        if spec.updates_per_step > 1:
            callbacks.insert(0, UpdateChunks(spec.updates_per_step))
        trainer = L.Trainer(
            accelerator=spec.accelerator,
            devices=1,
            precision=precision,
            max_steps=warmup + updates,
            max_epochs=-1,
            logger=False,
            callbacks=callbacks,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(probe, train_dataloaders=step_loader())
        if replay.device == home:
            replay.generator.set_state(generator)
        home = replay.device
        rates[precision] = updates / max(clock.t1 - clock.t0, 1e-9)
    torch.random.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    return max(rates, key=lambda p: rates[p]), rates


# ---------------------------------------------------------------------------- the data
def select_episodes(store: EpisodeStore, data_cfg: Any) -> np.ndarray:
    """Episode indices chosen by ``data.{sources, episodes, version, success}``."""
    ep = data_cfg.get("episodes")
    episodes = None if ep is None else range(int(ep[0]), int(ep[1]))
    idx = store.select(
        sources=_plain(data_cfg.get("sources")),
        episodes=episodes,
        version=parse_version(data_cfg.get("version")),
        success=data_cfg.get("success"),
    )
    if len(idx) == 0:
        raise ValueError(
            f"dataset {store.path!r}: the selection {_plain(data_cfg)} holds no episodes "
            f"(the dataset has {store.num_episodes}); collect data first or widen the selection"
        )
    return idx


def check_env(store: EpisodeStore, env_cfg: Any) -> None:
    """The dataset must come from the env the config names (it is rebuilt for evaluation)."""
    have = store.env or {}
    want = _plain(env_cfg)
    diff = [
        f"{k} {want.get(k)!r} != dataset's {have.get(k)!r}"
        for k in ENV_IDENTITY_KEYS
        if k in have and have.get(k) != want.get(k)
    ]
    if diff:
        raise ValueError(
            f"dataset {store.path!r} was collected in env {have.get('name')!r}, not the configured "
            f"env {want.get('name')!r}: " + "; ".join(diff) + f" (pass env={have.get('name')})"
        )


def algorithm_transitions(cls: type[OfflineAlgorithm], algo_cfg: Mapping[str, Any], tr: Transitions) -> Transitions:
    """The transitions ``cls`` trains on: ``tr`` with the algorithm's transition mask applied (filtered BC
    keeps its best episodes), or ``tr`` itself."""
    mask = cls.transition_mask(algo_cfg, tr)
    if mask is None:
        return tr
    return type(tr)(**{k: np.asarray(v)[mask] for k, v in tr.__dict__.items()})


def build_module(
    cfg: Any, store: EpisodeStore, idx: np.ndarray, device: str = "cpu"
) -> tuple[OfflineAlgorithm, TensorReplay]:
    """Load the selection once, fit normalisation, and build the algorithm and its replay buffer.

    ``cfg``: the pretrain config (``algo``, ``trainer.seed``, ``data``, ``env``, ``init_from``)."""
    algo_cfg = _plain(cfg.algo)
    algo_cfg.setdefault("seed", int(cfg.trainer.seed))
    cls = resolve_algorithm(algo_cfg["cls"])
    tr = algorithm_transitions(cls, algo_cfg, store.load_transitions(idx))
    space = store.schema.action_space
    init = cfg.get("init_from")
    warm = _warm_start_checkpoint(str(init), cls, tr) if init else None
    if warm is not None:  # keep the weights' input scaling: the previous run's normalisation
        norm = Normalization.from_dict(warm["hyper_parameters"]["normalization"])
    else:
        norm = fit_normalization(
            tr,
            space.low,
            space.high,
            bool(cfg.data.normalize_obs),
            str(cfg.data.reward_scaling),
            int(cfg.env.max_episode_steps),
            obs_clip=obs_clip(cfg.data),
        )
    replay = TensorReplay.from_transitions(tr, norm, device=device, seed=int(cfg.trainer.seed))
    # The version that contains every selected episode: a later run can reload exactly this data.
    version = store.version_at(int(idx.max()) + 1)
    meta = {
        "dataset": {
            "path": str(store.path),
            "version": version.to_dict(),
            "episodes": int(len(idx)),
            "transitions": int(len(tr)),
            "selection": _plain(cfg.data),
        },
        "env": store.env,
        "config": _plain(cfg),
    }
    if warm is not None:
        from o2o.core.hashing import sha256_file

        meta["init_from"] = {
            "path": str(init),
            "sha256": sha256_file(str(init)),
            "dataset": warm["hyper_parameters"].get("meta", {}).get("dataset"),
        }
    module = cls(int(tr.observations.shape[1]), int(tr.actions.shape[1]), algo_cfg, norm.to_dict(), meta)
    if warm is not None:
        state = dict(warm["state_dict"])
        state["updates"] = torch.zeros((), dtype=torch.long)  # a new run: its step count starts at 0
        module.load_state_dict(state)
    module.attach_replay(replay)
    return module, replay


def obs_clip(data_cfg: Any) -> float:
    """``data.obs_clip`` as a number (null: 0, no clipping), refused by name when it is not one >= 0."""
    value = data_cfg.get("obs_clip")
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
        raise ValueError(
            f"init_from {path!r}: obs/action dims {(hp['obs_dim'], hp['act_dim'])} != this dataset's {dims}"
        )
    return ckpt
