"""``o2o dataset info`` and ``o2o dataset verify``: what a dataset holds, and whether it is sound.

Both only read, so both work on a local path and on any fsspec URL the store can read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from o2o.datasets.schema import SOURCES
from o2o.datasets.store import EMPTY_FINGERPRINT, INDEX_KEY, EpisodeStore, chain, episode_digest


def dataset_info(store: EpisodeStore) -> dict:
    """A JSON-friendly summary: counts, per-source returns and success, spaces, size on disk."""
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
    attrs = store.attrs
    return {
        "path": store.path,
        "version": store.version.to_dict(),
        "episodes": store.num_episodes,
        "transitions": store.num_steps,
        "sources": per_source,
        "human_intervention_steps": int(table["interventions"].sum()) if len(table["index"]) else 0,
        "env": attrs.get("env"),
        "observation_keys": attrs["observation_keys"],
        "action_space": attrs["action_space"],
        "created": attrs.get("created"),
        "o2o_version": attrs.get("o2o_version"),
        "size_on_disk_bytes": store.location.size(),
    }


def verify_dataset(path: str | Path) -> tuple[list[str], list[str]]:
    """Check every invariant of a dataset. Returns ``(problems, notes)``; no problems = sound.

    Reads as a reader (no lock): index and arrays agree, episode boundaries are consistent,
    every value is finite, actions are within bounds, flags only on last steps, provenance
    rows are valid, and every episode's content digest and the fingerprint chain match.
    """
    problems: list[str] = []
    notes: list[str] = []
    try:
        store = EpisodeStore.open(path, mode="r")
    except (FileNotFoundError, ValueError, KeyError) as e:
        return [f"cannot open: {e}"], notes
    E, T = store.num_episodes, store.num_steps
    for name in store._array_names():
        n = store._committed_len(name)
        rows = store.array(name).shape[0]
        if rows < n:
            problems.append(f"array {name} has {rows} rows, {n} committed")
        elif rows > n:
            notes.append(f"array {name} has {rows - n} rows past the commit (a writer's spare room or an "
                         "interrupted append; readers ignore them, the next writer trims them)")
    if problems:
        return problems, notes
    partial = store.location.partial_files()
    if partial:
        notes.append(f"{len(partial)} temporary files of an interrupted write (removed by the next writer)")

    ends = store.array("episodes/ends")[:E]
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    if E and (np.any(ends - starts < 1) or ends[-1] != T):
        problems.append(f"episode ends are not increasing or do not end at the {T} committed steps")
        return problems, notes
    if E == 0 and T != 0:
        problems.append(f"index says 0 episodes but {T} steps")
        return problems, notes

    prov_rows = store.array("episodes/provenance")[:E]
    table = store.provenance_table
    if E and (prov_rows.min() < 0 or prov_rows.max() >= len(table)):
        problems.append(f"provenance rows outside the table of {len(table)}")
    for i, p in enumerate(table):
        if p.get("source") not in SOURCES:
            problems.append(f"provenance {i}: source {p.get('source')!r} not in {SOURCES}")

    data = {f"obs/{k}": store.array(f"data/obs/{k}")[:T] for k in store.schema.obs}
    final = {f"final_obs/{k}": store.array(f"episodes/final_obs/{k}")[:E] for k in store.schema.obs}
    for key in ("actions", "rewards", "terminals", "timeouts", "interventions"):
        data[key] = store.array(f"data/{key}")[:T]
    for key, arr in list(data.items()) + list(final.items()):
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            problems.append(f"{key} has non-finite values at rows {np.argwhere(~np.isfinite(arr))[:3, 0].tolist()}")
    space = store.schema.action_space
    if store.schema.action_bounds != "ignore":
        out = (data["actions"] < space.low - 1e-6) | (data["actions"] > space.high + 1e-6)
        if out.any():
            problems.append(f"actions outside the action space at steps {np.argwhere(out)[:3, 0].tolist()}")
    last = np.zeros(T, bool)
    last[ends - 1] = True
    for flag in ("terminals", "timeouts"):
        if np.any(data[flag] & ~last):
            problems.append(f"{flag} set before an episode's last step at {np.argwhere(data[flag] & ~last)[:3, 0].tolist()}")

    returns = store.array("episodes/returns")[:E]
    success = store.array("episodes/success")[:E]
    seeds = store.array("episodes/seed")[:E]
    times = store.array("episodes/times")[:E]
    digests = store.array("episodes/digest")[:E]
    fp = bytes.fromhex(EMPTY_FINGERPRINT)
    for i in range(E):
        s = slice(int(starts[i]), int(ends[i]))
        arrays = {k: v[s] for k, v in data.items()}
        arrays.update({k: v[i] for k, v in final.items()})
        rec = {"returns": float(returns[i]), "success": int(success[i]), "seed": int(seeds[i]),
               "times": [float(times[i][0]), float(times[i][1])],
               "provenance": table[int(prov_rows[i])] if 0 <= prov_rows[i] < len(table) else None}
        if not np.isclose(rec["returns"], float(np.sum(arrays["rewards"], dtype=np.float64)), rtol=1e-6, atol=1e-6):
            problems.append(f"episode {i}: stored return {rec['returns']} != sum of rewards")
        content = episode_digest(arrays, rec)
        fp = chain(fp, content)
        if bytes(digests[i][:16]) != content:
            problems.append(f"episode {i}: content digest mismatch (data changed after commit)")
        if bytes(digests[i][16:]) != fp:
            problems.append(f"episode {i}: fingerprint chain broken")
        if len(problems) > 20:
            problems.append("... (stopped after 20 problems)")
            return problems, notes
    if E and fp.hex() != store.version.fingerprint:
        problems.append(f"{INDEX_KEY} fingerprint {store.version.fingerprint[:12]} != recomputed {fp.hex()[:12]}")
    return problems, notes
