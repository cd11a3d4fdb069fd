"""Benchmark of logging while collecting: ``collect(cfg)`` vs stepping the env alone.

Same env (robosuite Lift by default), same behaviour policy, same seeds, same number of
episodes, run interleaved (a, b1, b2, a, b1, b2, ... with the order rotated each round)
so that drift on a shared machine hits every variant alike:

* (a) stepping alone: ``reset`` + ``behavior.act`` + ``env.step``, nothing recorded;
* (b) the full ``o2o.pipeline.stages.collect.collect(cfg)`` into a fresh store
  (recording, validation, commits, store creation and close), once with the config's
  commit policy (``commit_every_s``) and once with ``commit_every_episodes=1``.

Overhead % = (t_b - t_a) / t_a, paired within a round, median over rounds; target <= 5 %.
The time spent inside the logging code itself (recorder, store creation, appends, close)
is also timed directly, which is steadier than a difference of two noisy totals.

The env is built once and shared by every run (its ``close`` is disabled until the
end), so its ~10 s construction is paid once; ``--fresh-env`` lets ``collect`` build
its own, as the CLI does.

    python bench/bench_collect.py            # 20 episodes x 200 steps, 3 rounds
    python bench/bench_collect.py --quick    # CI smoke, < 30 s

Results: a table on stdout and ``bench/results/bench_collect-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import o2o.pipeline.stages.collect as collect_mod
from o2o.datasets import EpisodeRecorder, EpisodeStore
from o2o.envs import make_env
from o2o.pipeline.config import load_config
from o2o.policies.behavior.factory import make_behavior

RESULTS = Path(__file__).resolve().parent / "results"
OVERHEAD_TARGET = 0.05


class _Timers:
    """Wall time spent inside named methods/functions while active (restored on exit)."""

    def __init__(self, targets: dict[str, tuple[object, str]]):
        self.targets, self.totals, self.calls, self._orig = (
            targets,
            {k: 0.0 for k in targets},
            {k: 0 for k in targets},
            {},
        )

    def __enter__(self) -> "_Timers":
        for label, (owner, attr) in self.targets.items():
            fn = getattr(owner, attr)
            self._orig[label] = fn

            def timed(*a, _fn=fn, _label=label, **k):
                t0 = time.perf_counter()
                try:
                    return _fn(*a, **k)
                finally:
                    self.totals[_label] += time.perf_counter() - t0
                    self.calls[_label] += 1

            setattr(owner, attr, timed)
        return self

    def __exit__(self, *exc) -> None:
        for label, (owner, attr) in self.targets.items():
            setattr(owner, attr, self._orig[label])


def _logging_targets() -> dict[str, tuple[object, str]]:
    """The logging code inside collect(); open_dataset_for includes creating the store."""
    t = {f"recorder.{m}": (EpisodeRecorder, m) for m in ("start", "add", "finish")}
    t["open_dataset_for (create store)"] = (collect_mod, "open_dataset_for")
    t["append_many (validate+write+commit)"] = (EpisodeStore, "append_many")
    t["store close (trim, unlock)"] = (EpisodeStore, "close")
    return t


# ---------------------------------------------------------------------------- runs
def step_only(env, cfg, seeds: list[int]) -> dict:
    """(a): the collection loop of ``run_episode`` without the recorder or the store."""
    t0 = time.perf_counter()
    behavior = make_behavior(cfg.behavior, env, cfg.env)
    t_loop = time.perf_counter()  # collect()'s result.seconds starts here too
    steps, returns = 0, []
    for seed in seeds:
        obs, info = env.reset(seed=seed)
        behavior.reset(seed=seed)
        done, ret = False, 0.0
        while not done:
            action = np.asarray(behavior.act(obs), dtype=env.action_space.dtype)
            bool(behavior.human_in_control)  # read per step by run_episode too
            obs, reward, terminated, truncated, info = env.step(action)
            ret += float(reward)
            steps += 1
            done = terminated or truncated
        returns.append(ret)
    t_end = time.perf_counter()
    return {"wall_s": t_end - t0, "loop_s": t_end - t_loop, "steps": steps, "returns": returns}


def full_collect(cfg) -> dict:
    """(b): ``collect(cfg)`` into a fresh store; the logging code's own time measured inside."""
    path = Path(cfg.dataset.path)
    with _Timers(_logging_targets()) as tm:
        t0 = time.perf_counter()
        result = collect_mod.collect(cfg)
        wall = time.perf_counter() - t0
    with EpisodeStore.open(path) as store:
        assert store.num_steps == result.steps, (store.num_steps, result.steps)
    shutil.rmtree(path)
    parts = dict(tm.totals)
    return {
        "wall_s": wall,
        "loop_s": result.seconds,
        "steps": result.steps,
        "returns": result.returns,
        "logging_s": sum(parts.values()),
        "logging_parts": parts,
        "commits": tm.calls["append_many (validate+write+commit)"],
    }


