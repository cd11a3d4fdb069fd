"""``o2o dataset info`` and ``o2o dataset verify``: what a dataset holds, and whether it is sound.

Both only read, so both work on a local path and on any fsspec URL the store can read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from o2o.datasets.integrity import (
    EMPTY_FINGERPRINT,
    check_contents,
    chunk_text,
    content_problems,
    episode_ranges,
    episodes_in_rows,
    why,
)
from o2o.datasets.reading import INDEX_FORMAT, INDEX_KEY, StoreLocation
from o2o.datasets.schema import SOURCES, Schema
from o2o.datasets.store import EPISODE_FIELDS, EpisodeStore


def dataset_info(store: EpisodeStore) -> dict:
    """A JSON-friendly summary: counts, per-source returns and success, the tasks episodes started
    from (their reset options: ``tasks``, most frequent first), spaces, size on disk, and
    ``integrity``: what was checked (the structure on open; every episode's content digest unless the
    store was opened with ``verify=False``) and the problems found."""
    import time

    t0 = time.perf_counter()
    integrity = {
        "checked": "structure and contents" if store.verify else "structure only (verify off)",
        "problems": store.check_contents() if store.verify else [],
    }
    integrity["seconds"] = time.perf_counter() - t0
    table = store.episodes_table()
    per_source: dict[str, dict] = {}
    for src in sorted(set(table["source"])):
        m = table["source"] == src
        succ = table["success"][m]
        known = succ >= 0
        per_source[src] = {
            "episodes": int(m.sum()),
            "transitions": int(table["length"][m].sum()),
            "return_mean": float(table["returns"][m].mean()),
            "return_min": float(table["returns"][m].min()),
            "return_max": float(table["returns"][m].max()),
            "success_rate": float(succ[known].mean()) if known.any() else None,
            "interventions": int(table["interventions"][m].sum()),
            "policies": sorted(set(table["policy_id"][m])),
        }
    tasks: dict[str, dict] = {}  # the reset options episodes started from (not the env's identity)
    for task, succ in zip(table["task"], table["success"]):
        if task is None:
            continue
        key = json.dumps(task, sort_keys=True)
        row = tasks.setdefault(key, {"task": task, "episodes": 0, "successes": 0, "known": 0})
        row["episodes"] += 1
        row["known"] += int(succ >= 0)
        row["successes"] += int(succ > 0)
    attrs = store.attrs
    return {
        "path": store.path,
        "version": store.version.to_dict(),
        "episodes": store.num_episodes,
        "transitions": store.num_steps,
        "sources": per_source,
        "human_intervention_steps": int(table["interventions"].sum()) if len(table["index"]) else 0,
        "tasks": [
            {
                "task": t["task"],
                "episodes": t["episodes"],
                "success_rate": t["successes"] / t["known"] if t["known"] else None,
            }
            for t in sorted(tasks.values(), key=lambda t: -t["episodes"])
        ],
        "episodes_without_task": int(sum(t is None for t in table["task"])),
        "env": attrs.get("env"),
        "observation_keys": attrs["observation_keys"],
        "action_space": attrs["action_space"],
        "created": attrs.get("created"),
        "o2o_version": attrs.get("o2o_version"),
        "size_on_disk_bytes": store.location.size(),
        "integrity": integrity,
    }


@dataclass
class VerifyReport:
    """What ``o2o dataset verify`` found: ``problems`` (none: sound), ``notes`` (harmless leftovers)
    and ``affected``, the episodes a problem touches (empty when it cannot be told)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    affected: set[int] = field(default_factory=set)
    episodes: int | None = None


def verify_dataset(path: str | Path) -> tuple[list[str], list[str]]:
    """Check every invariant of a dataset: ``(problems, notes)``; no problems = sound (see :func:`verify_report`)."""
    r = verify_report(path)
    return r.problems, r.notes


def verify_report(path: str | Path) -> VerifyReport:
    """Check every invariant of a dataset, reading as a reader (no lock), and never stop at the first problem.

    The root metadata and the commit index parse; every array's metadata opens and every
    chunk below the committed end exists and decodes (a missing chunk would read as zeros);
    episode boundaries increase and end at the committed step count; provenance rows are
    valid; every value is finite, actions are within bounds, flags only on last steps;
    stored returns are the sums of rewards; and every episode's content digest, the
    fingerprint chain and the index's fingerprint match. Each problem names the array,
    chunk, rows and episodes; an unexpected failure of a check is itself reported.
    """
    r = VerifyReport()
    try:
        _verify(str(path), r)
    except Exception as e:  # whatever is damaged, verify reports instead of crashing
        r.problems.append(
            f"the check stopped early on an unexpected error ({why(e)}); the problems above were found before it"
        )
    return r


