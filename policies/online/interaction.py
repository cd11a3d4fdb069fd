"""The callback that steps the simulator between updates during online finetuning.

Before the first update it collects ``warmup_steps``; then it keeps the env steps in step
with the updates: ``env_steps_per_update`` steps before every update, or, with an
update-to-data ratio ``updates_per_env_step`` above 1 (RLPD, WSRL), one step before every
``updates_per_env_step`` updates. Each step acts with the module's policy (its stochastic
action when exploring), normalises the transition and adds it to the online replay at
once; every finished episode goes to ``on_episode`` with provenance ``source: online``,
the policy id and the policy version (the update count when the episode began). The
pipeline's sink appends those episodes to the dataset: this package never writes to the
store itself (docs/architecture.md: Layers).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import lightning as L
import numpy as np

from o2o.datasets import Episode, EpisodeRecorder
from o2o.envs import make_env
from o2o.policies.data import Normalization, TensorReplay, return_to_go


def check_schedule(env_steps_per_update: int, updates_per_env_step: int) -> None:
    """Refuse a schedule that is not whole steps and updates, or that asks for both ratios above 1."""
    e, u = int(env_steps_per_update), int(updates_per_env_step)
    if e < 1 or e != env_steps_per_update:
        raise ValueError(f"finetune.env_steps_per_update must be a whole number >= 1, got {env_steps_per_update!r}")
    if u < 1 or u != updates_per_env_step:
        raise ValueError(
            f"finetune.updates_per_env_step (the update-to-data ratio) must be a whole number >= 1, got "
            f"{updates_per_env_step!r}"
        )
    if e > 1 and u > 1:
        raise ValueError(
            f"finetune.env_steps_per_update ({e}) and finetune.updates_per_env_step ({u}) are both above 1: "
            "set one of them (several env steps per update, or several updates per env step)"
        )


class OnlineInteraction(L.Callback):
    """Acts in one env with the module being trained and records what happens.

    ``total_steps`` env steps in all (warm-up included); the trainer's ``max_steps`` should
    be ``ceil((total_steps - warmup_steps) / env_steps_per_update)`` updates. The episode
    running when training stops is not finished, so it is not handed on (its rows stay in
    the online replay, which is discarded with the run). ``gamma``/``mc_tail``: how MC
    returns are written for the online rows when the replay carries them (Cal-QL).
    """

    def __init__(
        self,
        env_cfg: Mapping[str, Any],
        online: TensorReplay,
        norm: Normalization,
        on_episode: Callable[[Episode], None],
        *,
        total_steps: int,
        warmup_steps: int = 0,
        env_steps_per_update: int = 1,
        updates_per_env_step: int = 1,
        explore: bool = True,
        temperature: float = 1.0,
        seed: int = 0,
        policy_id: str = "online",
        gamma: float = 0.99,
        mc_tail: str = "repeat_last",
        run: Mapping[str, Any] | None = None,
    ):
        check_schedule(env_steps_per_update, updates_per_env_step)
        if not 0 <= int(warmup_steps) < int(total_steps):
            raise ValueError(
                f"finetune.warmup_steps ({warmup_steps}) must be >= 0 and below finetune.steps "
                f"({total_steps}): updates only start after the warm-up"
            )
        if not 0.0 <= float(temperature) <= 1.0:
            raise ValueError(
                f"finetune.explore_temperature must be in [0, 1] (a share of the policy's own noise), "
                f"got {temperature!r}"
            )
        if online.capacity - len(online) < int(total_steps):
            raise ValueError(
                f"online replay has room for {online.capacity - len(online)} rows, finetuning takes {total_steps} steps"
            )
        self.env_cfg, self.online, self.norm, self.on_episode = env_cfg, online, norm, on_episode
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.env_steps_per_update, self.explore = int(env_steps_per_update), bool(explore)
        self.updates_per_env_step = int(updates_per_env_step)
        self.temperature = float(temperature)
        self.seed, self.policy_id, self.gamma, self.mc_tail = int(seed), str(policy_id), float(gamma), str(mc_tail)
        self.run = dict(run) if run else None  # the provenance's run tag: which run collected the episode
        self.steps = 0  # env steps taken
        self.episodes: list[dict[str, Any]] = []  # one summary per finished episode
        self.env = None
        self._rec = EpisodeRecorder()
        self._obs = None
        self._started = 0  # episodes begun (their seeds are seed + i)

    @staticmethod
    def updates_for(
        total_steps: int, warmup_steps: int, env_steps_per_update: int, updates_per_env_step: int = 1
    ) -> int:
        """The number of updates that interleave with ``total_steps - warmup_steps`` env steps."""
        check_schedule(env_steps_per_update, updates_per_env_step)
        return -(-(int(total_steps) - int(warmup_steps)) * int(updates_per_env_step) // int(env_steps_per_update))

    def due(self, k: int) -> int:
        """Env steps taken before update ``k`` (0-based) runs: the warm-up, then ``env_steps_per_update /
        updates_per_env_step`` per update, rounded up (never beyond ``total_steps``)."""
        if k < 0:
            return self.warmup_steps
        more = -(-(k + 1) * self.env_steps_per_update // self.updates_per_env_step)
        return min(self.total_steps, self.warmup_steps + more)

    # ------------------------------------------------------------------ Lightning hooks
    def on_train_start(self, trainer, pl_module) -> None:
        if self.env is None:
            self.env = make_env(self.env_cfg)
            self._begin(pl_module)
        # The warm-up; resumed at update k (after restore()), the steps the schedule has taken by then
        # that the interruption lost (the unfinished episode, the uncommitted ones).
        self.collect(pl_module, self.due(int(trainer.global_step) - 1) - self.steps)

    def updates_to_boundary(self, trainer, pl_module) -> int | None:
        """Updates from this step's first one until one that needs env steps taken after it: a step
        of several updates ends there (at ``updates_per_env_step`` u: every u updates)."""
        g = int(trainer.global_step)
        now, cap = self.due(g), max(1, int(pl_module.updates_per_step))
        for d in range(1, cap + 1):
            if self.due(g + d) != now:
                return d
        return None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.collect(pl_module, self.due(int(trainer.global_step)) - self.steps)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.close()

    # ------------------------------------------------------------------ acting
    def collect(self, module, n: int) -> None:
        """Take up to ``n`` env steps (never beyond ``total_steps``)."""
        for _ in range(max(0, min(int(n), self.total_steps - self.steps))):
            self._step(module)

    def _begin(self, module) -> None:
        seed = self.seed + self._started
        self._started += 1
        obs, info = self.env.reset(seed=seed)
        self._rec.start(obs)
        if "is_success" in info:
            self._rec.success = bool(info["is_success"])
        self._obs, self._seed, self._row0, self._version = obs, seed, len(self.online), module.update_count

    def _step(self, module) -> None:
        obs = np.asarray(self._obs)
        action = self.action(module, obs[None])[0].astype(self.env.action_space.dtype)
        nxt, reward, terminated, truncated, info = self.env.step(action)
        terminated, truncated = bool(terminated), bool(truncated)
        self.online.add_raw(
            obs[None],
            action[None],
            [reward],
            np.asarray(nxt)[None],
            [terminated],
            [truncated and not terminated],
            self.norm,
        )
        self._rec.add(action, reward, terminated, truncated, nxt, info)
        self.steps += 1
        if terminated or truncated:
            self._finish(module, terminated)
            self._begin(module)
        else:
            self._obs = nxt

    def action(self, module, obs: np.ndarray) -> np.ndarray:
        """The deterministic action, plus ``temperature`` times the policy's own sampled deviation
        from it when exploring (IQL's sampling temperature): 1 samples the policy, 0 is deterministic.
        A convex mix of two in-bounds actions stays within the bounds."""
        if not self.explore or self.temperature == 0.0:
            return module.act(obs, deterministic=True)
        if self.temperature == 1.0:
            return module.act(obs, deterministic=False)
        mode = module.act(obs, deterministic=True)
        return mode + self.temperature * (module.act(obs, deterministic=False) - mode)

    def _finish(self, module, terminated: bool) -> None:
        if self.online.has_mc_returns:  # the episode is complete: its rows get their MC return now
            r = self.online.rewards[self._row0 : len(self.online)].cpu().numpy()
            term = np.zeros(len(r), bool)
            term[-1] = terminated
            self.online.set_mc_returns(
                self._row0, return_to_go(r, np.zeros(len(r), np.int64), term, self.gamma, self.mc_tail)
            )
        prov = {
            "source": "online",
            "policy_id": self.policy_id,
            "policy_version": str(self._version),
            "params": {"explore": self.explore, "temperature": self.temperature, "updates_end": module.update_count},
        }
        if self.run:
            prov["run"] = self.run
        ep = self._rec.finish(prov, seed=self._seed)
        self.episodes.append(
            {
                "return": ep.episode_return,
                "success": ep.success,
                "length": len(ep),
                "policy_version": self._version,
                "step": self.steps,
            }
        )
        self.on_episode(ep)

    def restore(self, transitions, records: list[Mapping[str, Any]]) -> None:
        """Take back the finished episodes of an interrupted run (read from the dataset) before training
        starts: ``transitions`` their steps (``load_transitions`` of those episodes, in order), ``records``
        one dict per episode (``return``, ``success``, ``length``, ``policy_version``). Their rows go to
        the online replay, their steps count against ``total_steps`` and the next episode gets the seed
        after theirs."""
        if self.env is not None:
            raise RuntimeError("restore() must come before training starts")
        n = len(transitions)
        if self.steps + n > self.total_steps:
            raise ValueError(
                f"the interrupted run's episodes hold {n} steps, more than finetune.steps "
                f"({self.total_steps}): the config changed; finetune from scratch (--force finetune)"
            )
        row0 = len(self.online)
        term = np.asarray(transitions.terminals, bool)
        self.online.add_raw(
            transitions.observations,
            transitions.actions,
            transitions.rewards,
            transitions.next_observations,
            term,
            np.asarray(transitions.timeouts, bool) & ~term,
            self.norm,
        )
        if self.online.has_mc_returns and n:
            ep = np.asarray(transitions.episode_index)
            # return_to_go restarts at every change of episode id; each episode here is complete.
            r = self.online.rewards[row0 : row0 + n].cpu().numpy()  # as stored (scaled), like _finish's
            self.online.set_mc_returns(row0, return_to_go(r, ep, term, self.gamma, self.mc_tail))
        for rec in records:
            self.steps += int(rec["length"])
            self._started += 1
            self.episodes.append(
                {
                    "return": float(rec["return"]),
                    "success": rec["success"],
                    "length": int(rec["length"]),
                    "policy_version": int(rec["policy_version"]),
                    "step": self.steps,
                    "restored": True,
                }
            )

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
