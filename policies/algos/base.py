"""The shared base of every offline/online algorithm: a manual-optimisation LightningModule.

An algorithm declares its hyperparameters as a frozen dataclass extending
:class:`AlgoConfig` (their one source of defaults: ``configs/algo/<name>.yaml`` starts
from it), its networks in :meth:`build`, the order of its updates in ``update_order``
(e.g. ``("value", "critic", "actor")``) and one ``<name>_loss(batch, scratch)`` method
per entry, returning a :class:`LossOut` computed by the pure functions in ``losses.py``;
what one loss computes for a later one of the same update travels in that update's
:class:`Scratch`, never on ``self``. The base does the rest: optimisers (one per entry), the update loop,
gradient clipping, target networks (Polyak), logging, the normaliser buffers and
everything a checkpoint must hold to rebuild the policy without the training code.

Lightning counts an optimiser step as a "global step" under manual optimisation; here
one *update* (all entries of ``update_order``) counts as one step, so ``max_steps`` means
gradient updates whatever the number of networks (the first entry steps through
Lightning, the others through the strategy's ``optimizer_step``, which keeps AMP).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import pickle
import pkgutil
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Mapping, TypeVar

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from o2o.core.resolve import resolve
from o2o.policies.algos.losses import LossOut
from o2o.policies.data import (
    Batch,
    Normalization,
    TensorReplay,
    action_from_unit_t,
    normalize_obs_t,
)
from o2o.policies.networks import adam, compile_mlps, soft_update, strip_compiled

log = logging.getLogger(__name__)

ALGO_PREFIX = "o2o.policies.algos."

_C = TypeVar("_C", bound="AlgoConfig")


@dataclass(frozen=True)
class AlgoConfig:
    """The hyperparameters every algorithm takes; each algorithm extends it with its own
    (``IQLConfig`` in iql.py...) and names it in ``config``.

    The one place their defaults are written: ``configs/algo/<name>.yaml`` starts from its
    class's (Hydra's ConfigStore, see ``o2o.pipeline.config``) and sets only what differs,
    so ``o2o pretrain algo=<name> --cfg`` prints every key. An algorithm's ``self.hp`` is an
    instance: a key it does not declare is refused by name when it is built; a misspelt
    attribute is an error a type checker sees.
    """

    name: str | None = None  # the config's name (configs/algo/<name>.yaml)
    cls: str | None = None  # the algorithm class, o2o.policies.algos.<module>.<Class>
    batch_size: int = 256
    gamma: float = 0.99
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # hidden layer sizes of every network
    activation: str = "relu"
    grad_clip: float | None = None  # max gradient norm per network, or null
    log_every: int = 50  # updates between metric logs (logging each update costs more than a small update)
    seed: int = 0  # o2o pretrain: trainer.seed unless set

    @classmethod
    def keys(cls) -> list[str]:
        """Every key, in declaration order."""
        return [f.name for f in fields(cls)]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``{key: default}`` for every key."""
        return asdict(cls())

    @classmethod
    def of(cls: type[_C], algo: Mapping[str, Any], owner: str) -> _C:
        """The defaults with ``algo``'s values (deep copies); a key ``cls`` does not declare is an
        error naming ``owner`` (the algorithm), the key and the known keys."""
        known = cls.keys()
        unknown = sorted(set(algo) - set(known))
        if unknown:
            raise ValueError(f"algorithm {owner}: unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**copy.deepcopy(dict(algo)))


def resolve_algorithm(path: str) -> type["OfflineAlgorithm"]:
    """The algorithm class at dotted ``path``; only classes inside ``o2o.policies.algos.``.

    Checkpoints name their class; refusing anything else means loading a checkpoint can
    never import arbitrary code.
    """
    return resolve(
        path,
        ALGO_PREFIX,
        base=OfflineAlgorithm,
        what="algorithm class",
        rule=f"it must live in '{ALGO_PREFIX}' (e.g. '{ALGO_PREFIX}iql.IQL')",
        kind="an o2o algorithm (subclass of OfflineAlgorithm)",
    )


class DeterministicPolicy(nn.Module):
    """Raw env observation -> action in env units; normalisation and scaling inside.

    What gets exported and what a learned behaviour policy runs: ``forward(obs [B, O])``.
    """

    def __init__(
        self,
        actor: nn.Module,
        obs_mean: Tensor,
        obs_std: Tensor,
        act_center: Tensor,
        act_half: Tensor,
        obs_clip: float = 0.0,
    ):
        super().__init__()
        self.actor = actor
        self.register_buffer("obs_mean", obs_mean.detach().clone())
        self.register_buffer("obs_std", obs_std.detach().clone())
        self.register_buffer("act_center", act_center.detach().clone())
        self.register_buffer("act_half", act_half.detach().clone())
        # A buffer, so the policy's identity (state dict, weights_hash) includes it; inf: not clipped.
        self.register_buffer("obs_clip", torch.tensor(float(obs_clip) if obs_clip > 0 else math.inf))

    def forward(self, obs: Tensor) -> Tensor:
        z = normalize_obs_t(obs, self.obs_mean, self.obs_std, self.obs_clip)
        return action_from_unit_t(self.actor.act(z), self.act_center, self.act_half)


class Scratch(dict):
    """What the losses of one update pass each other (IQL's actor reuses the value step's
    ``Q_target(s, a)``, SAC's temperature the actor's log-probabilities...): created fresh by each
    :meth:`OfflineAlgorithm.update`, so a value never outlives the update and batch it was computed
    on. Reading a key no earlier loss wrote is an error naming it."""

    def __missing__(self, key: str):
        raise KeyError(
            f"{key!r} is not in this update's scratch (it holds {sorted(self)}): an earlier loss of "
            "update_order writes it; run the losses in update_order with one Scratch per update"
        )


class OfflineAlgorithm(L.LightningModule):
    """Base of every algorithm. Subclasses set ``config`` (their :class:`AlgoConfig`; with ``hp:
    <it>`` for type checkers), ``update_order``, build nets in :meth:`build` and define
    ``<name>_loss(batch, scratch) -> LossOut`` for each updated entry.

    Constructor arguments are plain data (saved as hyperparameters, so a checkpoint loads
    with ``torch.load(weights_only=True)``): ``obs_dim``, ``act_dim``, ``algo`` (the
    algorithm's config), ``normalization`` (:meth:`Normalization.to_dict`) and ``meta``
    (dataset version, env, run config: provenance, not used for math).
    """

    config: ClassVar[type[AlgoConfig]] = AlgoConfig
    hp: AlgoConfig  # the hyperparameters: ``config`` with the constructor's ``algo``
    update_order: ClassVar[tuple[str, ...]] = ()
    #: entries updated only every k-th update (e.g. {"actor": 2} for delayed actors)
    update_every: ClassVar[dict[str, int]] = {}
    #: whether every update runs the same kernels, so one can be captured as a CUDA graph (policies/graphs.py)
    graph_safe: ClassVar[bool] = True
    graph_safe_reason: ClassVar[str] = ""
    #: The critic learns from the data's own actions only (no action outside the data enters a target,
    #: as in IQL's expectile regression): its Q can be optimistic about the data, never extrapolate past it.
    in_sample_critic: ClassVar[bool] = False

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        algo: Mapping[str, Any],
        normalization: Mapping[str, Any],
        meta: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.hp = self.merge_config(algo)
        norm = Normalization.from_dict(normalization)
        self.norm = norm
        f32 = lambda a: torch.as_tensor(np.asarray(a, np.float32))  # noqa: E731
        self.register_buffer("obs_mean", f32(norm.obs_mean))
        self.register_buffer("obs_std", f32(norm.obs_std))
        self.register_buffer("act_center", f32(norm.action_center))
        self.register_buffer("act_half", f32(norm.action_halfrange))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        # The update count as a Python int beside the buffer (which checkpoints carry): reading a
        # GPU buffer each update would stall the device queue. Loading a state dict re-reads it.
        self._update_count = 0
        self.register_load_state_dict_post_hook(_mirror_update_count)
        self.replay: TensorReplay | None = None
        # Updates per Lightning step (``trainer.updates_per_step``; set for a fit by the trainer's
        # UpdateChunks callback): a runtime setting, not a hyperparameter, so not in checkpoints.
        self.updates_per_step = 1
        # ``trainer.fast_path``: optimiser steps outside Lightning's per-step wrappers (set for a fit by
        # the FastPath callback); the counted steps are handed to Lightning once per step.
        self.fast_updates = False
        self._fast_counted = 0
        # ``trainer.cuda_graphs``: the update captured as a CUDA graph (o2o.policies.graphs), for a fit.
        self.update_graph: Any = None
        self._resume_rng: dict | None = None  # a checkpoint's random streams, restored when its fit starts
        self.capturing = False  # True while an update is being captured (schedulers are the graph's then)
        self._targets: list[tuple[nn.Module, nn.Module, float]] = []
        self._opt_index: dict[str, int] = {}
        self._recent_metrics: dict[str, Tensor] = {}
        self._evaluation: dict[str, Any] | None = None  # the latest simulation evaluation (record_evaluation)
        torch.manual_seed(int(self.hp.seed))
        self.build()

    @property
    def update_count(self) -> int:
        """Gradient updates done so far (the ``updates`` buffer, read without a device sync)."""
        return self._update_count

    # ------------------------------------------------------------------ configuration
    @classmethod
    def merge_config(cls, algo: Mapping[str, Any]) -> AlgoConfig:
        """The hyperparameters: ``config``'s defaults < ``algo``; a key it does not declare is an error."""
        return cls.config.of(algo, cls.__name__)

    @classmethod
    def transition_mask(cls, algo: Mapping[str, Any], transitions) -> np.ndarray | None:
        """Which loaded transitions to train on (a bool mask), or None for all (filtered BC overrides)."""
        return None

    def build(self) -> None:
        """Create the networks (``self.actor`` at least) and register targets/optimised parameters."""
        raise NotImplementedError

    def parameters_for(self, name: str) -> list[nn.Parameter]:
        """The parameters the ``name`` entry of ``update_order`` optimises (default: ``self.<name>``)."""
        obj = getattr(self, name)
        return [obj] if isinstance(obj, nn.Parameter) else list(obj.parameters())

    def lr_for(self, name: str) -> float:
        return float(getattr(self.hp, f"{name}_lr"))

    def add_target(self, source: nn.Module, tau: float) -> nn.Module:
        """A frozen copy of ``source`` updated by Polyak averaging after each update."""
        target = copy.deepcopy(source)
        target.requires_grad_(False)
        self._targets.append((target, source, float(tau)))
        return target

    def configure_optimizers(self):
        opts = []
        for i, name in enumerate(self.update_order):
            self._opt_index[name] = i
            opts.append(adam(self.parameters_for(name), lr=self.lr_for(name)))
        return opts

    # ------------------------------------------------------------------ data and acting
    def attach_replay(self, replay: TensorReplay) -> None:
        """The training data (on any device; moved to the module's device when training starts)."""
        self.replay = replay

    def on_fit_start(self) -> None:
        if self.replay is None:
            raise RuntimeError(f"{type(self).__name__}: no training data attached (call attach_replay first)")
        self.replay.to(self.device)
        if self.trainer.world_size > 1:  # DDP: each process draws its own batches (same seed -> same batches)
            self.replay.generator.manual_seed(int(self.hp.seed) * 1_000_003 + self.trainer.global_rank)
            self._resume_rng = None  # checkpoints carry no random streams there

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Applied at the fit's first update: after the data has moved to its device (which re-seeds its
        # generator) and after Lightning's own draws (its data loader's seed).
        self._resume_rng = checkpoint.get("o2o_random")

    def compile_networks(self, enabled: bool = True) -> list[str]:
        """``trainer.compile``: compile every network's MLPs for the updates to come (or, with
        ``enabled=False``, return them to eager mode). Weights and checkpoints are unaffected."""
        if not enabled:
            strip_compiled(self)
            return []
        return compile_mlps(self)

    def normalize_obs(self, obs: Tensor) -> Tensor:
        return normalize_obs_t(obs, self.obs_mean, self.obs_std, self.norm.obs_clip)

    def policy(self) -> DeterministicPolicy:
        """A standalone deterministic policy module (raw obs -> env-unit action), on CPU, for export."""
        actor = copy.deepcopy(self.actor).to("cpu").eval().requires_grad_(False)
        return DeterministicPolicy(
            actor,
            self.obs_mean.cpu(),
            self.obs_std.cpu(),
            self.act_center.cpu(),
            self.act_half.cpu(),
            self.norm.obs_clip,
        ).eval()

    @torch.no_grad()
    def act(self, obs: np.ndarray | Tensor, deterministic: bool = True) -> np.ndarray:
        """Actions in env units for raw observations ``[B, O]`` (NumPy in, NumPy out)."""
        o = torch.as_tensor(np.asarray(obs, np.float32), device=self.device)
        o = self.normalize_obs(o)
        a = self.actor.act(o) if deterministic else self.explore_action(o)
        return action_from_unit_t(a, self.act_center, self.act_half).cpu().numpy()

    def explore_action(self, obs_norm: Tensor) -> Tensor:
        """A non-deterministic action (normalised space) for online exploration: a sample of the policy
        (algorithms with a deterministic actor add their own noise)."""
        return self.actor(obs_norm).action

    def critic_q_for_actor(self, obs: Tensor, action: Tensor) -> Tensor:
        """``self.critic(obs, action)`` ``[n, B]`` for an actor's loss: the gradient flows into
        ``action`` (and the actor behind it), not into the critic's parameters."""
        self.critic.requires_grad_(False)
        try:
            return self.critic(obs, action)
        finally:
            self.critic.requires_grad_(True)

    @torch.no_grad()
    def q_value(self, obs: Tensor, action_norm: Tensor) -> Tensor | None:
        """The algorithm's own estimate of Q(s, a) (normalised obs and action, unscaled rewards),
        or None for algorithms without a critic. Used by the value diagnostic."""
        critic = getattr(self, "critic", None)
        if critic is None:
            return None
        q = critic(obs, action_norm).min(dim=0).values
        return (q - self.norm.reward_shift / (1 - self.hp.gamma)) / self.norm.reward_scale

    # ------------------------------------------------------------------ the update
    def training_step(self, _unused, batch_idx: int = 0):
        """``updates_this_step`` updates (``trainer.updates_per_step``, cut at the next update a
        callback, a checkpoint, the log or ``max_steps`` must see), each on its own batch."""
        if self._resume_rng is not None:  # resumed: the random streams go on where the checkpoint left them
            restore_random_streams(self._resume_rng, self.replay, self.device)
            self._resume_rng = None
        k = updates_this_step(self) if self.updates_per_step > 1 else 1
        batch_size = int(self.hp.batch_size)
        if self.update_graph is not None:
            self._recent_metrics.update(self.update_graph.run(k))
        else:
            for _ in range(k):
                batch = self.replay.sample(batch_size)
                # An entry skipped this update (a delayed actor) keeps its last values; kept detached.
                self._recent_metrics.update({k: v.detach() for k, v in self.update(batch).items()})
        if self._fast_counted:
            advance_global_step(self.trainer, self._fast_counted)
            self._fast_counted = 0
        if k > 1:
            # Lightning counts batches for its logging (every log_every_n_steps batches, at x = the
            # batch count); counting each update as a batch keeps both where one update per step has
            # them. The count is part of the loop's state, so a resumed fit goes on from it.
            self.trainer.fit_loop.epoch_loop._batches_that_stepped += k - 1
        metrics = self._recent_metrics
        n = self._update_count
        if n % int(self.hp.log_every) == 0:
            losses = {f"train/{k}": v.float() for k, v in metrics.items() if k.endswith("_loss")}
            others = {f"train/{k}": v.float() for k, v in metrics.items() if not k.endswith("_loss")}
            self.log_dict(losses, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)
            self.log_dict(others, on_step=True, on_epoch=False, prog_bar=False, batch_size=batch_size)
        return None

    def update(self, batch: Batch, scratch: Scratch | None = None) -> dict[str, Tensor]:
        """One gradient update of every entry of ``update_order`` on ``batch``; then targets. Every
        loss gets this update's ``scratch`` (a fresh one unless given: COMBO starts it with its
        batch's layout)."""
        scratch = Scratch() if scratch is None else scratch
        metrics: dict[str, Tensor] = {}
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        n = self._update_count
        for i, name in enumerate(self.update_order):
            every = self.update_every.get(name, 1)
            if n % every:
                continue
            out: LossOut = getattr(self, f"{name}_loss")(batch, scratch)
            self.step_optimizer(opts[self._opt_index[name]], out.loss, counted=(i == 0))
            metrics[f"{name}_loss"] = out.loss.detach()
            metrics.update(out.metrics)
        if self.targets_due(n):
            for target, source, tau in self._targets:
                soft_update(target, source, tau)
        self.updates += 1
        self._update_count += 1
        return metrics

    def targets_due(self, n: int) -> bool:
        """Whether the target networks move after update ``n`` (counted from 0): after every update
        unless an algorithm delays them (TD3+BC moves them with its delayed actor)."""
        return True

    def step_optimizer(self, opt, loss: Tensor, counted: bool = True) -> None:
        """zero_grad, backward, optional clipping, step. Only a ``counted`` step advances Lightning's global step.

        On the fast path (``self.fast_updates``) the same math runs on the bare torch optimiser — plain
        backward, ``clip_grad_norm_``, ``step`` — without Lightning's per-step hooks and profiler
        around it (what its precision plugin does for 32-true and bf16-mixed); the counted steps are
        handed to Lightning's step count once the Lightning step ends."""
        if self.fast_updates:
            raw = getattr(opt, "optimizer", opt)
            raw.zero_grad(set_to_none=True)
            loss.backward()
            if self.hp.grad_clip:
                params = [p for group in raw.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, float(self.hp.grad_clip))
            raw.step()
            self._fast_counted += int(counted)
            torch.clear_autocast_cache()
            return
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.hp.grad_clip:
            self.clip_gradients(opt, gradient_clip_val=float(self.hp.grad_clip), gradient_clip_algorithm="norm")
        if counted:
            opt.step()
        else:
            self.trainer.strategy.optimizer_step(opt.optimizer, closure=lambda: None)
        # Under mixed precision autocast caches the low-precision copy of each weight for the
        # whole training_step; the weights just changed, so the next loss must not see the old copy.
        torch.clear_autocast_cache()

    # ------------------------------------------------------------------ checkpoints
    def record_evaluation(self, metrics: Mapping[str, Any], *, episodes: int, seed: int) -> dict:
        """Remember a simulation evaluation of the current weights (``metrics``: ``EvalResult.summary``).

        A checkpoint saved while the weights are still the evaluated ones carries it as
        ``checkpoint["o2o"]["evaluation"]`` (export compares the exported policy with it); the
        record holds the weights' digest, so it never travels with weights it did not judge.
        """
        record: dict[str, Any] = {
            "step": self.update_count,
            "episodes": int(episodes),
            "seed": int(seed),
            "weights_sha256": weights_digest(self.state_dict()),
        }
        for key in ("return_mean", "return_std", "success_rate", "normalized_score"):
            if metrics.get(key) is not None:
                record[key] = float(metrics[key])
        self._evaluation = record
        return record

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        digest = weights_digest(checkpoint["state_dict"])
        record: dict[str, Any] = {
            "format": 1,
            "cls": f"{type(self).__module__}.{type(self).__qualname__}",
            "updates": self.update_count,
            "weights_sha256": digest,
        }
        if self._evaluation is not None and self._evaluation["weights_sha256"] == digest:
            record["evaluation"] = dict(self._evaluation)
        checkpoint["o2o"] = record
        if self.replay is not None and self._trainer is not None and self.trainer.world_size == 1:
            checkpoint["o2o_random"] = random_streams(self.replay, self.device)
        # A captured cosine schedule keeps its rates as device tensors (policies/graphs.py): the
        # checkpoint records numbers, as an uncaptured fit's does, so it resumes anywhere.
        for state in checkpoint.get("optimizer_states") or []:
            for group in state.get("param_groups", []):
                if torch.is_tensor(group.get("lr")):
                    group["lr"] = float(group["lr"])


def _generators(replay: Any) -> list[torch.Generator]:
    """The sampling generators of a replay (a mixed replay has one per part)."""
    parts = [getattr(replay, "offline", None), getattr(replay, "online", None)]
    parts = [p for p in parts if p is not None] or [replay]
    return [p.generator for p in parts]


def random_streams(replay: Any, device: torch.device) -> dict[str, Any]:
    """Where the random streams of a fit are: torch's (CPU, and the device's on CUDA) and the replay's
    sampling generators. A checkpoint carries them, so a resumed fit draws the batches and noise the
    uninterrupted one would have."""
    out: dict[str, Any] = {
        "torch": torch.random.get_rng_state(),
        "replay": [g.get_state() for g in _generators(replay)],
    }
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def restore_random_streams(saved: Mapping[str, Any], replay: Any, device: torch.device) -> None:
    """Put back what :func:`random_streams` recorded (a part that does not match this fit is left as it is:
    a checkpoint from another device, or data of another layout)."""
    torch.random.set_rng_state(saved["torch"].cpu())
    if device.type == "cuda" and "cuda" in saved:
        torch.cuda.set_rng_state(saved["cuda"].cpu(), device)
    generators = _generators(replay)
    states = list(saved.get("replay") or [])
    if len(states) == len(generators):
        for g, state in zip(generators, states):
            if state.numel() == g.get_state().numel():
                g.set_state(state.cpu())


def updates_to_multiple(count: int, every: int) -> int | None:
    """Updates from ``count`` until the next multiple of ``every`` (``every`` when ``count`` is one);
    None for ``every`` <= 0 (never)."""
    return None if every <= 0 else every - int(count) % every


def updates_to_next(count: int, marks) -> int | None:
    """Updates from ``count`` until the first of ``marks`` after it (a clock's), or None past them all."""
    later = [m for m in marks if m > count]
    return min(later) - int(count) if later else None


def advance_global_step(trainer: L.Trainer, steps: int) -> None:
    """Count ``steps`` optimiser steps taken outside Lightning's optimiser wrapper (the fast path) as
    Lightning counts its own under manual optimisation, so ``global_step``, ``max_steps`` and the
    checkpointed loop state are what the wrapped steps would have made them."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    for _ in range(int(steps)):
        progress.increment_ready()
        progress.increment_completed()


def updates_this_step(module: OfflineAlgorithm) -> int:
    """How many updates the coming Lightning step runs: ``module.updates_per_step``, but none past
    the next update that ``max_steps``, the training log (every ``log_every`` updates) or a callback
    must see. A callback says how far off its next one is with ``updates_to_boundary(trainer,
    module) -> int | None`` (periodic evaluation, resume points, online finetuning's env steps); a
    Lightning ``ModelCheckpoint`` saves every ``every_n_train_steps`` steps. So with K updates per
    step every callback runs after exactly the update it runs after at one update per step."""
    trainer = module.trainer
    g = int(trainer.global_step)
    k = int(module.updates_per_step)
    if int(trainer.max_steps) >= 0:
        k = min(k, int(trainer.max_steps) - g)
    due = [updates_to_multiple(module.update_count, int(module.hp.log_every))]
    for cb in trainer.callbacks:
        hook = getattr(cb, "updates_to_boundary", None)
        if hook is not None:
            due.append(hook(trainer, module))
        elif isinstance(cb, ModelCheckpoint):  # Lightning's: it keeps the period to itself
            due.append(updates_to_multiple(g, int(getattr(cb, "_every_n_train_steps", 0) or 0)))
    for d in due:
        if d is not None:
            k = min(k, int(d))
    return max(1, k)


def _mirror_update_count(module: OfflineAlgorithm, _incompatible) -> None:
    """After ``load_state_dict`` (resume, rollback, ``load_algorithm``): the count is the loaded buffer's."""
    module._update_count = int(module.updates)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: empty, unreadable, not o2o's, or changed after it was written."""


def weights_digest(state_dict: Mapping[str, Any]) -> str:
    """SHA-256 over a state dict in a canonical order: per entry (sorted by name) its name, dtype,
    shape and raw bytes (CPU, contiguous), each length-prefixed, so no two state dicts collide by
    concatenation. Device and storage layout do not change it; any changed value, name, dtype or
    shape does."""
    h = hashlib.sha256(b"o2o-weights/1\0")
    for name in sorted(state_dict):
        value = state_dict[name]
        if isinstance(value, Tensor):
            t = value.detach().to("cpu").contiguous()
            header = f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}"
            data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        else:  # extra state: its repr (there is none in o2o's modules today)
            header, data = f"{name}\0{type(value).__name__}\0", repr(value).encode()
        for part in (header.encode(), data):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


_UNSTAMPED_WARNED: set[str] = set()


def _unpickling_refusal(e: BaseException) -> str:
    """The line of torch's weights-only refusal that names what the file tried to load."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "Unsupported" in ln:
            return ln
    return lines[-1] if lines else type(e).__name__


def read_checkpoint(path: str | os.PathLike, what: str = "checkpoint", map_location: Any = "cpu") -> dict:
    """An o2o algorithm checkpoint's contents, loaded without unpickling code (``weights_only=True``)
    and checked: the file is readable, it is an o2o checkpoint, its weights still have the digest
    recorded when it was written (``o2o.weights_sha256``) and its evaluation record, if any, is of
    those weights. Every failure is a :class:`CheckpointError` naming the file (``"<what> '<path>'
    ..."``). Checkpoints written before weights were digested load with a warning (once per file)."""
    where = f"{what} {str(path)!r}"
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{where} does not exist") from None
    if size == 0:
        raise CheckpointError(
            f"{where} is empty (0 bytes): it was not written completely (a crash or a full disk "
            "while saving?); use another checkpoint of the run or train again"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():  # the refusal that keeps code out: keep refusing
            raise CheckpointError(
                f"{where} refused: it holds Python objects that loading would have to execute "
                f"({_unpickling_refusal(e)}); o2o loads checkpoints with torch.load(weights_only="
                "True) and never unpickles code"
            ) from None
        raise CheckpointError(
            f"{where} ({size} bytes) cannot be read as a torch checkpoint (UnpicklingError: {_unpickling_refusal(e)})"
        ) from None
    except Exception as e:  # EOFError, zip reader errors on a truncated file, KeyError on arbitrary bytes...
        reason = str(e).split(". ")[0].strip() or "unexpected end of file"
        raise CheckpointError(
            f"{where} ({size} bytes) cannot be read as a torch checkpoint ({type(e).__name__}: "
            f"{reason}); it is truncated, damaged or not a checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or "o2o" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{where} is not an o2o algorithm checkpoint (no 'o2o' section)")
    o2o = ckpt["o2o"]
    recorded = o2o.get("weights_sha256")
    if recorded is None:
        key = os.path.abspath(path)
        if key not in _UNSTAMPED_WARNED:
            _UNSTAMPED_WARNED.add(key)
            log.warning(
                "%s records no weights digest (written before o2o checkpoints carried one): a change to its "
                "weights cannot be detected; re-save it with this o2o version to protect it",
                where,
            )
    else:
        actual = weights_digest(ckpt["state_dict"])
        if actual != recorded:
            raise CheckpointError(
                f"{where}: weights changed after it was written (digest {actual[:16]}... != "
                f"recorded {str(recorded)[:16]}...); use the checkpoint as training wrote it, or "
                "train again"
            )
    ev = o2o.get("evaluation")
    if ev is not None and (recorded is None or ev.get("weights_sha256") != recorded):
        raise CheckpointError(
            f"{where}: its evaluation record (step {ev.get('step')}) is of other weights "
            f"({str(ev.get('weights_sha256'))[:16]}... != the checkpoint's {str(recorded)[:16]}...): "
            "the weights or the record changed after it was written"
        )
    return ckpt


def algorithm_classes() -> dict[str, type[OfflineAlgorithm]]:
    """Every algorithm class of ``o2o.policies.algos`` (each module imported), by dotted path."""
    import importlib

    import o2o.policies.algos as package

    out: dict[str, type[OfflineAlgorithm]] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{ALGO_PREFIX}{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, OfflineAlgorithm) and obj.__module__ == module.__name__:
                out[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return out


def build_algorithm(ckpt: Mapping[str, Any]) -> OfflineAlgorithm:
    """The algorithm a checkpoint read by :func:`read_checkpoint` holds, with its weights, in eval mode."""
    cls = resolve_algorithm(ckpt["o2o"]["cls"])
    hp = ckpt["hyper_parameters"]
    algo = cls(hp["obs_dim"], hp["act_dim"], hp["algo"], hp["normalization"], hp.get("meta"))
    algo.load_state_dict(ckpt["state_dict"])
    return algo.eval()


def load_algorithm(path: str | os.PathLike, map_location: Any = "cpu") -> OfflineAlgorithm:
    """Rebuild an algorithm from a checkpoint without unpickling code (``weights_only=True``),
    checked by :func:`read_checkpoint`."""
    return build_algorithm(read_checkpoint(path, map_location=map_location))
