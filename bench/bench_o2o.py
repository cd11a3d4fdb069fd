"""Offline-to-online over seeds: does online finetuning turn the offline policy into a better one?

For a scenario (an experiment config, ``configs/experiment/<name>.yaml``: env, the first
dataset's behaviours, the offline and online budgets) the script collects the dataset
once, then for every algorithm and seed: pretrains on it (the checkpoint chosen on the
pretrain evaluation seeds), evaluates the offline policy on the evaluate stage's seeds
(never seen by any selection), asks the gate, finetunes online on its own copy of the
dataset (the finetune stage keeps the best weights on *its* evaluation seeds) and
evaluates the result on the same fresh seeds. It prints, per algorithm, offline and
finetuned success and return as mean ± standard error over seeds, the paired gain, and
the data's level; the JSON in ``bench/results/`` holds every seed's numbers and curves.

    python bench/bench_o2o.py --scenario room_poor                 # IQL, 5 seeds
    python bench/bench_o2o.py --scenario room_poor --algos iql,calql,cql,rlpd,wsrl
    python bench/bench_o2o.py --scenario lift_poor --seeds 3
    python bench/bench_o2o.py --scenario room_poor --set finetune.steps=1000   # any override

The first dataset is the same for every algorithm and seed (collected once, ``--data``
reuses one); the seeds are training seeds (network initialisation, batches, exploration).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from o2o.datasets import EpisodeStore
from o2o.pipeline.config import load_config
from o2o.pipeline.gate import decide
from o2o.pipeline.stages.collect import collect, collect_entries
from o2o.pipeline.stages.evaluate import data_behaviour
from o2o.pipeline.stages.finetune import finetune
from o2o.pipeline.stages.gate import gate_evidence, policy_on_data
from o2o.pipeline.stages.pretrain import pretrain
from o2o.policies.algos.base import load_algorithm
from o2o.policies.callbacks import SimEvaluation
from o2o.policies.evaluation import Evaluator

RESULTS = Path(__file__).resolve().parent / "results"


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for one value); NaN for none."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return math.nan, math.nan
    se = float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(np.mean(v)), se


def fmt(values: list[float], digits: int = 2) -> str:
    m, se = mean_se(values)
    return "n/a" if math.isnan(m) else f"{m:.{digits}f} ± {se:.{digits}f}"


def build_dataset(cfg, path: Path, quiet: bool) -> dict[str, Any]:
    """Collect the scenario's ``collect.behaviors`` into ``path`` (fixed seeds: 0, 1, ...)."""
    seed = 0
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # not struct: a behaviour is added
    for item in collect_entries(cfg):  # every entry checked first, as the collect stage does
        part = OmegaConf.merge(
            cfg,
            {
                "behavior": item["behavior"],
                "collect": {"episodes": int(item["episodes"]), "seed": seed, "progress": False, "tasks": item["tasks"]},
            },
        )
        with _quiet(quiet):
            collect(part)
        seed += int(item["episodes"])
    return data_level(path)


def data_level(path: Path) -> dict[str, Any]:
    """The dataset's size and its behaviour's level (the evaluate stage's summary of the data)."""
    with EpisodeStore.open(str(path), mode="r") as store:
        episodes, transitions = int(store.num_episodes), int(store.num_steps)
    d = data_behaviour(str(path), episodes)
    return {
        "episodes": episodes,
        "transitions": transitions,
        "return_mean": d.return_mean,
        "success_rate": d.success_rate,
    }


@contextlib.contextmanager
def _quiet(enabled: bool):
    if not enabled:
        yield
        return
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        yield


def evaluate_checkpoint(cfg, path: str) -> dict[str, Any]:
    """The checkpoint's deterministic policy on the evaluate stage's seeds (``evaluation.*``), with its
    critic's Q on the start states next to the discounted return it achieved (what the gate reads)."""
    module = load_algorithm(path)
    e = cfg.evaluation
    ev = Evaluator(
        OmegaConf.to_container(cfg.env, resolve=True),
        episodes=int(e.episodes),
        num_envs=int(e.num_envs),
        seed=int(e.seed),
        gamma=float(module.hp.gamma),
    )
    try:
        return SimEvaluation(ev, 0, OmegaConf.to_container(cfg.env, resolve=True).get("reference_returns")).evaluate(
            module
        )
    finally:
        ev.close()


