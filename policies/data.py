"""Training data on the training device: batches, normalisation and a tensor replay buffer.

The whole selection is loaded once (``EpisodeStore.load_transitions``), normalised once
(observations standardised, actions mapped to [-1, 1], rewards scaled) and kept as
tensors on the device; a batch is one ``randint`` plus one gather per field. No
DataLoader workers, no per-step host-to-device copies (the data lives where the math runs:
docs/architecture.md: Principles). The same buffer grows during online finetuning
(:meth:`TensorReplay.add`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

REWARD_SCALINGS = ("none", "standardize", "return_range")


@dataclass(frozen=True)
class Batch:
    """A batch of transitions (normalised observations, actions in [-1, 1], scaled rewards)."""

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    next_observations: Tensor
    terminals: Tensor  # float 0/1: the episode ended in a terminal state (no bootstrap)
    timeouts: Tensor  # float 0/1: the episode was cut by a time limit (bootstrap)

    def __len__(self) -> int:
        return self.actions.shape[0]

    def to(self, device: Any) -> "Batch":
        return type(self)(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass(frozen=True)
class MCBatch(Batch):
    """A :class:`Batch` that also carries each row's Monte-Carlo discounted return-to-go
    (scaled rewards, the critic's units): the reference values Cal-QL bounds its critic with.

    A subclass rather than an optional field, so code that rebuilds a plain ``Batch`` from
    ``fields(Batch)`` (COMBO's mixing, DDP tests) keeps working unchanged.
    """

    mc_returns: Tensor


def cat_batches(parts: list[Batch]) -> Batch:
    """Rows of ``parts`` stacked in order; every part must be of the same batch type."""
    kinds = {type(p) for p in parts}
    if len(kinds) != 1:
        raise ValueError(f"cannot concatenate batches of different kinds: {sorted(k.__name__ for k in kinds)}")
    cls = kinds.pop()
    return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)})


@dataclass(frozen=True)
class Normalization:
    """How raw env data maps to what the networks see, saved in every checkpoint.

    ``obs_norm = (obs - obs_mean) / obs_std``, clipped to ``[-obs_clip, obs_clip]`` when
    ``obs_clip > 0``; ``a_norm = (a - action_center) / action_halfrange`` (so the env's [low, high]
    becomes [-1, 1]); ``r_train = reward_scale * r + reward_shift``.

    The clip matters online: statistics fitted on narrow data (scripted demonstrations) give
    near-constant features a tiny std, and a state the data never showed (a tilted cube) then
    reaches the networks as a value in the hundreds or thousands, where every network
    extrapolates. Checkpoints written before the clip existed load with ``obs_clip = 0``.
    """

    obs_mean: np.ndarray
    obs_std: np.ndarray
    action_low: np.ndarray
    action_high: np.ndarray
    reward_scale: float = 1.0
    reward_shift: float = 0.0
    obs_clip: float = 0.0

    def normalize_obs(self, obs) -> np.ndarray:
        """Raw observations ``[..., O]`` as the networks see them (float32)."""
        return normalize_obs_np(obs, self.obs_mean, self.obs_std, self.obs_clip)

    def action_to_unit(self, actions) -> np.ndarray:
        """Env-unit actions ``[..., A]`` in the networks' [-1, 1] (float32, clipped)."""
        return action_to_unit_np(actions, self.action_center, self.action_halfrange)

    @property
    def action_center(self) -> np.ndarray:
        return action_center_halfrange(self.action_low, self.action_high)[0]

    @property
    def action_halfrange(self) -> np.ndarray:
        return action_center_halfrange(self.action_low, self.action_high)[1]

    def to_dict(self) -> dict:
        return {
            f.name: (np.asarray(v).astype(float).tolist() if isinstance(v, np.ndarray) else float(v))
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "Normalization":
        arr = {"obs_mean", "obs_std", "action_low", "action_high"}
        # A field with a default may be missing (a checkpoint from before it existed): the default.
        return cls(
            **{
                k: (np.asarray(d[k], np.float32) if k in arr else float(d[k]))
                for k in (f.name for f in fields(cls))
                if k in d or k in arr
            }
        )

    @classmethod
    def identity(cls, obs_dim: int, action_low, action_high) -> "Normalization":
        return cls(
            np.zeros(obs_dim, np.float32),
            np.ones(obs_dim, np.float32),
            np.asarray(action_low, np.float32),
            np.asarray(action_high, np.float32),
        )


# -- The maps between env units and what the networks see -------------------------------------
# The one place this math is written: NumPy for data on the host (replay rows, OPE data, behaviour
# policies), torch for tensors (acting, the exported graph, model rollouts). Observations are
# standardised ``(obs - mean) / std`` and clipped to ``[-clip, clip]`` (clip 0: not clipped); actions
# map the env's [low, high] affinely onto [-1, 1] through the centre and half-range of the bounds.


def action_center_halfrange(low, high) -> tuple[np.ndarray, np.ndarray]:
    """The centre ``(high + low) / 2`` and half-range ``(high - low) / 2`` of action bounds (their dtype)."""
    return (high + low) / 2.0, (high - low) / 2.0


def normalize_obs_np(obs, mean: np.ndarray, std: np.ndarray, clip: float) -> np.ndarray:
    """Raw observations ``[..., O]`` standardised (float32) and clipped to ``[-clip, clip]`` when ``clip > 0``."""
    z = (np.asarray(obs, np.float32) - mean) / std
    return np.clip(z, -clip, clip, out=z) if clip > 0 else z


def action_to_unit_np(actions, center: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Env-unit actions ``[..., A]`` in [-1, 1] (float32; outside the bounds: clipped to the edge)."""
    return np.clip((np.asarray(actions, np.float32) - center) / half, -1.0, 1.0)


def action_from_unit_np(unit, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """[-1, 1] actions (clipped to it first) in env units ``[low, high]``; -1 gives ``low`` exactly."""
    return low + (np.clip(unit, -1.0, 1.0) + 1.0) * 0.5 * (high - low)


def clip_obs(obs_norm: Tensor, clip: float) -> Tensor:
    """Standardised observations (a tensor) clipped to ``[-clip, clip]`` (``clip`` 0: as they are): the
    torch side of the clip in :func:`normalize_obs_np`, for acting and model rollouts."""
    return obs_norm.clamp(-clip, clip) if clip > 0 else obs_norm


def normalize_obs_t(obs: Tensor, mean: Tensor, std: Tensor, clip: float | Tensor) -> Tensor:
    """The torch side of :func:`normalize_obs_np`. ``clip`` is a number (0: not clipped), or a tensor
    (an exported graph's buffer, ``inf`` when not clipped), which is always applied: the graph has
    one form whatever the value, and the value is part of the policy's state."""
    z = (obs - mean) / std
    return torch.clamp(z, -clip, clip) if isinstance(clip, Tensor) else clip_obs(z, clip)


def denormalize_obs_t(obs_norm: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Standardised observations back in env units (a clipped feature comes back at the clip's edge)."""
    return obs_norm * std + mean


def action_from_unit_t(unit: Tensor, center: Tensor, half: Tensor) -> Tensor:
    """[-1, 1] actions (clamped to it first) in env units: ``unit * half + center``."""
    return unit.clamp(-1.0, 1.0) * half + center


def episode_returns(rewards: np.ndarray, episode_index: np.ndarray) -> np.ndarray:
    """Undiscounted return of every episode present in ``episode_index`` (in order of first appearance)."""
    _, inverse = np.unique(episode_index, return_inverse=True)
    return np.bincount(inverse, weights=rewards.astype(np.float64))


def return_to_go(
    rewards: np.ndarray, episode_index: np.ndarray, terminals: np.ndarray, gamma: float, tail: str = "repeat_last"
) -> np.ndarray:
    """Discounted return-to-go ``G_t = r_t + gamma G_{t+1}`` of every row, per episode.

    Rows of one episode must be contiguous and in time order (as ``load_transitions``
    returns them). An episode ending in a terminal state has nothing after its last step.
    One that ends otherwise (time limit, or cut) is continued by ``tail``: ``zero`` (the
    plain truncated sum) or ``repeat_last`` (its last reward forever, so the last step's
    return is ``r_{T-1} / (1 - gamma)``): critics trained with bootstrapping at time limits estimate an unbounded
    horizon, and for an episode of constant reward (a failed sparse-reward episode) this
    gives ``r / (1 - gamma)`` at every step — the rule of Cal-QL's reference code.
    """
    if tail not in ("zero", "repeat_last"):
        raise ValueError(f"return_to_go: tail must be 'zero' or 'repeat_last', got {tail!r}")
    r = np.asarray(rewards, np.float64)
    ep = np.asarray(episode_index)
    term = np.asarray(terminals).astype(bool)
    if not (len(r) == len(ep) == len(term)):
        raise ValueError(
            f"return_to_go: rewards ({len(r)}), episode_index ({len(ep)}) and terminals ({len(term)}) "
            "must have one entry per row"
        )
    if len(r) == 0:
        return np.zeros(0, np.float32)
    change = np.flatnonzero(ep[1:] != ep[:-1]) + 1
    starts = np.concatenate([[0], change])
    if len(np.unique(ep[starts])) != len(starts):
        raise ValueError(
            "return_to_go: the rows of an episode are not contiguous (an episode index reappears "
            "after another one); load whole episodes in order"
        )
    out = np.empty_like(r)
    for s, e in zip(starts, np.concatenate([change, [len(r)]])):
        # The value after the last step: nothing, or the last reward forever (r / (1 - gamma)).
        g = 0.0 if term[e - 1] or tail == "zero" else r[e - 1] / (1.0 - gamma)
        for t in range(e - 1, s - 1, -1):  # one reverse pass; episodes are short next to the data
            g = r[t] + gamma * g
            out[t] = g
    return out.astype(np.float32)


def fit_normalization(
    transitions,
    action_low,
    action_high,
    normalize_obs: bool = True,
    reward_scaling: str = "none",
    max_episode_steps: int | None = None,
    eps: float = 1e-3,
    obs_clip: float = 0.0,
) -> Normalization:
    """Normalisation statistics from a selection's transitions (NumPy).

    ``obs_clip``: standardised observations are clipped to ``[-obs_clip, obs_clip]`` (0: not
    clipped; without ``normalize_obs`` nothing is clipped: raw values have no common scale).

    ``reward_scaling``: ``none``; ``standardize`` (reward mean 0, std 1 — shifts change
    the optimal policy when episodes end early, so it is not the default);
    ``return_range`` (IQL's locomotion recipe: rewards times ``max_episode_steps / (max
    episode return - min episode return)``, no shift).
    """
    if reward_scaling not in REWARD_SCALINGS:
        raise ValueError(f"reward_scaling {reward_scaling!r} not one of {REWARD_SCALINGS}")
    if not (np.isfinite(obs_clip) and obs_clip >= 0):
        raise ValueError(f"obs_clip must be a finite number >= 0 (0: no clipping), got {obs_clip!r}")
    obs = np.asarray(transitions.observations, np.float64)
    if len(obs) == 0:
        raise ValueError("no transitions selected: cannot fit normalisation")
    if normalize_obs:
        mean, std = obs.mean(0), np.maximum(obs.std(0), eps)
    else:
        mean, std = np.zeros(obs.shape[1]), np.ones(obs.shape[1])
    rewards = np.asarray(transitions.rewards, np.float64)
    scale, shift = 1.0, 0.0
    if reward_scaling == "standardize":
        scale = 1.0 / max(rewards.std(), eps)
        shift = -rewards.mean() * scale
    elif reward_scaling == "return_range":
        rets = episode_returns(rewards, np.asarray(transitions.episode_index))
        spread = rets.max() - rets.min()
        horizon = max_episode_steps or 1000
        scale = horizon / spread if spread > eps else 1.0
    return Normalization(
        mean.astype(np.float32),
        std.astype(np.float32),
        np.asarray(action_low, np.float32),
        np.asarray(action_high, np.float32),
        float(scale),
        float(shift),
        float(obs_clip) if normalize_obs else 0.0,
    )


class TensorReplay:
    """Transitions as tensors on one device, already normalised; uniform sampling there.

    Preallocated to ``capacity`` rows (>= the offline data) so online steps can be added
    without reallocating. ``sample`` draws with a dedicated ``torch.Generator`` on the
    buffer's device, so runs are reproducible and sampling never syncs with the host.
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, device: Any = "cpu", seed: int = 0):
        self.device = torch.device(device)
        self.capacity = int(capacity)
        f32 = dict(device=self.device, dtype=torch.float32)
        self.observations = torch.zeros(self.capacity, obs_dim, **f32)
        self.next_observations = torch.zeros(self.capacity, obs_dim, **f32)
        self.actions = torch.zeros(self.capacity, act_dim, **f32)
        self.rewards = torch.zeros(self.capacity, **f32)
        self.terminals = torch.zeros(self.capacity, **f32)
        self.timeouts = torch.zeros(self.capacity, **f32)
        self.size = 0
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        #: per-row Monte-Carlo return-to-go (see :meth:`enable_mc_returns`), or None
        self.mc_returns: Tensor | None = None
        #: each row's episode in the store (NumPy, host side) when built from transitions, else None
        self.episode_index: np.ndarray | None = None

    @classmethod
    def from_transitions(
        cls, transitions, norm: Normalization, device: Any = "cpu", capacity: int | None = None, seed: int = 0
    ) -> "TensorReplay":
        """A buffer holding ``transitions`` (raw NumPy, from the store) normalised by ``norm``."""
        n = len(transitions)
        obs_dim = int(np.asarray(transitions.observations).shape[1])
        act_dim = int(np.asarray(transitions.actions).shape[1])
        buf = cls(obs_dim, act_dim, max(n, capacity or 0, 1), device, seed)
        buf.add_raw(
            transitions.observations,
            transitions.actions,
            transitions.rewards,
            transitions.next_observations,
            transitions.terminals,
            transitions.timeouts,
            norm,
        )
        if getattr(transitions, "episode_index", None) is not None:
            buf.episode_index = np.asarray(transitions.episode_index)
        return buf

    @property
    def has_mc_returns(self) -> bool:
        return self.mc_returns is not None

    def enable_mc_returns(self, values=None) -> None:
        """Carry a Monte-Carlo return per row from now on: ``values`` for the rows held (in the
        buffer's reward units), ``-inf`` ("no bound") for rows whose episode has not ended yet."""
        self.mc_returns = torch.full((self.capacity,), float("-inf"), device=self.device, dtype=torch.float32)
        if values is not None:
            self.set_mc_returns(0, values)

    def set_mc_returns(self, start: int, values) -> None:
        """Write MC returns for rows ``start .. start + len(values)`` (rows already added)."""
        if self.mc_returns is None:
            raise ValueError("this replay buffer carries no MC returns (call enable_mc_returns first)")
        v = torch.as_tensor(np.asarray(values, np.float32), device=self.device)
        if start < 0 or start + len(v) > self.size:
            raise ValueError(f"MC returns for rows {start}..{start + len(v)} but the buffer holds {self.size} rows")
        self.mc_returns[start : start + len(v)] = v

    def add_raw(self, obs, actions, rewards, next_obs, terminals, timeouts, norm: Normalization) -> None:
        """Append raw (env-unit) steps, normalising them on the way in."""
        n = len(actions)
        if self.size + n > self.capacity:
            raise ValueError(f"replay buffer full: {self.size} + {n} rows > capacity {self.capacity}")
        s = slice(self.size, self.size + n)

        def put(dst: Tensor, value, fn=None):
            v = np.asarray(value, np.float32)
            if fn is not None:
                v = fn(v)
            dst[s] = torch.from_numpy(np.ascontiguousarray(v, np.float32)).to(self.device)

        put(self.observations, obs, norm.normalize_obs)
        put(self.next_observations, next_obs, norm.normalize_obs)
        put(self.actions, actions, norm.action_to_unit)
        put(self.rewards, rewards, lambda r: r * norm.reward_scale + norm.reward_shift)
        put(self.terminals, terminals)
        put(self.timeouts, timeouts)
        self.size += n

    def __len__(self) -> int:
        return self.size

    def sample(self, batch_size: int) -> Batch:
        """``batch_size`` transitions drawn uniformly with replacement."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = torch.randint(0, self.size, (batch_size,), device=self.device, generator=self.generator)
        return self.gather(idx)

    def gather(self, idx: Tensor) -> Batch:
        """The rows ``idx``. ``index_select``, not ``x[idx]``: on CPU it is ~20x faster
        (bench/bench_store.py: 23k vs 1.1k batches of 256 per second on 2 threads)."""
        take = lambda t: t.index_select(0, idx)  # noqa: E731
        parts = (
            take(self.observations),
            take(self.actions),
            take(self.rewards),
            take(self.next_observations),
            take(self.terminals),
            take(self.timeouts),
        )
        return Batch(*parts) if self.mc_returns is None else MCBatch(*parts, take(self.mc_returns))

    def all(self) -> Batch:
        """Every stored transition (views, no copy)."""
        s = slice(0, self.size)
        parts = (
            self.observations[s],
            self.actions[s],
            self.rewards[s],
            self.next_observations[s],
            self.terminals[s],
            self.timeouts[s],
        )
        return Batch(*parts) if self.mc_returns is None else MCBatch(*parts, self.mc_returns[s])

    def to(self, device: Any) -> "TensorReplay":
        """Move the buffer (and its generator's stream position) to ``device``."""
        device = torch.device(device)
        if device == self.device:
            return self
        for name in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts"):
            setattr(self, name, getattr(self, name).to(device))
        if self.mc_returns is not None:
            self.mc_returns = self.mc_returns.to(device)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self.device).item())
        self.device = device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        return self
