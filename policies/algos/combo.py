"""COMBO: Conservative Offline Model-Based Policy Optimization (Yu et al. 2021).

CQL(H) on a mix of real and model-generated transitions. A probabilistic dynamics
ensemble (:mod:`o2o.policies.algos.dynamics`) is trained once on the dataset; every
``rollout_every`` updates, short rollouts (``rollout_length`` steps) of the current policy
in the model start from dataset states and refill a ring buffer of model transitions.
Each update then draws ``real_ratio`` of its batch from the dataset and the rest from
that buffer:

- the TD loss, the actor and the temperature use the whole mixed batch (MBPO-style);
- the conservative term pushes Q *down* at model states (log-sum-exp over uniform and
  policy actions there, ``cql_states: model``, the paper's rho = d_model^pi, eq. 2) and
  *up* on dataset state-actions (the real half). Where the model is wrong, its states
  look unlike the data and get low values; where it is right, the data props them up.

Defaults follow OfflineRL-Kit's COMBO (``run_example/run_combo.py``, which reproduces the
paper's D4RL numbers) and the paper's appendix: ensemble of 7 (5 elites) 4x200 swish
models, rollouts of 50k starts x 5 steps every 1000 updates kept for 5 rollouts,
``real_ratio`` 0.5 (the paper's f), critics/actor 3x256, actor lr 1e-4, no entropy in the
backup. ``cql_alpha`` (the paper's beta) is tuned per task in {0.5, 1, 5}; 1.0 is the
middle of that grid and OfflineRL-Kit's ``COMBOPolicy`` default. OfflineRL-Kit's own
default for ``rho_s`` is ``mix`` (log-sum-exp over the mixed batch's states); set
``cql_states: mix`` to match it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, fields
from typing import Callable

import torch
from torch import Tensor

from o2o.core.resolve import resolve
from o2o.policies.algos import losses as L
from o2o.policies.algos.base import Scratch
from o2o.policies.algos.cql import CQL, CQLConfig
from o2o.policies.algos.dynamics import MBPO_WEIGHT_DECAY, EnsembleDynamics
from o2o.policies.data import Batch, TensorReplay, action_from_unit_t, clip_obs, denormalize_obs_t

log = logging.getLogger(__name__)

# Model transitions are kept for this many rollouts when model_buffer_size is null
# (MOPO/OfflineRL-Kit's model_retain_epochs).
RETAIN_ROLLOUTS = 5
# Termination functions are imported by name from the config; only from o2o's own packages.
TERMINATION_PREFIX = "o2o."


class ModelReplay(TensorReplay):
    """A ring buffer of model transitions on the training device: the oldest rows are overwritten.

    Same layout and sampling as :class:`TensorReplay` (so batches mix by concatenation);
    rows arrive already in the normalised space, as the model produces them.
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, device="cpu", seed: int = 0):
        super().__init__(obs_dim, act_dim, capacity, device, seed)
        self.pointer = 0  # next row to write

    def add(self, obs: Tensor, actions: Tensor, rewards: Tensor, next_obs: Tensor, terminals: Tensor) -> None:
        """Append ``n`` transitions (tensors on any device), overwriting the oldest when full."""
        n = obs.shape[0]
        if n > self.capacity:  # only the newest rows would survive anyway
            obs, actions, rewards, next_obs, terminals = (
                t[n - self.capacity :] for t in (obs, actions, rewards, next_obs, terminals)
            )
            n = self.capacity
        idx = (self.pointer + torch.arange(n, device=self.device)) % self.capacity
        for dst, value in (
            (self.observations, obs),
            (self.actions, actions),
            (self.rewards, rewards),
            (self.next_observations, next_obs),
            (self.terminals, terminals),
        ):
            dst.index_copy_(0, idx, value.detach().to(self.device, torch.float32).reshape(n, *dst.shape[1:]))
        self.timeouts.index_fill_(0, idx, 0.0)
        self.pointer = (self.pointer + n) % self.capacity
        self.size = min(self.size + n, self.capacity)


