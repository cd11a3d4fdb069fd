"""Probabilistic ensembles of dynamics-and-reward models, for model-based offline RL (COMBO).

Each member is a diagonal Gaussian over ``[next_obs - obs, reward]`` given ``[obs, action]``
(PETS, Chua et al. 2018; MBPO, Janner et al. 2019). Everything is in the space the
:class:`~o2o.policies.data.TensorReplay` holds (standardised observations, actions in
[-1, 1], scaled rewards), so model transitions can be mixed with real ones as they are.

All members are one batched :class:`~o2o.policies.networks.EnsembleMLP`: training feeds
each member its own bootstrap batch as ``[n, B, in]``, rollouts feed every member the
same ``[B, in]``. The training recipe follows MBPO / MOPO as OfflineRL-Kit reproduces it
(``offlinerlkit/dynamics/ensemble_dynamics.py``): bootstrap resampling, a held-out split,
per-member snapshots of the best validation error, early stopping when no member improves
by more than 1 % for ``patience`` epochs, and the ``n_elites`` best members used for
rollouts.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from o2o.policies.algos import losses as L
from o2o.policies.networks import EnsembleMLP, adam

# MBPO's per-layer L2 weights for its 4x200 model (4 hidden layers + output).
MBPO_WEIGHT_DECAY = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)
# A target dimension whose spread is below this is constant in the data (e.g. the goal in
# a goal-conditioned observation): it is left unscaled rather than blown up by 1/std.
_MIN_STD = 1e-4

TerminationFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def soft_clamp(x: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Clamp ``x`` into ``[low, high]`` smoothly, so gradients reach the bounds (PETS)."""
    x = high - F.softplus(high - x)
    return low + F.softplus(x - low)