def gate_decision(cfg, ckpt: str, data: Path, offline_eval: dict) -> dict[str, Any]:
    """The configured gate's decision on this offline policy: the gate stage's evidence and logic."""
    with EpisodeStore.open(str(data), mode="r") as store:
        episodes = store.num_episodes
    acts, critic = policy_on_data(ckpt, str(data), episodes)
    d = data_behaviour(str(data), episodes)
    gamma = float(load_algorithm(ckpt).hp.gamma)
    evidence = gate_evidence(offline_eval, d, acts, critic, gamma=gamma, horizon=int(cfg.env.max_episode_steps))
    decision = decide(dict(cfg.gate), evidence)
    return {
        "passed": decision.passed,
        "summary": decision.summary(),
        "criteria": [c.message() for c in decision.criteria],
    }


def run_round(cfg, copy: Path, run: Path, rnd: int, quiet: bool) -> dict:
    """One ``o2o run`` on the dataset copy as it is now: pretrain (fresh), evaluate, gate, finetune (which
    appends its online episodes to the copy, as the finetune stage does)."""
    with EpisodeStore.open(str(copy), mode="r") as store:
        data_episodes, data_steps = int(store.num_episodes), int(store.num_steps)
    cfg = OmegaConf.merge(cfg, {"run_dir": str(run / f"pretrain-{rnd}")})
    t0 = time.perf_counter()
    with _quiet(quiet):
        pre = pretrain(cfg)
    ckpt = pre.best_checkpoint or pre.last_checkpoint
    t1 = time.perf_counter()
    offline = evaluate_checkpoint(cfg, ckpt)
    gate = gate_decision(cfg, ckpt, copy, offline)
    lines: list[str] = []
    with _quiet(quiet):
        fin = finetune(cfg, ckpt, str(copy), run / f"finetune-{rnd}", log=lines.append)
    t2 = time.perf_counter()
    return {
        "round": rnd,
        "data_episodes": data_episodes,
        "data_transitions": data_steps,
        "offline": offline,
        "gate": gate,
        "finetuned": fin["evaluation"],
        "rolled_back": fin["rolled_back"],
        "kept": fin.get("kept"),
        "curve": fin["curve"],
        "online": fin["online"],
        "env_steps": fin["steps"],
        "updates": fin["updates"],
        "pretrain_s": t1 - t0,
        "finetune_s": t2 - t1,
    }


def run_seed(
    base_cfg_overrides: list[str], data: Path, work: Path, algo: str, seed: int, quiet: bool, rounds: int = 1
) -> dict:
    """``rounds`` successive runs for one training seed on its own copy of the first dataset: round 1 is
    the first ``o2o run``; round k+1 retrains from scratch on the dataset round k's finetuning grew
    (what a second ``o2o run`` does). The result is round 1's record, with every round under ``rounds``."""
    run = work / f"{algo}-s{seed}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    copy = run / "data.zarr"
    shutil.copytree(data, copy)
    cfg = load_config(
        "run",
        [
            *base_cfg_overrides,
            f"algo={algo}",
            f"dataset.path={copy}",
            f"trainer.seed={seed}",
            "trainer.progress=false",
            "finetune.progress=false",
            "evaluation.progress=false",
        ],
    )
    done = [run_round(cfg, copy, run, k + 1, quiet) for k in range(rounds)]
    out = {"algo": algo, "seed": seed, **{k: v for k, v in done[0].items() if k != "round"}, "rounds": done}
    shutil.rmtree(copy, ignore_errors=True)
    return out


def print_round(algo: str, seed: int, r: dict, rounds: int) -> None:
    o, f = r["offline"], r["finetuned"]
    print(
        f"  {algo} seed {seed}"
        + (f" round {r['round']} ({r['data_episodes']} episodes)" if rounds > 1 else "")
        + f": offline success {o.get('success_rate', float('nan')):.2f} return "
        f"{o['return_mean']:.1f} -> finetuned success {f.get('success_rate', float('nan')):.2f} return "
        f"{f['return_mean']:.1f} (online episodes {r['online'].get('success_rate')}, "
        f"{r['env_steps']} env steps, {r['updates']} updates; {r['pretrain_s']:.0f}+{r['finetune_s']:.0f} s"
        + (", rolled back" if r["rolled_back"] else "")
        + ("; gate passed" if r["gate"]["passed"] else "; GATE FAILED (finetuned anyway here)")
        + ")",
        flush=True,
    )