def resolve_termination_fn(path: str) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The function at dotted ``path`` (inside ``o2o.``): ``(obs, action, next_obs) -> bool [B]``, env units."""
    return resolve(
        path,
        TERMINATION_PREFIX,
        what="termination_fn",
        rule=f"it must live in '{TERMINATION_PREFIX}' (e.g. 'o2o.envs.<suite>.<fn>'), or be null for no terminations",
    )


def _rows(batch: Batch, stop: int) -> Batch:
    return Batch(**{f.name: getattr(batch, f.name)[:stop] for f in fields(Batch)})


def _concat(a: Batch, b: Batch) -> Batch:
    return Batch(**{f.name: torch.cat([getattr(a, f.name), getattr(b, f.name)]) for f in fields(Batch)})


@dataclass(frozen=True)
class COMBOConfig(CQLConfig):
    """COMBO's hyperparameters: OfflineRL-Kit's run_combo.py and the paper's appendix (see the module)."""

    hidden: list[int] = field(default_factory=lambda: [256, 256, 256])  # actor and critics
    cql_alpha: float = 1.0  # the paper's beta; tuned per task in {0.5, 1, 5}
    cql_states: str = "model"  # model: log-sum-exp at model states (paper); mix: at every state of the batch
    real_ratio: float = 0.5  # fraction of each batch from the dataset (the paper's f)
    rollout_every: int = 1000  # updates between model rollouts
    rollout_batch_size: int = 50000  # dataset states each rollout starts from
    rollout_length: int = 5  # model steps per rollout (the paper's h, 1 or 5)
    rollout_policy: str = "policy"  # policy: sampled actions of the current actor; uniform: random actions
    model_buffer_size: int | None = None  # rows of model data kept; null: rollout_batch_size * rollout_length * 5
    n_models: int = 7
    n_elites: int = 5  # the lowest held-out error members used in rollouts
    dynamics_hidden: list[int] = field(default_factory=lambda: [200, 200, 200, 200])
    dynamics_activation: str = "silu"  # swish, as MBPO
    dynamics_lr: float = 1e-3
    # L2 per layer (hidden + output), or one number
    dynamics_weight_decay: list[float] | float = field(default_factory=lambda: list(MBPO_WEIGHT_DECAY))
    dynamics_bound_coef: float = 0.01  # pull on the learned log-std bounds
    dynamics_batch_size: int = 256
    dynamics_val_fraction: float = 0.1  # held-out share of the transitions (early stopping, elite selection)
    dynamics_max_val: int = 5000  # at most this many held-out rows
    dynamics_patience: int = 5  # epochs without a >1% improvement of any member before stopping
    dynamics_min_improvement: float = 0.01  # relative held-out improvement that counts
    dynamics_max_epochs: int | None = None  # cap on training epochs (null: until early stopping)
    termination_fn: str | None = None  # dotted path in o2o. of (obs, act, next_obs) -> bool, env units; null: none


