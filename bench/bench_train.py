"""Benchmark of training: update throughput of o2o vs d3rlpy, and (``--quality``) policy quality.

Both libraries train on the same transitions (a real o2o dataset collected into a
scratch folder and handed to d3rlpy as an ``MDPDataset``), with the same network sizes
(256x256), batch 256 and the same hyperparameters as far as they map. Every measurement
runs in a fresh process (allocator settings are process-wide), in rounds whose order
rotates so a busy shared machine slows every variant alike; figures are medians over
``--rounds`` rounds, ratios the median of per-round ratios.

Variants (``--variants``):

* **o2o fp32** / **o2o bf16**: as ``o2o pretrain`` runs (``trainer.precision`` 32-true or
  bf16-mixed, ``trainer.cpu_allocator=tuned``, its default): our module in a Lightning
  ``Trainer`` (TB and CSV loggers, the update-rate callback, eval disabled, progress off)
  for ``warmup + steps`` updates; the clock covers updates ``warmup+1 .. warmup+steps``
  only. The bare ``module.update(batch)`` loop on pre-sampled batches is timed after.
* **o2o bf16+compile** / **o2o fp32+compile**: the same with ``trainer.compile=true`` (the
  networks' MLPs through ``torch.compile``; the compiling happens in the untimed warm-up).
* **d3rlpy**: d3rlpy as its users run it, its own ``fit(dataset, n_steps=warmup + steps)``
  (its sampler, its logger), timed by its step callback over the same window; then its
  bare ``algo.update(batch)`` loop. d3rlpy has no mixed-precision option; it trains in
  float32.
* **d3rlpy +alloc**: the same with o2o's allocator setting applied to the process, to show
  how much of the gap that setting is. The ratios and the pass/fail use plain d3rlpy.

    python bench/bench_train.py              # 4 algorithms x 4 variants x 3 rounds (~15 min, 2 cores)
    python bench/bench_train.py --threads 2,1 # also with torch.set_num_threads(1)
    python bench/bench_train.py --quick      # smoke run, ~2 min
    python bench/bench_train.py --quality    # policy quality: IQL and CQL, 3 seeds each, vs d3rlpy
    python bench/bench_train.py --profile cql  # where an o2o update's time goes (torch.profiler)

d3rlpy is a benchmark-only dependency: ``pip install -r bench/requirements-bench.txt``.
Results: a table on stdout and ``bench/results/bench_train-<time>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import print_table, verdict  # noqa: E402  (same folder, same table style)

from o2o.datasets import EpisodeStore  # noqa: E402
from o2o.pipeline.config import load_config  # noqa: E402
from o2o.pipeline.stages.collect import collect  # noqa: E402
from o2o.policies.algos.base import updates_to_next  # noqa: E402
from o2o.policies.callbacks import UpdateRate  # noqa: E402
from o2o.policies.training import (  # noqa: E402
    TrainerSpec,
    build_module,
    compile_if_asked,
    make_trainer,
    select_episodes,
    step_loader,
)

RESULTS = Path(__file__).resolve().parent / "results"

# Targets of the issue: o2o updates/s over d3rlpy's, on the project's 2-core CPU.
TARGETS = {"iql": 2.0, "cql": 3.0, "awac": 1.5, "bc": 1.5}
# Timed updates per round (about 2-4 s each on 2 cores) and untimed warm-up updates.
STEPS = {"iql": 300, "cql": 30, "awac": 300, "bc": 1000}
WARMUP = {"iql": 20, "cql": 5, "awac": 20, "bc": 50}
BATCH = 256


def import_d3rlpy():
    """d3rlpy, imported quietly (gym's deprecation banner, structlog's info lines)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import d3rlpy
    except ImportError as e:
        raise SystemExit(
            f"bench_train: d3rlpy is not installed ({e}); it is the peer of this benchmark: "
            f"pip install -r bench/requirements-bench.txt"
        ) from None
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    return d3rlpy


# ---------------------------------------------------------------------------- data
def make_dataset(path: Path, overrides: list[str], parts: list[tuple[str, int]]) -> str:
    """A real o2o dataset: ``o2o collect`` of each (behaviour, episodes) in ``parts`` into a new ``path``.

    An existing ``path`` is refused: collecting appends, so a reused path would silently
    measure a bigger dataset than the one named."""
    if Path(path).exists():
        raise FileExistsError(
            f"bench_train: dataset path {path} exists; collecting would append to it (use a fresh path or remove it)"
        )
    for behavior, episodes in parts:
        cfg = load_config(
            "collect",
            [
                *overrides,
                f"behavior={behavior}",
                f"collect.episodes={episodes}",
                f"dataset.path={path}",
                "collect.progress=false",
            ],
        )
        with contextlib.redirect_stdout(io.StringIO()):
            collect(cfg)
    return str(path)


