"""The evaluate stage: off-policy estimates of checkpoints, next to their simulated returns.

Reads: checkpoints, the dataset (a selection of it), the env (only when simulating).
Writes: one JSON report with every figure (``output``).

For each checkpoint: FQE, per-decision IS, weighted per-decision IS and doubly robust
estimates of its discounted return from the dataset alone (``ope/fqe_value``,
``ope/is_value``, ``ope/wis_value``, ``ope/dr_value``) with their diagnostics; when the
env can be simulated (``sim.enabled``), its simulated discounted and undiscounted returns
from the same evaluator the training callbacks use; with two or more checkpoints, the
Spearman rank correlation of each estimate with the simulated discounted return — how far
each estimator could be trusted to choose a checkpoint when no simulator is at hand.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig

from o2o.datasets import DatasetDamagedError, EpisodeStore
from o2o.pipeline.artifacts import DataBehaviour, EvaluationArtifact
from o2o.pipeline.config import plain
from o2o.pipeline.dag import Stage
from o2o.pipeline.progress import Progress
from o2o.pipeline.stages import dataset_verify
from o2o.policies.ope.config import OPEConfig
from o2o.policies.ope.data import OPEData
from o2o.policies.ope.importance import fit_behavior
from o2o.policies.ope.selection import OPE_METRICS, evaluate_policy, load_policy
from o2o.policies.training import check_env, select_episodes


@dataclass
class EvaluateResult:
    """Per-checkpoint figures, rank correlations and where the report was written."""

    rows: list[dict[str, Any]]
    spearman: dict[str, float | None]
    note: str
    dataset: dict[str, Any]
    ope: dict[str, Any]
    sim: dict[str, Any] | None
    device: str
    seconds: float = 0.0
    output: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str | None) -> torch.device:
    """``auto``: the GPU when there is one (data lives where the math runs), else the CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(name))


def checkpoint_paths(ckpts: Any) -> list[str]:
    """The checkpoint files named by ``ckpts`` (a folder stands for every ``*.ckpt`` in it, sorted)."""
    items = [ckpts] if isinstance(ckpts, str) else list(ckpts or [])
    if not items:
        raise ValueError("evaluate: no checkpoints given; pass ckpts=[a.ckpt,b.ckpt] (files or checkpoint folders)")
    out: list[str] = []
    for item in items:
        p = Path(str(item))
        if p.is_dir():
            found = sorted(str(c) for c in p.glob("*.ckpt"))
            if not found:
                raise ValueError(f"evaluate: checkpoint folder {str(p)!r} holds no *.ckpt files")
            out += found
        elif p.is_file():
            out.append(str(p))
        else:
            raise FileNotFoundError(f"evaluate: checkpoint {str(p)!r} does not exist")
    return out


def spearman(x: list[float | None], y: list[float | None]) -> float | None:
    """Spearman's rho of paired values, or None when undefined (< 2 finite pairs, or a constant side)."""
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 2:
        return None
    a, b = zip(*pairs)
    if len(set(a)) < 2 or len(set(b)) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = float(spearmanr(a, b).statistic)
    return rho if math.isfinite(rho) else None


def describe(cfg: OPEConfig) -> str:
    """The sentence printed under every table: what the estimates are estimates of."""
    horizon = (
        f"over the first {cfg.horizon} steps of an episode (the env's time limit)"
        if cfg.horizon
        else "over an unbounded horizon (IS/WIS stop at each recorded episode's end)"
    )
    return (
        f"All estimates are expected discounted returns (gamma={cfg.gamma}) in env reward units, {horizon}, "
        f"from the dataset's start states. IS/WIS/DR treat a deterministic policy as N(pi(s), "
        f"{cfg.target_std}^2) in the normalised action space and use a Gaussian behaviour-cloning model of the "
        f"data's behaviour policy; weights clipped per step at {cfg.step_clip} and cumulatively at "
        f"{cfg.cumulative_clip}. DR uses FQE's critic as its model."
    )


