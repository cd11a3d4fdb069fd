"""Closed-loop check in simulation: the exported policy, driven through the runtime, against the trained one.

Both run the same episodes (env reset with ``seed + k`` for episode ``k``) in the env the
policy was trained in. The exported policy goes through :class:`~o2o.deploy.runtime.
PolicyRuntime` and :class:`~o2o.deploy.runtime.ControlLoop` exactly as on a robot (every
guard active, the loop in simulated time); the trained policy is any ``obs [B, O] ->
action [B, A]`` function (the torch module). Success is the env's ``info["is_success"]``
at any step of the episode (as :class:`o2o.policies.evaluation.Evaluator` counts it).

Simulation side (it imports o2o.envs); the runtime itself stays free of it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from o2o.deploy.runtime import ControlLoop, PolicyRuntime
from o2o.envs import make_env


@dataclass(frozen=True)
class Episodes:
    """Outcomes of a set of episodes."""

    returns: np.ndarray
    successes: np.ndarray  # float 0/1, NaN where the env reports no success
    lengths: np.ndarray

    @property
    def success_rate(self) -> float | None:
        known = ~np.isnan(self.successes)
        return float(self.successes[known].mean()) if known.any() else None

    def summary(self) -> dict[str, Any]:
        return {"episodes": int(len(self.returns)), "success_rate": self.success_rate,
                "return_mean": float(self.returns.mean()), "return_std": float(self.returns.std()),
                "length_mean": float(self.lengths.mean())}


class _EnvIO:
    """An env seen as a robot: read the latest observation, send an action (steps the sim)."""

    def __init__(self, env):
        self.env = env

    def start(self, seed: int) -> None:
        self.obs, info = self.env.reset(seed=seed)
        self.ret, self.length, self.done = 0.0, 0, False
        self.success = float(info["is_success"]) if "is_success" in info else math.nan

    def read(self) -> np.ndarray:
        return self.obs

    def send(self, action: np.ndarray, _result: Any = None) -> None:
        self.obs, reward, terminated, truncated, info = self.env.step(action)
        self.ret += float(reward)
        self.length += 1
        if "is_success" in info:
            self.success = max(0.0 if math.isnan(self.success) else self.success, float(info["is_success"]))
        self.done = bool(terminated or truncated)


def _collect(io: _EnvIO, episodes: int, seed: int, run_episode: Callable[[], None]) -> Episodes:
    rets, succ, lens = [], [], []
    for k in range(episodes):
        io.start(seed + k)
        run_episode()
        rets.append(io.ret)
        succ.append(io.success)
        lens.append(io.length)
    return Episodes(np.asarray(rets), np.asarray(succ, float), np.asarray(lens))


def run_runtime(runtime: PolicyRuntime, env_cfg: Mapping[str, Any], episodes: int, seed: int) -> tuple[Episodes, dict]:
    """Episodes of ``runtime`` through a :class:`ControlLoop` (simulated time); returns outcomes and guard counts."""
    env = make_env(env_cfg)
    io = _EnvIO(env)
    loop = ControlLoop(runtime, io.read, io.send, realtime=False)
    guards: dict[str, int] = {}
    latencies: list[float] = []

    def episode() -> None:
        runtime.reset()
        report = loop.run(until=lambda: io.done)
        for k, v in report.guards.items():
            guards[k] = guards.get(k, 0) + v
        latencies.append(report.inference_median_s)

    try:
        out = _collect(io, episodes, seed, episode)
    finally:
        env.close()
    return out, {"guards": guards, "inference_median_s": float(np.median(latencies)) if latencies else None}


def run_policy(policy: Callable[[np.ndarray], np.ndarray], env_cfg: Mapping[str, Any], episodes: int,
               seed: int) -> Episodes:
    """Episodes of ``policy`` (``obs [1, O] -> action [1, A]``), with no guards."""
    env = make_env(env_cfg)
    io = _EnvIO(env)

    def episode() -> None:
        while not io.done:
            io.send(np.asarray(policy(np.asarray(io.obs, np.float32)[None]), np.float32).reshape(-1))

    try:
        return _collect(io, episodes, seed, episode)
    finally:
        env.close()


def success_noise(p: float | None, n: int) -> float:
    """Standard error of a difference of two success rates measured on ``n`` episodes each (at rate ``p``)."""
    if p is None or n < 1:
        return math.nan
    p = min(max(p, 0.5 / n), 1 - 0.5 / n)  # never zero: 10/10 successes does not mean no noise
    return math.sqrt(2 * p * (1 - p) / n)


def closed_loop_check(export_dir: str | os.PathLike, env_cfg: Mapping[str, Any],
                      trained: Callable[[np.ndarray], np.ndarray], episodes: int = 10, seed: int = 20_000,
                      max_success_drop: float | None = None, **runtime_kwargs: Any) -> dict[str, Any]:
    """Success of the export through the runtime next to the trained policy's, on the same episodes.

    With ``max_success_drop``, raises :class:`~o2o.deploy.export.ExportRefused` when the
    runtime's success rate is lower than the trained policy's by more than that.
    """
    runtime = PolicyRuntime(export_dir, **runtime_kwargs)
    got, extra = run_runtime(runtime, env_cfg, episodes, seed)
    want = run_policy(trained, env_cfg, episodes, seed)
    rt, tr = got.summary(), want.summary()
    out = {"episodes": int(episodes), "seed": int(seed), "runtime": rt, "trained": tr, **extra,
           "success_noise": success_noise(tr["success_rate"], episodes)}
    if max_success_drop is not None and rt["success_rate"] is not None and tr["success_rate"] is not None:
        if rt["success_rate"] < tr["success_rate"] - float(max_success_drop):
            from o2o.deploy.export import ExportRefused

            raise ExportRefused(f"export refused: closed loop in simulation, the exported policy through the runtime "
                                f"succeeds in {rt['success_rate']:.2f} of {episodes} episodes, the trained policy in "
                                f"{tr['success_rate']:.2f} (allowed drop {max_success_drop}); guards that fired: "
                                f"{extra['guards'] or 'none'}")
    return out