def d3rlpy_dataset(d3rlpy, store_path: str):
    """The store's transitions as a d3rlpy ``MDPDataset`` (episodes split at terminals | timeouts).

    d3rlpy keeps no final observation, so it drops the last step of each time-limited
    episode (20 of 20,000 transitions here); everything else is the same rows.
    """
    with EpisodeStore.open(store_path, mode="r") as store:
        tr = store.load_transitions()
        space = store.schema.action_space
    ds = d3rlpy.dataset.MDPDataset(
        observations=np.asarray(tr.observations, np.float32),
        actions=np.asarray(tr.actions, np.float32),
        rewards=np.asarray(tr.rewards, np.float32),
        terminals=np.asarray(tr.terminals, np.float32),
        timeouts=np.asarray(tr.timeouts, np.float32),
        action_space=d3rlpy.ActionSpace.CONTINUOUS,
    )
    return ds, space, len(tr)


# ---------------------------------------------------------------------------- the two libraries
def o2o_config(
    algo: str, store_path: str, run_dir: Path, max_steps: int, precision: str = "32-true", extra: tuple[str, ...] = ()
):
    """The ``o2o pretrain`` config of a run: ``algo``'s defaults (which :func:`d3rlpy_config`
    mirrors), eval disabled, progress off, CPU."""
    return load_config(
        "pretrain",
        [
            "env=halfcheetah",
            f"algo={algo}",
            *extra,
            f"dataset.path={store_path}",
            f"trainer.max_steps={max_steps}",
            f"trainer.precision={precision}",
            "eval.enabled=false",
            "trainer.progress=false",
            "trainer.accelerator=cpu",
            f"run_dir={run_dir}",
        ],
    )


def d3rlpy_config(
    d3rlpy, algo: str, n_steps: int, space, gamma: float = 0.99, hidden=(256, 256), extra: dict | None = None
):
    """d3rlpy's config closest to o2o's defaults of ``algo``: same nets, batch, rates and weights.

    Both standardise observations and map actions to [-1, 1]; IQL's actor learning rate
    follows a cosine over the run in both; CQL keeps its regulariser weight fixed (5) and
    tunes the entropy temperature; AWAC's V baseline uses one policy sample in both.
    """
    A, P = d3rlpy.algos, d3rlpy.preprocessing
    enc = d3rlpy.models.VectorEncoderFactory(hidden_units=list(hidden))
    common = dict(
        batch_size=BATCH,
        observation_scaler=P.StandardObservationScaler(),
        action_scaler=P.MinMaxActionScaler(
            minimum=np.asarray(space.low, np.float32), maximum=np.asarray(space.high, np.float32)
        ),
    )
    extra = dict(extra or {})
    if algo == "iql":
        cosine = d3rlpy.optimizers.AdamFactory(
            lr_scheduler_factory=d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=n_steps)
        )
        cfg = A.IQLConfig(
            actor_learning_rate=3e-4,
            critic_learning_rate=3e-4,
            actor_optim_factory=cosine,
            actor_encoder_factory=enc,
            critic_encoder_factory=enc,
            value_encoder_factory=enc,
            gamma=gamma,
            tau=0.005,
            n_critics=2,
            expectile=0.7,
            weight_temp=3.0,
            max_weight=100.0,
            **common,
            **extra,
        )
    elif algo == "cql":
        kw = dict(
            actor_learning_rate=1e-4,
            critic_learning_rate=3e-4,
            temp_learning_rate=1e-4,
            alpha_learning_rate=0.0,
            initial_alpha=1.0,
            conservative_weight=5.0,
            initial_temperature=1.0,
            n_action_samples=10,
            n_critics=2,
            tau=0.005,
            soft_q_backup=False,
            max_q_backup=False,
        )
        kw.update(extra)
        cfg = A.CQLConfig(actor_encoder_factory=enc, critic_encoder_factory=enc, gamma=gamma, **common, **kw)
    elif algo == "awac":
        cfg = A.AWACConfig(
            actor_learning_rate=3e-4,
            critic_learning_rate=3e-4,
            lam=1.0,
            n_action_samples=1,
            n_critics=2,
            tau=0.005,
            actor_encoder_factory=enc,
            critic_encoder_factory=enc,
            gamma=gamma,
            **common,
            **extra,
        )
    elif algo == "td3bc":  # not in the throughput targets; the lockstep and --quality compare it
        cfg = A.TD3PlusBCConfig(
            actor_learning_rate=3e-4,
            critic_learning_rate=3e-4,
            tau=0.005,
            n_critics=2,
            target_smoothing_sigma=0.2,
            target_smoothing_clip=0.5,
            alpha=2.5,
            update_actor_interval=2,
            actor_encoder_factory=enc,
            critic_encoder_factory=enc,
            gamma=gamma,
            **common,
            **extra,
        )
    elif algo == "bc":
        cfg = A.BCConfig(learning_rate=1e-3, policy_type="deterministic", encoder_factory=enc, **common, **extra)
    else:
        raise ValueError(
            f"bench_train: no d3rlpy counterpart for algorithm {algo!r} (one of {sorted([*TARGETS, 'td3bc'])})"
        )
    return cfg