def compose(args, tmp: Path, extra: list[str]):
    overrides = [
        f"env={args.env}",
        f"behavior={args.behavior}",
        f"collect.episodes={args.episodes}",
        f"dataset.path={tmp}",
        "collect.progress=false",
        "collect.seed=0",
    ]
    if args.max_steps is not None:
        overrides.append(f"env.max_episode_steps={args.max_steps}")
    return load_config("collect", overrides + list(args.override) + extra)


# ---------------------------------------------------------------------------- report
def print_table(title: str, rows: list[list[str]], header: list[str]) -> None:
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
        print(f"\n{title}")
        for r in [header] + rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
        return
    t = Table(title=escape(title), title_justify="left")
    for h in header:
        t.add_column(h, justify="left" if h in ("measure", "note") else "right")
    for r in rows:
        t.add_row(*[escape(str(c)) for c in r])  # "x[idx]" is not markup
    Console(width=max(140, shutil.get_terminal_size().columns)).print(t)


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def summarise(runs: dict[str, list[dict]]) -> dict:
    a = runs["step_only"]
    out = {
        "step_only": {
            "steps_per_s": statistics.median(r["steps"] / r["wall_s"] for r in a),
            "wall_s": statistics.median(r["wall_s"] for r in a),
        }
    }
    for name, rs in runs.items():
        if name == "step_only":
            continue
        paired = [(b["wall_s"] - ra["wall_s"]) / ra["wall_s"] for b, ra in zip(rs, a)]
        paired_loop = [(b["loop_s"] - ra["loop_s"]) / ra["loop_s"] for b, ra in zip(rs, a)]
        direct = [b["logging_s"] / ra["wall_s"] for b, ra in zip(rs, a)]
        parts = {k: statistics.median(b["logging_parts"][k] for b in rs) for k in rs[0]["logging_parts"]}
        out[name] = {
            "steps_per_s": statistics.median(r["steps"] / r["wall_s"] for r in rs),
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "overhead": statistics.median(paired),
            "overhead_rounds": paired,
            "overhead_loop": statistics.median(paired_loop),
            "overhead_direct": statistics.median(direct),
            "overhead_direct_rounds": direct,
            "logging_parts_s": parts,
            "commits": rs[0]["commits"],
            "same_returns_as_step_only": all(np.allclose(b["returns"], ra["returns"]) for b, ra in zip(rs, a)),
        }
    return out