def evaluate(cfg: DictConfig, progress: Callable[[dict[str, Any]], None] | None = None) -> EvaluateResult:
    """OPE (and simulation, when enabled) of every checkpoint in ``cfg.ckpts`` on ``cfg.dataset.path``.

    ``progress(row)`` is called after each checkpoint is done.
    """
    start = time.perf_counter()
    paths = checkpoint_paths(plain(cfg.ckpts))
    device = resolve_device(cfg.get("device"))
    ope_cfg = OPEConfig.from_mapping(
        {k: v for k, v in plain(cfg.ope).items() if k != "select"}
    )  # select: pretrain only
    with EpisodeStore.open(cfg.dataset.path, mode="r", verify=dataset_verify(cfg)) as store:
        check_env(store, cfg.env)
        idx = select_episodes(store, cfg.data)
        tr = store.load_transitions(idx)
        space = store.schema.action_space
        version = store.version_at(int(idx.max()) + 1)
        dataset = {
            "path": str(cfg.dataset.path),
            "version": version.to_dict(),
            "episodes": int(len(idx)),
            "transitions": int(len(tr)),
            "selection": plain(cfg.data),
        }
    data = OPEData.from_transitions(tr, space.low, space.high, device=device, source=str(cfg.dataset.path))
    notes: list[str] = []
    max_steps = int(cfg.env.max_episode_steps)
    if ope_cfg.horizon is not None and ope_cfg.horizon != max_steps:
        notes.append(
            f"ope.horizon {ope_cfg.horizon} != env.max_episode_steps {max_steps}: OPE and simulated "
            "returns count different numbers of steps"
        )

    sim = cfg.sim
    evaluator = None
    if sim.enabled:
        from o2o.policies.evaluation import Evaluator

        evaluator = Evaluator(
            plain(cfg.env),
            episodes=int(sim.episodes),
            num_envs=int(sim.num_envs),
            seed=int(sim.seed),
            gamma=ope_cfg.gamma,
            asynchronous=bool(sim.asynchronous),
        )
    rows: list[dict[str, Any]] = []
    show = bool(cfg.get("progress", True))
    try:
        with Progress("evaluate: behaviour model", ope_cfg.behavior_updates, "updates", enabled=show) as bar:
            behavior = fit_behavior(data, ope_cfg, progress=bar.update)
        for i, path in enumerate(paths):
            module, policy = load_policy(path, data)
            row: dict[str, Any] = {
                "checkpoint": path,
                "updates": module.update_count,
                "algo": str(module.hp.name or type(module).__name__),
            }
            which = f"evaluate {i + 1}/{len(paths)}"
            with Progress(
                f"{which}: FQE", ope_cfg.fqe_updates * (1 + ope_cfg.fqe_refits), "updates", enabled=show
            ) as bar:
                row.update(evaluate_policy(policy, data, ope_cfg, behavior, progress=bar.update))
            row["ope/behavior_nll"] = behavior.nll
            if evaluator is not None:
                with Progress(f"{which}: simulation", evaluator.episodes, "episodes", enabled=show) as bar:
                    summary = evaluator(lambda obs: module.act(obs, deterministic=True), progress=bar.update).summary()
                row.update({f"eval/{k}": v for k, v in summary.items()})
            rows.append(row)
            if progress is not None:
                progress(row)
    finally:
        if evaluator is not None:
            evaluator.close()

    rho: dict[str, float | None] = {}
    if evaluator is not None and len(rows) >= 2:
        truth = [r.get("eval/mc_discounted_return_mean") for r in rows]
        rho = {m: spearman([r.get(m) for r in rows], truth) for m in OPE_METRICS}
    result = EvaluateResult(
        rows=rows,
        spearman=rho,
        note=describe(ope_cfg),
        dataset=dataset,
        ope=ope_cfg.to_dict(),
        sim=plain(sim) if sim.enabled else None,
        device=str(device),
        seconds=time.perf_counter() - start,
        warnings=notes,
    )
    if cfg.get("output"):
        out = Path(str(cfg.output))
        out.parent.mkdir(parents=True, exist_ok=True)
        result.output = str(out)
        out.write_text(json.dumps(result.to_dict(), indent=2, default=_json_default))
    return result


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


