"""Training throughput on a GPU (or here, the CPU), side by side in one run: o2o, d3rlpy, a plain loop.

One command measures, on the same data (20 HalfCheetah random episodes, 20,000 transitions,
``o2o collect``), batch 256, 256x256 networks, the hyperparameters of ``bench/bench_train.py``:

* **o2o** as ``o2o pretrain`` runs it (its Lightning ``Trainer``, TB and CSV loggers, eval off):
  ``fp32`` / ``bf16`` = Lightning's optimiser steps, one update per Lightning step (the loop before
  issue 19: ``trainer.fast_path=false trainer.updates_per_step=1``); ``fp32 fast`` / ``bf16 fast`` =
  the fast path (``trainer.fast_path=auto``, ``trainer.updates_per_step=--k``); ``graphs`` = the fast
  path with each update replayed from one captured CUDA graph (``trainer.cuda_graphs=true``; CUDA
  only; TD3+BC and COMBO are refused there, not measured here); ``seeds=8`` is
  listed and reported as not there yet (``trainer.seeds`` is not implemented);
* **d3rlpy 2.7** eager and with ``compile_graph=True`` (its torch.compile + CUDA graphs: CUDA only),
  its own ``fit`` as its users run it (skipped, and said, when d3rlpy is not installed);
* **plain PyTorch IQL** (``bench/plain_iql.py``): no framework, eager, and the whole update captured
  as one CUDA graph and replayed (CUDA only).

Each figure is the median updates/s over ``--windows`` timed windows of one run (the clock reads
after ``torch.cuda.synchronize()`` on CUDA); the ratios are against d3rlpy ``compile_graph`` where
it ran, else d3rlpy eager. On CUDA the issue's targets are checked: IQL >= 3,000 updates/s, CQL >=
1,000, AWAC >= 3,000, BC >= 10,000, each >= 2x d3rlpy ``compile_graph``.

    python bench/bench_gpu.py                      # every algorithm and variant (~1 min on the 2-core CPU; not yet run on a GPU)
    python bench/bench_gpu.py --algos iql --k 32   # one algorithm, 32 updates per Lightning step
    python bench/bench_gpu.py --quick              # smoke run

Results: a table on stdout and ``bench/results/bench_gpu-<time>.json``; record a GPU run's table
in bench/README.md with its date and device.
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
from pathlib import Path

import lightning as L
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import print_table, verdict  # noqa: E402
from bench_train import BATCH, d3rlpy_config, d3rlpy_dataset, make_dataset, quiet_fit  # noqa: E402

from o2o.datasets import EpisodeStore  # noqa: E402
from o2o.pipeline.config import load_config  # noqa: E402
from o2o.policies.algos.base import updates_to_next  # noqa: E402
from o2o.policies.training import TrainerSpec, build_module, make_trainer, select_episodes, step_loader  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ALGOS = ("iql", "cql", "awac", "bc")
# The targets on one H100/H200-class GPU (updates/s), and the ratio to d3rlpy compile_graph.
TARGETS = {"iql": 3000.0, "cql": 1000.0, "awac": 3000.0, "bc": 10000.0}
TARGET_RATIO = 2.0
# Updates per timed window: (slow variants, fast variants), by device kind; the warm-up is untimed.
WINDOW = {"cuda": (200, 2000), "cpu": (60, 60)}
WARMUP = {"cuda": 50, "cpu": 10}

# name -> (library, settings)
VARIANTS: dict[str, tuple[str, dict]] = {
    "o2o fp32": ("o2o", {"precision": "32-true", "fast_path": "false", "k": 1}),
    "o2o fp32 fast": ("o2o", {"precision": "32-true", "fast_path": "auto", "k": None}),
    "o2o bf16": ("o2o", {"precision": "bf16-mixed", "fast_path": "false", "k": 1}),
    "o2o bf16 fast": ("o2o", {"precision": "bf16-mixed", "fast_path": "auto", "k": None}),
    "o2o fp32 graphs": ("o2o", {"precision": "32-true", "fast_path": "auto", "k": None, "cuda_graphs": True}),
    "o2o bf16 graphs": ("o2o", {"precision": "bf16-mixed", "fast_path": "auto", "k": None, "cuda_graphs": True}),
    "o2o fp32 fast seeds=8": ("o2o-seeds", {"seeds": 8}),
    "d3rlpy": ("d3rlpy", {"compile_graph": False}),
    "d3rlpy compile_graph": ("d3rlpy", {"compile_graph": True}),
    "plain IQL": ("plain", {"cuda_graph": False}),
    "plain IQL + CUDA graph": ("plain", {"cuda_graph": True}),
}


class Skipped(Exception):
    """A variant that cannot run here; the message says why (printed in the table)."""


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class WindowClock(L.Callback):
    """Wall time at updates ``start``, ``start + n``, ``start + 2n`` ... (the device synchronised first).
    A Lightning step of several updates ends at each mark (``updates_to_boundary``), so the marks fall
    on exactly those updates."""

    def __init__(self, start: int, n: int, windows: int, device: str):
        self.marks = [start + i * n for i in range(windows + 1)]
        self.times: dict[int, float] = {}
        self.device = device

    def updates_to_boundary(self, trainer, pl_module) -> int | None:
        return updates_to_next(pl_module.update_count, self.marks)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = pl_module.update_count
        if n in self.marks:
            sync(self.device)
            self.times[n] = time.perf_counter()

    def rates(self) -> list[float]:
        m = self.marks
        return [(m[i + 1] - m[i]) / (self.times[m[i + 1]] - self.times[m[i]]) for i in range(len(m) - 1)]


def o2o_rates(algo: str, store: str, run_dir: Path, device: str, settings: dict, n: int, warmup: int, windows: int):
    """``o2o pretrain``'s module and trainer on ``device``; the rates of ``windows`` windows of ``n`` updates."""
    k = settings["k"]
    cfg = load_config(
        "pretrain",
        [
            "env=halfcheetah",
            f"algo={algo}",
            f"dataset.path={store}",
            f"trainer.max_steps={warmup + n * windows}",
            f"trainer.precision={settings['precision']}",
            f"trainer.fast_path={settings['fast_path']}",
            f"trainer.updates_per_step={k}",
            f"trainer.cuda_graphs={str(bool(settings.get('cuda_graphs'))).lower()}",
            f"trainer.accelerator={'gpu' if device.startswith('cuda') else 'cpu'}",
            "eval.enabled=false",
            "ope.select=false",
            "trainer.progress=false",
            f"run_dir={run_dir}",
        ],
    )
    with EpisodeStore.open(store, mode="r") as s:
        module, _ = build_module(cfg, s, select_episodes(s, cfg.data))
    clock = WindowClock(warmup, n, windows, device)
    with quiet_fit():
        spec = TrainerSpec.from_config(cfg.trainer, log_every=int(cfg.algo.get("log_every", 50)))
        trainer = make_trainer(spec, run_dir, [clock])
        trainer.fit(module, train_dataloaders=step_loader())
    return clock.rates()