class _Clock(L.Callback):
    """Wall time between the end of update ``start`` and the end of update ``stop``."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop, self.t0, self.t1 = start, stop, None, None

    def updates_to_boundary(self, trainer, pl_module) -> int | None:
        """Steps of several updates (trainer.updates_per_step) end on the two marks."""
        return updates_to_next(pl_module.update_count, (self.start, self.stop))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = pl_module.update_count
        if n == self.start:
            self.t0 = time.perf_counter()
        elif n == self.stop:
            self.t1 = time.perf_counter()


@dataclass
class Timing:
    """Updates per second of one round: the full training loop and the bare update loop."""

    loop: float
    bare: float
    flops: float = float("nan")  # floating-point operations of one update (FlopCounterMode)


def quiet_fit():
    """Context: silence Lightning's and d3rlpy's banners during a timed fit."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def o2o_train(cfg, store_path: str, run_dir: Path, steps: int, warmup: int, bare_steps: int):
    """Build the module as ``o2o pretrain`` does, fit ``warmup + steps`` updates in a Trainer, time the window;
    then time ``bare_steps`` bare ``module.update`` calls. Returns (Timing, module)."""
    with EpisodeStore.open(store_path, mode="r") as store:
        module, replay = build_module(cfg, store, select_episodes(store, cfg.data))
    clock = _Clock(warmup, warmup + steps)
    with quiet_fit():
        spec = TrainerSpec.from_config(cfg.trainer, log_every=int(cfg.algo.get("log_every", 50)))
        trainer = make_trainer(spec, run_dir, [UpdateRate(every=int(cfg.algo.get("log_every", 50))), clock])
        compile_if_asked(spec, trainer, module)  # as o2o pretrain does; compiling happens in the untimed warm-up
        trainer.fit(module, train_dataloaders=step_loader())
    loop = steps / (clock.t1 - clock.t0)
    bare = float("nan")
    if bare_steps:
        batches = [replay.sample(BATCH) for _ in range(64)]
        # What the Trainer's precision plugin does around training_step, for a like-for-like bare loop.
        bf16 = str(cfg.trainer.precision).startswith("bf16")
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            for i in range(max(2, bare_steps // 10)):  # warm-up
                module.update(batches[i % 64])
            t0 = time.perf_counter()
            for i in range(bare_steps):
                module.update(batches[i % 64])
            bare = bare_steps / (time.perf_counter() - t0)
    return Timing(loop, bare), module


def d3rlpy_train(d3rlpy, cfg, ds, log_dir: Path, steps: int, warmup: int, bare_steps: int, seed: int = 0):
    """d3rlpy's own ``fit`` for ``warmup + steps`` updates, timed by its step callback; then the bare
    ``algo.update`` loop. Returns (Timing, algo)."""
    d3rlpy.seed(seed)
    algo = cfg.create(device=False)
    t: dict[int, float] = {}

    def clock(_algo, _epoch, step):
        if step in (warmup, warmup + steps):
            t[step] = time.perf_counter()

    n = warmup + steps
    with quiet_fit():
        algo.fit(
            ds,
            n_steps=n,
            n_steps_per_epoch=n,
            show_progress=False,
            save_interval=1,
            callback=clock,
            logger_adapter=d3rlpy.logging.FileAdapterFactory(root_dir=str(log_dir)),
            with_timestamp=True,
        )
    loop = steps / (t[warmup + steps] - t[warmup])
    bare = float("nan")
    if bare_steps:
        batches = [ds.sample_transition_batch(BATCH) for _ in range(64)]
        for i in range(max(2, bare_steps // 10)):
            algo.update(batches[i % 64])
        t0 = time.perf_counter()
        for i in range(bare_steps):
            algo.update(batches[i % 64])
        bare = bare_steps / (time.perf_counter() - t0)
    return Timing(loop, bare), algo


# ---------------------------------------------------------------------------- throughput
# What is measured, each in its own fresh process (the allocator setting is process-wide):
# name -> (library, o2o trainer.precision, CPU allocator).
VARIANTS = {
    "o2o fp32": ("o2o", "32-true", "tuned"),
    "o2o bf16": ("o2o", "bf16-mixed", "tuned"),
    "o2o bf16+compile": ("o2o", "bf16-mixed", "tuned", True),  # trainer.compile=true: torch.compile'd MLPs
    "o2o fp32+compile": ("o2o", "32-true", "tuned", True),
    "d3rlpy": ("d3rlpy", None, "default"),
    "d3rlpy +alloc": ("d3rlpy", None, "tuned"),  # d3rlpy given o2o's allocator setting, for transparency
}
PEER = "d3rlpy"  # the ratio's denominator: d3rlpy as its users run it


def worker(args) -> int:
    """One measurement in this (fresh) process: print its Timing as JSON on the last line."""
    lib, precision, allocator, *rest = VARIANTS[args.worker]
    compiled = bool(rest and rest[0])
    torch.set_num_threads(args.threads)
    from o2o.policies.allocator import tune_cpu_allocator

    tune_cpu_allocator(allocator)
    algo, n, w = args.worker_algo, args.steps[args.worker_algo], args.warmup[args.worker_algo]
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if lib == "o2o":
        cfg = o2o_config(
            algo,
            args.store,
            args.workdir / "runs",
            w + n,
            precision,
            (f"trainer.cpu_allocator={allocator}", f"trainer.compile={str(compiled).lower()}"),
        )
        tm, module = o2o_train(cfg, args.store, args.workdir / "runs", n, w, n)
        tm.flops = update_flops(module.update, module.replay.sample(BATCH))  # after the timing: untimed
    else:
        d3rlpy = import_d3rlpy()
        ds, space, _ = d3rlpy_dataset(d3rlpy, args.store)
        tm, agent = d3rlpy_train(
            d3rlpy, d3rlpy_config(d3rlpy, algo, w + n, space), ds, args.workdir / "d3rlpy", n, w, n
        )
        tm.flops = update_flops(agent.update, ds.sample_transition_batch(BATCH))
    print(json.dumps(vars(tm)))
    return 0


def update_flops(update, batch) -> float:
    """Floating-point operations of one ``update(batch)``, forward and backward, as torch's
    ``FlopCounterMode`` counts them (matmuls and the like, 2 per multiply-add; elementwise ops
    are not counted). The same for every precision: it counts operations, not their width."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        update(batch)
    return float(counter.get_total_flops())


def matmul_peak(threads: int, rows: int, dtype: torch.dtype, width: int = 256, seconds: float = 1.0) -> float:
    """GFLOP/s of this CPU on a 256-wide layer's matmuls over ``rows`` rows, forward and both
    backward products (y = x W, dx = dy W^T, dW = x^T dy), in ``dtype``: the ceiling an update
    made of such layers can reach."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x, w, dy = (torch.randn(*s, generator=g).to(dtype) for s in ((rows, width), (width, width), (rows, width)))

    def once():
        x @ w, dy @ w.T, x.T @ dy

    for _ in range(5):
        once()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        once()
        n += 1
    return 6 * rows * width * width * n / (time.perf_counter() - t0) / 1e9


def run_worker(args, variant: str, algo: str, threads: int, store_path: str, work: Path) -> Timing:
    import subprocess

    cmd = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        "--worker-algo",
        algo,
        "--threads",
        str(threads),
        "--store",
        store_path,
        "--workdir",
        str(work),
        "--steps",
        ",".join(f"{k}={v}" for k, v in args.steps.items()),
        "--warmup",
        ",".join(f"{k}={v}" for k, v in args.warmup.items()),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{variant} {algo} failed:\n{p.stderr[-3000:]}")
    return Timing(**json.loads(p.stdout.strip().splitlines()[-1]))


def bench_throughput(args, d3rlpy, work: Path, store_path: str) -> dict:
    with EpisodeStore.open(store_path, mode="r") as store:
        n_tr = store.num_steps
    out: dict = {"transitions": n_tr, "variants": {k: list(map(str, v)) for k, v in VARIANTS.items()}, "settings": {}}
    for threads in args.threads_list:
        runs = {a: {v: [] for v in args.variants} for a in args.algos}
        print(f"threads: {threads}", flush=True)
        for r in range(args.rounds):
            for algo in args.algos:
                k = r % len(args.variants)  # rotate the order each round: drift hits every variant alike
                order = args.variants[k:] + args.variants[:k]
                for v in order:
                    runs[algo][v].append(run_worker(args, v, algo, threads, store_path, work / f"{algo}-{r}"))
                    shutil.rmtree(work / f"{algo}-{r}", ignore_errors=True)
                print(
                    f"  round {r + 1}/{args.rounds} {algo}: "
                    + ", ".join(
                        f"{v} {runs[algo][v][-1].loop:.1f} up/s (bare {runs[algo][v][-1].bare:.1f})"
                        for v in args.variants
                    ),
                    flush=True,
                )
        res = {}
        for algo in args.algos:
            rr = runs[algo]
            med = {v: statistics.median(t.loop for t in rr[v]) for v in args.variants}
            bare = {v: statistics.median(t.bare for t in rr[v]) for v in args.variants}
            # Ratio per round (paired: same moment of the machine), then the median of the ratios.
            ratio = {
                v: statistics.median(a.loop / b.loop for a, b in zip(rr[v], rr[PEER]))
                for v in args.variants
                if PEER in rr
            }
            o2o = [v for v in args.variants if VARIANTS[v][0] == "o2o"]
            best = max(o2o, key=lambda v: ratio.get(v, 0.0)) if o2o and ratio else None
            flops = {v: statistics.median(t.flops for t in rr[v]) for v in args.variants}
            res[algo] = {
                "steps": args.steps[algo],
                "warmup": args.warmup[algo],
                "updates_per_s": med,
                "gflop_per_update": {v: f / 1e9 for v, f in flops.items()},
                "bare_updates_per_s": bare,
                "ratio_vs_" + PEER: ratio,
                "rounds": {v: [vars(t) for t in rr[v]] for v in args.variants},
                "target": TARGETS[algo],
                "best_o2o": best,
                "passed": bool(best and ratio[best] >= TARGETS[algo]),
            }
        # The CPU's matmul ceiling, measured right after (same process, same thread count).
        peak = {
            f"{name} {rows} rows": matmul_peak(threads, rows, dtype)
            for name, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16))
            for rows in (BATCH, 8192)
        }
        out["settings"][str(threads)] = {"threads": threads, "algos": res, "matmul_gflops": peak}
    return out


def roofline_rows(res: dict, variants: list[str]) -> tuple[list[list[str]], list[str]]:
    """Each variant's GFLOP/s (its FLOPs per update x its updates/s) against the CPU's float32
    matmul peak, and the most o2o float32 could reach over d3rlpy if it ran at that peak."""
    rows = []
    for s in res["settings"].values():
        peak = s.get("matmul_gflops")
        if not peak:
            continue
        p32 = max(v for k, v in peak.items() if k.startswith("float32"))
        for algo, r in s["algos"].items():
            gf = r.get("gflop_per_update", {})
            if PEER not in gf or gf[PEER] != gf[PEER]:  # nan: an old result without FLOP counts
                continue
            ups = r["updates_per_s"]
            mine = next((gf[v] for v in variants if VARIANTS[v][0] == "o2o"), float("nan"))
            rows.append(
                [
                    f"{algo.upper()}, {s['threads']} thr",
                    f"{mine:.3f} / {gf[PEER]:.3f}",
                    *(f"{gf[v] * ups[v]:.0f}" for v in variants),
                    f"{p32:.0f}",
                    f"x{p32 / mine / ups[PEER]:.2f}",
                    f"x{r['target']:.1f}",
                ]
            )
    header = [
        "measure",
        "GFLOP/update o2o / d3rlpy",
        *(f"{v} GFLOP/s" for v in variants),
        "fp32 matmul peak GFLOP/s",
        "fp32 ceiling / d3rlpy",
        "target",
    ]
    return rows, header


def throughput_rows(res: dict, variants: list[str]) -> tuple[list[list[str]], list[str]]:
    rows = []
    o2o = [v for v in variants if VARIANTS[v][0] == "o2o"]
    for label, s in res["settings"].items():
        for algo, r in s["algos"].items():
            ratio = r["ratio_vs_" + PEER]
            rows.append(
                [
                    f"{algo.upper()}, {s['threads']} thr",
                    *(f"{r['updates_per_s'][v]:.1f}" for v in variants),
                    *(f"x{ratio[v]:.2f}" if v in ratio else "-" for v in o2o),
                    f">= x{r['target']:.1f}",
                    verdict(r["passed"]),
                ]
            )
    header = ["measure", *(f"{v} up/s" for v in variants), *(f"{v} / {PEER}" for v in o2o), "target", "pass"]
    return rows, header


# ---------------------------------------------------------------------------- quality
ROOM = [
    "env=pointmaze",
    "env.id=Open",
    "env.max_episode_steps=60",
    "env.kwargs.start_cells=[[3,1]]",
    "env.kwargs.goal_cells=[[1,3]]",
]
# Quality tasks: the env overrides, the data, the discount and per-algorithm settings (the same
# values given to both libraries).
# room: the random-heavy room of tests/policies/test_learning.py: gamma 0.95; CQL with the light
# regulariser and SAC rates that test uses.
# reacher: Gymnasium Reacher-v5, 20 scripted + 60 random episodes (random-heavy), every
# algorithm at its defaults (gamma 0.99). reacher-large: the same mix, four times the episodes.
QUALITY_TASKS = {
    "room": {
        "env": ROOM,
        "data": [("scripted", 10), ("random", 40)],
        "gamma": 0.95,
        "algos": {
            "iql": {"o2o": [], "d3rlpy": {}},
            "cql": {
                "o2o": ["algo.cql_alpha=1.0", "algo.actor_lr=3e-4", "algo.alpha_lr=3e-4"],
                "d3rlpy": {"conservative_weight": 1.0, "actor_learning_rate": 3e-4, "temp_learning_rate": 3e-4},
            },
            "td3bc": {"o2o": [], "d3rlpy": {}},
        },
    },
    "reacher": {
        "env": ["env=reacher"],
        "data": [("scripted", 20), ("random", 60)],
        "gamma": 0.99,
        "algos": {
            "iql": {"o2o": [], "d3rlpy": {}},
            "cql": {"o2o": [], "d3rlpy": {}},
            "td3bc": {"o2o": [], "d3rlpy": {}},
        },
    },
    "reacher-large": {
        "env": ["env=reacher"],
        "data": [("scripted", 80), ("random", 240)],
        "gamma": 0.99,
        "algos": {"iql": {"o2o": [], "d3rlpy": {}}, "cql": {"o2o": [], "d3rlpy": {}}},
    },
}


def bench_quality(args, d3rlpy, work: Path) -> dict:
    from o2o.policies.evaluation import Evaluator

    task = QUALITY_TASKS[args.quality_task]
    path = make_dataset(work / f"{args.quality_task}.zarr", task["env"], task["data"])
    with EpisodeStore.open(path, mode="r") as store:
        data_mean = float(store.episodes_table()["returns"].mean())
    ds, space, n_tr = d3rlpy_dataset(d3rlpy, path)
    hidden = ",".join(str(h) for h in args.quality_hidden)
    out: dict = {
        "task": args.quality_task,
        "dataset": {
            "transitions": n_tr,
            "return_mean": data_mean,
            "episodes": " + ".join(f"{n} {b}" for b, n in task["data"]),
        },
        "updates": args.quality_steps,
        "hidden": args.quality_hidden,
        "seeds": args.seeds,
        "first_seed": args.first_seed,
        "eval_episodes": args.eval_episodes,
        "algos": {},
    }
    for algo in args.quality_algos:
        q = task["algos"][algo]
        rows: dict[str, list[float]] = {"o2o": [], "d3rlpy": []}
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            cfg = load_config(
                "pretrain",
                [
                    *task["env"],
                    f"algo={algo}",
                    f"algo.gamma={task['gamma']}",
                    *q["o2o"],
                    f"algo.hidden=[{hidden}]",
                    f"dataset.path={path}",
                    f"trainer.max_steps={args.quality_steps}",
                    f"trainer.seed={seed}",
                    "eval.enabled=false",
                    "trainer.progress=false",
                    f"trainer.precision={args.precision}",
                    "trainer.accelerator=cpu",
                    f"run_dir={work / f'q-{algo}-{seed}'}",
                ],
            )
            env = OmegaConf.to_container(cfg.env, resolve=True)
            for lib in ["o2o", "d3rlpy"] if seed % 2 == 0 else ["d3rlpy", "o2o"]:
                if lib == "o2o":
                    L.seed_everything(seed, verbose=False)
                    _, module = o2o_train(cfg, path, work / f"q-{algo}-{seed}", args.quality_steps - 1, 1, 0)
                    module.eval()
                    policy = lambda obs, m=module: m.act(obs, deterministic=True)  # noqa: E731
                else:
                    dcfg = d3rlpy_config(
                        d3rlpy,
                        algo,
                        args.quality_steps,
                        space,
                        gamma=task["gamma"],
                        hidden=args.quality_hidden,
                        extra=q["d3rlpy"],
                    )
                    _, agent = d3rlpy_train(d3rlpy, dcfg, ds, work / "d3rlpy", args.quality_steps - 1, 1, 0, seed)
                    policy = lambda obs, a=agent: a.predict(np.asarray(obs, np.float32))  # noqa: E731
                ev = Evaluator(env, episodes=args.eval_episodes, num_envs=1, seed=10_000, gamma=task["gamma"])
                try:
                    ret = float(ev(policy).summary()["return_mean"])
                finally:
                    ev.close()
                rows[lib].append(ret)
                print(f"  {algo} seed {seed} {lib}: return {ret:.1f}", flush=True)
        out["algos"][algo] = compare_returns(rows["o2o"], rows["d3rlpy"])
    return out


def compare_returns(o2o: list[float], d3: list[float]) -> dict:
    """Mean returns, their difference and its noise; ``passed`` is the target as written (o2o >= d3rlpy).

    ``se`` is the standard error of the difference of the means (Welch: each library's
    per-seed sample variance over its seed count). ``verdict``: PASS when o2o's mean is not
    below d3rlpy's; TIE when it is below by at most 2 SE (the seeds cannot tell them apart);
    FAIL when below by more.
    """
    o, d = np.asarray(o2o, float), np.asarray(d3, float)
    var = lambda x: float(x.var(ddof=1)) / len(x) if len(x) > 1 else float("nan")  # noqa: E731
    diff, se = float(o.mean() - d.mean()), float(np.sqrt(var(o) + var(d)))
    call = "PASS" if diff >= 0 else "TIE" if (np.isfinite(se) and -diff <= 2 * se) else "FAIL"
    return {
        "o2o": o.tolist(),
        "d3rlpy": d.tolist(),
        "o2o_mean": float(o.mean()),
        "d3rlpy_mean": float(d.mean()),
        "diff": diff,
        "se": se,
        "verdict": call,
        "passed": diff >= 0,
    }


def print_quality(ql: dict, what: str) -> list[list[str]]:
    rows = quality_rows(ql)
    print_table(
        f"policy quality: mean return over {ql['seeds']} seeds x {ql['eval_episodes']} episodes, "
        f"{ql['updates']} updates, {ql['hidden']} nets, {what}, {ql['task']}: "
        f"{ql['dataset']['episodes']} episodes (data mean {ql['dataset']['return_mean']:.1f})",
        rows,
        ["measure", "o2o", "d3rlpy", "o2o - d3rlpy (+- 2 SE)", "target", "verdict", "per seed o2o | d3rlpy"],
    )
    print(
        "verdict: PASS o2o's mean >= d3rlpy's (the target); TIE below it by <= 2 standard errors of the "
        "difference (the seeds cannot separate them; not a pass); FAIL below by more"
    )
    return rows


def quality_rows(res: dict) -> list[list[str]]:
    rows = []
    for algo, r in res["algos"].items():
        rows.append(
            [
                algo.upper(),
                f"{r['o2o_mean']:.2f}",
                f"{r['d3rlpy_mean']:.2f}",
                f"{r['diff']:+.2f} +- {2 * r['se']:.2f}",
                ">= d3rlpy",
                r["verdict"],
                " ".join(f"{x:.1f}" for x in r["o2o"]) + "  |  " + " ".join(f"{x:.1f}" for x in r["d3rlpy"]),
            ]
        )
    return rows


def combine_quality(paths: list[Path]) -> dict:
    """Quality results of several runs of the same comparison (task, updates, nets, evaluation,
    precision) as one, seeds pooled; a seed found in two files is refused rather than counted twice."""
    same = ("task", "updates", "hidden", "eval_episodes")
    runs = []
    for p in paths:
        r = json.loads(Path(p).read_text())
        if "quality" not in r:
            raise SystemExit(f"bench_train --combine: {p} holds no quality result (kind: {r.get('bench')})")
        q, a = dict(r["quality"]), r["args"]  # results older than these fields keep them in the arguments
        q.setdefault("task", a.get("quality_task", "room"))
        q.setdefault("first_seed", int(a.get("first_seed", 0)))
        runs.append((p, q, a.get("precision", "32-true")))
    p0, q0, prec0 = runs[0]
    out = {k: q0[k] for k in (*same, "dataset")}
    out.update(first_seed=None, files=[str(p) for p in paths], algos={})
    pooled: dict[str, dict[str, list[float]]] = {}
    seen: dict[str, set[int]] = {}
    for p, q, prec in runs:
        diff = [k for k in same if q[k] != q0[k]] + (["precision"] if prec != prec0 else [])
        if diff:
            raise SystemExit(f"bench_train --combine: {p} differs from {p0} in {diff}: not the same comparison")
        seeds = list(range(q["first_seed"], q["first_seed"] + q["seeds"]))
        for algo, a in q["algos"].items():
            dup = seen.setdefault(algo, set()) & set(seeds)
            if dup:
                raise SystemExit(f"bench_train --combine: {p} repeats {algo} seeds {sorted(dup)}")
            seen[algo] |= set(seeds)
            rows = pooled.setdefault(algo, {"o2o": [], "d3rlpy": []})
            rows["o2o"] += a["o2o"]
            rows["d3rlpy"] += a["d3rlpy"]
    for algo, rows in pooled.items():
        out["algos"][algo] = {**compare_returns(rows["o2o"], rows["d3rlpy"]), "seeds": sorted(seen[algo])}
    out["seeds"] = max(len(v) for v in seen.values())
    return out


# ---------------------------------------------------------------------------- profile
def profile(args, d3rlpy, work: Path, store_path: str, algo: str) -> None:
    """Where an update's time goes: torch.profiler over bare updates of o2o and d3rlpy, and
    cProfile of o2o inside the Trainer (Lightning's share)."""
    import cProfile
    import pstats

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    ds, space, _ = d3rlpy_dataset(d3rlpy, store_path)
    n = max(10, args.steps[algo] // 3)
    cfg = o2o_config(algo, store_path, work / "prof", n + 5, args.precision)
    _, module = o2o_train(cfg, store_path, work / "prof", n, 5, 0)
    _, agent = d3rlpy_train(d3rlpy, d3rlpy_config(d3rlpy, algo, n + 5, space), ds, work / "d3rlpy", n, 5, 0)
    ob = [module.replay.sample(BATCH) for _ in range(8)]
    db = [ds.sample_transition_batch(BATCH) for _ in range(8)]
    bf16 = str(args.precision).startswith("bf16")  # what the Trainer's precision plugin does around an update
    for name, step in (
        ("o2o module.update", lambda i: module.update(ob[i % 8])),
        ("d3rlpy algo.update", lambda i: agent.update(db[i % 8])),
    ):
        with (
            tprofile(activities=[ProfilerActivity.CPU]) as prof,
            torch.autocast("cpu", torch.bfloat16, enabled=bf16 and name.startswith("o2o")),
        ):
            for i in range(n):
                step(i)
        print(f"\n== {name}: {algo}, {n} updates, {torch.get_num_threads()} threads (self CPU time)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    pr = cProfile.Profile()
    cfg.trainer.max_steps = n
    with EpisodeStore.open(store_path, mode="r") as store:
        module, _ = build_module(cfg, store, select_episodes(store, cfg.data))
    with quiet_fit():
        trainer = make_trainer(
            TrainerSpec.from_config(cfg.trainer, log_every=int(cfg.algo.get("log_every", 50))),
            work / "prof2",
            [UpdateRate(every=50)],
        )
        pr.enable()
        trainer.fit(module, train_dataloaders=step_loader())
        pr.disable()
    print(f"\n== o2o in the Trainer (cProfile, cumulative): {algo}, {n} updates")
    pstats.Stats(pr).sort_stats("cumulative").print_stats(25)


# ---------------------------------------------------------------------------- main
def machine_info() -> dict:
    import d3rlpy

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "lightning": L.__version__,
        "d3rlpy": d3rlpy.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "loadavg_start": os.getloadavg(),
    }


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--algos", type=lambda s: s.split(","), default=list(TARGETS), help="comma-separated")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument(
        "--steps",
        type=lambda s: dict(kv.split("=") for kv in s.split(",")),
        default={},
        help="timed updates per round, e.g. iql=300,cql=30 (defaults: %s)" % STEPS,
    )
    ap.add_argument("--episodes", type=int, default=20, help="HalfCheetah random episodes (1000 steps each)")
    ap.add_argument(
        "--threads",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="torch thread counts to measure, e.g. 2,1 (default: torch's default, the core count)",
    )
    ap.add_argument(
        "--variants",
        type=lambda s: s.split(","),
        default=list(VARIANTS),
        help="comma-separated subset of: %s" % ", ".join(VARIANTS),
    )
    ap.add_argument("--precision", default="32-true", help="o2o's trainer.precision for --profile and --quality")
    ap.add_argument(
        "--warmup",
        type=lambda s: dict(kv.split("=") for kv in s.split(",")),
        default={},
        help="untimed warm-up updates per run (defaults: %s)" % WARMUP,
    )
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one measurement
    ap.add_argument("--worker-algo", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--store", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--quality", action="store_true", help="policy quality vs d3rlpy instead of throughput")
    ap.add_argument("--quality-algos", type=lambda s: s.split(","), default=["iql", "cql"])
    ap.add_argument(
        "--quality-task",
        choices=sorted(QUALITY_TASKS),
        default="room",
        help="room: point-maze room, 10 scripted + 40 random; reacher: Reacher-v5, 20 scripted + 60 random; "
        "reacher-large: Reacher-v5, 80 scripted + 240 random",
    )
    ap.add_argument("--quality-steps", type=int, default=3000, help="updates per quality run (both libraries)")
    ap.add_argument(
        "--quality-hidden",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[64, 64],
        help="hidden sizes of every net in quality runs (64,64 as tests/policies/test_learning.py: "
        "CQL at 256x256 costs ~3 min per run on 2 cores)",
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="quality seeds first_seed .. first_seed + seeds - 1")
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--profile", default=None, help="profile one algorithm's update (o2o and d3rlpy) instead")
    ap.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="pool the seeds of earlier --quality results of one comparison and print its table",
    )
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--quick", action="store_true", help="smoke run (< 1 min)")
    args = ap.parse_args(argv)
    args.steps = {**STEPS, **{k: int(v) for k, v in args.steps.items()}}
    args.warmup = {**WARMUP, **{k: int(v) for k, v in args.warmup.items()}}
    if args.threads is None:
        args.threads = [torch.get_num_threads()]
    args.threads_list = args.threads
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    if args.worker:
        args.threads = args.threads[0]
        return args
    if args.quick:
        args.rounds, args.episodes = 1, 3
        args.steps = {"iql": 30, "cql": 4, "awac": 30, "bc": 200}
        args.warmup = {"iql": 5, "cql": 2, "awac": 5, "bc": 5}
        args.seeds, args.quality_steps, args.eval_episodes, args.quality_algos = 1, 50, 2, ["iql"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.combine:
        ql = combine_quality(args.combine)
        print_quality(ql, "pooled from " + ", ".join(p.name for p in args.combine))
        return 0 if all(a["passed"] for a in ql["algos"].values()) else 1
    d3rlpy = import_d3rlpy()
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="scratch-train-", dir=RESULTS))
    work.mkdir(parents=True, exist_ok=True)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    res: dict[str, Any] = {
        "bench": "train",
        "machine": machine_info(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    t_start = time.perf_counter()
    kind = "quality" if args.quality else "profile" if args.profile else "throughput"
    try:
        if kind != "quality":
            store_path = make_dataset(work / "halfcheetah.zarr", ["env=halfcheetah"], [("random", args.episodes)])
        if kind == "profile":
            profile(args, d3rlpy, work, store_path, args.profile)
            return 0
        if kind == "throughput":
            res["throughput"] = tp = bench_throughput(args, d3rlpy, work, store_path)
            rows, header = throughput_rows(tp, args.variants)
            print_table(
                f"updates/s in the training loop (o2o: Lightning Trainer as `o2o pretrain`; d3rlpy: fit), "
                f"HalfCheetah random {tp['transitions']:,} transitions, 256x256, batch {BATCH}, median of "
                f"{args.rounds} ({res['machine']['date']}, {res['machine']['cpus']} cpus"
                f"{', quick' if args.quick else ''}); pass: o2o's faster precision vs plain d3rlpy",
                rows,
                header,
            )
            rl, rh = roofline_rows(tp, args.variants)
            if rl:
                peaks = ", ".join(
                    f"{k} {v:.0f}" for k, v in next(iter(tp["settings"].values()))["matmul_gflops"].items()
                )
                print_table(
                    "compute: GFLOP per update (torch FlopCounterMode: matmuls, forward + backward) x "
                    "updates/s, against this CPU's float32 matmul peak (256-wide layer, forward + backward); "
                    "'fp32 ceiling / d3rlpy': the ratio o2o would reach if its float32 update ran entirely at "
                    f"that peak (matmul GFLOP/s: {peaks})",
                    rl,
                    rh,
                )
        else:
            res["quality"] = ql = bench_quality(args, d3rlpy, work)
            rows = print_quality(ql, f"o2o {args.precision}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    res["machine"]["loadavg_end"] = os.getloadavg()
    res["wall_s"] = time.perf_counter() - t_start
    res["table"] = rows
    res["passed"] = all((r[5] == "PASS") if kind == "quality" else (r[-1] != "FAIL") for r in rows)
    name = (
        f"bench_train{'-' + kind if kind != 'throughput' else ''}{'-quick' if args.quick else ''}-"
        f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    (RESULTS / name).write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {RESULTS / name} ({res['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