# ---------------------------------------------------------------------------- as a pipeline stage
def data_behaviour(path: str, episodes: int, verify: bool = True) -> DataBehaviour:
    """The dataset's behaviour, to judge a policy against: mean return (and its sample standard
    deviation) and success overall and per source, the smallest and largest reward, over the first
    ``episodes`` episodes (the version trained on), from records checked against their digests first
    (unless ``verify`` is off)."""
    with EpisodeStore.open(path, mode="r", verify=verify) as store:
        problems = store.check_contents(np.arange(episodes)) if verify else []
        if problems:
            raise DatasetDamagedError(str(path), problems, "The data's behaviour was not summarised. ")
        t = store.episodes_table(np.arange(episodes))
        rewards = (
            store._read("data/rewards", slice(0, int(t["start"][-1] + t["length"][-1]))) if episodes else np.zeros(0)
        )
    succ = np.asarray(t["success"], float)
    out = {
        "episodes": int(episodes),
        "return_mean": float(np.mean(t["returns"])),
        "return_std": float(np.std(t["returns"], ddof=1)) if episodes > 1 else None,
        "reward_max": float(np.max(rewards)) if len(rewards) else None,
        "reward_min": float(np.min(rewards)) if len(rewards) else None,
        "success_rate": float(np.nanmean(succ)) if np.isfinite(succ).any() else None,
        "sources": {},
    }
    for src in sorted(set(t["source"])):
        m = t["source"] == src
        s = succ[m]
        out["sources"][str(src)] = {
            "episodes": int(m.sum()),
            "return_mean": float(np.mean(t["returns"][m])),
            "success_rate": float(np.nanmean(s)) if np.isfinite(s).any() else None,
        }
    return DataBehaviour(**out)


def run_stage(ctx) -> dict:
    """``o2o run``'s evaluate: the chosen checkpoint in simulation on fresh seeds (not the ones that
    chose it), its value estimate on start states, optionally FQE; and the data's behaviour."""
    from o2o.policies.algos.base import load_algorithm
    from o2o.policies.callbacks import SimEvaluation
    from o2o.policies.evaluation import Evaluator

    cfg, ckpt, data = ctx.config, ctx.artifact("checkpoint"), ctx.artifact("dataset")
    e = cfg.evaluation
    show = bool(e.get("progress", True))
    module = load_algorithm(ckpt.path)
    sim = ope = None
    if e.sim:
        ev = Evaluator(
            plain(cfg.env),
            episodes=int(e.episodes),
            num_envs=int(e.num_envs),
            seed=int(e.seed),
            gamma=float(module.hp.gamma),
            asynchronous=bool(e.asynchronous),
        )
        try:
            with Progress("evaluate: simulation", int(e.episodes), "episodes", enabled=show) as bar:
                sim = SimEvaluation(ev, 0, references=plain(cfg.env.get("reference_returns"))).evaluate(
                    module, progress=bar.update
                )
        finally:
            ev.close()
        s = sim
        ctx.log(
            f"  simulation ({int(e.episodes)} episodes): return {s['return_mean']:.1f}"
            + (f", success {s['success_rate']:.2f}" if "success_rate" in s else "")
            + (
                f", Q(start) {s['q_start_mean']:.1f} vs achieved {s['mc_discounted_return_mean']:.1f}"
                if "q_start_mean" in s
                else ""
            )
        )
    if e.ope:
        ope_cfg = OPEConfig.from_mapping(
            {**{k: v for k, v in plain(cfg.ope).items() if k != "select"}, "gamma": float(module.hp.gamma)}
        )
        with EpisodeStore.open(data.path, mode="r", verify=data.verify) as store:
            tr = store.load_transitions(np.arange(data.episodes))
            space = store.schema.action_space
        od = OPEData.from_transitions(tr, space.low, space.high, source=data.path)
        _, policy = load_policy(ckpt.path, od)
        with Progress("evaluate: behaviour model", ope_cfg.behavior_updates, "updates", enabled=show) as bar:
            behavior = fit_behavior(od, ope_cfg, progress=bar.update)
        with Progress("evaluate: FQE", ope_cfg.fqe_updates * (1 + ope_cfg.fqe_refits), "updates", enabled=show) as bar:
            est = evaluate_policy(policy, od, ope_cfg, behavior, progress=bar.update)
        ope = {k: v for k, v in est.items() if isinstance(v, (int, float))}
        ctx.log(f"  OPE: FQE {ope.get('ope/fqe_value', float('nan')):.1f}")
    out = EvaluationArtifact(
        checkpoint=ckpt.path,
        gamma=float(module.hp.gamma),
        horizon=int(cfg.env.max_episode_steps),
        data=data_behaviour(data.path, data.episodes, data.verify),
        sim=sim,
        ope=ope,
    )
    (ctx.out_dir / "evaluation.json").write_text(json.dumps(out.to_dict(), indent=2, default=_json_default))
    return {"evaluation": out}


STAGE = Stage(
    "evaluate",
    reads=("checkpoint", "dataset"),
    writes=("evaluation",),
    run=run_stage,
    doc="simulate the chosen checkpoint on fresh seeds, value diagnostic, optional FQE",
)
CONFIG_KEYS = ("env", "evaluation", "ope")
