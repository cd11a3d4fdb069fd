"""Benchmark of the episode store: bulk append, bulk load, batch sampling, commit latency.

Every figure is the median of ``--repeats`` runs and is printed next to a peer measured
in the same run on the same disk, so a slow, shared machine moves both together:

* append: ``EpisodeStore.append_many`` in batches of 1, 10, 100 episodes per commit
  (validation, digests, durable writes, atomic index) vs ``np.save`` of the same arrays
  (with and without ``fsync``) and vs plain zarr (``zarr.create_array(...)[:] = data``,
  same chunks and codec, no validation, no commit);
* load: ``load_transitions()`` (builds next_observations too) vs ``zarr.open_array[:]``
  of the same arrays and ``np.load`` of the ``.npy`` files;
* sampling: batches of 256 gathered from in-memory tensors (torch) and arrays (numpy),
  and, for information, straight from Zarr;
* commit latency of one short episode, for information.

    python bench/bench_store.py            # 1M transitions (~10 min on 2 cores)
    python bench/bench_store.py --quick    # CI smoke, < 30 s

Results: a table on stdout and ``bench/results/bench_store-<time>.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
import zarr

from o2o.datasets import Episode, EpisodeStore, Schema
from o2o.datasets.store import CHUNK_BYTES, MAX_STEP_CHUNK_ROWS, _chunk_rows, _compressor

RESULTS = Path(__file__).resolve().parent / "results"
PROVENANCE = {"source": "random", "policy_id": "bench", "policy_version": "1"}

# Targets from the project brief.
APPEND_TARGET = 200_000  # transitions/s
LOAD_TARGET_S = 5.0  # s for 1M low-dim transitions
SAMPLE_TARGET = 5_000  # batches/s


# ---------------------------------------------------------------------------- data
def make_data(n_steps: int, ep_len: int, obs_dim: int, act_dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """HalfCheetah-like arrays: float32 obs/actions/rewards, a timeout at each episode end."""
    rng = np.random.default_rng(seed)
    n_eps = n_steps // ep_len
    T = n_eps * ep_len
    timeouts = np.zeros(T, bool)
    timeouts[ep_len - 1 :: ep_len] = True
    return {
        "obs": rng.standard_normal((T, obs_dim), dtype=np.float32),
        "final_obs": rng.standard_normal((n_eps, obs_dim), dtype=np.float32),
        "actions": rng.uniform(-1, 1, (T, act_dim)).astype(np.float32),
        "rewards": rng.standard_normal(T, dtype=np.float32),
        "terminals": np.zeros(T, bool),
        "timeouts": timeouts,
        "interventions": np.zeros(T, bool),
        "ends": np.arange(1, n_eps + 1, dtype=np.int64) * ep_len,
    }


def episodes_of(data: dict[str, np.ndarray], ep_len: int) -> list[Episode]:
    """Episodes as views into ``data`` (no copies: the benchmark times the store, not this)."""
    eps = []
    for i in range(len(data["final_obs"])):
        s = slice(i * ep_len, (i + 1) * ep_len)
        eps.append(Episode(
            observations=data["obs"][s], actions=data["actions"][s], rewards=data["rewards"][s],
            terminals=data["terminals"][s], timeouts=data["timeouts"][s], final_observation=data["final_obs"][i],
            provenance=PROVENANCE, interventions=data["interventions"][s], seed=i, success=None,
        ))
    return eps


def schema_for(obs_dim: int, act_dim: int) -> Schema:
    obs = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    act = gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)
    return Schema.from_spaces(obs, act)


# ---------------------------------------------------------------------------- timing
def median_time(fn: Callable[[int], object], repeats: int, setup: Callable[[int], object] | None = None) -> list[float]:
    """Wall times of ``fn(r)`` for r in range(repeats); ``setup(r)`` runs untimed first."""
    times = []
    for r in range(repeats):
        if setup is not None:
            setup(r)
        t0 = time.perf_counter()
        fn(r)
        times.append(time.perf_counter() - t0)
    return times


def fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


# ---------------------------------------------------------------------------- writers
def write_o2o(path: Path, schema: Schema, episodes: list[Episode], batch: int) -> None:
    with EpisodeStore.create(path, schema) as store:
        for i in range(0, len(episodes), batch):
            store.append_many(episodes[i : i + batch])


def write_npy(path: Path, data: dict[str, np.ndarray], fsync: bool) -> None:
    path.mkdir(parents=True)
    for k, v in data.items():
        with open(path / f"{k}.npy", "wb") as f:
            np.save(f, v)
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def write_zarr(path: Path, data: dict[str, np.ndarray]) -> None:
    """Plain zarr with the store's chunking and codec: one array per key, one write each."""
    for k, v in data.items():
        row = int(np.prod(v.shape[1:])) * v.dtype.itemsize
        chunks = (_chunk_rows(row, CHUNK_BYTES, MAX_STEP_CHUNK_ROWS), *v.shape[1:])
        a = zarr.create_array(str(path), name=k, shape=v.shape, chunks=chunks, dtype=v.dtype,
                              compressors=_compressor(v.dtype), fill_value=0, config={"write_empty_chunks": True})
        a[:] = v


