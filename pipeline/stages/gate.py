"""The gate stage: decide on the evidence whether the offline policy may go online.

Evidence: the evaluate stage's simulation and value figures and the data's behaviour (mean
return, its spread and episode count, success, the reward range), plus the policy and its critic on
the recorded data: actions on recorded observations (finite, within the action bounds), the
critic's starting level and its Q on the data's start states next to the data's discounted return
(how far it has converged). The decision and every criterion — passed, failed or only reported,
each with its numbers and why — are written to ``<run>/gate/decision.json`` and printed;
a failed gate stops every stage downstream of it (finetuning, promotion, export) and the
run ends with a non-zero exit code naming each failed criterion and by how much.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from o2o.datasets import EpisodeStore
from o2o.pipeline.artifacts import GateArtifact
from o2o.pipeline.dag import Stage, StageFailed
from o2o.pipeline.gate import Evidence, decide


def policy_on_data(
    ckpt_path: str, dataset_path: str, episodes: int, n: int = 2048, seed: int = 0, verify: bool = True
) -> tuple[dict, dict]:
    """The policy and its critic on the data it was trained on (the first ``episodes`` episodes).

    Returns ``(actions, critic)``. ``actions``: the policy's actions on up to ``n`` recorded
    observations: finite? within the bounds? ``critic``: its starting level in env units
    (``q_initial``: what networks that output 0 stand for after the reward scaling), and, when the
    algorithm has a critic, its mean Q on each recorded episode's first observation and recorded first
    action (``q_data_start``) next to the mean discounted return the data achieved from there
    (``data_discounted_return_mean``): how far the critic has converged on the data itself."""
    import torch

    from o2o.policies.algos.base import load_algorithm

    module = load_algorithm(ckpt_path)
    with EpisodeStore.open(dataset_path, mode="r", verify=verify) as store:
        tr = store.load_transitions(np.arange(episodes))
        space = store.schema.action_space
    obs = np.asarray(tr.observations, np.float32)
    idx = np.random.default_rng(seed).choice(len(obs), size=min(n, len(obs)), replace=False)
    a = module.act(obs[idx])
    finite = bool(np.isfinite(a).all())
    low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
    outside = np.maximum(low - a, 0.0) + np.maximum(a - high, 0.0)
    violation = float(np.nanmax(outside)) if finite else float("inf")
    actions = {
        "observations": int(len(idx)),
        "finite": finite,
        "in_bounds": finite and violation <= 0.0,
        "violation": violation,
    }
    gamma = float(module.hp.gamma)
    critic: dict = {"q_initial": float(-module.norm.reward_shift / (1 - gamma) / module.norm.reward_scale)}
    ep = np.asarray(tr.episode_index)
    if len(ep):
        first = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
        rewards = np.asarray(tr.rewards, np.float64)
        t = np.arange(len(ep)) - np.repeat(first, np.diff(np.r_[first, len(ep)]))  # step within its episode
        discounted = np.add.reduceat(rewards * gamma**t, first)
        device = module.device
        with torch.no_grad():
            o = module.normalize_obs(torch.as_tensor(obs[first], device=device))
            act = torch.as_tensor(module.norm.action_to_unit(np.asarray(tr.actions)[first]), device=device)
            q = module.q_value(o, act.float())
        if q is not None:
            critic["q_data_start"] = float(q.mean())
            critic["data_discounted_return_mean"] = float(discounted.mean())
            critic["data_discounted_return_max"] = float(discounted.max())
            critic["in_sample"] = bool(type(module).in_sample_critic)
            critic["data_start_episodes"] = int(len(first))
    return actions, critic


def gate_evidence(
    sim: Any, data: Any, acts: dict, critic: dict, *, gamma: float, horizon: int | None, ope_value: float | None = None
) -> Evidence:
    """The gate's evidence: the policy's simulated evaluation ``sim``, the data's behaviour ``data``
    (:class:`~o2o.pipeline.stages.evaluate.DataBehaviour`), and ``acts``/``critic`` from
    :func:`policy_on_data` (also what ``bench/bench_o2o.py`` asks the gate with)."""
    return Evidence(
        sim=sim,
        ope_value=ope_value,
        data_return_mean=data.return_mean,
        data_success_rate=data.success_rate,
        reward_max=data.reward_max,
        gamma=gamma,
        horizon=horizon,
        actions_finite=acts["finite"],
        actions_in_bounds=acts["in_bounds"],
        action_violation=acts["violation"],
        data_return_std=data.return_std,
        data_episodes=data.episodes,
        reward_min=data.reward_min,
        q_initial=critic["q_initial"],
        q_data_start=critic.get("q_data_start"),
        data_discounted_return_mean=critic.get("data_discounted_return_mean"),
        data_discounted_return_max=critic.get("data_discounted_return_max"),
        critic_in_sample=bool(critic.get("in_sample", False)),
    )


def run_stage(ctx) -> dict:
    ev_in, ckpt, data = ctx.artifact("evaluation"), ctx.artifact("checkpoint"), ctx.artifact("dataset")
    acts, critic = policy_on_data(ckpt.path, data.path, data.episodes, verify=data.verify)
    evidence = gate_evidence(
        ev_in.sim,
        ev_in.data,
        acts,
        critic,
        gamma=ev_in.gamma,
        horizon=ev_in.horizon,
        ope_value=(ev_in.ope or {}).get("ope/fqe_value"),
    )
    decision = decide(dict(ctx.config.gate), evidence)
    gate = GateArtifact(**decision.to_dict(), checkpoint=ckpt.path, actions=acts, critic=critic)
    out = {"gate": gate}
    (ctx.out_dir / "decision.json").write_text(json.dumps(gate.to_dict(), indent=2, default=float))
    for c in decision.criteria:
        ctx.log(f"  {c.message()}")
    if not decision.passed:
        raise StageFailed(decision.summary(), outputs=out)
    ctx.log(f"  {decision.summary()}")
    return out


STAGE = Stage(
    "gate",
    reads=("checkpoint", "evaluation", "dataset"),
    writes=("gate",),
    run=run_stage,
    doc="only a policy that passes the gate goes online",
)
CONFIG_KEYS = ("gate",)
