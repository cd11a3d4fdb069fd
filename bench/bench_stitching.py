"""Stitching on the U-maze: does offline RL chain segments that behaviour cloning cannot?

The data (``configs/experiment/stitching.yaml``) are segments of at most 3 cells between cell
pairs, in both directions, each from a start cell drawn per episode (``collect`` tasks: reset
options recorded with every episode) to a cell the noisy scripted controller is commanded to
(``controller.target_cell``), where it then holds still. The task keeps one start and one goal,
(3,1) -> (1,1), 6 cells apart, and a sparse reward: no episode goes from start to goal whole.

The dataset is built once (one collection, 300 episodes); then BC (``configs/algo/bc.yaml``) and
offline RL (IQL, optionally CQL) train on it for ``--seeds`` seeds each. Each run keeps its best
checkpoint by success on the periodic evaluation's seeds (``eval.seed``, 10000+); that
checkpoint is then judged on ``--episodes`` fresh evaluation seeds (20000 + 1000 * seed + i)
the selection never saw. Printed: success rate and return per algorithm, mean ± standard error
over seeds, and each offline RL algorithm's difference to BC (paired by seed). Target: offline
RL success >= BC + 0.3.

    python bench/bench_stitching.py                    # BC and IQL, 5 seeds (~25 min on 2 busy cores)
    python bench/bench_stitching.py --algos bc,iql,cql # CQL too
    python bench/bench_stitching.py --seeds 1 --quick  # smoke run, ~2 min

Results: a table on stdout and ``bench/results/bench_stitching-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from o2o.datasets import EpisodeStore
from o2o.pipeline.config import load_config, plain
from o2o.pipeline.stages.collect import collect, collect_entries
from o2o.pipeline.stages.pretrain import pretrain
from o2o.policies.algos.base import load_algorithm
from o2o.policies.evaluation import Evaluator

TARGET = 0.3  # offline RL success >= BC success + TARGET
EXPERIMENT = "+experiment=stitching"
# Per algorithm: what differs from the experiment's settings. IQL: the paper's antmaze setting
# (expectile 0.9, beta 10); a faster target (tau 0.02) so value crosses the 6-cell way in 8k updates.
ALGO_OVERRIDES = {
    "bc": ["trainer.max_steps=4000", "eval.every=1000"],
    "iql": ["algo.expectile=0.9", "algo.beta=10.0", "algo.tau=0.02"],
    "cql": ["algo.tau=0.02"],
}


def build_dataset(path: Path, log=print) -> dict[str, Any]:
    """The experiment's dataset: every ``collect.behaviors`` entry in turn (what ``o2o run``'s collect does)."""
    cfg = load_config("run", [EXPERIMENT, f"dataset.path={path}", "collect.progress=false"])
    OmegaConf.set_struct(cfg, False)
    start = time.perf_counter()
    run = {"id": f"bench-stitching-{int(time.time())}"}
    for k, entry in enumerate(collect_entries(cfg)):
        part = OmegaConf.merge(
            cfg,
            {
                "behavior": entry["behavior"],
                "collect": {
                    "episodes": entry["episodes"],
                    "seed": int(cfg.collect.seed) + 1000 * k,
                    "tasks": entry["tasks"],
                },
            },
        )
        res = collect(part, run={**run, "part": k})
        log(
            f"  target {list(entry['behavior'].controller.target_cell)}: {len(res.episodes)} episodes from "
            f"{len(entry['tasks'])} start cells, success {res.success_rate:.2f}"
        )
    with EpisodeStore.open(path) as store:
        t = store.episodes_table()
        from_start = [i for i, task in enumerate(t["task"]) if task["start_cell"] == [3, 1]]
        out = {
            "episodes": store.num_episodes,
            "transitions": store.num_steps,
            "version": store.version.to_dict(),
            "success_rate": float(np.mean(t["success"] > 0)),
            # The stitching condition: no episode from the task's start reaches the goal.
            "episodes_from_start": len(from_start),
            "successes_from_start": int(sum(t["success"][i] > 0 for i in from_start)),
            "tasks": len({json.dumps(x, sort_keys=True) for x in t["task"]}),
            "seconds": time.perf_counter() - start,
        }
    if out["successes_from_start"]:
        raise RuntimeError(
            f"the data are not a stitching dataset: {out['successes_from_start']} episodes go start->goal"
        )
    return out


def train_and_evaluate(
    algo: str, seed: int, data: Path, out: Path, episodes: int, quick: bool, log=print
) -> dict[str, Any]:
    """One run: train ``algo`` with ``seed``, keep the best checkpoint by periodic evaluation,
    judge it on fresh seeds."""
    overrides = [
        EXPERIMENT,
        f"algo={algo}",
        f"dataset.path={data}",
        f"run_dir={out / f'{algo}-{seed}'}",
        f"trainer.seed={seed}",
        "trainer.progress=false",
        *ALGO_OVERRIDES.get(algo, []),
    ]
    if quick:
        overrides += ["trainer.max_steps=600", "eval.every=300", "eval.episodes=4"]
    cfg = load_config("pretrain", overrides)
    start = time.perf_counter()
    res = pretrain(cfg)
    train_s = time.perf_counter() - start
    module = load_algorithm(str(res.best_checkpoint)).eval()
    fresh = 20_000 + 1000 * seed  # never used by the selection (eval.seed 10000 + i)
    evaluator = Evaluator(plain(cfg.env), episodes=episodes, seed=fresh, gamma=float(module.hp.gamma))
    try:
        summary = evaluator(lambda obs: module.act(obs, deterministic=True)).summary()
    finally:
        evaluator.close()
    row = {
        "algo": algo,
        "seed": seed,
        "success_rate": summary["success_rate"],
        "return_mean": summary["return_mean"],
        "best_checkpoint": str(res.best_checkpoint),
        "selection": res.selection,
        "selection_success": (res.best_eval or {}).get("success_rate"),
        "updates": res.updates,
        "train_seconds": train_s,
        "evaluation_seeds": [fresh, fresh + episodes - 1],
    }
    log(
        f"  {algo} seed {seed}: success {row['success_rate']:.2f}, return {row['return_mean']:.1f} on "
        f"{episodes} fresh episodes (selected at {row['selection_success']} success; {train_s:.0f} s)"
    )
    return row


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for one value)."""
    a = np.asarray(values, float)
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0


