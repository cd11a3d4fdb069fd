"""Benchmark of the episode store: bulk append, bulk load, batch sampling, commit latency.

Every figure is the median of ``--repeats`` runs and is printed next to a peer measured
in the same run on the same disk, so a slow, shared machine moves both together:

* append: ``EpisodeStore.append_many`` in batches of 1, 10, 100 episodes per commit
  (validation, digests, durable writes, atomic index) vs ``np.save`` of the same arrays
  (with and without ``fsync``) and vs plain zarr (``zarr.create_array(...)[:] = data``,
  same chunks and codec, no validation, no commit);
* load: ``load_transitions()`` (builds next_observations too, and checks every episode's
  content digest) vs the same without the check (``verify=False``), ``zarr.open_array[:]``
  of the same arrays and ``np.load`` of the ``.npy`` files; opening for appending (which
  checks the tail an append rewrites) with and without the check;
* sampling: batches of 256 gathered from in-memory tensors (torch) and arrays (numpy),
  and, for information, straight from Zarr;
* commit latency of one short episode, for information.

    python bench/bench_store.py            # 1M transitions (~10 min on 2 cores)
    python bench/bench_store.py --quick    # CI smoke, < 30 s

Results: a table on stdout and ``bench/results/bench_store-<time>.json``.
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
        eps.append(
            Episode(
                observations=data["obs"][s],
                actions=data["actions"][s],
                rewards=data["rewards"][s],
                terminals=data["terminals"][s],
                timeouts=data["timeouts"][s],
                final_observation=data["final_obs"][i],
                provenance=PROVENANCE,
                interventions=data["interventions"][s],
                seed=i,
                success=None,
            )
        )
    return eps


def schema_for(obs_dim: int, act_dim: int) -> Schema:
    obs = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    act = gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)
    return Schema.from_spaces(obs, act)


# ---------------------------------------------------------------------------- timing
def interleaved(
    cases: dict[str, Callable[[int], object]], repeats: int, cleanup: Callable[[str, int], None] | None = None
) -> dict[str, list[float]]:
    """Wall times of each case, run round-robin (a, b, c, a, b, c, ...) so drift hits all alike.

    The order is rotated each round so that no case always runs first; ``cleanup(name, r)``
    runs untimed after each call.
    """
    names = list(cases)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            cases[name](r)
            times[name].append(time.perf_counter() - t0)
            if cleanup is not None:
                cleanup(name, r)
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
        a = zarr.create_array(
            str(path),
            name=k,
            shape=v.shape,
            chunks=chunks,
            dtype=v.dtype,
            compressors=_compressor(v.dtype),
            fill_value=0,
            config={"write_empty_chunks": True},
        )
        a[:] = v


# ---------------------------------------------------------------------------- sections
def bench_append(args, work: Path, data, episodes, schema) -> dict:
    n = len(data["actions"])
    # Warm-up (imports, codec and event-loop set-up), untimed, so the first figure is not penalised.
    small = {k: v[: 2 * args.episode_len] if len(v) == n else v[:2] for k, v in data.items()}
    write_o2o(work / "warmup.zarr", schema, episodes[:2], 2)
    write_npy(work / "warmup-npy", small, fsync=True)
    write_zarr(work / "warmup-zarr", small)
    batches = sorted({min(b, len(episodes)) for b in args.batch_sizes})
    path = {f"o2o b{b}": (lambda r, b=b: work / f"append-b{b}-{r}.zarr") for b in batches}
    path.update(
        {
            name: (lambda r, name=name: work / f"{name.replace('+', '-')}-{r}")
            for name in ("np.save", "np.save+fsync", "zarr", "zarr+fsync")
        }
    )
    cases = {f"o2o b{b}": (lambda r, b=b: write_o2o(path[f"o2o b{b}"](r), schema, episodes, b)) for b in batches}
    cases.update(
        {
            "np.save": lambda r: write_npy(path["np.save"](r), data, fsync=False),
            "np.save+fsync": lambda r: write_npy(path["np.save+fsync"](r), data, fsync=True),
            "zarr": lambda r: write_zarr(path["zarr"](r), data),
            "zarr+fsync": lambda r: (write_zarr(path["zarr+fsync"](r), data), fsync_tree(path["zarr+fsync"](r))),
        }
    )
    keep = {f"o2o b{batches[-1]}", "np.save"}  # read back below

    def cleanup(name: str, r: int) -> None:
        if name not in keep or r < args.repeats - 1:
            shutil.rmtree(path[name](r))

    times = interleaved(cases, args.repeats, cleanup)
    out: dict = {"transitions": n, "episodes": len(episodes), "by_batch": {}, "peers": {}}
    for b in batches:
        t = times[f"o2o b{b}"]
        out["by_batch"][str(b)] = {"seconds": t, "rate": n / statistics.median(t), "commits": -(-len(episodes) // b)}
    for name in ("np.save", "np.save+fsync", "zarr", "zarr+fsync"):
        out["peers"][name] = {"seconds": times[name], "rate": n / statistics.median(times[name])}
    out["store_path"] = str(path[f"o2o b{batches[-1]}"](args.repeats - 1))
    out["npy_dir"] = str(path["np.save"](args.repeats - 1))
    return out


def bench_load(args, store_path: str, npy_dir: str) -> tuple[dict, object]:
    store = EpisodeStore.open(store_path)
    keys = ["data/obs/state", "data/actions", "data/rewards", "data/terminals", "data/timeouts"]
    npy_keys = ["obs", "actions", "rewards", "terminals", "timeouts"]
    held = {}

    def load(verify: bool):
        def run(_):
            held.pop("tr", None)  # free the previous copy first: time a load, not an allocator under pressure
            held["tr"] = store.load_transitions(verify=verify)

        return run

    def open_writer(verify: bool):
        def run(_):
            EpisodeStore.open(store_path, mode="a", verify=verify).close()

        return run

    times = interleaved(
        {
            "load_transitions": load(True),
            "load_transitions(verify=False)": load(False),
            "zarr": lambda _: [zarr.open_array(os.path.join(store_path, k), mode="r")[:] for k in keys],
            "np.load": lambda _: [np.load(os.path.join(npy_dir, f"{k}.npy")) for k in npy_keys],
            "open(mode=a)": open_writer(True),
            "open(mode=a, verify=False)": open_writer(False),
        },
        args.repeats,
    )
    tr = held["tr"]
    return {
        "transitions": len(tr),
        "seconds": times["load_transitions"],
        "zarr_seconds": times["zarr"],
        "npy_seconds": times["np.load"],
        "noverify_seconds": times["load_transitions(verify=False)"],
        "open_a_seconds": times["open(mode=a)"],
        "open_a_noverify_seconds": times["open(mode=a, verify=False)"],
        "episodes": store.num_episodes,
    }, tr


def bench_sampling(args, tr, store_path: str) -> dict:
    """Batches of (obs, actions, rewards, next_obs, terminals) at random rows, in several ways."""
    n, B = len(tr), args.sample_batch
    tt = tr.to_torch("cpu")
    fields_t = (tt.observations, tt.actions, tt.rewards, tt.next_observations, tt.terminals)
    fields_n = (tr.observations, tr.actions, tr.rewards, tr.next_observations, tr.terminals)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def torch_index(iters):
        for _ in range(iters):
            idx = torch.randint(n, (B,), generator=gen)
            [x[idx] for x in fields_t]

    def torch_index_select(iters):
        for _ in range(iters):
            idx = torch.randint(n, (B,), generator=gen)
            [x.index_select(0, idx) for x in fields_t]

    def numpy_index(iters):
        for _ in range(iters):
            idx = rng.integers(0, n, B)
            [x[idx] for x in fields_n]

    zkeys = ["data/obs/state", "data/actions", "data/rewards", "data/terminals"]
    zarrs = [zarr.open_array(os.path.join(store_path, k), mode="r") for k in zkeys]

    def zarr_read(iters):
        for _ in range(iters):
            idx = np.sort(rng.integers(0, n - 1, B))
            [a.oindex[idx] for a in zarrs]
            zarrs[0].oindex[idx + 1]  # next observations (the rare episode end is ignored here)

    default_threads = torch.get_num_threads()
    runs = {  # name: (function, iterations, torch threads)
        "torch": (torch_index, args.sample_iters, default_threads),
        "torch_index_select": (torch_index_select, args.sample_iters, default_threads),
        "torch_1thread": (torch_index, args.sample_iters, 1),
        "numpy": (numpy_index, args.sample_iters, default_threads),
        "zarr": (zarr_read, args.zarr_iters, default_threads),
    }

    def case(name):
        fn, iters, threads = runs[name]

        def run(_):
            torch.set_num_threads(threads)
            try:
                fn(iters)
            finally:
                torch.set_num_threads(default_threads)

        return run

    for fn, iters, _ in runs.values():  # warm-up
        fn(max(1, iters // 20))
    times = interleaved({name: case(name) for name in runs}, args.repeats)
    out = {"batch": B, "torch_threads_default": default_threads}
    for name, (fn, iters, threads) in runs.items():
        out[name] = {
            "iters": iters,
            "threads": threads,
            "seconds": times[name],
            "rate": iters / statistics.median(times[name]),
        }
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
    return {
        "episode_len": args.latency_len,
        "episodes": len(eps),
        "ms": lat_ms.tolist(),
        "median_ms": float(np.median(lat_ms)),
        "p90_ms": float(np.percentile(lat_ms, 90)),
    }


class _Timers:
    """Wall time spent inside named functions while active (patched in, restored on exit).

    cProfile sees only the calling thread, but zarr runs its I/O on an event-loop thread
    and worker threads; timing the calls from outside shows where a commit's time goes.
    """

    def __init__(self, targets: dict[str, tuple[object, str]]):
        self.targets, self.totals, self.counts, self._orig = targets, {}, {}, {}

    def __enter__(self) -> "_Timers":
        for label, (owner, attr) in self.targets.items():
            fn = getattr(owner, attr)
            self._orig[label] = fn
            self.totals[label], self.counts[label] = 0.0, 0

            def timed(*a, _fn=fn, _label=label, **k):
                t0 = time.perf_counter()
                try:
                    return _fn(*a, **k)
                finally:
                    self.totals[_label] += time.perf_counter() - t0
                    self.counts[_label] += 1

            setattr(owner, attr, timed)
        return self

    def __exit__(self, *exc) -> None:
        for label, (owner, attr) in self.targets.items():
            setattr(owner, attr, self._orig[label])


def breakdown(args, work: Path, data, episodes, schema) -> dict:
    """Where an append's time goes: validation, digests, zarr writes/resizes, file puts, fsyncs, index."""
    import o2o.datasets.durable as durable
    import o2o.datasets.store as store_mod

    targets = {
        "validate_episode": (store_mod, "validate_episode"),
        "episode_digest": (store_mod, "episode_digest"),
        "zarr Array.__setitem__ (all writes)": (zarr.Array, "__setitem__"),
        "zarr Array.resize": (zarr.Array, "resize"),
        "  of which: chunk file put (worker thread)": (durable, "_durable_put"),
        "  of which: os.fsync (any thread)": (os, "fsync"),
        "sync_dirs (dir fsyncs)": (durable.DurableLocalStore, "sync_dirs"),
        "index write (atomic_write_bytes)": (store_mod, "atomic_write_bytes"),
    }
    out = {}
    cases = [
        (
            f"bulk, {min(max(args.batch_sizes), len(episodes))} ep/commit",
            episodes,
            min(max(args.batch_sizes), len(episodes)),
        )
    ]
    lat = episodes_of(
        make_data(args.latency_episodes * args.latency_len, args.latency_len, args.obs_dim, args.act_dim, seed=2),
        args.latency_len,
    )
    cases.append((f"1 episode of {args.latency_len} steps per commit", lat, 1))
    for label, eps, batch in cases:
        path = work / f"breakdown-{batch}-{len(eps)}.zarr"
        with EpisodeStore.create(path, schema) as store:
            store.append(eps[0])  # first commit creates chunk files: not typical
            with _Timers(targets) as tm:
                t0 = time.perf_counter()
                for i in range(1, len(eps), batch):
                    store.append_many(eps[i : i + batch])
                total = time.perf_counter() - t0
        commits = -(-(len(eps) - 1) // batch)
        out[label] = {
            "commits": commits,
            "total_s": total,
            "per_commit_ms": total / commits * 1e3,
            "parts": {k: {"s": tm.totals[k], "calls": tm.counts[k], "share": tm.totals[k] / total} for k in targets},
        }
    return out


def print_breakdown(bd: dict) -> None:
    for label, b in bd.items():
        rows = [
            [k, f"{v['calls']}", f"{v['s'] * 1e3 / b['commits']:.1f}", f"{100 * v['share']:.0f}%"]
            for k, v in b["parts"].items()
        ]
        print_table(
            f"where an append's time goes: {label} ({b['commits']} commits, {b['per_commit_ms']:.1f} ms per commit)",
            rows,
            ["measure", "calls", "ms/commit", "share"],
        )


# ---------------------------------------------------------------------------- report
def machine_info() -> dict:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "zarr": zarr.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg(),
    }


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
        t.add_column(h, justify="left" if h in ("measure", "peer / note") else "right")
    for r in rows:
        t.add_row(*[escape(str(c)) for c in r])  # "x[idx]" is not markup
    Console(width=max(140, shutil.get_terminal_size().columns)).print(t)


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def report(res: dict) -> list[list[str]]:
    rows = []
    a = res["append"]
    p = a["peers"]
    for b, r in a["by_batch"].items():
        rate = r["rate"]
        rows.append(
            [
                f"append_many, {b} ep/commit ({r['commits']} commits)",
                f"{rate:,.0f} tr/s",
                f">= {APPEND_TARGET:,}",
                verdict(rate >= APPEND_TARGET),
                f"x{rate / p['np.save']['rate']:.2f} of np.save, x{rate / p['np.save+fsync']['rate']:.2f} of "
                f"np.save+fsync, x{rate / p['zarr']['rate']:.2f} of zarr, "
                f"x{rate / p['zarr+fsync']['rate']:.2f} of zarr+fsync",
            ]
        )
    for name, r in p.items():
        rows.append([f"  peer: {name}", f"{r['rate']:,.0f} tr/s", "", "-", "same arrays, same disk"])
    ld = res["load"]
    t = statistics.median(ld["seconds"])
    scale = 1_000_000 / ld["transitions"]
    zt, nt = statistics.median(ld["zarr_seconds"]), statistics.median(ld["npy_seconds"])
    rows.append(
        [
            f"load_transitions() ({ld['transitions']:,} tr, with next_obs)",
            f"{t:.3f} s",
            f"<= {LOAD_TARGET_S:.0f} s per 1M" + (f" (-> {LOAD_TARGET_S / scale:.3f} s)" if scale != 1 else ""),
            verdict(t * scale <= LOAD_TARGET_S),
            f"x{t / zt:.2f} of zarr [:], x{t / nt:.2f} of np.load",
        ]
    )
    vt = statistics.median(ld["noverify_seconds"])
    rows.append(
        [
            "  peer: load_transitions(verify=False)",
            f"{vt:.3f} s",
            "",
            "-",
            f"the digest check costs x{t / vt:.2f} ({t - vt:+.3f} s for {ld['episodes']:,} episodes)",
        ]
    )
    rows.append(["  peer: zarr.open_array(...)[:] per key", f"{zt:.3f} s", "", "-", "obs, actions, rewards, flags"])
    rows.append(["  peer: np.load per key", f"{nt:.3f} s", "", "-", "same keys, .npy files"])
    oa, on = statistics.median(ld["open_a_seconds"]), statistics.median(ld["open_a_noverify_seconds"])
    rows.append(
        [
            "open(mode='a'): lock, structure, tail check",
            f"{oa:.3f} s",
            "(info)",
            "-",
            f"x{oa / on:.2f} of open(mode='a', verify=False) ({on:.3f} s)",
        ]
    )
    s = res["sampling"]
    th = s["torch_threads_default"]
    for key, label, note in (
        ("torch", f"torch x[idx], {th} threads", f"x{s['torch']['rate'] / s['numpy']['rate']:.2f} of numpy x[idx]"),
        (
            "torch_index_select",
            f"torch x.index_select(0, idx), {th} threads",
            f"x{s['torch_index_select']['rate'] / s['torch']['rate']:.2f} of torch x[idx]",
        ),
        ("torch_1thread", "torch x[idx], 1 thread", "torch.set_num_threads(1)"),
    ):
        rate = s[key]["rate"]
        rows.append(
            [
                f"sample {s['batch']} from memory, {label}",
                f"{rate:,.0f} batch/s",
                f">= {SAMPLE_TARGET:,}",
                verdict(rate >= SAMPLE_TARGET),
                note,
            ]
        )
    rows.append(
        [f"sample {s['batch']} from memory, numpy x[idx]", f"{s['numpy']['rate']:,.0f} batch/s", "(info)", "-", "peer"]
    )
    rows.append(
        [
            f"sample {s['batch']} straight from Zarr (oindex)",
            f"{s['zarr']['rate']:,.1f} batch/s",
            "(info)",
            "-",
            f"in-memory torch x[idx] is x{s['torch']['rate'] / s['zarr']['rate']:,.0f} faster",
        ]
    )
    c = res["commit_latency"]
    rows.append(
        [
            f"commit latency, 1 episode of {c['episode_len']} steps",
            f"{c['median_ms']:.1f} ms median",
            "(info)",
            "-",
            f"p90 {c['p90_ms']:.1f} ms over {c['episodes']} appends",
        ]
    )
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transitions", type=int, default=1_000_000, help="steps written and loaded")
    ap.add_argument("--episode-len", type=int, default=1000)
    ap.add_argument("--obs-dim", type=int, default=17)
    ap.add_argument("--act-dim", type=int, default=6)
    ap.add_argument(
        "--batch-sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 10, 100],
        help="episodes per append_many commit, comma-separated",
    )
    ap.add_argument("--repeats", type=int, default=3, help="repeats per figure (median reported)")
    ap.add_argument("--sample-batch", type=int, default=256)
    ap.add_argument("--sample-iters", type=int, default=5000, help="in-memory batches per repeat")
    ap.add_argument("--zarr-iters", type=int, default=30, help="batches read straight from Zarr per repeat")
    ap.add_argument("--latency-episodes", type=int, default=50)
    ap.add_argument("--latency-len", type=int, default=200)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir in bench/results)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument(
        "--no-breakdown",
        dest="breakdown",
        action="store_false",
        help="skip the timing of an append's parts (validation, zarr writes, fsync, index)",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes for a CI smoke run (< 30 s)")
    args = ap.parse_args(argv)
    if args.quick:
        args.transitions, args.batch_sizes, args.repeats = 10_000, [1, 10], 2
        args.sample_iters, args.zarr_iters, args.latency_episodes = 300, 3, 8
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="scratch-store-", dir=RESULTS))
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"bench": "store", "machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()}}
    t_start = time.perf_counter()
    res["section_s"] = {}

    def section(name: str, fn: Callable[[], object]):
        print(f"{name} ...", flush=True)
        t0 = time.perf_counter()
        value = fn()
        res["section_s"][name] = time.perf_counter() - t0
        return value

    try:
        data = make_data(args.transitions, args.episode_len, args.obs_dim, args.act_dim)
        episodes = episodes_of(data, args.episode_len)
        schema = schema_for(args.obs_dim, args.act_dim)
        print(f"{len(data['actions']):,} transitions in {len(episodes)} episodes", flush=True)
        res["append"] = section("append", lambda: bench_append(args, work, data, episodes, schema))
        res["load"], tr = section(
            "load", lambda: bench_load(args, res["append"]["store_path"], res["append"]["npy_dir"])
        )
        res["sampling"] = section("sampling", lambda: bench_sampling(args, tr, res["append"]["store_path"]))
        tr = None  # free the loaded transitions before the next section
        res["commit_latency"] = section("commit latency", lambda: bench_commit_latency(args, work, schema))
        if args.breakdown:
            res["breakdown"] = section("breakdown", lambda: breakdown(args, work, data, episodes, schema))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    res["machine"]["loadavg_end"] = os.getloadavg()
    res["wall_s"] = time.perf_counter() - t_start
    rows = report(res)
    print_table(
        f"o2o store benchmark ({res['machine']['date']}, {res['machine']['cpus']} cpus, "
        f"median of {args.repeats}{', quick' if args.quick else ''})",
        rows,
        ["measure", "figure", "target", "pass", "peer / note"],
    )
    if "breakdown" in res:
        print_breakdown(res["breakdown"])
    res["table"] = rows
    res["passed"] = all(r[3] != "FAIL" for r in rows)
    name = f"bench_store{'-quick' if args.quick else ''}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    (RESULTS / name).write_text(json.dumps(res, indent=1, default=str))
    print(
        f"wrote {RESULTS / name} ({res['wall_s']:.0f} s: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in res["section_s"].items())
        + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