def rows_of(summary: dict, labels: dict[str, str], steps: int) -> list[list[str]]:
    a = summary["step_only"]
    rows = [
        ["(a) stepping alone", f"{a['steps_per_s']:,.1f}", f"{a['wall_s']:.2f} s", "", "-", f"{steps} steps per run"]
    ]
    for name, s in summary.items():
        if name == "step_only":
            continue
        rows.append(
            [
                f"(b) collect(), {labels[name]} ({s['commits']} commits)",
                f"{s['steps_per_s']:,.1f}",
                f"{s['wall_s']:.2f} s",
                f"{100 * s['overhead']:+.2f} %",
                verdict(s["overhead"] <= OVERHEAD_TARGET),
                "paired per round: "
                + ", ".join(f"{100 * x:+.1f}" for x in s["overhead_rounds"])
                + (" | same returns as (a)" if s["same_returns_as_step_only"] else " | RETURNS DIFFER from (a)"),
            ]
        )
        rows.append(
            [
                "    loop + commits only (result.seconds)",
                "",
                "",
                f"{100 * s['overhead_loop']:+.2f} %",
                verdict(s["overhead_loop"] <= OVERHEAD_TARGET),
                "vs (a) loop alone; without store creation/close",
            ]
        )
        parts = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in s["logging_parts_s"].items() if v >= 5e-4)
        rows.append(
            [
                "    time inside logging code / t_a",
                "",
                "",
                f"{100 * s['overhead_direct']:+.2f} %",
                verdict(s["overhead_direct"] <= OVERHEAD_TARGET),
                parts,
            ]
        )
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=20, help="episodes per run")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of (a, b1, b2); medians reported")
    ap.add_argument("--env", default="lift", help="configs/env/<name>.yaml")
    ap.add_argument("--behavior", default="scripted", help="configs/behavior/<name>.yaml")
    ap.add_argument("--max-steps", type=int, default=None, help="override env.max_episode_steps (default: config)")
    ap.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    ap.add_argument("--fresh-env", action="store_true", help="let collect() build its own env each run")
    ap.add_argument("--quick", action="store_true", help="3 episodes of 30 steps, 2 rounds (CI smoke, < 30 s)")
    args = ap.parse_args(argv)
    if args.quick:
        args.episodes, args.repeats = 3, 2
        args.max_steps = args.max_steps or 30
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="scratch-collect-", dir=RESULTS))
    variants = {"collect_default": [], "collect_every_episode": ["collect.commit_every_episodes=1"]}
    cfgs = {name: compose(args, work / f"{name}.zarr", extra) for name, extra in variants.items()}
    base = cfgs["collect_default"]
    labels = {
        "collect_default": f"commit_every_s={base.collect.commit_every_s}, "
        f"commit_every_episodes={base.collect.commit_every_episodes}",
        "collect_every_episode": "commit_every_episodes=1",
    }
    res: dict = {
        "bench": "collect",
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_start": os.getloadavg(),
        },
    }
    t_start = time.perf_counter()
    seeds = list(range(args.episodes))
    t0 = time.perf_counter()
    env = make_env(base.env)
    res["env_build_s"] = time.perf_counter() - t0
    real_close, real_make_env = env.close, collect_mod.make_env
    if not args.fresh_env:
        env.close = lambda: None  # collect() closes its env; the shared one stays open until the end
        collect_mod.make_env = lambda env_cfg: env
    runs: dict[str, list[dict]] = {"step_only": [], **{k: [] for k in variants}}
    try:
        print(f"env built in {res['env_build_s']:.1f} s; warm-up ...", flush=True)
        step_only(env, base, seeds[:1])
        warm = compose(args, work / "warmup.zarr", ["collect.episodes=1"])
        collect_mod.collect(warm)
        shutil.rmtree(work / "warmup.zarr")
        order = ["step_only", *variants]
        for r in range(args.repeats):
            for name in order[r % len(order) :] + order[: r % len(order)]:  # rotate: no variant always first
                if name == "step_only":
                    if args.fresh_env:
                        own = make_env(base.env)
                        runs[name].append(step_only(own, base, seeds))
                        own.close()
                    else:
                        runs[name].append(step_only(env, base, seeds))
                else:
                    runs[name].append(full_collect(cfgs[name]))
                last = runs[name][-1]
                print(
                    f"round {r + 1}/{args.repeats} {name:22s} {last['steps']} steps {last['wall_s']:.2f} s "
                    f"({last['steps'] / last['wall_s']:.1f} steps/s)",
                    flush=True,
                )
    finally:
        collect_mod.make_env = real_make_env
        env.close = real_close
        env.close()
        shutil.rmtree(work, ignore_errors=True)
    summary = summarise(runs)
    res.update(runs=runs, summary=summary, wall_s=time.perf_counter() - t_start)
    res["machine"]["loadavg_end"] = os.getloadavg()
    steps = runs["step_only"][0]["steps"]
    rows = rows_of(summary, labels, steps)
    print_table(
        f"o2o collect logging overhead: {args.env}/{args.behavior}, {args.episodes} episodes x "
        f"{steps // args.episodes} steps, {args.repeats} interleaved rounds ({res['machine']['date']}, "
        f"{res['machine']['cpus']} cpus{', quick' if args.quick else ''}); env built once in "
        f"{res['env_build_s']:.1f} s",
        rows,
        ["measure", "steps/s", "time/run", "overhead", "pass (<= 5 %)", "note"],
    )
    res["table"] = rows
    res["passed"] = all(r[4] != "FAIL" for r in rows)
    name = f"bench_collect{'-quick' if args.quick else ''}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    (RESULTS / name).write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {RESULTS / name} ({res['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