# ---------------------------------------------------------------------------- sections
def bench_append(args, work: Path, data, episodes, schema) -> dict:
    n = len(data["actions"])
    out: dict = {"transitions": n, "episodes": len(episodes), "by_batch": {}}
    for batch in args.batch_sizes:
        batch = min(batch, len(episodes))
        if str(batch) in out["by_batch"]:
            continue
        paths = [work / f"append-b{batch}-{r}.zarr" for r in range(args.repeats)]
        times = median_time(lambda r: write_o2o(paths[r], schema, episodes, batch), args.repeats)
        for p in paths[:-1]:
            shutil.rmtree(p)
        out["by_batch"][str(batch)] = {"seconds": times, "rate": n / statistics.median(times),
                                       "commits": -(-len(episodes) // batch)}
        out["store_path"] = str(paths[-1])  # the last (largest-batch) store is read back below
    peers = {
        "np.save": lambda r: write_npy(work / f"npy-{r}", data, fsync=False),
        "np.save+fsync": lambda r: write_npy(work / f"npyfs-{r}", data, fsync=True),
        "zarr": lambda r: write_zarr(work / f"zarr-{r}", data),
        "zarr+fsync": lambda r: (write_zarr(work / f"zarrfs-{r}", data), fsync_tree(work / f"zarrfs-{r}")),
    }
    out["peers"] = {}
    for name, fn in peers.items():
        times = median_time(fn, args.repeats)
        out["peers"][name] = {"seconds": times, "rate": n / statistics.median(times)}
    out["npy_dir"] = str(work / f"npy-{args.repeats - 1}")
    out["zarr_dir"] = str(work / f"zarr-{args.repeats - 1}")
    return out


def bench_load(args, store_path: str, npy_dir: str) -> tuple[dict, object]:
    store = EpisodeStore.open(store_path)
    tr = None

    def load(_):
        nonlocal tr
        tr = None  # free the previous copy first: measure a load, not an allocator under pressure
        tr = store.load_transitions()

    times = median_time(load, args.repeats)
    keys = ["data/obs/state", "data/actions", "data/rewards", "data/terminals", "data/timeouts"]
    zt = median_time(lambda _: [zarr.open_array(os.path.join(store_path, k), mode="r")[:] for k in keys],
                     args.repeats)
    npy_keys = ["obs", "actions", "rewards", "terminals", "timeouts"]
    nt = median_time(lambda _: [np.load(os.path.join(npy_dir, f"{k}.npy")) for k in npy_keys], args.repeats)
    n = len(tr)
    return {"transitions": n, "seconds": times, "zarr_seconds": zt, "npy_seconds": nt}, tr


def bench_sampling(args, tr, store_path: str) -> dict:
    n, B = len(tr), args.sample_batch
    tt = tr.to_torch("cpu")
    gen = torch.Generator().manual_seed(0)

    def torch_batches(iters):
        for _ in range(iters):
            idx = torch.randint(n, (B,), generator=gen)
            (tt.observations[idx], tt.actions[idx], tt.rewards[idx], tt.next_observations[idx], tt.terminals[idx])

    rng = np.random.default_rng(0)

    def numpy_batches(iters):
        for _ in range(iters):
            idx = rng.integers(0, n, B)
            (tr.observations[idx], tr.actions[idx], tr.rewards[idx], tr.next_observations[idx], tr.terminals[idx])

    zkeys = ["data/obs/state", "data/actions", "data/rewards", "data/terminals"]
    zarrs = [zarr.open_array(os.path.join(store_path, k), mode="r") for k in zkeys]
    obs_z = zarrs[0]

    def zarr_batches(iters):
        for _ in range(iters):
            idx = np.sort(rng.integers(0, n - 1, B))
            [a.oindex[idx] for a in zarrs]
            obs_z.oindex[idx + 1]  # next observations (the rare episode end is ignored here)

    out = {"batch": B}
    for name, fn, iters in (("torch", torch_batches, args.sample_iters), ("numpy", numpy_batches, args.sample_iters),
                            ("zarr", zarr_batches, args.zarr_iters)):
        fn(max(1, iters // 20))  # warm-up
        times = median_time(lambda _: fn(iters), args.repeats)
        out[name] = {"iters": iters, "seconds": times, "rate": iters / statistics.median(times)}
    return out


def bench_commit_latency(args, work: Path, schema: Schema) -> dict:
    data = make_data(args.latency_episodes * args.latency_len, args.latency_len, args.obs_dim, args.act_dim, seed=1)
    eps = episodes_of(data, args.latency_len)
    lat = []
    with EpisodeStore.create(work / "latency.zarr", schema) as store:
        for ep in eps:
            t0 = time.perf_counter()
            store.append(ep)
            lat.append(time.perf_counter() - t0)
    lat_ms = np.asarray(lat) * 1e3
    return {"episode_len": args.latency_len, "episodes": len(eps), "ms": lat_ms.tolist(),
            "median_ms": float(np.median(lat_ms)), "p90_ms": float(np.percentile(lat_ms, 90))}


def profile_append(args, work: Path, data, episodes, schema) -> dict:
    """cProfile of one bulk append per batch size and of the latency loop; top functions saved."""
    out = {}
    for batch in args.batch_sizes:
        batch = min(batch, len(episodes))
        prof = cProfile.Profile()
        prof.enable()
        write_o2o(work / f"profile-b{batch}.zarr", schema, episodes, batch)
        prof.disable()
        path = RESULTS / f"profile-append-b{batch}.pstats"
        prof.dump_stats(path)
        st = pstats.Stats(prof)
        total = st.total_tt
        top = sorted(st.stats.items(), key=lambda kv: kv[1][3], reverse=True)[:25]  # by cumulative time
        out[str(batch)] = {
            "total_s": total, "pstats": str(path),
            "top_cumulative": [{"func": f"{Path(f[0]).name}:{f[1]}({f[2]})", "calls": v[1], "tottime": v[2],
                                "cumtime": v[3]} for f, v in top],
        }
    return out


# ---------------------------------------------------------------------------- report
def machine_info() -> dict:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "host": platform.node(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "numpy": np.__version__, "zarr": zarr.__version__,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg(),
    }


def print_table(title: str, rows: list[list[str]], header: list[str]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
        print(f"\n{title}")
        for r in [header] + rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
        return
    t = Table(title=title, title_justify="left")
    for h in header:
        t.add_column(h, justify="left" if h in ("measure", "peer / note") else "right")
    for r in rows:
        t.add_row(*[str(c) for c in r])
    Console(width=max(140, shutil.get_terminal_size().columns)).print(t)


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def report(res: dict) -> list[list[str]]:
    rows = []
    a = res["append"]
    p = a["peers"]
    for b, r in a["by_batch"].items():
        rate = r["rate"]
        rows.append([f"append_many, {b} ep/commit ({r['commits']} commits)", f"{rate:,.0f} tr/s",
                     f">= {APPEND_TARGET:,}", verdict(rate >= APPEND_TARGET),
                     f"x{rate / p['np.save']['rate']:.2f} of np.save, x{rate / p['np.save+fsync']['rate']:.2f} of "
                     f"np.save+fsync, x{rate / p['zarr']['rate']:.2f} of zarr, "
                     f"x{rate / p['zarr+fsync']['rate']:.2f} of zarr+fsync"])
    for name, r in p.items():
        rows.append([f"  peer: {name}", f"{r['rate']:,.0f} tr/s", "", "-", "same arrays, same disk"])
    ld = res["load"]
    t = statistics.median(ld["seconds"])
    scale = 1_000_000 / ld["transitions"]
    zt, nt = statistics.median(ld["zarr_seconds"]), statistics.median(ld["npy_seconds"])
    rows.append([f"load_transitions() ({ld['transitions']:,} tr, with next_obs)", f"{t:.3f} s",
                 f"<= {LOAD_TARGET_S:.0f} s per 1M" + (f" (-> {LOAD_TARGET_S / scale:.3f} s)" if scale != 1 else ""),
                 verdict(t * scale <= LOAD_TARGET_S),
                 f"x{t / zt:.2f} of zarr [:], x{t / nt:.2f} of np.load"])
    rows.append(["  peer: zarr.open_array(...)[:] per key", f"{zt:.3f} s", "", "-", "obs, actions, rewards, flags"])
    rows.append(["  peer: np.load per key", f"{nt:.3f} s", "", "-", "same keys, .npy files"])
    s = res["sampling"]
    rows.append([f"sample {s['batch']} from memory, torch", f"{s['torch']['rate']:,.0f} batch/s",
                 f">= {SAMPLE_TARGET:,}", verdict(s["torch"]["rate"] >= SAMPLE_TARGET),
                 f"x{s['torch']['rate'] / s['numpy']['rate']:.2f} of numpy gather"])
    rows.append([f"sample {s['batch']} from memory, numpy", f"{s['numpy']['rate']:,.0f} batch/s", "(info)", "-", ""])
    rows.append([f"sample {s['batch']} straight from Zarr", f"{s['zarr']['rate']:,.1f} batch/s", "(info)", "-",
                 f"in-memory torch is x{s['torch']['rate'] / s['zarr']['rate']:,.0f} faster"])
    c = res["commit_latency"]
    rows.append([f"commit latency, 1 episode of {c['episode_len']} steps", f"{c['median_ms']:.1f} ms median",
                 "(info)", "-", f"p90 {c['p90_ms']:.1f} ms over {c['episodes']} appends"])
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transitions", type=int, default=1_000_000, help="steps written and loaded")
    ap.add_argument("--episode-len", type=int, default=1000)
    ap.add_argument("--obs-dim", type=int, default=17)
    ap.add_argument("--act-dim", type=int, default=6)
    ap.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 100],
                    help="episodes per append_many commit, comma-separated")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per figure (median reported)")
    ap.add_argument("--sample-batch", type=int, default=256)
    ap.add_argument("--sample-iters", type=int, default=5000, help="in-memory batches per repeat")
    ap.add_argument("--zarr-iters", type=int, default=30, help="batches read straight from Zarr per repeat")
    ap.add_argument("--latency-episodes", type=int, default=50)
    ap.add_argument("--latency-len", type=int, default=200)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir in bench/results)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--profile", action="store_true", help="also cProfile one append per batch size (extra time)")
    ap.add_argument("--quick", action="store_true", help="small sizes for a CI smoke run (< 30 s)")
    args = ap.parse_args(argv)
    if args.quick:
        args.transitions, args.batch_sizes, args.repeats = 20_000, [1, 10], 2
        args.sample_iters, args.zarr_iters, args.latency_episodes = 500, 5, 10
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="scratch-store-", dir=RESULTS))
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"bench": "store", "machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()}}
    t_start = time.perf_counter()
    try:
        data = make_data(args.transitions, args.episode_len, args.obs_dim, args.act_dim)
        episodes = episodes_of(data, args.episode_len)
        schema = schema_for(args.obs_dim, args.act_dim)
        print(f"append: {len(data['actions']):,} transitions in {len(episodes)} episodes ...", flush=True)
        res["append"] = bench_append(args, work, data, episodes, schema)
        print("load ...", flush=True)
        res["load"], tr = bench_load(args, res["append"]["store_path"], res["append"]["npy_dir"])
        print("sampling ...", flush=True)
        res["sampling"] = bench_sampling(args, tr, res["append"]["store_path"])
        del tr
        print("commit latency ...", flush=True)
        res["commit_latency"] = bench_commit_latency(args, work, schema)
        if args.profile:
            print("profiling ...", flush=True)
            res["profile"] = profile_append(args, work, data, episodes, schema)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    res["machine"]["loadavg_end"] = os.getloadavg()
    res["wall_s"] = time.perf_counter() - t_start
    rows = report(res)
    print_table(f"o2o store benchmark ({res['machine']['date']}, {res['machine']['cpus']} cpus, "
                f"median of {args.repeats}{', quick' if args.quick else ''})",
                rows, ["measure", "figure", "target", "pass", "peer / note"])
    res["table"] = rows
    res["passed"] = all(r[3] != "FAIL" for r in rows)
    name = f"bench_store{'-quick' if args.quick else ''}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    (RESULTS / name).write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {RESULTS / name} ({res['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