def d3rlpy_rates(d3rlpy, algo: str, store: str, work: Path, device: str, compile_graph: bool, n, warmup, windows):
    """d3rlpy's own ``fit`` on ``device``, timed at its step callback (the device synchronised first)."""
    if compile_graph and not device.startswith("cuda"):
        raise Skipped("compile_graph needs CUDA")
    ds, space, _ = d3rlpy_dataset(d3rlpy, store)
    total = warmup + n * windows
    cfg = d3rlpy_config(d3rlpy, algo, total, space, extra={"compile_graph": True} if compile_graph else None)
    d3rlpy.seed(0)
    agent = cfg.create(device="cuda:0" if device.startswith("cuda") else False)
    marks = {warmup + i * n for i in range(windows + 1)}
    t: dict[int, float] = {}

    def clock(_algo, _epoch, step):
        if step in marks:
            sync(device)
            t[step] = time.perf_counter()

    with quiet_fit():
        agent.fit(
            ds,
            n_steps=total,
            n_steps_per_epoch=total,
            show_progress=False,
            save_interval=total + 1,
            callback=clock,
            logger_adapter=d3rlpy.logging.FileAdapterFactory(root_dir=str(work)),
            with_timestamp=True,
        )
    m = sorted(marks)
    return [(m[i + 1] - m[i]) / (t[m[i + 1]] - t[m[i]]) for i in range(len(m) - 1)]


def plain_rates(store: str, device: str, cuda_graph: bool, n: int, warmup: int, windows: int):
    """The plain PyTorch IQL loop (``bench/plain_iql.py``) on the same transitions."""
    if cuda_graph and not device.startswith("cuda"):
        raise Skipped("CUDA graphs need CUDA")
    from plain_iql import measure

    with EpisodeStore.open(store, mode="r") as s:
        tr = s.load_transitions()
    arrays = dict(
        observations=np.asarray(tr.observations, np.float32),
        actions=np.asarray(tr.actions, np.float32),
        rewards=np.asarray(tr.rewards, np.float32),
        next_observations=np.asarray(tr.next_observations, np.float32),
        terminals=np.asarray(tr.terminals, np.float32),
    )
    return [
        float(
            measure(**arrays, device=device, steps=n, warmup=warmup if i == 0 else 0, cuda_graph=cuda_graph)[
                "updates_per_s"
            ]
        )
        for i in range(windows)
    ]


def import_d3rlpy():
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import d3rlpy
    except ImportError as e:
        return None, f"d3rlpy not installed ({e}): pip install -r bench/requirements-bench.txt"
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    return d3rlpy, None


