"""The gate stage: decide on the evidence whether the offline policy may go online.

Evidence: the evaluate stage's simulation and value figures and the data's behaviour,
plus the policy's actions on recorded observations (finite, within the action bounds).
The decision and every criterion are written to ``<run>/gate/decision.json`` and printed;
a failed gate stops every stage downstream of it (finetuning, promotion, export) and the
run ends with a non-zero exit code naming each failed criterion and by how much.
"""

from __future__ import annotations

import json

import numpy as np

from o2o.datasets import EpisodeStore
from o2o.pipeline.artifacts import GateArtifact
from o2o.pipeline.dag import Stage, StageFailed
from o2o.pipeline.gate import Evidence, decide


def action_check(
    ckpt_path: str, dataset_path: str, episodes: int, n: int = 2048, seed: int = 0, verify: bool = True
) -> dict:
    """The policy's actions on up to ``n`` recorded observations: finite? within the bounds?"""
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
    return {
        "observations": int(len(idx)),
        "finite": finite,
        "in_bounds": finite and violation <= 0.0,
        "violation": violation,
    }


def run_stage(ctx) -> dict:
    ev_in, ckpt, data = ctx.artifact("evaluation"), ctx.artifact("checkpoint"), ctx.artifact("dataset")
    acts = action_check(ckpt.path, data.path, data.episodes, verify=data.verify)
    d = ev_in.data
    evidence = Evidence(
        sim=ev_in.sim,
        ope_value=(ev_in.ope or {}).get("ope/fqe_value"),
        data_return_mean=d.return_mean,
        data_success_rate=d.success_rate,
        reward_max=d.reward_max,
        gamma=ev_in.gamma,
        horizon=ev_in.horizon,
        actions_finite=acts["finite"],
        actions_in_bounds=acts["in_bounds"],
        action_violation=acts["violation"],
    )
    decision = decide(dict(ctx.config.gate), evidence)
    gate = GateArtifact(**decision.to_dict(), checkpoint=ckpt.path, actions=acts)
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
