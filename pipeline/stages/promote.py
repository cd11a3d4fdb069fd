"""The promote stage: which policy becomes the one that is exported.

The offline checkpoint that passed the gate is the incumbent. When online finetuning ran,
its policy replaces the incumbent only if it evaluates better (same evaluation seeds,
``promote.metric``, by at least ``promote.min_improvement``) and its success rate did not
drop by more than ``promote.max_success_drop``; otherwise the incumbent stays and the
record says why.
"""

from __future__ import annotations

from dataclasses import replace

from o2o.pipeline.artifacts import PolicyArtifact
from o2o.pipeline.dag import Stage


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def run_stage(ctx) -> dict:
    cfg = ctx.config.promote
    ckpt, ev, gate = ctx.artifact("checkpoint"), ctx.artifact("evaluation"), ctx.artifact("gate")
    if not gate.passed:  # the dag blocks promote after a failed gate; this guards direct use
        raise RuntimeError("promote: the gate did not pass")
    metric = str(cfg.metric)
    offline = (ev.sim or {}).get(metric)
    policy = PolicyArtifact(
        path=ckpt.path,
        fingerprint=ckpt.fingerprint,
        origin="offline",
        metric=metric,
        value=offline,
        reason="offline policy passed the gate",
    )
    tuned = ctx.artifact("finetune")
    if tuned is not None:
        online = tuned.evaluation.get(metric)
        # A better return bought with fewer successes is a regression (measured on the point-maze
        # room: return -85.1 -> -80.7 while success fell 1.00 -> 0.15): success may not drop.
        s_off = (ev.sim or {}).get("success_rate")
        s_on = tuned.evaluation.get("success_rate")
        max_drop = float(cfg.get("max_success_drop", 0.0))
        if s_off is not None and s_on is not None and s_on < s_off - max_drop:
            policy = replace(
                policy,
                reason=f"finetuned success_rate {s_on:.2f} < offline {s_off:.2f} - "
                f"{max_drop:.2f}: the offline policy stays",
            )
            online = None
        if online is not None and offline is not None and online >= offline + float(cfg.min_improvement):
            policy = PolicyArtifact(
                path=tuned.checkpoint,
                fingerprint=tuned.fingerprint,
                origin="finetuned",
                metric=metric,
                value=online,
                reason=f"finetuned {metric} {online:.4g} >= offline {offline:.4g} + {float(cfg.min_improvement):.4g}",
            )
        elif online is not None:
            policy = replace(
                policy,
                reason=f"finetuned {metric} {online:.4g} not better than offline {_num(offline)} "
                f"by {float(cfg.min_improvement):.4g}: the offline policy stays",
            )
    ctx.log(f"  promoted: {policy.origin} ({policy.reason})")
    return {"policy": policy}


STAGE = Stage(
    "promote",
    reads=("checkpoint", "evaluation", "gate"),
    writes=("policy",),
    run=run_stage,
    optional=("finetune",),
    doc="the finetuned policy replaces the incumbent only if it evaluates better",
)
CONFIG_KEYS = ("promote",)