def measure_variant(name, algo, store, work, device, args, d3rlpy, d3rlpy_missing) -> dict:
    lib, settings = VARIANTS[name]
    kind = "cuda" if device.startswith("cuda") else "cpu"
    slow_n, fast_n = WINDOW[kind]
    if args.quick:
        slow_n, fast_n = 20, 20
    warmup = 5 if args.quick else WARMUP[kind]
    t0 = time.perf_counter()
    try:
        if lib == "o2o":
            if settings.get("cuda_graphs") and kind != "cuda":
                raise Skipped("CUDA graphs need CUDA")
            fast = settings["fast_path"] != "false"
            rates = o2o_rates(
                algo,
                store,
                work / "runs",
                device,
                {**settings, "k": args.k if settings["k"] is None else settings["k"]},
                fast_n if fast else slow_n,
                warmup,
                args.windows,
            )
        elif lib == "o2o-seeds":
            raise Skipped("trainer.seeds (several seeds in one process) is not implemented yet")
        elif lib == "d3rlpy":
            if d3rlpy is None:
                raise Skipped(d3rlpy_missing)
            n = fast_n if settings["compile_graph"] else slow_n
            rates = d3rlpy_rates(
                d3rlpy, algo, store, work / "d3rlpy", device, settings["compile_graph"], n, warmup, args.windows
            )
        else:
            if algo != "iql":
                raise Skipped("the plain loop is IQL only")
            rates = plain_rates(store, device, settings["cuda_graph"], fast_n, warmup, args.windows)
    except Skipped as e:
        return {"skipped": str(e)}
    finally:
        shutil.rmtree(work / "runs", ignore_errors=True)
        shutil.rmtree(work / "d3rlpy", ignore_errors=True)
    return {"updates_per_s": statistics.median(rates), "windows": rates, "seconds": time.perf_counter() - t0}


def machine(device: str) -> dict:
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lightning": L.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    with contextlib.suppress(ImportError):
        import d3rlpy

        info["d3rlpy"] = d3rlpy.__version__
    return info


def rows_of(res: dict, algos, variants, device: str) -> list[list[str]]:
    rows = []
    cuda = device.startswith("cuda")
    for algo in algos:
        r = res[algo]
        peer_name = next(
            (p for p in ("d3rlpy compile_graph", "d3rlpy") if "updates_per_s" in r.get(p, {})),
            None,
        )
        peer = r[peer_name]["updates_per_s"] if peer_name else None
        for v in variants:
            m = r[v]
            if "skipped" in m:
                rows.append([algo, v, "-", "-", "-", m["skipped"]])
                continue
            rate = m["updates_per_s"]
            ratio = f"{rate / peer:.2f}x {peer_name}" if peer else "-"
            ok = None
            if cuda and v.startswith("o2o") and ("fast" in v or "graphs" in v):
                ok = rate >= TARGETS[algo] and (
                    r.get("d3rlpy compile_graph", {}).get("updates_per_s") is None
                    or rate >= TARGET_RATIO * r["d3rlpy compile_graph"]["updates_per_s"]
                )
            rows.append([algo, v, f"{rate:,.1f}", ratio, verdict(ok), f"{m['seconds']:.0f} s"])
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algos", type=lambda s: s.split(","), default=list(ALGOS))
    ap.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--k", type=int, default=16, help="trainer.updates_per_step of the fast variants")
    ap.add_argument("--windows", type=int, default=3, help="timed windows per variant (the median is reported)")
    ap.add_argument("--episodes", type=int, default=20, help="HalfCheetah random episodes (1000 steps each)")
    ap.add_argument("--store", default=None, help="reuse this dataset instead of collecting one")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny windows, one algorithm unless --algos")
    args = ap.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    bad = [a for a in args.algos if a not in ALGOS]
    if bad:
        ap.error(f"unknown algorithms {bad}; known: {list(ALGOS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    if args.quick and argv is not None and "--algos" not in argv:
        args.algos = ["iql"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    os.environ.setdefault("O2O_PROGRESS", "0")
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    work = Path(tempfile.mkdtemp(prefix="bench_gpu-"))
    d3rlpy, missing = import_d3rlpy()
    if missing:
        print(f"peer missing: {missing}", flush=True)
    try:
        store = args.store or make_dataset(
            work / "halfcheetah.zarr", ["env=halfcheetah"], [("random", int(args.episodes))]
        )
        res: dict = {}
        for algo in args.algos:
            res[algo] = {}
            for v in args.variants:
                res[algo][v] = measure_variant(v, algo, store, work, device, args, d3rlpy, missing)
                m = res[algo][v]
                shown = m.get("skipped") or f"{m['updates_per_s']:,.1f} updates/s"
                print(f"  {algo} {v}: {shown}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = machine(device)
    title = f"training updates/s, {info['device']}, torch {info['torch']}, batch {BATCH}, 256x256, k={args.k}"
    print_table(
        title,
        rows_of(res, args.algos, args.variants, device),
        ["algo", "variant", "updates/s", "ratio", "target", "time / why not"],
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench_gpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"machine": info, "k": args.k, "windows": args.windows, "results": res}, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
