"""What keeps a dataset honest: content digests, the fingerprint chain, and the checks built on them.

Every committed episode carries a 32-byte ``episodes/digest`` row: ``[:16]`` the content
digest of its arrays and record (:func:`episode_digest`), ``[16:]`` the chained
fingerprint of every episode up to it (:func:`chain`); ``index.json`` holds the last one.

Three levels of checking use them (docs/dataset.md: What is checked, when):

- **opening** (every reader and writer, always): :func:`structure_problems` — every array's
  metadata opens and holds the committed rows, episode boundaries increase and end at the
  committed step count, provenance rows point into the table, and the last episode's chain
  value is the index's fingerprint. O(episodes) of small reads; it stops a damaged store
  from being misread as a smaller or empty one.
- **loading** (``load_transitions``, ``episode``, by default): :func:`check_contents` —
  each loaded episode's content digest and chain link, recomputed from what was read.
  ``verify=False`` (``dataset.verify=false``) skips it, for people who know.
- **appending**: a writer checks the contents of the tail — every episode whose rows or
  record lie in the last chunk of an array, the chunks an append rewrites — before it
  writes anything.

``o2o dataset verify`` (:func:`o2o.datasets.inspect.verify_dataset`) checks all of it,
chunk by chunk, and lists every problem instead of stopping at the first.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

EMPTY_FINGERPRINT = "0" * 32  # the fingerprint of a dataset with no episodes
NO_SEED = np.iinfo(np.uint64).max  # "no seed" in a uint64 seed column (int64 columns of older stores use -1)


class DatasetDamagedError(ValueError):
    """A dataset's structure or stored content fails its checks; nothing was used or appended.

    ``problems`` lists what was found, each naming the array, rows or episodes.
    """

    def __init__(self, path: str, problems: Sequence[str], what: str = "", unreadable: bool = False):
        self.path = str(path)
        self.problems = list(problems)
        self.unreadable = bool(unreadable)  # a chunk failed to decode (vs. contents that differ)
        shown = "; ".join(self.problems[:4])
        if len(self.problems) > 4:
            shown += f"; and {len(self.problems) - 4} more"
        super().__init__(
            f"dataset {self.path!r} is damaged: {shown}. {what}Run `o2o dataset verify {self.path}` to "
            "list every problem and the episodes they touch"
        )


def episode_digest(arrays: Mapping[str, np.ndarray], record: Mapping[str, Any]) -> bytes:
    """16-byte content digest of one episode: every stored array and its record."""
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    h.update(json.dumps(record, sort_keys=True, default=str).encode())
    return h.digest()


def chain(prev_fingerprint: bytes, content: bytes) -> bytes:
    """The fingerprint after one more episode: it names the whole history up to it."""
    return hashlib.blake2b(prev_fingerprint + content, digest_size=16).digest()


def seed_or_none(raw: Any) -> int | None:
    """A stored seed as the episode's seed: None for the column's "no seed" value."""
    v = int(raw)
    return None if v < 0 or v == int(NO_SEED) else v


def record_seed(raw: Any) -> int:
    """A stored seed as the digest's record has it (-1: no seed), whatever the column's dtype."""
    v = seed_or_none(raw)
    return -1 if v is None else v


def episode_ranges(episodes: Iterable[int], limit: int = 12) -> str:
    """``[3, 7, 8, 9, 40]`` -> ``"3, 7-9, 40"`` (at most ``limit`` runs, then how many more)."""
    eps = sorted({int(e) for e in episodes})
    runs: list[tuple[int, int]] = []
    for e in eps:
        if runs and e == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], e)
        else:
            runs.append((e, e))
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:limit])
    if len(runs) > limit:
        text += f", ... ({len(eps)} episodes in all)"
    return text


def episodes_in_rows(ends: np.ndarray, start: int, stop: int) -> tuple[int, int]:
    """The episodes ``[first, last)`` with a step in rows ``[start, stop)`` (``ends``: cumulative)."""
    first = int(np.searchsorted(ends, start, side="right"))
    last = int(np.searchsorted(ends, stop - 1, side="right")) + 1 if stop > start else first
    return first, min(last, len(ends))


def why(e: BaseException) -> str:
    """An exception as ``Type: message`` (zarr's and blosc's messages alone rarely say what failed)."""
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def structure_problems(store) -> list[str]:
    """The cheap checks every open runs (see the module docstring); ``[]`` when they hold.

    ``store`` is an open :class:`~o2o.datasets.EpisodeStore` (its index read).
    """
    E, T = store.num_episodes, store.num_steps
    problems: list[str] = []
    arrays = {}
    for name in store._array_names():
        try:
            arr = store.array(name)
        except Exception as e:  # zarr raises several types for missing or unreadable metadata
            problems.append(
                f"array {name} cannot be opened ({why(e)}): its metadata {name}/zarr.json is missing or damaged"
            )
            continue
        n = store._committed_len(name)
        if arr.shape[0] < n:
            problems.append(f"array {name} has {arr.shape[0]} rows but {n} are committed")
        else:
            arrays[name] = arr
    if E == 0:
        if T != 0:
            problems.append(f"index.json commits 0 episodes but {T} steps")
        return problems
    if "episodes/ends" in arrays:
        try:
            ends = np.asarray(arrays["episodes/ends"][:E], np.int64)
        except Exception as e:
            problems.append(f"array episodes/ends cannot be read ({why(e)}): episode boundaries are lost")
        else:
            lengths = np.diff(np.concatenate([[0], ends]))
            if np.any(lengths < 1):
                i = int(np.argmax(lengths < 1))
                problems.append(
                    f"episodes/ends does not increase at episode {i} (ends {int(ends[i - 1]) if i else 0}"
                    f" -> {int(ends[i])}): episode boundaries are lost (a chunk of episodes/ends missing "
                    "or overwritten)"
                )
            elif int(ends[-1]) != T:
                problems.append(f"episodes/ends ends at step {int(ends[-1])}, index.json commits {T} steps")
    if "episodes/provenance" in arrays:
        try:
            rows = np.asarray(arrays["episodes/provenance"][:E])
        except Exception as e:
            problems.append(f"array episodes/provenance cannot be read ({why(e)})")
        else:
            n = len(store.provenance_table)
            bad = np.flatnonzero((rows < 0) | (rows >= n))
            if len(bad):
                problems.append(
                    f"episodes/provenance of episodes {episode_ranges(bad)} point outside the provenance "
                    f"table of {n} rows"
                )
    if "episodes/digest" in arrays:
        try:
            last = bytes(np.asarray(arrays["episodes/digest"][E - 1], np.uint8)[16:]).hex()
        except Exception as e:
            problems.append(f"array episodes/digest cannot be read at episode {E - 1} ({why(e)})")
        else:
            if last != store.version.fingerprint:
                problems.append(
                    f"index.json fingerprint {store.version.fingerprint[:12]} != the chain value "
                    f"{last[:12]} stored with the last episode ({E - 1})"
                )
    return problems


def check_contents(
    spans: Iterable[tuple[int, int, int]],
    data: Mapping[str, np.ndarray],
    row0: int,
    final: Mapping[str, np.ndarray],
    records: Mapping[str, np.ndarray],
    digests: np.ndarray,
    ep0: int,
    prev_fingerprint: bytes,
    table: Sequence[Mapping],
) -> tuple[list[int], list[int]]:
    """Recompute the digests of the episodes in ``spans`` (``(episode, first step, end step)``, in
    increasing order) from what was read; returns ``(content_bad, chain_bad)``.

    ``data`` maps ``obs/<key>``, ``actions``, ``rewards``, ``terminals``, ``timeouts`` and
    ``interventions`` to rows starting at step ``row0``; ``final`` (``final_obs/<key>``),
    ``records`` (``returns``, ``success``, ``seed``, ``times``, ``provenance``) and
    ``digests`` to episodes starting at ``ep0``; ``prev_fingerprint`` is the stored chain
    value before episode ``ep0``.
    """
    content_bad, chain_bad = [], []
    for i, start, stop in spans:
        i = int(i)
        j = i - ep0
        rows = slice(int(start) - row0, int(stop) - row0)
        arrays = {k: v[rows] for k, v in data.items()}
        arrays.update({k: v[j] for k, v in final.items()})
        p = int(records["provenance"][j])
        times = records["times"][j]
        rec = {
            "returns": float(records["returns"][j]),
            "success": int(records["success"][j]),
            "seed": record_seed(records["seed"][j]),
            "times": [float(times[0]), float(times[1])],
            "provenance": table[p] if 0 <= p < len(table) else None,
        }
        content = episode_digest(arrays, rec)
        stored = bytes(np.asarray(digests[j], np.uint8))
        if stored[:16] != content:
            content_bad.append(i)
        prev = prev_fingerprint if j == 0 else bytes(np.asarray(digests[j - 1], np.uint8)[16:])
        if chain(prev, stored[:16]) != stored[16:]:
            chain_bad.append(i)
    return content_bad, chain_bad


def content_problems(content_bad: Sequence[int], chain_bad: Sequence[int]) -> list[str]:
    """The findings of :func:`check_contents` as sentences."""
    out = []
    if content_bad:
        out.append(
            f"content digest mismatch in {len(content_bad)} episode{'s' if len(content_bad) > 1 else ''} "
            f"({episode_ranges(content_bad)}): their stored steps or records changed after they were committed"
        )
    if chain_bad:
        out.append(
            f"fingerprint chain broken at episode{'s' if len(chain_bad) > 1 else ''} "
            f"{episode_ranges(chain_bad)} (episodes/digest changed after commit)"
        )
    return out


def unreadable_chunks(arr, n: int) -> list[tuple[int, int, int, str]]:
    """``(chunk, first row, end row, reason)`` for each chunk of ``arr``'s first ``n`` rows that fails to decode."""
    c = int(arr.chunks[0])
    bad = []
    for k in range(-(-n // c)):
        a, b = k * c, min(n, (k + 1) * c)
        try:
            arr[a:b]
        except Exception as e:
            bad.append((k, a, b, why(e)))
    return bad


def chunk_text(name: str, chunk: int, a: int, b: int, episodes: tuple[int, int] | None) -> str:
    """``array data/obs/state chunk 3 (rows 12288-16383, episodes 410-455)``."""
    eps = (
        ""
        if episodes is None or episodes[1] <= episodes[0]
        else (
            f", episode {episodes[0]}"
            if episodes[1] - episodes[0] == 1
            else f", episodes {episodes[0]}-{episodes[1] - 1}"
        )
    )
    unit = "episodes" if name.startswith("episodes/") else "rows"
    return f"array {name} chunk {chunk} ({unit} {a}-{b - 1}{eps if unit == 'rows' else ''})"
