"""Benchmark of the controller-side runtime: per-action latency and closed-loop success.

Builds real exports the way a user would (``o2o collect`` scripted episodes, ``o2o
pretrain``, ``o2o export`` with its closed-loop check) and measures:

* **latency per action** of the default-size policy (a 256x256 MLP actor on robosuite
  Lift's 42-d observation and 7-d action) for one observation at a time, as a controller
  calls it, interleaved in rounds so drift on a shared machine hits every variant alike:

  - ``PolicyRuntime.step`` — the runtime with every guard (input checks, NaN check,
    watchdog timing, clamp, rate limit);
  - raw onnxruntime ``session.run`` on the same ``policy.onnx`` (1 thread, like the runtime);
  - torch eager (the trained ``DeterministicPolicy`` under ``no_grad``, 1 thread);
  - TorchScript (``policy.pt``, 1 thread);
  - the action server (``o2o serve`` in its own process; REQ/REP round trip over
    localhost, the client packing and unpacking the wire format);

* **closed-loop success** of the export driven through the runtime and ``ControlLoop``
  in simulation, next to the trained torch policy on the same episodes (same seeds):
  on Lift (behaviour cloning of the scripted controller) and on the point maze.

    python bench/bench_runtime.py            # Lift: 20 scripted episodes, BC 5000 updates, 20 closed-loop episodes
    python bench/bench_runtime.py --quick    # smoke run, ~1-2 min

Results: a table on stdout and ``bench/results/bench_runtime-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from o2o.deploy.runtime import PolicyRuntime
from o2o.pipeline.config import load_config
from o2o.pipeline.stages.collect import collect
from o2o.pipeline.stages.export import export
from o2o.pipeline.stages.pretrain import pretrain
from o2o.policies.algos.base import load_algorithm

RESULTS = Path(__file__).resolve().parent / "results"


def build(root: Path, env: str, episodes: int, algo: str, updates: int, closed_loop: int, hidden: str) -> dict:
    """collect -> pretrain -> export (with its closed-loop check); returns what was built and how long it took."""
    t0 = time.perf_counter()
    data = root / f"{env}.zarr"
    collect(
        load_config(
            "collect",
            [
                f"env={env}",
                "behavior=scripted",
                f"collect.episodes={episodes}",
                f"dataset.path={data}",
                "collect.progress=false",
            ],
        )
    )
    t1 = time.perf_counter()
    run = pretrain(
        load_config(
            "pretrain",
            [
                f"env={env}",
                f"algo={algo}",
                f"dataset.path={data}",
                f"run_dir={root / (env + '-' + algo)}",
                f"algo.hidden={hidden}",
                f"trainer.max_steps={updates}",
                "eval.enabled=false",
                "ope.select=false",
                "trainer.progress=false",
            ],
        )
    )
    t2 = time.perf_counter()
    res = export(
        load_config(
            "export",
            [
                f"ckpt={run.last_checkpoint}",
                f"out={root / (env + '-export')}",
                f"closed_loop.episodes={closed_loop}",
                "closed_loop.max_success_drop=null",
            ],
        )
    )
    t3 = time.perf_counter()
    return {
        "env": env,
        "algo": algo,
        "hidden": hidden,
        "episodes": episodes,
        "updates": updates,
        "export": res,
        "seconds": {"collect": t1 - t0, "pretrain": t2 - t1, "export": t3 - t2},
    }


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    a = np.asarray(samples_ns, np.float64) / 1e3
    return {
        "median_us": float(np.median(a)),
        "p99_us": float(np.percentile(a, 99)),
        "mean_us": float(a.mean()),
        "max_us": float(a.max()),
        "calls": int(len(a)),
    }


def latency(export_dir: str, checkpoint: str, obs: np.ndarray, rounds: int, calls: int) -> dict[str, dict]:
    """Per-call latency of each variant on single observations, ``rounds`` interleaved rounds of ``calls``."""
    import onnxruntime as ort

    torch.set_num_threads(1)
    runtime = PolicyRuntime(export_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(Path(export_dir) / "policy.onnx"), options, providers=["CPUExecutionProvider"])
    eager = load_algorithm(checkpoint).policy()
    scripted = torch.jit.load(str(Path(export_dir) / "policy.pt"))
    batches = [np.ascontiguousarray(o[None]) for o in obs]
    tensors = [torch.from_numpy(b) for b in batches]

    def run_runtime(i: int) -> None:
        runtime.step(obs[i])

    def run_ort(i: int) -> None:
        session.run(["action"], {"obs": batches[i]})

    def run_eager(i: int) -> None:
        with torch.no_grad():
            eager(tensors[i])

    def run_ts(i: int) -> None:
        with torch.no_grad():
            scripted(tensors[i])

    variants = {
        "runtime (PolicyRuntime.step, all guards)": run_runtime,
        "onnxruntime session.run (raw)": run_ort,
        "torch eager": run_eager,
        "TorchScript": run_ts,
    }
    samples: dict[str, list[int]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order each round
            fn, out = variants[name], samples[name]
            for i in range(50):  # warm-up
                fn(i % len(obs))
            for i in range(calls):
                k = i % len(obs)
                t = time.perf_counter_ns()
                fn(k)
                out.append(time.perf_counter_ns() - t)
    result = {k: _percentiles(v) for k, v in samples.items()}
    result["runtime (PolicyRuntime.step, all guards)"]["guards"] = {k: v for k, v in runtime.counts.items() if v}
    return result


def server_latency(export_dir: str, obs: np.ndarray, calls: int) -> dict:
    """Round trip of ``act`` requests to ``o2o serve`` (own process) from this process, over localhost."""
    import zmq

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "o2o.pipeline.cli", "serve", f"export_dir={export_dir}", "port=0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        if not line.startswith("serving"):
            raise RuntimeError(f"o2o serve did not start: {line!r} {proc.stderr.read()}")
        endpoint = line.split(" on ")[1].split(",")[0]
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.setsockopt(zmq.RCVTIMEO, 5000)
        sock.connect(endpoint)
        fmt_in, fmt_out = f"<{obs.shape[1]}f", "<I7f"
        samples = []
        for i in range(calls + 100):
            t = time.perf_counter_ns()
            sock.send_multipart([b"act", struct.pack(fmt_in, *obs[i % len(obs)].tolist())])
            _, body = sock.recv_multipart()
            struct.unpack(fmt_out, body)
            if i >= 100:  # warm-up
                samples.append(time.perf_counter_ns() - t)
        sock.close(0)
        return _percentiles(samples)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def closed_loop_row(built: dict) -> dict:
    cl = built["export"].closed_loop
    return {
        "env": built["env"],
        "algo": built["algo"],
        "episodes": cl["episodes"],
        "runtime_success": cl["runtime"]["success_rate"],
        "trained_success": cl["trained"]["success_rate"],
        "runtime_return": cl["runtime"]["return_mean"],
        "trained_return": cl["trained"]["return_mean"],
        "noise": cl["success_noise"],
        "guards": cl["guards"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small data, few updates and episodes")
    p.add_argument("--lift-episodes", type=int, default=20, help="scripted Lift episodes to train on")
    p.add_argument("--lift-updates", type=int, default=5000)
    p.add_argument("--algo", default="bc", help="algorithm for both tasks (the actor is a 256x256 MLP either way)")
    p.add_argument("--closed-loop-episodes", type=int, default=20)
    p.add_argument("--maze-episodes", type=int, default=20)
    p.add_argument("--maze-updates", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=2000, help="timed calls per variant per round")
    p.add_argument("--no-server", action="store_true", help="skip the action server round trip")
    a = p.parse_args(argv)
    if a.quick:
        a.lift_episodes, a.lift_updates, a.closed_loop_episodes = 2, 200, 3
        a.maze_episodes, a.maze_updates, a.rounds, a.calls = 10, 400, 2, 500
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_runtime-") as tmp:
        root = Path(tmp)
        lift = build(root, "lift", a.lift_episodes, a.algo, a.lift_updates, a.closed_loop_episodes, "[256,256]")
        maze = build(root, "pointmaze", a.maze_episodes, a.algo, a.maze_updates, a.closed_loop_episodes, "[256,256]")
        ex = lift["export"]
        with np.load(Path(ex.out_dir) / "reference.npz") as d:
            obs = np.asarray(d["observations"], np.float32)
        lat = latency(ex.out_dir, ex.checkpoint, obs, a.rounds, a.calls)
        if not a.no_server:
            lat["action server round trip (o2o serve, ZeroMQ localhost)"] = server_latency(
                ex.out_dir, obs, a.rounds * a.calls
            )
        rows = [closed_loop_row(lift), closed_loop_row(maze)]

    print(
        f"\nper-action latency, Lift policy {obs.shape[1]}-256-256-7 ({a.algo}), 1 observation per call, 1 thread, "
        f"{a.rounds} rounds x {a.calls} calls"
    )
    print(f"{'variant':58s} {'median us':>10s} {'p99 us':>10s} {'mean us':>10s}")
    for name, s in lat.items():
        print(f"{name:58s} {s['median_us']:10.1f} {s['p99_us']:10.1f} {s['mean_us']:10.1f}")
    print(f"\nclosed loop in simulation, same seeds ({a.closed_loop_episodes} episodes)")
    print(
        f"{'task':12s} {'algo':6s} {'runtime success':>16s} {'trained success':>16s} {'noise':>7s} "
        f"{'runtime return':>15s} {'trained return':>15s}  guards"
    )
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        print(
            f"{r['env']:12s} {r['algo']:6s} {fmt(r['runtime_success']):>16s} {fmt(r['trained_success']):>16s} "
            f"{r['noise']:7.2f} {r['runtime_return']:15.2f} {r['trained_return']:15.2f}  {r['guards'] or 'none'}"
        )
    for b in (lift, maze):
        s = b["seconds"]
        print(
            f"built {b['env']}: collect {s['collect']:.0f} s, pretrain {b['updates']} updates {s['pretrain']:.0f} s, "
            f"export + closed loop {s['export']:.0f} s; parity {b['export'].parity}"
        )

    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"bench_runtime{'-quick' if a.quick else ''}-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "args": vars(a),
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "torch": torch.__version__,
                },
                "latency": lat,
                "closed_loop": rows,
                "builds": [
                    {k: v for k, v in b.items() if k != "export"} | {"parity": b["export"].parity} for b in (lift, maze)
                ],
                "runtime_over_raw_onnxruntime_median": lat["runtime (PolicyRuntime.step, all guards)"]["median_us"]
                / lat["onnxruntime session.run (raw)"]["median_us"],
            },
            indent=2,
            default=str,
        )
    )
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