def summarise(rs: list[dict]) -> dict[str, Any]:
    """Offline vs finetuned success and return over seeds (one round's records)."""
    so = [r["offline"].get("success_rate") for r in rs]
    sf = [r["finetuned"].get("success_rate") for r in rs]
    ro = [r["offline"]["return_mean"] for r in rs]
    rf = [r["finetuned"]["return_mean"] for r in rs]
    ds = [b - a for a, b in zip(so, sf)] if None not in so + sf else []
    dr = [b - a for a, b in zip(ro, rf)]
    gates = sum(bool(r["gate"]["passed"]) for r in rs)
    return {
        "so": so,
        "sf": sf,
        "ro": ro,
        "rf": rf,
        "ds": ds,
        "dr": dr,
        "gates": gates,
        "summary": {
            "offline_success": mean_se(so),
            "finetuned_success": mean_se(sf),
            "success_gain": mean_se(ds),
            "offline_return": mean_se(ro),
            "finetuned_return": mean_se(rf),
            "return_gain": mean_se(dr),
            "gate_passed": gates,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--scenario",
        default="room_poor",
        help="an experiment config (configs/experiment/), or default: `o2o run`'s own",
    )
    ap.add_argument("--algos", default="iql", help="comma-separated algo configs")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="a config override for every run (repeatable)")
    ap.add_argument("--data", default=None, help="reuse this first dataset (collected by an earlier run)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--verbose", action="store_true", help="show the stages' output")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="successive runs per seed: round k+1 retrains on the dataset round k's finetuning grew (a second o2o run)",
    )
    args = ap.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    os.environ.setdefault("O2O_PROGRESS", "0")

    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")
    overrides = [*([] if args.scenario == "default" else [f"+experiment={args.scenario}"]), *args.set]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_o2o-"))
    work.mkdir(parents=True, exist_ok=True)
    quiet = not args.verbose
    try:
        if args.data:
            data = Path(args.data)
        else:
            data = work / "first.zarr"
            shutil.rmtree(data, ignore_errors=True)
        cfg = load_config("run", [*overrides, f"dataset.path={data}"])
        t = time.perf_counter()
        level = build_dataset(cfg, data, quiet) if not args.data else data_level(data)
        print(
            f"scenario {args.scenario}: data {level['episodes']} episodes, {level['transitions']} transitions, "
            f"return {level['return_mean']:.1f}, success {level['success_rate']} ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        rows: list[dict] = []
        for algo in args.algos.split(","):
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                r = run_seed(overrides, data, work, algo, seed, quiet, rounds=args.rounds)
                rows.append(r)
                for rr in r["rounds"]:
                    print_round(algo, seed, rr, args.rounds)
        print()
        print(
            f"{'algo':8} {'round':>5} {'seeds':>5} {'offline success':>16} {'finetuned success':>18} {'gain':>14} "
            f"{'offline return':>16} {'finetuned return':>17} {'gain':>14} gate"
        )
        summary: dict[str, Any] = {}
        for algo in args.algos.split(","):
            rs = [r for r in rows if r["algo"] == algo]
            per_round = []
            for k in range(args.rounds):
                s = summarise([r["rounds"][k] for r in rs])
                per_round.append(s)
                print(
                    f"{algo:8} {k + 1:>5} {len(rs):>5} {fmt(s['so']):>16} {fmt(s['sf']):>18} {fmt(s['ds']):>14} "
                    f"{fmt(s['ro'], 1):>16} {fmt(s['rf'], 1):>17} {fmt(s['dr'], 1):>14} {s['gates']:>3}/{len(rs)}"
                )
            summary[algo] = {**per_round[0]["summary"], "rounds": [x["summary"] for x in per_round]}
            if args.rounds > 1:
                first = [r["rounds"][0]["offline"].get("success_rate") for r in rs]
                for k in range(1, args.rounds):
                    later = [r["rounds"][k]["offline"].get("success_rate") for r in rs]
                    if None in first + later:
                        continue
                    d = [b - a for a, b in zip(first, later)]
                    ret = [
                        r["rounds"][k]["offline"]["return_mean"] - r["rounds"][0]["offline"]["return_mean"] for r in rs
                    ]
                    print(
                        f"{algo:8} round {k + 1}'s offline policy vs round 1's (same seed, paired): "
                        f"success {fmt(d)}, return {fmt(ret, 1)}"
                    )
                    summary[algo]["rounds"][k]["offline_success_vs_round1"] = mean_se(d)
                    summary[algo]["rounds"][k]["offline_return_vs_round1"] = mean_se(ret)
        print(
            f"data: return {level['return_mean']:.1f}, success {level['success_rate']}; "
            "± is the standard error over seeds; evaluation seeds are the evaluate stage's (unseen by selection)"
        )
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"bench_o2o-{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(
            json.dumps(
                {"scenario": args.scenario, "overrides": overrides, "data": level, "summary": summary, "runs": rows},
                indent=2,
                default=float,
            )
        )
        print(f"results: {out}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
