"""Closed-loop check in simulation: the exported policy, driven through the runtime, against the trained one.

Both run the same episodes (env reset with ``seed + k`` for episode ``k``) in the env the
policy was trained in. The exported policy goes through :class:`~o2o.deploy.runtime.
PolicyRuntime` and :class:`~o2o.deploy.runtime.ControlLoop` exactly as on a robot (every
guard active, the loop in simulated time); the trained policy is any ``obs [B, O] ->
action [B, A]`` function (the torch module). Success is the env's ``info["is_success"]``
at any step of the episode (as :class:`o2o.policies.evaluation.Evaluator` counts it).

Matching the torch policy now is not enough: a checkpoint whose weights were changed gives a
torch policy and an export that fail alike. So the runtime's episodes are also compared with
what the checkpoint was **evaluated at** when it was chosen (``reference``: its own
evaluation record, else its run's ``summary.json``; :func:`compare_with_evaluation`), with an
allowance for the noise of two finite sets of episodes plus a margin: success rates where the
env reports success, mean returns where it does not.

Simulation side (it imports o2o.envs); the runtime itself stays free of it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from o2o.core.stats import mean_difference_se, pooled_rate_se
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
        return {
            "episodes": int(len(self.returns)),
            "success_rate": self.success_rate,
            "return_mean": float(self.returns.mean()),
            "return_std": float(self.returns.std()),
            "length_mean": float(self.lengths.mean()),
        }


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


def run_policy(
    policy: Callable[[np.ndarray], np.ndarray], env_cfg: Mapping[str, Any], episodes: int, seed: int
) -> Episodes:
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


def success_noise(p: float | None, n: int, m: int | None = None) -> float:
    """Standard error of a difference of two success rates at rate ``p``, measured on ``n`` and ``m``
    (default ``n``) episodes."""
    m = n if m is None else m
    if p is None or n < 1 or m < 1:
        return math.nan
    k = min(n, m)
    p = min(max(p, 0.5 / k), 1 - 0.5 / k)  # never zero: 10/10 successes does not mean no noise
    return pooled_rate_se(p, n, p, m)


def return_noise(std_a: float, n: int, std_b: float, m: int) -> float:
    """Standard error of a difference of two mean returns (per-episode standard deviations, episode counts)."""
    if n < 1 or m < 1:
        return math.nan
    return mean_difference_se(std_a, n, std_b, m)


def compare_with_evaluation(
    got: Mapping[str, Any],
    episodes: int,
    reference: Mapping[str, Any],
    noise_z: float = 2.0,
    success_margin: float = 0.1,
    return_margin: float = 0.1,
) -> dict[str, Any]:
    """The runtime's closed-loop outcome ``got`` (:meth:`Episodes.summary` of ``episodes`` episodes) against
    ``reference`` (``success_rate``/``return_mean``/``return_std``, ``episodes`` and ``source``: what the
    checkpoint was evaluated at).

    Success rates are compared where both are known, else mean returns. The allowed drop is
    ``noise_z`` standard errors of the difference (from both episode counts) plus the margin
    (``success_margin``, absolute; ``return_margin``, a fraction of ``|reference return|``).
    Returns the comparison with ``passed``; never raises.
    """
    n_ref = max(1, int(round(float(reference.get("episodes") or 1))))
    out: dict[str, Any] = {"source": reference.get("source"), "evaluated_episodes": n_ref, "episodes": int(episodes)}
    if reference.get("success_rate") is not None and got.get("success_rate") is not None:
        want, have = float(reference["success_rate"]), float(got["success_rate"])
        noise = success_noise(want, n_ref, int(episodes))
        allowed = noise_z * noise + float(success_margin)
        out.update(metric="success_rate", margin=float(success_margin))
    elif reference.get("return_mean") is not None:
        want, have = float(reference["return_mean"]), float(got["return_mean"])
        std_rt = float(got.get("return_std") or 0.0)
        std_ref = float(reference["return_std"]) if reference.get("return_std") is not None else std_rt
        noise = return_noise(std_ref, n_ref, std_rt, int(episodes))
        allowed = noise_z * noise + float(return_margin) * abs(want)
        out.update(metric="return_mean", margin=float(return_margin) * abs(want))
    else:
        out.update(metric=None, passed=True, reason="the reference holds neither a success rate nor a return")
        return out
    out.update(
        evaluated=want,
        runtime=have,
        noise=noise,
        noise_z=float(noise_z),
        allowed_drop=allowed,
        passed=bool(have >= want - allowed),
    )
    return out


def closed_loop_check(
    export_dir: str | os.PathLike,
    env_cfg: Mapping[str, Any],
    trained: Callable[[np.ndarray], np.ndarray],
    episodes: int = 10,
    seed: int = 20_000,
    max_success_drop: float | None = None,
    reference: Mapping[str, Any] | None = None,
    noise_z: float = 2.0,
    success_margin: float = 0.1,
    return_margin: float = 0.1,
    **runtime_kwargs: Any,
) -> dict[str, Any]:
    """Success of the export through the runtime next to the trained policy's, on the same episodes,
    and next to what the checkpoint was evaluated at (``reference``, see :func:`compare_with_evaluation`).

    With ``max_success_drop``, raises :class:`~o2o.deploy.export.ExportRefused` when the
    runtime's success rate is lower than the trained policy's by more than that; with a
    ``reference``, when the runtime scores lower than the reference by more than the allowance.
    The result holds both comparisons (``vs_evaluation``: what the reference was and the figures).
    """
    from o2o.deploy.export import ExportRefused

    runtime = PolicyRuntime(export_dir, **runtime_kwargs)
    got, extra = run_runtime(runtime, env_cfg, episodes, seed)
    want = run_policy(trained, env_cfg, episodes, seed)
    rt, tr = got.summary(), want.summary()
    out = {
        "episodes": int(episodes),
        "seed": int(seed),
        "runtime": rt,
        "trained": tr,
        **extra,
        "success_noise": success_noise(tr["success_rate"], episodes),
    }
    guards = extra["guards"] or "none"
    if max_success_drop is not None and rt["success_rate"] is not None and tr["success_rate"] is not None:
        if rt["success_rate"] < tr["success_rate"] - float(max_success_drop):
            raise ExportRefused(
                f"export refused: closed loop in simulation, the exported policy through the runtime "
                f"succeeds in {rt['success_rate']:.2f} of {episodes} episodes, the trained policy in "
                f"{tr['success_rate']:.2f} (allowed drop {max_success_drop}); guards that fired: "
                f"{guards}"
            )
    if reference is not None:
        vs = compare_with_evaluation(rt, episodes, reference, noise_z, success_margin, return_margin)
        out["vs_evaluation"] = vs
        if not vs["passed"]:
            rate = vs["metric"] == "success_rate"
            what = "succeeds in" if rate else "has a mean return of"
            torch_now = tr["success_rate"] if rate else tr["return_mean"]
            fmt = (lambda v: f"{v:.2f}") if rate else (lambda v: f"{v:.4g}")  # noqa: E731
            raise ExportRefused(
                f"export refused: closed loop in simulation, the exported policy through the runtime {what} "
                f"{fmt(vs['runtime'])} over {episodes} episodes (seed {seed}), but the checkpoint was evaluated at "
                f"{fmt(vs['evaluated'])} over {vs['evaluated_episodes']} episodes ({vs['source']}); allowed drop "
                f"{vs['allowed_drop']:.3g} ({vs['noise_z']:g} standard errors of the difference, {vs['noise']:.3g}, + "
                f"margin {vs['margin']:.3g}). The trained torch policy scores {fmt(torch_now)} on the same episodes"
                + (
                    ", as low: the checkpoint's weights do not behave as they did when it was evaluated"
                    if (torch_now is not None and torch_now < vs["evaluated"] - vs["allowed_drop"])
                    else ""
                )
                + f"; guards that fired: {guards}"
            )
    return out