class EnsembleDynamics(nn.Module):
    """An ensemble of Gaussian models of ``[delta obs, reward]``; :meth:`fit` trains it,
    :meth:`step` samples transitions from a random elite per row.

    ``weight_decay``: one L2 weight per layer (``len(hidden) + 1`` values) or one for all.
    ``termination_fn(obs, act, next_obs) -> bool [B]`` (the caller's space) marks model
    transitions as terminal; without one no model transition is terminal.
    The normalisers, elites, validation errors and the ``trained`` flag are buffers, so a
    checkpoint restores a trained model and nothing retrains it.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (200, 200, 200, 200),
        n_models: int = 7,
        n_elites: int = 5,
        activation: str = "silu",
        weight_decay: float | Sequence[float] = MBPO_WEIGHT_DECAY,
        bound_coef: float = 0.01,
        termination_fn: TerminationFn | None = None,
    ):
        super().__init__()
        if not 1 <= int(n_elites) <= int(n_models):
            raise ValueError(f"dynamics: n_elites={n_elites} must be between 1 and n_models={n_models}")
        n_layers = len(hidden) + 1
        decay = [float(weight_decay)] * n_layers if isinstance(weight_decay, (int, float)) else list(weight_decay)
        if len(decay) != n_layers:
            raise ValueError(
                f"dynamics: weight_decay has {len(decay)} values but the model has {n_layers} layers "
                f"(hidden {list(hidden)} + output); give {n_layers} values or a single number"
            )
        self.obs_dim, self.act_dim, self.out_dim = int(obs_dim), int(act_dim), int(obs_dim) + 1
        self.n_models, self.n_elites = int(n_models), int(n_elites)
        self.decay, self.bound_coef = decay, float(bound_coef)
        self.termination_fn = termination_fn
        in_dim = self.obs_dim + self.act_dim
        self.net = EnsembleMLP(self.n_models, in_dim, 2 * self.out_dim, hidden, activation)
        # MBPO's initial bounds logvar in [-10, 0.5], i.e. log-std in [-5, 0.25]; learned.
        self.max_log_std = nn.Parameter(torch.full((self.out_dim,), 0.25))
        self.min_log_std = nn.Parameter(torch.full((self.out_dim,), -5.0))
        self.register_buffer("in_mean", torch.zeros(in_dim))
        self.register_buffer("in_std", torch.ones(in_dim))
        self.register_buffer("out_mean", torch.zeros(self.out_dim))
        self.register_buffer("out_std", torch.ones(self.out_dim))
        self.register_buffer("elites", torch.arange(self.n_elites))
        self.register_buffer("val_mse", torch.full((self.n_models,), math.inf))
        self.register_buffer("trained", torch.zeros((), dtype=torch.bool))

    @property
    def is_trained(self) -> bool:
        return bool(self.trained)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Standardised inputs ``[B, in]`` or ``[n, B, in]`` -> standardised (mean, log_std) ``[n, B, D]``."""
        mean, raw = self.net(x).chunk(2, dim=-1)
        return mean, soft_clamp(raw, self.min_log_std, self.max_log_std)

    def standardize_inputs(self, obs: Tensor, act: Tensor) -> Tensor:
        return (torch.cat([obs, act], dim=-1) - self.in_mean) / self.in_std

    def validation_mse(self, x: Tensor, y: Tensor) -> Tensor:
        """Each member's mean squared error of its mean, standardised targets: ``[n]``."""
        with torch.no_grad():
            mean, _ = self(x)
            return (mean - y).pow(2).mean(dim=(1, 2))

    # ------------------------------------------------------------------ using the model
    @torch.no_grad()
    def step(self, obs: Tensor, act: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Sample ``(next_obs [B, O], reward [B], terminal bool [B])``, each row from a random elite.

        A random member per row (MBPO's TS1 sampling) lets the ensemble's disagreement
        show up as spread in the rollouts instead of being averaged away. The rows are
        split at random into equal groups, one per elite, and each member runs only its
        group (non-elites get zero rows): ``n x B / n_elites`` rows instead of ``n x B``.
        """
        B, k = obs.shape[0], self.n_elites
        per = -(-B // k)  # rows per elite, the last group padded
        order = torch.randperm(B, device=obs.device, generator=generator)
        x = self.standardize_inputs(obs, act).index_select(0, order)
        x = torch.cat([x, x.new_zeros(k * per - B, x.shape[1])])
        grouped = x.new_zeros(self.n_models, per, x.shape[1])
        grouped[self.elites] = x.view(k, per, -1)
        mean, log_std = self(grouped)
        mean = mean[self.elites].reshape(k * per, -1)[:B]
        std = log_std[self.elites].reshape(k * per, -1)[:B].exp()
        noise = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype, generator=generator)
        y = torch.empty_like(mean)
        y[order] = mean + std * noise  # back to the callers' row order
        return self._unpack(obs, act, y)

    @torch.no_grad()
    def predict(self, obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        """The elites' average mean prediction ``(next_obs [B, O], reward [B])`` (no sampling)."""
        mean, _ = self(self.standardize_inputs(obs, act))
        next_obs, reward, _ = self._unpack(obs, act, mean[self.elites].mean(dim=0))
        return next_obs, reward

    def _unpack(self, obs: Tensor, act: Tensor, y_std: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y = y_std * self.out_std + self.out_mean
        next_obs, reward = obs + y[:, :-1], y[:, -1]
        if self.termination_fn is None:
            terminal = torch.zeros(obs.shape[0], dtype=torch.bool, device=obs.device)
        else:
            terminal = self.termination_fn(obs, act, next_obs).to(torch.bool).reshape(obs.shape[0])
        return next_obs, reward, terminal

    # ------------------------------------------------------------------ training
    def fit(
        self,
        obs: Tensor,
        act: Tensor,
        rewards: Tensor,
        next_obs: Tensor,
        *,
        batch_size: int = 256,
        lr: float = 1e-3,
        val_fraction: float = 0.1,
        max_val: int = 5000,
        patience: int = 5,
        max_epochs: int | None = None,
        min_improvement: float = 0.01,
        seed: int = 0,
    ) -> dict[str, float]:
        """Train every member on its own bootstrap of the data until validation stops improving.

        Rows are split once into training and held-out (``val_fraction``, at most
        ``max_val`` rows); normalisers are fitted on the training rows. After each epoch a
        member whose held-out MSE improved by more than ``min_improvement`` (relative) is
        snapshotted; training stops after ``patience`` epochs without any improvement (or
        at ``max_epochs``), every member is restored to its snapshot and the ``n_elites``
        lowest-error members become the elites. Returns summary metrics.
        """
        device = obs.device
        gen = torch.Generator(device=device)
        gen.manual_seed(int(seed))
        x_all = torch.cat([obs, act], dim=-1).float()
        y_all = torch.cat([next_obs - obs, rewards.reshape(-1, 1)], dim=-1).float()
        n_rows = x_all.shape[0]
        n_val = min(int(n_rows * float(val_fraction)), int(max_val))
        if n_val < 1 or n_rows - n_val < 1:
            raise ValueError(
                f"dynamics: {n_rows} transitions cannot be split into training and validation rows "
                f"(val_fraction={val_fraction}); collect more data or raise val_fraction"
            )
        perm = torch.randperm(n_rows, device=device, generator=gen)
        val_rows, train_rows = perm[:n_val], perm[n_val:]
        self._fit_normalizers(x_all[train_rows], y_all[train_rows])
        x = (x_all - self.in_mean) / self.in_std
        y = (y_all - self.out_mean) / self.out_std
        x_tr, y_tr, x_val, y_val = x[train_rows], y[train_rows], x[val_rows], y[val_rows]

        n, n_tr = self.n_models, x_tr.shape[0]
        # Bootstrap (sampling with replacement) per member: the members disagree where data is thin.
        boot = torch.randint(n_tr, (n, n_tr), device=device, generator=gen)
        params = [*self.net.parameters(), self.max_log_std, self.min_log_std]
        opt = adam(params, lr=float(lr))
        best = torch.full((n,), math.inf, device=device)
        snapshot = [p.detach().clone() for p in self.net.parameters()]
        epochs, since, train_loss = 0, 0, math.nan
        self.requires_grad_(True).train()
        with torch.enable_grad(), torch.autocast(device.type, enabled=False):
            while max_epochs is None or epochs < int(max_epochs):
                order = torch.argsort(torch.rand(n, n_tr, device=device, generator=gen), dim=1)
                idx = boot.gather(1, order)
                total = torch.zeros((), device=device)
                for start in range(0, n_tr, int(batch_size)):
                    b = idx[:, start : start + int(batch_size)]
                    xb = x_tr.index_select(0, b.reshape(-1)).view(n, b.shape[1], -1)
                    yb = y_tr.index_select(0, b.reshape(-1)).view(n, b.shape[1], -1)
                    mean, log_std = self(xb)
                    loss = L.dynamics_nll(mean, log_std, yb, self.max_log_std, self.min_log_std, self.bound_coef)
                    loss = loss + self._decay_loss()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += loss.detach()
                train_loss = float(total) / math.ceil(n_tr / int(batch_size))
                val = self.validation_mse(x_val, y_val)
                improved = torch.isinf(best) | ((best - val) / best > float(min_improvement))
                epochs += 1
                if bool(improved.any()):
                    for snap, p in zip(snapshot, self.net.parameters()):
                        snap[improved] = p.detach()[improved]  # every net parameter has the member dim first
                    best = torch.where(improved, val, best)
                    since = 0
                else:
                    since += 1
                    if since >= int(patience):
                        break
        with torch.no_grad():
            for snap, p in zip(snapshot, self.net.parameters()):
                p.copy_(snap)
        self.requires_grad_(False).eval()  # frozen from here on: rollouts never backpropagate into it
        self.val_mse.copy_(self.validation_mse(x_val, y_val))
        self.elites.copy_(torch.argsort(self.val_mse)[: self.n_elites])
        self.trained.fill_(True)
        baseline = ((-self.out_mean / self.out_std)[:-1] - y_val[:, :-1]).pow(2).mean()  # "next obs = obs"
        return {
            "dynamics_epochs": float(epochs),
            "dynamics_train_loss": train_loss,
            "dynamics_val_mse": float(self.val_mse[self.elites].mean()),
            "dynamics_val_mse_no_change": float(baseline),
            "dynamics_train_rows": float(n_tr),
            "dynamics_val_rows": float(n_val),
        }

    def _fit_normalizers(self, x: Tensor, y: Tensor) -> None:
        for data, mean_buf, std_buf in ((x, self.in_mean, self.in_std), (y, self.out_mean, self.out_std)):
            std = data.std(dim=0)
            mean_buf.copy_(data.mean(dim=0))
            std_buf.copy_(torch.where(std < _MIN_STD, torch.ones_like(std), std))

    def _decay_loss(self) -> Tensor:
        layers = [*self.net.hidden, self.net.out]
        return sum(wd * 0.5 * layer.weight.pow(2).sum() for wd, layer in zip(self.decay, layers) if wd)