def summarise(rows: list[dict], algos: list[str]) -> dict[str, Any]:
    by = {a: sorted((r for r in rows if r["algo"] == a), key=lambda r: r["seed"]) for a in algos}
    out: dict[str, Any] = {"algorithms": {}, "versus_bc": {}}
    for a, rs in by.items():
        out["algorithms"][a] = {
            "seeds": len(rs),
            "success": mean_se([r["success_rate"] for r in rs]),
            "return": mean_se([r["return_mean"] for r in rs]),
        }
    if "bc" in by:
        bc = {r["seed"]: r for r in by["bc"]}
        for a, rs in by.items():
            if a == "bc":
                continue
            diffs = [r["success_rate"] - bc[r["seed"]]["success_rate"] for r in rs if r["seed"] in bc]
            rdiffs = [r["return_mean"] - bc[r["seed"]]["return_mean"] for r in rs if r["seed"] in bc]
            m, se = mean_se(diffs)
            out["versus_bc"][a] = {
                "success_difference": (m, se),
                "return_difference": mean_se(rdiffs),
                "target": f"success >= BC + {TARGET}",
                "met": bool(m >= TARGET),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="training seeds per algorithm (default 5)")
    p.add_argument("--algos", default="bc,iql", help="comma-separated algorithm configs (default bc,iql)")
    p.add_argument("--episodes", type=int, default=50, help="fresh evaluation episodes per run (default 50)")
    p.add_argument("--quick", action="store_true", help="smoke run: 600 updates, 4 periodic evaluation episodes")
    p.add_argument("--workdir", default=None, help="keep the dataset and runs here (default: a temporary folder)")
    args = p.parse_args(argv)
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    torch.set_num_threads(1)  # tiny networks on a shared machine: one thread is faster (tests/conftest.py)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="o2o-stitching-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "stitching.zarr"
    print(f"building the stitching dataset in {data}")
    dataset = build_dataset(data)
    print(
        f"  {dataset['episodes']} episodes, {dataset['transitions']} transitions, {dataset['tasks']} start cells; "
        f"{dataset['episodes_from_start']} start at (3,1), none of them reaches the goal ({dataset['seconds']:.0f} s)"
    )
    rows = []
    for seed in range(args.seeds):
        for algo in algos:
            rows.append(train_and_evaluate(algo, seed, data, work / "runs", args.episodes, args.quick))
    summary = summarise(rows, algos)
    print(
        f"\nU-maze stitching, {args.seeds} seeds, {args.episodes} fresh evaluation episodes each (mean ± SE over seeds)"
    )
    print(f"{'algorithm':<10} {'success':>14} {'return':>16}")
    for a, s in summary["algorithms"].items():
        print(
            f"{a:<10} {s['success'][0]:>7.2f} ± {s['success'][1]:<4.2f} {s['return'][0]:>8.1f} ± {s['return'][1]:<5.1f}"
        )
    for a, d in summary["versus_bc"].items():
        (m, se), (rm, rse) = d["success_difference"], d["return_difference"]
        print(
            f"{a} - bc: success {m:+.2f} ± {se:.2f}, return {rm:+.1f} ± {rse:.1f}; target {d['target']}: "
            f"{'met' if d['met'] else 'NOT met'}"
        )
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    out = results / f"bench_stitching-{time.strftime('%Y%m%d-%H%M%S')}.json"
    record = {
        "args": vars(args),
        "dataset": dataset,
        "runs": rows,
        "summary": summary,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__},
    }
    out.write_text(json.dumps(record, indent=2, default=float))
    print(f"results: {out}")
    return 0 if all(d["met"] for d in summary["versus_bc"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
