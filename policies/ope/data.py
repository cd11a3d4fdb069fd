"""What OPE evaluates on: the dataset as episodes of tensors, and the policy being evaluated.

:class:`OPEData` holds every transition once, on one device, with observations
normalised and actions in [-1, 1] like training data, but rewards in *env units* (every
estimate is reported in them), plus each row's episode and time step: the importance
estimators need whole episodes in time order, FQE needs the time step when it evaluates
a finite horizon. It is built from a store, from loaded transitions, or from a training
module's own :class:`~o2o.policies.data.TensorReplay`.

:class:`TargetPolicy` is a policy as OPE needs it: raw observations in, actions in the
normalised [-1, 1] space out (plus, for a stochastic target, samples and a density).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from o2o.policies.data import (
    Normalization,
    TensorReplay,
    action_center_halfrange,
    action_to_unit_np,
    denormalize_obs_t,
    fit_normalization,
)

ActionFn = Callable[[Tensor], Tensor]


@dataclass
class OPEData:
    """Transitions grouped by episode, in time order, as tensors on one device.

    ``observations``/``next_observations`` are normalised by ``norm``; ``actions`` lie in
    [-1, 1]; ``rewards`` are env units; ``episode [N]`` numbers episodes 0..E-1,
    ``step [N]`` is the time step within its episode, ``starts [E]`` each episode's first row.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    next_observations: Tensor
    terminals: Tensor
    timeouts: Tensor
    episode: Tensor
    step: Tensor
    starts: Tensor
    norm: Normalization
    source: str = "transitions"

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.starts.shape[0])

    @property
    def device(self) -> torch.device:
        return self.actions.device

    @property
    def lengths(self) -> Tensor:
        return torch.bincount(self.episode, minlength=self.num_episodes)

    def raw(self, obs: Tensor) -> Tensor:
        """Normalised observations back in env units (what a policy checkpoint expects; a clipped
        feature comes back at the clip's edge, which normalises to the same value again)."""
        return denormalize_obs_t(
            obs,
            torch.as_tensor(self.norm.obs_mean, device=obs.device),
            torch.as_tensor(self.norm.obs_std, device=obs.device),
        )

    def padded(self, values: Tensor, fill: float = 0.0) -> tuple[Tensor, Tensor]:
        """Per-row ``values [N]`` laid out as ``[E, T_max]`` (episode x step) and the mask of real steps."""
        e, t = self.num_episodes, int(self.lengths.max()) if len(self) else 0
        out = torch.full((e, t), fill, dtype=values.dtype, device=values.device)
        mask = torch.zeros((e, t), dtype=torch.bool, device=values.device)
        out[self.episode, self.step] = values
        mask[self.episode, self.step] = True
        return out, mask

    def resample(self, episodes: Tensor | Sequence[int]) -> "OPEData":
        """The dataset made of ``episodes`` (indices into this one, repeats allowed: a bootstrap
        draw), each whole and in time order; the same normalisation."""
        ids = torch.as_tensor(episodes, dtype=torch.long, device=self.device)
        if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= self.num_episodes:
            raise ValueError(
                f"OPE data {self.source!r}: resample needs episode indices in [0, {self.num_episodes}), "
                f"got {ids.numel()} indices" + (f" from {int(ids.min())} to {int(ids.max())}" if ids.numel() else "")
            )
        lengths = self.lengths[ids]
        new_starts = torch.cumsum(lengths, 0) - lengths
        # Row r of the new data is row starts[ids[e]] + (r - new_starts[e]) of this one.
        owner = torch.repeat_interleave(torch.arange(len(ids), device=self.device), lengths)
        rows = self.starts[ids][owner] + torch.arange(int(lengths.sum()), device=self.device) - new_starts[owner]
        return self._from_rows(
            self.observations[rows],
            self.actions[rows],
            self.rewards[rows],
            self.next_observations[rows],
            self.terminals[rows],
            self.timeouts[rows],
            new_starts,
            self.norm,
            self.source,
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_transitions(
        cls,
        transitions,
        action_low,
        action_high,
        norm: Normalization | None = None,
        device: Any = "cpu",
        source: str = "transitions",
    ) -> "OPEData":
        """From a store's transitions (raw NumPy with ``episode_index``, episodes contiguous, in time order).

        ``norm``: the observation statistics to use (default: fitted on these transitions).
        """
        if len(transitions) == 0:
            raise ValueError(f"OPE data {source!r}: no transitions selected")
        ep = np.asarray(transitions.episode_index)
        change = np.flatnonzero(np.diff(ep) != 0) + 1
        starts = np.concatenate([[0], change])
        if len(np.unique(ep)) != len(starts):
            raise ValueError(
                f"OPE data {source!r}: an episode's rows are not contiguous; load episodes in order "
                "(EpisodeStore.load_transitions does)"
            )
        if norm is None:
            norm = fit_normalization(transitions, action_low, action_high)
        f32 = lambda a: torch.as_tensor(np.ascontiguousarray(a, np.float32), device=device)  # noqa: E731
        act = norm.action_to_unit(transitions.actions)
        return cls._from_rows(
            f32(norm.normalize_obs(transitions.observations)),
            f32(act),
            f32(transitions.rewards),
            f32(norm.normalize_obs(transitions.next_observations)),
            f32(transitions.terminals),
            f32(transitions.timeouts),
            torch.as_tensor(starts, device=device),
            norm,
            source,
        )

    @classmethod
    def from_store(
        cls,
        path: str,
        episodes: Sequence[int] | np.ndarray | None = None,
        device: Any = "cpu",
        norm: Normalization | None = None,
    ) -> "OPEData":
        """The selected episodes (default all committed) of the store at ``path``."""
        from o2o.datasets import EpisodeStore

        with EpisodeStore.open(path, mode="r") as store:
            idx = None if episodes is None else np.unique(np.asarray(episodes, np.int64))
            tr = store.load_transitions(idx)
            space = store.schema.action_space
        return cls.from_transitions(tr, space.low, space.high, norm, device, source=str(path))

    @classmethod
    def from_replay(cls, replay: TensorReplay, norm: Normalization, source: str = "replay") -> "OPEData":
        """A training module's replay buffer (rows normalised by ``norm``), on the buffer's device.

        Episode boundaries are not stored there, so they are inferred: a row starts an episode
        when the previous row ended one (terminal or time limit) or when its observation is not
        the previous row's next observation (both were normalised by the same op, so an
        unbroken episode matches exactly).
        """
        n = len(replay)
        if n == 0:
            raise ValueError(f"OPE data {source!r}: the replay buffer is empty")
        b = replay.all()
        prev_end = (b.terminals[:-1] > 0) | (b.timeouts[:-1] > 0)
        broken = (b.next_observations[:-1] != b.observations[1:]).any(dim=1)
        start = torch.cat([torch.ones(1, dtype=torch.bool, device=b.actions.device), prev_end | broken])
        rewards = (b.rewards - norm.reward_shift) / norm.reward_scale
        return cls._from_rows(
            b.observations,
            b.actions,
            rewards,
            b.next_observations,
            b.terminals,
            b.timeouts,
            start.nonzero().squeeze(1),
            norm,
            source,
        )

    @classmethod
    def _from_rows(cls, obs, act, rew, nxt, term, tout, starts: Tensor, norm, source) -> "OPEData":
        n = act.shape[0]
        starts = starts.long()
        begin = torch.zeros(n, dtype=torch.long, device=act.device)
        begin[starts] = 1
        episode = torch.cumsum(begin, 0) - 1
        step = torch.arange(n, device=act.device) - starts[episode]
        return cls(obs, act, rew, nxt, term, tout, episode, step, starts, norm, source)


@dataclass(frozen=True)
class TargetPolicy:
    """A policy as OPE sees it: raw (env-unit) observations ``[B, O]`` in, actions in [-1, 1] out.

    ``mean`` is the deterministic action (what simulation and deployment run); a
    stochastic target also has ``sample`` and ``log_prob`` (density of [-1, 1] actions).
    """

    mean: ActionFn
    sample: ActionFn | None = None
    log_prob: Callable[[Tensor, Tensor], Tensor] | None = None
    name: str = "policy"

    @property
    def stochastic(self) -> bool:
        return self.sample is not None and self.log_prob is not None

    @classmethod
    def from_module(cls, module, norm: Normalization | None = None, name: str | None = None) -> "TargetPolicy":
        """A trained algorithm's actor (e.g. from :func:`~o2o.policies.algos.base.load_algorithm`).

        ``norm``: the OPE data's normalisation, whose action bounds must be the module's (the
        [-1, 1] spaces must coincide for Q(s, a) and the densities to mean the same actions).
        """
        label = name or type(module).__name__
        if norm is not None:
            low = (module.act_center - module.act_half).detach().cpu().numpy()
            high = (module.act_center + module.act_half).detach().cpu().numpy()
            if not (np.allclose(low, norm.action_low, atol=1e-5) and np.allclose(high, norm.action_high, atol=1e-5)):
                raise ValueError(
                    f"policy {label!r}: trained with action bounds [{low.tolist()}, {high.tolist()}], "
                    f"the OPE dataset has [{np.asarray(norm.action_low).tolist()}, "
                    f"{np.asarray(norm.action_high).tolist()}]: it was trained for another env"
                )
        actor = module.actor

        def obs_in(obs: Tensor) -> Tensor:
            return module.normalize_obs(obs.to(module.obs_mean.device))

        def mean(obs: Tensor) -> Tensor:
            return actor.act(obs_in(obs)).clamp(-1.0, 1.0).to(obs.device)

        if not hasattr(actor, "log_prob"):  # a deterministic actor (MSE BC): IS/DR smooth it (OPEConfig.target_std)
            return cls(mean, name=label)
        return cls(
            mean,
            sample=lambda obs: actor(obs_in(obs)).action.to(obs.device),
            log_prob=lambda obs, a: actor.log_prob(obs_in(obs), a.to(module.obs_mean.device)).to(obs.device),
            name=label,
        )

    @classmethod
    def from_numpy(
        cls, fn: Callable[[np.ndarray], np.ndarray], action_low, action_high, name: str = "policy"
    ) -> "TargetPolicy":
        """Any env-unit policy function ``obs [N, O] -> actions [N, A]`` (NumPy), e.g. an exported
        policy. It must be memoryless: OPE queries states out of episode order."""
        center, half = action_center_halfrange(np.asarray(action_low, np.float32), np.asarray(action_high, np.float32))

        def mean(obs: Tensor) -> Tensor:
            a = fn(obs.detach().cpu().numpy())
            return torch.as_tensor(action_to_unit_np(a, center, half), device=obs.device)

        return cls(mean, name=name)


@torch.no_grad()
def policy_actions(
    policy: TargetPolicy, data: OPEData, observations: Tensor, samples: int, stochastic: bool, chunk: int
) -> Tensor:
    """The target's actions at (normalised) ``observations``: ``[N, A]``, or ``[N, K, A]`` sampled.

    Computed once per policy: the policy is fixed, so FQE's backups reuse them every update.
    """
    outs = []
    for i in range(0, observations.shape[0], chunk):
        raw = data.raw(observations[i : i + chunk])
        if stochastic:
            outs.append(torch.stack([policy.sample(raw) for _ in range(samples)], dim=1))
        else:
            outs.append(policy.mean(raw))
    return torch.cat(outs, 0) if outs else observations.new_zeros(0)
