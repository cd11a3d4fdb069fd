"""Reading an episode store: where it lives, its commit, selections, transitions, episodes.

Everything here reads only what the commit index says is committed, so it is safe while
another process appends. A store is read from a local directory or from any URL zarr can
read through fsspec (``s3://``, ``gs://``, ``memory://``...); only local stores can be
written (see :meth:`StoreLocation.writable`).
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from o2o.datasets.durable import DurableLocalStore
from o2o.datasets.episode import Episode
from o2o.datasets.integrity import (
    EMPTY_FINGERPRINT,
    DatasetDamagedError,
    check_contents,
    chunk_text,
    content_problems,
    episodes_in_rows,
    seed_or_none,
    unreadable_chunks,
    why,
)

INDEX_KEY = "index.json"
INDEX_FORMAT = 1
# "scheme://..." or a chained fsspec URL ("simplecache::s3://...").
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)(://|::)")
_LOCAL_SCHEMES = ("file", "local")  # fsspec's names for the local filesystem


def local_path(path: str | os.PathLike) -> Path | None:
    """The local directory ``path`` names, or None when it is a URL of another filesystem.

    Plain paths and ``file://`` URLs are local (the URL prefix is stripped); any other
    scheme, or a chained fsspec URL (``simplecache::s3://...``), is read through fsspec.
    """
    if isinstance(path, os.PathLike):
        return Path(path)
    m = _URL.match(path)
    if m is None:
        return Path(path)
    if m.group(1).lower() in _LOCAL_SCHEMES and m.group(2) == "://":
        return Path(path[m.end() :])
    return None


class StoreLocation:
    """Where a store lives: a local directory, or a URL read through fsspec.

    Local stores go through :class:`DurableLocalStore` (the writer's crash-safety needs it);
    remote ones through zarr's ``FsspecStore`` for the arrays and fsspec for ``index.json``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.local = local_path(path)
        self._remote: tuple[Any, str] | None = None  # (fsspec filesystem, root), made on first use

    def writable(self) -> Path:
        """The local directory, or a ValueError saying why a URL cannot be written to."""
        if self.local is None:
            raise ValueError(
                f"dataset {self.path!r}: cannot write to a store at a URL; appends are crash-safe only on a "
                "local filesystem (the one-writer lock is flock, the commit is fsync + atomic rename of "
                f"{INDEX_KEY}). Write to a local path and copy or sync the store to the URL afterwards "
                f"({INDEX_KEY} last); readers can open the URL with mode='r'"
            )
        return self.local

    def _fs(self) -> tuple[Any, str]:
        if self._remote is None:
            from fsspec.core import url_to_fs  # lightning depends on fsspec; local stores never need it

            fs, root = url_to_fs(self.path)
            self._remote = fs, root.rstrip("/")
        return self._remote

    def exists(self, key: str) -> bool:
        """Whether the file ``key`` (relative to the store root) exists."""
        if self.local is not None:
            return (self.local / key).exists()
        fs, root = self._fs()
        return fs.exists(f"{root}/{key}")

    def read_bytes(self, key: str) -> bytes:
        """The content of the file ``key``, read fresh (no cache: readers re-read the commit)."""
        if self.local is not None:
            return (self.local / key).read_bytes()
        fs, root = self._fs()
        return fs.cat_file(f"{root}/{key}")

    def size(self) -> int:
        """Bytes of every file of the store."""
        if self.local is not None:
            return sum(p.stat().st_size for p in self.local.rglob("*") if p.is_file())
        fs, root = self._fs()
        return int(fs.du(root, total=True))

    def partial_files(self) -> list[Path]:
        """Temp files of an interrupted local write (a remote store is only ever copied whole)."""
        return [] if self.local is None else list(self.local.rglob("*.partial"))

    def zarr_store(self, read_only: bool):
        """The zarr store of the arrays; a URL is always read-only."""
        if self.local is not None:
            return DurableLocalStore(self.local, read_only=read_only)
        if not read_only:
            self.writable()  # raises: says why
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(self.path, read_only=True)


@dataclass(frozen=True)
class DatasetVersion:
    """Which data a run used: committed episodes and steps plus the chained fingerprint."""

    episodes: int
    steps: int
    fingerprint: str

    def __str__(self) -> str:
        return f"{self.episodes} episodes @ {self.fingerprint[:12]}"

    def to_dict(self) -> dict:
        return {"episodes": self.episodes, "steps": self.steps, "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, d: Mapping) -> "DatasetVersion":
        return cls(int(d["episodes"]), int(d["steps"]), str(d["fingerprint"]))


def parse_version(text: Any) -> dict | None:
    """A version as users write it (config, command line): ``120`` or ``"120@3f2a9c0d1e2f"`` ->
    ``{"episodes": 120, "fingerprint": "3f2a9c0d1e2f" or None}``; None or empty -> None."""
    if text is None or str(text).strip() == "":
        return None
    n, _, fp = str(text).strip().partition("@")
    try:
        return {"episodes": int(n), "fingerprint": fp or None}
    except ValueError:
        raise ValueError(f"dataset version {text!r}: expected COUNT or COUNT@FINGERPRINT") from None


@dataclass(frozen=True)
class Transitions:
    """All selected steps, time-major: NumPy arrays or torch tensors (see :meth:`to_torch`).

    Observations are flat (dict keys concatenated in schema order) unless loaded with
    ``flatten=False``. ``episode_index`` gives each step's episode in the store.
    """

    observations: Any
    actions: Any
    rewards: Any
    next_observations: Any
    terminals: Any
    timeouts: Any
    episode_index: Any

    def __len__(self) -> int:
        return len(self.actions)

    def to_torch(self, device: Any = "cpu") -> "Transitions":
        """The same transitions as torch tensors on ``device`` (one copy per field)."""
        import torch  # optional at import time: reading with NumPy needs no torch

        def conv(v):
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            return torch.as_tensor(v).to(device)

        return Transitions(**{f.name: conv(getattr(self, f.name)) for f in fields(self)})


@dataclass(frozen=True)
class NormStats:
    """Normalisation statistics of a selection (flat observations)."""

    obs_mean: np.ndarray
    obs_std: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray
    reward_mean: float
    reward_std: float
    reward_min: float
    reward_max: float
    count: int

    def to_dict(self) -> dict:
        return {
            f.name: (v.tolist() if isinstance(v, np.ndarray) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }

    @classmethod
    def from_dict(cls, d) -> "NormStats":
        return cls(
            **{
                f.name: (np.asarray(d[f.name], np.float32) if isinstance(d[f.name], list) else d[f.name])
                for f in fields(cls)
            }
        )


class StoreReading:
    """Read methods of :class:`o2o.datasets.EpisodeStore` (a mixin, kept in its own file).

    Expects ``path``, ``location`` (a :class:`StoreLocation`), ``attrs``, ``schema``,
    ``verify`` (whether loads check content digests) and ``array(name)`` from the store.
    """

    verify: bool = True

    # ------------------------------------------------------------------ the commit
    def refresh(self) -> DatasetVersion:
        """Re-read the commit index (a reader sees appends committed since it opened)."""
        try:
            index = json.loads(self.location.read_bytes(INDEX_KEY))
        except (OSError, ValueError) as e:
            raise ValueError(f"dataset {self.path!r}: cannot read {INDEX_KEY}: {e}") from e
        if index.get("format") != INDEX_FORMAT:
            raise ValueError(f"dataset {self.path!r}: index format {index.get('format')} not supported")
        self._index = index
        return self.version

    @property
    def version(self) -> DatasetVersion:
        """The committed episode and step counts and the fingerprint, as of the last refresh."""
        i = self._index
        return DatasetVersion(int(i["episodes"]), int(i["steps"]), str(i["fingerprint"]))

    @property
    def num_episodes(self) -> int:
        """Committed episodes."""
        return int(self._index["episodes"])

    @property
    def num_steps(self) -> int:
        """Committed steps (transitions)."""
        return int(self._index["steps"])

    @property
    def provenance_table(self) -> list[dict]:
        """The distinct provenance records; ``episodes/provenance`` holds a row of it per episode."""
        return copy.deepcopy(self._index["provenance"])  # callers may mutate their copy

    @property
    def env(self) -> dict | None:
        """The env config the store was created with, if any."""
        return self.attrs.get("env")

    # ------------------------------------------------------------------ selection
    def _episode_column(self, name: str, n: int | None = None) -> np.ndarray:
        n = self.num_episodes if n is None else n
        return self._read(f"episodes/{name}", slice(0, n))

    def _read(self, name: str, sel: Any = slice(None), points: np.ndarray | None = None) -> np.ndarray:
        """``array(name)[sel]`` (or ``.oindex[points]``); a chunk that fails to decode is a
        :class:`DatasetDamagedError` naming the array, the chunk, its rows and their episodes."""
        arr = self.array(name)
        try:
            return arr.oindex[points] if points is not None else arr[sel]
        except Exception as e:
            raise DatasetDamagedError(self.path, [self._unreadable(name, arr, e)], unreadable=True) from None

    def _unreadable(self, name: str, arr, error: BaseException) -> str:
        n = self.num_steps if name.startswith("data/") else self.num_episodes
        bad = unreadable_chunks(arr, min(n, arr.shape[0]))
        if not bad:
            return f"array {name} cannot be read ({why(error)})"
        ends = None
        if name.startswith("data/"):
            try:
                ends = np.asarray(self.array("episodes/ends")[: self.num_episodes], np.int64)
            except Exception:  # the boundaries are damaged too: name the rows only
                ends = None
        parts = [
            chunk_text(name, k, a, b, None if ends is None else episodes_in_rows(ends, a, b)) for k, a, b, _ in bad
        ]
        return f"{'; '.join(parts)} cannot be decoded ({bad[0][3]})"

    def _findings(
        self,
        spans: list[tuple[int, int, int]],
        data: Mapping[str, np.ndarray],
        row0: int,
        final: Mapping[str, np.ndarray],
        ep0: int,
    ) -> tuple[list[int], list[int]]:
        """Episodes of ``spans`` whose content digest / chain link differ from what was committed
        (``data`` rows from step ``row0``, ``final`` rows from episode ``ep0``: what the caller read)."""
        if not spans:
            return [], []
        hi = spans[-1][0] + 1
        records = {
            name: self._read(f"episodes/{name}", slice(ep0, hi))
            for name in ("returns", "success", "seed", "times", "provenance")
        }
        first = max(ep0 - 1, 0)
        digests = self._read("episodes/digest", slice(first, hi))
        prev = bytes.fromhex(EMPTY_FINGERPRINT) if ep0 == 0 else bytes(np.asarray(digests[0], np.uint8)[16:])
        return check_contents(
            spans, data, row0, final, records, digests[ep0 - first :], ep0, prev, self._index["provenance"]
        )

    def _check_loaded(
        self,
        spans: list[tuple[int, int, int]],
        data: Mapping[str, np.ndarray],
        row0: int,
        final: Mapping[str, np.ndarray],
        ep0: int,
    ) -> None:
        """Raise :class:`DatasetDamagedError` unless every episode of ``spans`` matches its digest."""
        problems = content_problems(*self._findings(spans, data, row0, final, ep0))
        if problems:
            raise DatasetDamagedError(self.path, problems, "Nothing was loaded from it. ")

    def check_contents(self, indices: np.ndarray | None = None, block_rows: int = 1 << 20) -> list[str]:
        """Problems with the stored contents of the episodes ``indices`` (default all), read in
        blocks of about ``block_rows`` steps: content digests and chain links (``[]``: intact).
        A chunk that fails to decode raises :class:`DatasetDamagedError`."""
        n = self.num_episodes
        idx = np.arange(n) if indices is None else np.unique(np.asarray(indices, np.int64))
        if len(idx) == 0:
            return []
        ends = self._episode_column("ends", n)
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        content_bad: list[int] = []
        chain_bad: list[int] = []
        pos = 0
        while pos < len(idx):
            # Episodes idx[pos:stop] whose steps span at most block_rows (at least one episode).
            stop = pos + max(1, int(np.searchsorted(ends[idx[pos:]] - starts[idx[pos]], block_rows, side="right")))
            block = idx[pos:stop]
            e0, e1 = int(block[0]), int(block[-1]) + 1
            r0, r1 = int(starts[e0]), int(ends[e1 - 1])
            data = {f"obs/{k}": self._read(f"data/obs/{k}", slice(r0, r1)) for k in self.schema.obs}
            for key in ("actions", "rewards", "terminals", "timeouts", "interventions"):
                data[key] = self._read(f"data/{key}", slice(r0, r1))
            final = {f"final_obs/{k}": self._read(f"episodes/final_obs/{k}", slice(e0, e1)) for k in self.schema.obs}
            bad = self._findings([(int(i), int(starts[i]), int(ends[i])) for i in block], data, r0, final, e0)
            content_bad += bad[0]
            chain_bad += bad[1]
            pos = stop
        return content_problems(content_bad, chain_bad)

    def select(
        self,
        sources: Sequence[str] | str | None = None,
        policy_ids: Sequence[str] | str | None = None,
        episodes: slice | range | Sequence[int] | None = None,
        version=None,
        success: bool | None = None,
    ) -> np.ndarray:
        """Indices of committed episodes matching every given criterion.

        ``version``: a :class:`DatasetVersion` (or its dict, or an episode count) — only
        the episodes that existed at that version; with a fingerprint, it must match.
        """
        n = self._version_count(version)
        idx = np.arange(n)
        if episodes is not None:
            if isinstance(episodes, slice):
                idx = idx[episodes]
            else:
                req = np.asarray(list(episodes), dtype=np.int64)
                bad = req[(req < 0) | (req >= n)]
                if len(bad):
                    raise IndexError(f"dataset {self.path!r}: episodes {bad[:5].tolist()} not in 0..{n - 1}")
                idx = np.unique(req)
        if sources is not None or policy_ids is not None:
            prov = self._episode_column("provenance", n)[idx]
            table = self.provenance_table
            keep = np.ones(len(idx), bool)
            for field, wanted in (("source", sources), ("policy_id", policy_ids)):
                if wanted is None:
                    continue
                wanted = {wanted} if isinstance(wanted, str) else set(wanted)
                ok_rows = np.array([p[field] in wanted for p in table] + [False], bool)
                keep &= ok_rows[prov]
            idx = idx[keep]
        if success is not None:
            idx = idx[self._episode_column("success", n)[idx] == int(success)]
        return idx

    def _version_count(self, version) -> int:
        if version is None:
            return self.num_episodes
        if isinstance(version, (int, np.integer)):
            n, fp = int(version), None
        else:
            d = version.to_dict() if hasattr(version, "to_dict") else dict(version)
            n, fp = int(d["episodes"]), d.get("fingerprint")
        if not 0 <= n <= self.num_episodes:
            raise ValueError(f"dataset {self.path!r}: version with {n} episodes, but {self.num_episodes} are committed")
        if fp is not None:
            have = self.version_at(n).fingerprint
            # A printed prefix (``120 episodes @ 3f2a9c0d1e2f``) names a version as well as the full hash.
            if len(str(fp)) < 8 or not have.startswith(str(fp)):
                raise ValueError(
                    f"dataset {self.path!r}: fingerprint at {n} episodes is {have[:12]}, not {fp[:12]}: "
                    "this is not the dataset version asked for"
                )
        return n

    def written_by(self, run_id: str | Iterable[str], start: int = 0, key: str = "id") -> dict[Any, list[int]]:
        """The episodes (from ``start`` on) whose provenance ``run[key]`` is ``run_id`` (or one of several
        ids), by the run's ``part``."""
        ids = {run_id} if isinstance(run_id, str) else set(run_id)
        n = self.num_episodes
        if start >= n:
            return {}
        rows = self._episode_column("provenance", n)[start:]
        table = self._index["provenance"]
        out: dict[Any, list[int]] = {}
        for i, row in enumerate(rows, start):
            run = table[int(row)].get("run") or {}
            if run.get(key) in ids:
                out.setdefault(run.get("part"), []).append(i)
        return out

    def version_at(self, n: int) -> DatasetVersion:
        """The dataset version after its first ``n`` committed episodes (what a run on them recorded)."""
        if not 0 <= n <= self.num_episodes:
            raise ValueError(f"dataset {self.path!r}: no version with {n} episodes ({self.num_episodes} are committed)")
        if n == 0:
            return DatasetVersion(0, 0, EMPTY_FINGERPRINT)
        if n == self.num_episodes:
            return self.version
        steps = int(self._episode_column("ends", n)[n - 1])
        return DatasetVersion(n, steps, bytes(self._read("episodes/digest", n - 1)[16:]).hex())

    def episodes_table(self, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per-episode records (index, length, return, success, source, policy, task...) as arrays.

        ``seed`` is an object array of ints, None where an episode has no seed; ``task`` one of
        the reset options each episode started from, None where it had none."""
        n = self.num_episodes
        idx = np.arange(n) if indices is None else np.asarray(indices, np.int64)
        ends = self._episode_column("ends", n)
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        prov = self._episode_column("provenance", n)[idx]
        table = self.provenance_table
        out = {"index": idx, "start": starts[idx], "length": (ends - starts)[idx]}
        for name in ("returns", "success"):
            out[name] = self._episode_column(name, n)[idx]
        out["seed"] = np.array([seed_or_none(v) for v in self._episode_column("seed", n)[idx]] + [None], dtype=object)[
            :-1
        ]
        times = self._episode_column("times", n)[idx]
        out["start_time"], out["end_time"] = times[:, 0], times[:, 1]
        last = np.asarray(ends[idx] - 1, np.int64)
        out["terminated"] = self._read("data/terminals", points=last) if len(idx) else np.zeros(0, bool)
        out["truncated"] = self._read("data/timeouts", points=last) if len(idx) else np.zeros(0, bool)
        for field in ("source", "policy_id", "policy_version"):
            out[field] = np.array([table[p][field] for p in prov], dtype=object)
        # The episode's task (its reset options) or None; a trailing None keeps dicts from becoming a 2-D array.
        out["task"] = np.array([table[p].get("task") for p in prov] + [None], dtype=object)[:-1]
        # Human-controlled steps per episode, from one read of the flag column.
        counts = np.cumsum(self._read("data/interventions", slice(0, self.num_steps)), dtype=np.int64)
        counts = np.concatenate([[0], counts])
        out["interventions"] = counts[ends[idx]] - counts[starts[idx]]
        return out

    # ------------------------------------------------------------------ bulk loading
    def load_transitions(
        self, indices: np.ndarray | None = None, flatten: bool = True, device: Any = None, verify: bool | None = None
    ) -> Transitions:
        """All steps of the selected episodes in one call (NumPy; torch on ``device`` if given).

        Every loaded episode is checked against its committed content digest first (a
        :class:`DatasetDamagedError` names the damaged ones; nothing is returned);
        ``verify=False`` skips that (default: the store's ``verify``, set at open). A chunk
        that fails to decode stops the load only when a selected episode has rows in it."""
        verify = self.verify if verify is None else bool(verify)
        n = self.num_episodes
        idx = np.arange(n) if indices is None else np.asarray(indices, np.int64)
        ends = self._episode_column("ends", n)
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        lengths = (ends - starts)[idx]
        if len(idx) == 0:
            parts = [self._block(0, 0, starts, ends, False)]
        else:
            contiguous = idx[0] == 0 and np.all(np.diff(idx) == 1)
            try:  # the prefix up to the last selected episode in one read per array (fast)
                parts = [self._block(0, int(idx.max()) + 1, starts, ends, verify, None if contiguous else idx)]
            except DatasetDamagedError as e:
                if not e.unreadable:
                    raise
                # A chunk no selected episode may need fails to decode: read each run of episodes alone.
                cut = np.flatnonzero(np.diff(idx) != 1) + 1
                parts = [self._block(int(r[0]), int(r[-1]) + 1, starts, ends, verify) for r in np.split(idx, cut)]
        cat = {
            k: (np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k])
            for k in ("actions", "rewards", "terminals", "timeouts")
        }
        obs = {
            k: np.concatenate([p["obs"][k] for p in parts]) if len(parts) > 1 else parts[0]["obs"][k]
            for k in self.schema.obs
        }
        nxt = {
            k: np.concatenate([p["next"][k] for p in parts]) if len(parts) > 1 else parts[0]["next"][k]
            for k in self.schema.obs
        }
        if flatten:
            obs, nxt = self._flatten(obs), self._flatten(nxt)
        out = Transitions(observations=obs, next_observations=nxt, episode_index=np.repeat(idx, lengths), **cat)
        return out.to_torch(device) if device is not None else out

    def _block(
        self, a: int, b: int, starts: np.ndarray, ends: np.ndarray, verify: bool, select: np.ndarray | None = None
    ) -> dict[str, Any]:
        """The steps of episodes ``a..b-1`` (one read per array), or of the episodes ``select`` among them
        (in that order), with next observations; the returned episodes checked against their digests."""
        r0 = int(starts[a]) if b > a else 0
        r1 = int(ends[b - 1]) if b > a else 0
        raw = {f"obs/{key}": self._read(f"data/obs/{key}", slice(r0, r1)) for key in self.schema.obs}
        for key in ("actions", "rewards", "terminals", "timeouts"):
            raw[key] = self._read(f"data/{key}", slice(r0, r1))
        final = {f"final_obs/{key}": self._read(f"episodes/final_obs/{key}", slice(a, b)) for key in self.schema.obs}
        eps = np.arange(a, b) if select is None else np.unique(select)
        if verify and len(eps):
            raw["interventions"] = self._read("data/interventions", slice(r0, r1))
            self._check_loaded([(int(i), int(starts[i]), int(ends[i])) for i in eps], raw, r0, final, a)
        rows = slice(None) if select is None else _ranges(starts[select] - r0, (ends - starts)[select])
        out: dict[str, Any] = {"obs": {}, "next": {}}
        for key in self.schema.obs:
            full, last = raw[f"obs/{key}"], final[f"final_obs/{key}"]
            nx = np.empty_like(full)
            nx[:-1] = full[1:]
            nx[ends[a:b] - r0 - 1] = last  # each episode's last step continues to its final observation
            out["obs"][key], out["next"][key] = full[rows], nx[rows]
        for key in ("actions", "rewards", "terminals", "timeouts"):
            out[key] = raw[key][rows]
        return out

    def _flatten(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        # Explicit widths, not -1: a selection may hold zero rows.
        parts = [v.reshape(len(v), int(np.prod(v.shape[1:], dtype=np.int64))) for v in obs.values()]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([p.astype(np.float32) for p in parts], axis=1)

    def normalization_stats(self, indices: np.ndarray | None = None, eps: float = 1e-3) -> NormStats:
        """Mean/std of flat observations and actions, reward range, over a selection."""
        tr = self.load_transitions(indices)
        if len(tr) == 0:
            raise ValueError(f"dataset {self.path!r}: no transitions selected, cannot compute statistics")
        o = tr.observations.astype(np.float64)
        a = tr.actions.astype(np.float64)
        r = tr.rewards.astype(np.float64)
        return NormStats(
            obs_mean=o.mean(0).astype(np.float32),
            obs_std=np.maximum(o.std(0), eps).astype(np.float32),
            action_mean=a.mean(0).astype(np.float32),
            action_std=np.maximum(a.std(0), eps).astype(np.float32),
            reward_mean=float(r.mean()),
            reward_std=float(r.std()),
            reward_min=float(r.min()),
            reward_max=float(r.max()),
            count=len(tr),
        )

    # ------------------------------------------------------------------ episodes one by one
    def episode(self, i: int, verify: bool | None = None) -> Episode:
        """Episode ``i`` with its arrays and record, checked against its committed digest
        (``verify=False`` skips that; default: the store's ``verify``)."""
        verify = self.verify if verify is None else bool(verify)
        n = self.num_episodes
        if not 0 <= i < n:
            raise IndexError(f"dataset {self.path!r}: episode {i} not in 0..{n - 1}")
        bounds = self._read("episodes/ends", slice(max(i - 1, 0), i + 1))
        start = int(bounds[0]) if i > 0 else 0
        end = int(bounds[-1])
        s = slice(start, end)
        data = {f"obs/{k}": self._read(f"data/obs/{k}", s) for k in self.schema.obs}
        for key in ("actions", "rewards", "terminals", "timeouts", "interventions"):
            data[key] = self._read(f"data/{key}", s)
        final = {f"final_obs/{k}": self._read(f"episodes/final_obs/{k}", slice(i, i + 1)) for k in self.schema.obs}
        if verify:
            self._check_loaded([(i, start, end)], data, start, final, i)
        obs = {k: data[f"obs/{k}"] for k in self.schema.obs}
        last = {k: final[f"final_obs/{k}"][0] for k in self.schema.obs}
        if self.schema.flat:
            (obs,), (last,) = obs.values(), last.values()
        col = lambda name: self._read(f"episodes/{name}", i)  # noqa: E731
        success = int(col("success"))
        start_time, end_time = (float(t) for t in col("times"))
        return Episode(
            observations=obs,
            actions=data["actions"],
            rewards=data["rewards"],
            terminals=data["terminals"],
            timeouts=data["timeouts"],
            final_observation=last,
            provenance=copy.deepcopy(self.provenance_table[int(col("provenance"))]),
            interventions=data["interventions"],
            seed=seed_or_none(col("seed")),
            success=None if success < 0 else bool(success),
            start_time=start_time,
            end_time=end_time,
            index=i,
        )

    def iter_episodes(self, indices: Iterable[int] | None = None, verify: bool | None = None) -> Iterator[Episode]:
        """Episodes one by one (a selection from :meth:`select`, or all), each checked as :meth:`episode` does."""
        for i in range(self.num_episodes) if indices is None else indices:
            yield self.episode(int(i), verify=verify)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + l)`` for each pair, without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(total, dtype=np.int64) + offsets