class _Arrays:
    """Every array of a store read chunk by chunk: unreadable or missing chunks become problems (and zeros)."""

    def __init__(self, loc: StoreLocation, r: VerifyReport):
        self.loc, self.r = loc, r
        self.zstore = loc.zarr_store(read_only=True)
        self.values: dict[str, np.ndarray] = {}
        self.bad: dict[str, list[tuple[int, int, int]]] = {}  # name -> [(chunk, first row, end row)]
        self.missing: set[str] = set()
        self.pending: list[tuple[str, int, int, int, str]] = []  # bad chunks, reported once the boundaries are known
        self.absent: list[tuple[str, int, int, int, str]] = []  # chunks without a file (they read as zeros)

    def read(self, name: str, n: int | None) -> np.ndarray | None:
        try:
            arr = zarr.open_array(self.zstore, path=name, mode="r")
        except Exception as e:
            self.missing.add(name)
            self.r.problems.append(
                f"array {name} cannot be opened ({why(e)}): its metadata {name}/zarr.json is missing or damaged"
            )
            return None
        rows = arr.shape[0]
        if n is None:
            n = rows
        elif rows < n:
            self.r.problems.append(f"array {name} has {rows} rows but {n} are committed")
            n = rows
        elif rows > n:
            self.r.notes.append(
                f"array {name} has {rows - n} rows past the commit (a writer's spare room or an "
                "interrupted append; readers ignore them, the next writer trims them)"
            )
        out = np.zeros((n, *arr.shape[1:]), arr.dtype)
        c = int(arr.chunks[0])
        bad = []
        for k in range(-(-n // c)):
            a, b = k * c, min(n, (k + 1) * c)
            key = f"{name}/{arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))}"
            if not self.loc.exists(key):
                # Read as zeros: older o2o skipped chunks of zeros, so the digests decide whether it is damage.
                self.absent.append((name, k, a, b, key))
                continue
            try:
                out[a:b] = arr[a:b]
            except Exception as e:
                bad.append((k, a, b, f"it cannot be decoded ({why(e)})"))
        self.bad[name] = [(k, a, b) for k, a, b, _ in bad]
        self.pending += [(name, k, a, b, reason) for k, a, b, reason in bad]
        self.values[name] = out
        return out

    def absent_in(self, name: str) -> str:
        """`` (chunk files ... missing)`` for ``name``'s absent chunks, or ``""``."""
        keys = [key for n, _, _, _, key in self.absent if n == name]
        return f" (chunk file{'s' if len(keys) > 1 else ''} {', '.join(keys[:3])} missing)" if keys else ""

    def report_absent(self, ends: np.ndarray, damaged: set[int]) -> None:
        """Absent chunks holding damaged episodes: the missing file is the likely cause."""
        for name, k, a, b, key in self.absent:
            eps = episodes_in_rows(ends, a, b) if name.startswith("data/") else (a, b)
            hit = sorted(damaged & set(range(*eps)))
            if hit:
                self.r.problems.append(
                    f"{chunk_text(name, k, a, b, eps)}: its file {key} is missing (it reads as "
                    f"zeros), and episodes {episode_ranges(hit)} in it fail their digests"
                )

    def ok(self, name: str) -> bool:
        return name in self.values and not self.bad.get(name)

    def report_chunks(self, ends: np.ndarray | None) -> None:
        """One problem per bad chunk, with the episodes it holds (when the boundaries are known)."""
        for name, k, a, b, reason in self.pending:
            eps = None
            if name.startswith("data/") and ends is not None:
                eps = episodes_in_rows(ends, a, b)
            elif name.startswith("episodes/"):
                eps = (a, b)
            if eps is not None:
                self.r.affected.update(range(*eps))
            self.r.problems.append(f"{chunk_text(name, k, a, b, eps)}: {reason}")


def _rows(a: np.ndarray) -> np.ndarray:
    """``a`` as ``[rows, values]`` (explicit widths: zero rows reshape too)."""
    return a.reshape(len(a), int(np.prod(a.shape[1:], dtype=np.int64)))


def _verify(path: str, r: VerifyReport) -> None:
    loc = StoreLocation(path)
    if loc.local is not None and not loc.local.exists():
        r.problems.append(f"no such path {path!r}")
        return
    if loc.local is not None and not loc.local.is_dir():
        r.problems.append(f"{path!r} is a file, not a dataset folder")
        return
    schema, index = None, None
    if not loc.exists("zarr.json") and not loc.exists(INDEX_KEY):
        r.problems.append(f"no o2o dataset at {path!r}: neither zarr.json nor {INDEX_KEY} exists")
        return
    if not loc.exists("zarr.json"):
        r.problems.append("root metadata zarr.json is missing (the store's schema and env are gone)")
    else:
        try:
            attrs = json.loads(loc.read_bytes("zarr.json"))["attributes"]["o2o"]
            schema = Schema.from_attrs(attrs)
        except Exception as e:
            r.problems.append(f"root metadata zarr.json cannot be read as an o2o dataset's ({why(e)})")
    if not loc.exists(INDEX_KEY):
        r.problems.append(f"{INDEX_KEY} (the commit: episode and step counts, fingerprint, provenance) is missing")
    else:
        try:
            index = json.loads(loc.read_bytes(INDEX_KEY))
            if index.get("format") != INDEX_FORMAT:
                raise ValueError(f"format {index.get('format')!r}, this o2o reads {INDEX_FORMAT}")
            E, T = int(index["episodes"]), int(index["steps"])
            table = list(index["provenance"])
            fingerprint = str(index["fingerprint"])
        except Exception as e:
            r.problems.append(f"{INDEX_KEY} cannot be read ({why(e)})")
            index = None
    if schema is None and index is None:
        return
    if schema is None:  # without the schema the arrays are unknown: report what the index says
        r.episodes = E
        return
    if index is None:
        E = T = None
        table, fingerprint = [], None
    r.episodes = E
    partial = loc.partial_files()
    if partial:
        r.notes.append(f"{len(partial)} temporary files of an interrupted write (removed by the next writer)")

    arrays = _Arrays(loc, r)
    keys = list(schema.obs)
    data_names = [f"data/obs/{k}" for k in keys] + [
        f"data/{f}" for f in ("actions", "rewards", "terminals", "timeouts", "interventions")
    ]
    episode_names = [f"episodes/final_obs/{k}" for k in keys] + [f"episodes/{f}" for f in EPISODE_FIELDS]
    for name in data_names:
        arrays.read(name, T)
    for name in episode_names:
        arrays.read(name, E)
    if E is None:
        arrays.report_chunks(None)
        return

    ends = None
    if arrays.ok("episodes/ends"):
        ends = arrays.values["episodes/ends"].astype(np.int64)
        lengths = np.diff(np.concatenate([[0], ends]))
        if E and np.any(lengths < 1):
            i = int(np.argmax(lengths < 1))
            r.problems.append(
                f"episodes/ends does not increase at episode {i} (ends {int(ends[i - 1]) if i else 0} -> "
                f"{int(ends[i])}): episode boundaries are lost{arrays.absent_in('episodes/ends')}"
            )
            ends = None
        elif E and int(ends[-1]) != T:
            r.problems.append(
                f"episodes/ends ends at step {int(ends[-1])}, {INDEX_KEY} commits {T} steps"
                f"{arrays.absent_in('episodes/ends')}"
            )
            ends = None
        elif E == 0 and T != 0:
            r.problems.append(f"{INDEX_KEY} commits 0 episodes but {T} steps")
    elif "episodes/ends" in arrays.values or "episodes/ends" in arrays.missing:
        r.problems.append(
            "episode boundaries (episodes/ends) cannot be read: the episodes that other problems touch cannot be named"
        )
    arrays.report_chunks(ends)
    if ends is None:
        r.affected.clear()  # cannot be told
        return

    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    bad_rows = np.zeros(T, bool)
    for name in data_names:
        for _, a, b in arrays.bad.get(name, []):
            bad_rows[a:b] = True
    bad_eps = np.zeros(E, bool)
    for name in episode_names:
        for _, a, b in arrays.bad.get(name, []):
            bad_eps[a:b] = True
    if any(name in arrays.missing for name in data_names + episode_names):
        unreadable = [n for n in data_names + episode_names if n in arrays.missing]
        r.problems.append(f"without {', '.join(unreadable)} no episode's content can be checked")
        r.affected.update(range(E))
        return
    counts = np.concatenate([[0], np.cumsum(bad_rows)])
    bad_eps |= (counts[ends] - counts[starts]) > 0

    prov_rows = arrays.values["episodes/provenance"]
    bad_prov = np.flatnonzero(((prov_rows < 0) | (prov_rows >= len(table))) & ~bad_eps)
    if len(bad_prov):
        r.problems.append(
            f"episodes/provenance of episodes {episode_ranges(bad_prov)} point outside the provenance "
            f"table of {len(table)} rows"
        )
        r.affected.update(bad_prov.tolist())
    for i, p in enumerate(table):
        if not isinstance(p, dict) or p.get("source") not in SOURCES:
            r.problems.append(
                f"provenance {i}: source {p.get('source') if isinstance(p, dict) else p!r} not in {SOURCES}"
            )

    v = arrays.values
    good_rows = ~bad_rows
    for name in data_names:
        arr = v[name]
        if arr.dtype.kind == "f":
            rows = np.flatnonzero(~np.isfinite(_rows(arr)).all(1) & good_rows)
            if len(rows):
                eps = np.searchsorted(ends, rows, side="right")
                r.problems.append(
                    f"{name} has non-finite values at steps {rows[:3].tolist()} (episodes {episode_ranges(eps)})"
                )
                r.affected.update(eps.tolist())
    space = schema.action_space
    if schema.action_bounds != "ignore":
        acts = v["data/actions"]
        out = _rows((acts < space.low - 1e-6) | (acts > space.high + 1e-6)).any(1) & good_rows
        if out.any():
            eps = np.searchsorted(ends, np.flatnonzero(out), side="right")
            r.problems.append(
                f"actions outside the action space at steps {np.flatnonzero(out)[:3].tolist()} (episodes "
                f"{episode_ranges(eps)})"
            )
            r.affected.update(eps.tolist())
    last = np.zeros(T, bool)
    last[ends - 1] = True
    for flag in ("terminals", "timeouts"):
        early = np.flatnonzero(v[f"data/{flag}"] & ~last & good_rows)
        if len(early):
            eps = np.searchsorted(ends, early, side="right")
            r.problems.append(
                f"{flag} set before an episode's last step at steps {early[:3].tolist()} (episodes "
                f"{episode_ranges(eps)})"
            )
            r.affected.update(eps.tolist())

    rewards = v["data/rewards"].astype(np.float64)
    sums = np.add.reduceat(rewards, starts) if E else np.zeros(0)
    off = np.flatnonzero(~np.isclose(v["episodes/returns"], sums, rtol=1e-6, atol=1e-6) & ~bad_eps)
    if len(off):
        r.problems.append(f"stored returns differ from the sums of rewards in episodes {episode_ranges(off)}")
        r.affected.update(off.tolist())

    data = {
        ("obs/" + n.removeprefix("data/obs/")) if n.startswith("data/obs/") else n.removeprefix("data/"): v[n]
        for n in data_names
    }
    final = {f"final_obs/{k}": v[f"episodes/final_obs/{k}"] for k in keys}
    records = {f: v[f"episodes/{f}"] for f in ("returns", "success", "seed", "times", "provenance")}
    spans = [(i, int(starts[i]), int(ends[i])) for i in range(E) if not bad_eps[i]]
    content_bad, chain_bad = check_contents(
        spans, data, 0, final, records, v["episodes/digest"], 0, bytes.fromhex(EMPTY_FINGERPRINT), table
    )
    bad_digest = np.zeros(E, bool)
    for _, a, b in arrays.bad.get("episodes/digest", []):
        bad_digest[a:b] = True
    chain_bad = [i for i in chain_bad if not (i > 0 and bad_digest[i - 1])]  # its link was lost with the chunk
    r.problems += content_problems(content_bad, chain_bad)
    r.affected.update(content_bad)
    r.affected.update(chain_bad)
    r.affected.update(np.flatnonzero(bad_eps).tolist())
    arrays.report_absent(ends, set(r.affected))
    if E and not bad_eps[-1]:
        last_fp = bytes(v["episodes/digest"][E - 1][16:]).hex()
        if last_fp != fingerprint:
            r.problems.append(
                f"{INDEX_KEY} fingerprint {fingerprint[:12]} != the chain value {last_fp[:12]} stored "
                f"with the last episode ({E - 1})"
            )
    elif E == 0 and fingerprint != EMPTY_FINGERPRINT:
        r.problems.append(f"{INDEX_KEY} fingerprint {fingerprint[:12]} for an empty dataset (should be zeros)")