class COMBO(CQL):
    """COMBO on top of :class:`CQL`: a dynamics ensemble, model rollouts, mixed batches."""

    config = COMBOConfig
    hp: COMBOConfig
    graph_safe = False  # policies/graphs.py: an update's work depends on the update count
    graph_safe_reason = "model rollouts every rollout_every updates and a model trained on the host"

    def build(self) -> None:
        super().build()
        hp = self.hp
        if not 0.0 < float(hp.real_ratio) <= 1.0:
            raise ValueError(f"COMBO: real_ratio={hp.real_ratio} must be in (0, 1] (dataset pairs anchor the penalty)")
        for key, choices in (("cql_states", ("model", "mix")), ("rollout_policy", ("policy", "uniform"))):
            if getattr(hp, key) not in choices:
                raise ValueError(f"COMBO: {key}={getattr(hp, key)!r} not one of {choices}")
        for key in ("rollout_every", "rollout_batch_size", "rollout_length"):
            if int(getattr(hp, key)) < 1:
                raise ValueError(f"COMBO: {key}={getattr(hp, key)} must be >= 1")
        term = None
        if hp.termination_fn is not None:
            term = self._env_unit_termination(resolve_termination_fn(hp.termination_fn))
        self.dynamics = EnsembleDynamics(
            self.obs_dim,
            self.act_dim,
            hp.dynamics_hidden,
            int(hp.n_models),
            int(hp.n_elites),
            hp.dynamics_activation,
            hp.dynamics_weight_decay,
            float(hp.dynamics_bound_coef),
            termination_fn=term,
        )
        self.model_replay: ModelReplay | None = None  # not in checkpoints: refilled by the first update
        self._model_metrics: dict[str, Tensor] = {}

    def _env_unit_termination(self, fn: Callable) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        # The model works in the replay's normalised space; the env's rule is written in env units.
        def terminal(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
            return fn(
                denormalize_obs_t(obs, self.obs_mean, self.obs_std),
                action_from_unit_t(act, self.act_center, self.act_half),  # in [-1, 1] already: the clamp is moot
                denormalize_obs_t(next_obs, self.obs_mean, self.obs_std),
            )

        return terminal

    def model_buffer_capacity(self) -> int:
        hp = self.hp
        if hp.model_buffer_size is not None:
            return int(hp.model_buffer_size)
        return int(hp.rollout_batch_size) * int(hp.rollout_length) * RETAIN_ROLLOUTS

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.model_replay is not None:
            self.model_replay.to(self.device)

    # ------------------------------------------------------------------ model
    def train_dynamics(self) -> dict[str, float]:
        """Fit the ensemble on every transition of the replay (once; the flag is checkpointed)."""
        hp, data = self.hp, self.replay.all()
        start = time.perf_counter()
        metrics = self.dynamics.fit(
            data.observations,
            data.actions,
            data.rewards,
            data.next_observations,
            batch_size=int(hp.dynamics_batch_size),
            lr=float(hp.dynamics_lr),
            val_fraction=float(hp.dynamics_val_fraction),
            max_val=int(hp.dynamics_max_val),
            patience=int(hp.dynamics_patience),
            max_epochs=hp.dynamics_max_epochs,
            min_improvement=float(hp.dynamics_min_improvement),
            seed=int(hp.seed),
        )
        log.info(
            "COMBO dynamics: %d models on %d transitions, %d epochs in %.1f s; elites %s; held-out MSE "
            "(standardised) %.4g vs %.4g for 'no change'",
            self.dynamics.n_models,
            len(data),
            metrics["dynamics_epochs"],
            time.perf_counter() - start,
            self.dynamics.elites.tolist(),
            metrics["dynamics_val_mse"],
            metrics["dynamics_val_mse_no_change"],
        )
        return metrics

    @torch.no_grad()
    def rollout(self) -> dict[str, Tensor]:
        """Roll the current policy out in the model from dataset states; store the transitions."""
        hp = self.hp
        if self.model_replay is None:
            self.model_replay = ModelReplay(
                self.obs_dim, self.act_dim, self.model_buffer_capacity(), self.device, seed=int(hp.seed)
            )
        gen = self.model_replay.generator
        obs = self.replay.sample(int(hp.rollout_batch_size)).observations
        rewards = []
        for _ in range(int(hp.rollout_length)):
            if hp.rollout_policy == "uniform":
                act = torch.rand(obs.shape[0], self.act_dim, device=obs.device, generator=gen) * 2.0 - 1.0
            else:
                act = self.actor(obs).action
            with torch.autocast(obs.device.type, enabled=False):  # bf16 deltas would blur the model's next states
                next_obs, reward, terminal = self.dynamics.step(obs.float(), act.float(), generator=gen)
            next_obs = clip_obs(next_obs, self.norm.obs_clip)  # model states in the range real rows have
            self.model_replay.add(obs, act, reward, next_obs, terminal.float())
            rewards.append(reward)
            if self.dynamics.termination_fn is not None:  # boolean indexing syncs with the host: only when needed
                next_obs = next_obs[~terminal]
                if next_obs.shape[0] == 0:
                    break
            obs = next_obs
        rewards = torch.cat(rewards)
        as_tensor = lambda v: torch.tensor(float(v), device=self.device)  # noqa: E731
        return {
            "model_reward_mean": rewards.mean(),
            "model_transitions": as_tensor(rewards.numel()),
            "model_buffer_rows": as_tensor(len(self.model_replay)),
        }

    # ------------------------------------------------------------------ the update
    def update(self, batch: Batch, scratch: Scratch | None = None) -> dict[str, Tensor]:
        """Train the model if it is not yet, roll out when due, then one CQL update on a mixed batch."""
        if not self.dynamics.is_trained:
            self.train_dynamics()
        if "dynamics_val_mse" not in self._model_metrics:  # also after a resume, from the checkpointed buffers
            self._model_metrics["dynamics_val_mse"] = self.dynamics.val_mse[self.dynamics.elites].mean()
        if (
            self.model_replay is None
            or len(self.model_replay) == 0
            or self.update_count % int(self.hp.rollout_every) == 0
        ):
            self._model_metrics.update(self.rollout())
        n_real = max(1, int(len(batch) * float(self.hp.real_ratio)))
        if n_real < len(batch):
            batch = _concat(_rows(batch, n_real), self.model_replay.sample(len(batch) - n_real))
        scratch = Scratch() if scratch is None else scratch
        scratch["n_real"] = n_real  # the penalty needs to know which rows are real
        metrics = super().update(batch, scratch)
        metrics.update(self._model_metrics)  # the latest model figures ride along with the logged metrics
        return metrics

    def cql_penalty_per_member(self, batch: Batch, scratch: Scratch) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """COMBO's gap (:func:`~o2o.policies.algos.losses.combo_penalty_per_member`): the log-sum-exp at the
        model rows' states (``cql_states: model``; every state with ``mix``) against Q on the dataset
        pairs, the first ``scratch["n_real"]`` rows (every row when the scratch does not say); Q(s, a)
        of every row for the TD loss."""
        q = self.critic(batch.observations, batch.actions)
        k = scratch.get("n_real", len(batch))
        # Without model rows (real_ratio 1) this is CQL: the penalty sits at the dataset's states.
        at = slice(k, None) if self.hp.cql_states == "model" and k < len(batch) else slice(None)
        soft, _, _ = self.soft_max_q(batch.observations[at], batch.next_observations[at])
        return L.combo_penalty_per_member(soft, q[:, :k]), q, {"q_data_mean": q[:, :k].detach().mean()}
