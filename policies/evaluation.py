"""Evaluating a policy in simulation: episodes in parallel envs, returns, success, scores.

A policy here is any function ``obs [N, O] -> actions [N, A]`` in env units, so the same
evaluator serves a training module, an exported ONNX file or a behaviour policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np

from o2o.envs import make_vector_env

PolicyFn = Callable[[np.ndarray], np.ndarray]


def normalized_score(ret: float, references: Mapping[str, float] | None) -> float | None:
    """D4RL-style score: 0 = the ``random`` reference return, 100 = the ``expert`` one."""
    if not references or references.get("random") is None or references.get("expert") is None:
        return None
    lo, hi = float(references["random"]), float(references["expert"])
    if hi == lo:
        return None
    return 100.0 * (ret - lo) / (hi - lo)


@dataclass(frozen=True)
class EvalResult:
    """Per-episode outcomes of an evaluation (in the order episodes finished per env)."""

    returns: np.ndarray
    discounted_returns: np.ndarray
    lengths: np.ndarray
    successes: np.ndarray  # float 0/1, NaN where the task reports no success
    start_observations: np.ndarray  # [N, O] first observation of each episode

    def summary(self, references: Mapping[str, float] | None = None) -> dict[str, float]:
        """``return_mean/std``, ``success_rate`` (if known), ``normalized_score``, ``length_mean``,
        ``mc_discounted_return_mean`` — the metric names logged under ``eval/``."""
        out = {
            "return_mean": float(self.returns.mean()),
            "return_std": float(self.returns.std()),
            "length_mean": float(self.lengths.mean()),
            "mc_discounted_return_mean": float(self.discounted_returns.mean()),
            "episodes": float(len(self.returns)),
        }
        known = ~np.isnan(self.successes)
        if known.any():
            out["success_rate"] = float(self.successes[known].mean())
        score = normalized_score(out["return_mean"], references)
        if score is not None:
            out["normalized_score"] = score
        return out


class Evaluator:
    """Runs ``episodes`` episodes of a policy in ``num_envs`` copies of an env (kept between calls).

    Each call starts from the same seeds (copy ``i`` is reset with ``seed + i``, later
    episodes draw from that copy's RNG), so two policies are compared on the same starts.
    """

    def __init__(
        self,
        env_cfg: Mapping[str, Any],
        episodes: int = 10,
        num_envs: int = 1,
        seed: int = 10_000,
        gamma: float = 0.99,
        asynchronous: bool = False,
    ):
        if episodes < 1:
            raise ValueError(f"evaluation needs >= 1 episode, got {episodes}")
        self.env_cfg = env_cfg
        self.episodes = int(episodes)
        self.num_envs = max(1, min(int(num_envs), self.episodes))
        self.seed = int(seed)
        self.gamma = float(gamma)
        self.asynchronous = bool(asynchronous)
        self._venv: gym.vector.VectorEnv | None = None

    def _env(self) -> gym.vector.VectorEnv:
        if self._venv is None:
            self._venv = make_vector_env(
                self.env_cfg,
                self.num_envs,
                seed=None,
                asynchronous=self.asynchronous,
                autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
            )
        return self._venv

    def __call__(self, policy: PolicyFn, progress: Callable[[int], None] | None = None) -> EvalResult:
        """``episodes`` episodes of ``policy``; ``progress(episodes done)`` after each one."""
        venv = self._env()
        n = self.num_envs
        quota = np.array([self.episodes // n + (i < self.episodes % n) for i in range(n)])
        done_count = np.zeros(n, int)
        obs, info = venv.reset(seed=[self.seed + i for i in range(n)])
        ret, dret, length, disc = np.zeros(n), np.zeros(n), np.zeros(n, int), np.ones(n)
        succ = np.full(n, np.nan)
        starts = [obs[i].copy() for i in range(n)]
        out: dict[str, list] = {
            "returns": [],
            "discounted_returns": [],
            "lengths": [],
            "successes": [],
            "start_observations": [],
        }
        while (done_count < quota).any():
            actions = np.asarray(policy(np.asarray(obs, np.float32)), np.float32).reshape(n, -1)
            obs, reward, terminated, truncated, info = venv.step(actions)
            ret += reward
            dret += disc * reward
            disc *= self.gamma
            length += 1
            if "is_success" in info:
                mask = info.get("_is_success", np.ones(n, bool))
                s = np.asarray(info["is_success"], float)
                succ = np.where(mask, np.where(np.isnan(succ), s, np.maximum(np.nan_to_num(succ), s)), succ)
            for i in np.flatnonzero(np.logical_or(terminated, truncated)):
                if done_count[i] < quota[i]:
                    out["returns"].append(ret[i])
                    out["discounted_returns"].append(dret[i])
                    out["lengths"].append(length[i])
                    out["successes"].append(succ[i])
                    out["start_observations"].append(starts[i])
                    done_count[i] += 1
                    if progress is not None:
                        progress(len(out["returns"]))
                # SAME_STEP autoreset: obs[i] is already the next episode's first observation.
                ret[i], dret[i], length[i], disc[i], succ[i] = 0.0, 0.0, 0, 1.0, np.nan
                starts[i] = np.asarray(obs[i]).copy()
        return EvalResult(
            np.asarray(out["returns"], float),
            np.asarray(out["discounted_returns"], float),
            np.asarray(out["lengths"], int),
            np.asarray(out["successes"], float),
            np.asarray(out["start_observations"], np.float32),
        )

    def close(self) -> None:
        if self._venv is not None:
            self._venv.close()
            self._venv = None
