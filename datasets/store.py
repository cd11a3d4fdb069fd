"""The growing, crash-safe Zarr episode store.

Layout of a dataset (a Zarr v3 group)::

    zarr.json                 attributes: schema, env, creation time, o2o version
    data/obs/<key>            (T, ...) observation per step, one array per key
    data/actions              (T, A)
    data/rewards, terminals, timeouts, interventions          (T,)
    episodes/final_obs/<key>  (E, ...) observation after each episode's last step
    episodes/ends             (E,) cumulative step count: episode i is rows ends[i-1]:ends[i]
    episodes/{returns, success, seed, times, provenance, digest}   (E, ...)
    index.json                the commit: episode and step counts, fingerprint, provenance table
    .o2o.lock                 the writer lock (flock)

An append validates every episode first, writes all rows past the committed end, makes
them durable, and only then replaces ``index.json`` atomically. Readers trust
``index.json`` alone, so they never see a row that is not committed; a writer that opens
the store after a crash trims everything past the committed end.

Readers open a local path or any URL zarr reads through fsspec; writers need a local
filesystem (flock, fsync and atomic rename are what make appends crash-safe).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from o2o.core.processes import alive
from o2o.core.versions import package_version
from o2o.datasets.durable import DurableLocalStore, StoreLockedError, WriterLock, atomic_write_bytes, fsync_dir
from o2o.datasets.episode import Episode
from o2o.datasets.integrity import (
    EMPTY_FINGERPRINT,
    NO_SEED,
    DatasetDamagedError,
    chain,
    episode_digest,
    structure_problems,
)
from o2o.datasets.reading import INDEX_FORMAT, INDEX_KEY, DatasetVersion, StoreLocation, StoreReading
from o2o.datasets.schema import SOURCES, Schema, validate_episode

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # ~1 MiB uncompressed per chunk: large sequential reads
# Every commit rewrites the last chunk of each array, so small per-row arrays (rewards,
# flags, per-episode records) get fewer rows per chunk than 1 MiB would give them.
MAX_STEP_CHUNK_ROWS = 1 << 16
MAX_EPISODE_CHUNK_ROWS = 1 << 12
EPISODE_FIELDS = {  # per-episode arrays: dtype, trailing shape
    "ends": ("int64", ()),
    "returns": ("float64", ()),
    "success": ("int8", ()),  # -1 unknown, 0, 1
    "seed": ("uint64", ()),  # NO_SEED: none (stores made before seeds went uint64 hold int64, -1 none)
    "times": ("float64", (2,)),  # start, end (Unix seconds)
    "provenance": ("int32", ()),  # row of the index's provenance table
    "digest": ("uint8", (32,)),  # [:16] content digest, [16:] chained fingerprint
}
# Each zarr operation costs milliseconds whatever its size, so a commit touches as few
# arrays as it can: terminated/truncated are read from data/terminals|timeouts at the ends.
__all__ = [
    "EpisodeStore",
    "DatasetVersion",
    "DatasetDamagedError",
    "NotADatasetError",
    "StoreLockedError",
    "o2o_version",
    "episode_digest",
    "chain",
]
CREATING = ".creating-"  # <parent>/.<name>.creating-<pid>-<id>: a store being built, renamed into place when whole


class NotADatasetError(ValueError):
    """The path holds something that is not an o2o dataset (a file, or a folder with other files)."""


def o2o_version() -> str:
    return package_version("o2o") or "unknown"


def _chunk_rows(row_bytes: int, target: int, max_rows: int) -> int:
    rows = min(max_rows, max(1, target // max(1, row_bytes)))
    return 1 << int(math.log2(rows))


def _compressor(dtype: np.dtype) -> BloscCodec:
    # lz4 + byte shuffle decompresses at GB/s: bulk loads are bounded by memory, not codec.
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle" if dtype.itemsize > 1 else "noshuffle")


class EpisodeStore(StoreReading):
    """An append-only dataset of episodes in Zarr. Open with :meth:`create` or :meth:`open`.

    ``mode='r'`` reads (any number of readers, also while a writer appends), from a local
    path or any fsspec URL zarr supports (``s3://bucket/lift.zarr``); ``mode='a'`` takes
    the writer lock, repairs an uncommitted tail left by a crash, and appends (local only).
    Use as a context manager, or call :meth:`close`, to release the lock.

    Opening checks the structure (:func:`~o2o.datasets.integrity.structure_problems`) and
    refuses a damaged store with :class:`DatasetDamagedError`; loads check each episode's
    content digest and a writer checks the tail it will rewrite, unless ``verify=False``.
    """

    def __init__(self, path: str | Path, mode: str = "r", verify: bool = True, _lock: WriterLock | None = None):
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        self.path = str(path)
        self.location = StoreLocation(path)
        self.mode = mode
        self.verify = bool(verify)
        self._created = False  # create(remove_if_empty=True): removed again if closed before anything was committed
        # The local directory (None for a URL): only a writer uses it, for the lock and the commit.
        self.root = self.location.writable() if mode == "a" else self.location.local
        has_attrs, has_index = self.location.exists("zarr.json"), self.location.exists(INDEX_KEY)
        if not (has_attrs and has_index):
            if _lock is not None:
                _lock.release()
            if has_attrs or has_index:
                missing = "zarr.json (the root metadata: schema, env)" if has_index else f"{INDEX_KEY} (the commit)"
                raise DatasetDamagedError(self.path, [f"{missing} is missing"], "Nothing was read or written. ")
            raise FileNotFoundError(
                f"dataset {self.path!r} does not exist or is not an o2o store (no zarr.json/{INDEX_KEY}); "
                "create it with EpisodeStore.create or `o2o collect`"
            )
        self._lock = (_lock or WriterLock(self.root)) if mode == "a" else None
        self._arrays: dict[str, zarr.Array] = {}
        if self._lock is not None and not self._lock.held:
            self._lock.acquire(self.path)
        try:
            self._zstore = self.location.zarr_store(read_only=(mode == "r"))
            try:
                self.group = zarr.open_group(self._zstore, mode="r" if mode == "r" else "r+")
                attrs = dict(self.group.attrs).get("o2o")
            except Exception as e:  # unreadable root metadata
                raise DatasetDamagedError(
                    self.path,
                    [f"root zarr.json cannot be read ({type(e).__name__}: {e})"],
                    "Nothing was read or written. ",
                ) from None
            if attrs is None:
                raise ValueError(f"dataset {self.path!r}: zarr group has no 'o2o' attributes")
            self.attrs: dict = attrs
            self.schema = Schema.from_attrs(attrs)
            self.refresh()
            problems = structure_problems(self)
            if problems:
                raise DatasetDamagedError(self.path, problems, "Nothing was read or written. ")
            if mode == "a":
                if self.verify:  # before the repair: a refused writer leaves the store as it found it
                    self._check_tail()
                self._repair()
            self._opened = True
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ creation
    @staticmethod
    def is_dataset(path: str | Path) -> bool:
        """Whether ``path`` holds an o2o dataset, sound or not (its root metadata or its commit index)."""
        loc = StoreLocation(path)
        return loc.exists("zarr.json") or loc.exists(INDEX_KEY)

    @classmethod
    def create(
        cls,
        path: str | Path,
        schema: Schema,
        env: Mapping[str, Any] | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        remove_if_empty: bool = False,
    ) -> "EpisodeStore":
        """Create an empty dataset and return it open for appending (a local path only).

        The store is built in a hidden folder beside ``path`` and renamed into place whole,
        with its writer lock already held, so a concurrent creator gets
        :class:`FileExistsError` (then :class:`StoreLockedError` when it opens the winner's
        store to append) and a reader never sees a half-made store. With ``remove_if_empty``
        (what imports and collections use; off by default), a store closed before any episode
        was committed is removed again: a failed import leaves nothing behind. ``path`` may be
        absent or an empty folder; anything else is refused (:class:`NotADatasetError`,
        :class:`FileExistsError` for a dataset). An empty folder that cannot be replaced by a
        rename (a mount point) is filled in place, under the lock, the commit index last.
        """
        root = StoreLocation(path).writable()
        was_empty_dir = _check_new_path(root, str(path))
        root.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(root)
        staging = root.parent / f".{root.name}{CREATING}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        lock = WriterLock(staging)
        try:
            lock.acquire(str(path))
            _build(staging, schema, env, chunk_bytes)
            try:
                os.rename(staging, root)  # atomic; replaces an empty folder, fails on a non-empty one
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise FileExistsError(
                        f"dataset {str(path)!r} was created by another process meanwhile; open it "
                        "with mode='a' to append"
                    ) from None
                if not (was_empty_dir and root.is_dir()):
                    raise
                lock.release()
                shutil.rmtree(staging, ignore_errors=True)
                lock = _build_in_place(root, str(path), schema, env, chunk_bytes)  # e.g. EBUSY: a mount point
            else:
                lock.path = root / lock.path.name
                fsync_dir(root.parent)
        except BaseException:
            lock.release()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        store = cls(path, mode="a", _lock=lock)
        store._created = bool(remove_if_empty)
        store._was_empty_dir = was_empty_dir
        return store

    @classmethod
    def open(cls, path: str | Path, mode: str = "r", verify: bool = True) -> "EpisodeStore":
        """Open an existing dataset: ``mode='r'`` reads (a path or a URL), ``'a'`` appends (a path).

        ``verify=False`` skips the content checks of loads and of a writer's tail (not the structure check)."""
        return cls(path, mode=mode, verify=verify)

    # ------------------------------------------------------------------ state
    def array(self, name: str) -> zarr.Array:
        """A Zarr array of the store (a reader opens it fresh, so its shape is current)."""
        if self.mode == "a":  # only this process changes shapes: keep the handles
            if name not in self._arrays:
                # Every chunk gets a file, zeros too: skips a full-chunk comparison per write, and a chunk
                # file that is missing is always damage (verify reports it).
                with zarr.config.set({"array.write_empty_chunks": True}):
                    self._arrays[name] = zarr.open_array(self._zstore, path=name, mode="r+")
            return self._arrays[name]
        return zarr.open_array(self._zstore, path=name, mode="r")

    def _array_names(self) -> list[str]:
        names = [f"data/obs/{k}" for k in self.schema.obs] + [f"episodes/final_obs/{k}" for k in self.schema.obs]
        names += ["data/actions", "data/rewards", "data/terminals", "data/timeouts", "data/interventions"]
        return names + [f"episodes/{n}" for n in EPISODE_FIELDS]

    def _committed_len(self, name: str) -> int:
        return self.num_steps if name.startswith("data/") else self.num_episodes

    def _trim(self) -> list[str]:
        """Cut every array back to its committed length; names what was cut."""
        trimmed = []
        for name in self._array_names():
            arr = self.array(name)
            n = self._committed_len(name)
            if arr.shape[0] != n:
                if arr.shape[0] < n:
                    raise ValueError(
                        f"dataset {self.path!r}: array {name} has {arr.shape[0]} rows but {n} are committed; "
                        "the store is damaged (run `o2o dataset verify`)"
                    )
                trimmed.append(f"{name}: {arr.shape[0] - n}")
                arr.resize((n, *arr.shape[1:]))
        if trimmed:
            self._zstore.sync_dirs()
        return trimmed

    def _repair(self) -> None:
        """Trim rows past the committed end (left by a crash) and stray temp files."""
        trimmed = self._trim()
        for tmp in self.root.rglob("*.partial"):
            tmp.unlink(missing_ok=True)
        if trimmed:
            log.warning(
                "dataset %r: removed uncommitted rows left by an interrupted append (%s)", self.path, ", ".join(trimmed)
            )

    def _check_tail(self) -> None:
        """Refuse to append onto a damaged tail: an append rewrites the last chunk of every array, so every
        episode with rows or a record in one of those chunks must match its digest first."""
        E, T = self.num_episodes, self.num_steps
        if E == 0:
            return
        ends = self._episode_column("ends", E)
        lo = E
        for name in self._array_names():
            c = int(self.array(name).chunks[0])
            if name.startswith("data/"):
                lo = min(lo, int(np.searchsorted(ends, ((T - 1) // c) * c, side="right")))
            else:
                lo = min(lo, ((E - 1) // c) * c)
        problems = self.check_contents(np.arange(lo, E))
        if problems:
            raise DatasetDamagedError(
                self.path,
                problems,
                "Nothing was appended: an append rewrites the last chunk "
                f"of every array, and episodes {lo}-{E - 1} share them. ",
            )

    # ------------------------------------------------------------------ writing
    def append(self, episode: Episode) -> int:
        """Validate, write and commit one episode; returns its index."""
        return self.append_many([episode])[0]

    def append_many(self, episodes: Sequence[Episode]) -> list[int]:
        """Validate every episode, then write and commit them together (one commit).

        Nothing is written if any episode is invalid. Returns the new episode indices.
        """
        if self.mode != "a" or self._lock is None or not self._lock.held:
            raise PermissionError(f"dataset {self.path!r} is open read-only (or closed); open it with mode='a'")
        if not episodes:
            return []
        E0, T0 = self.num_episodes, self.num_steps
        seed_dtype = self.array("episodes/seed").dtype  # uint64; int64 in stores made before
        prov_table = self.provenance_table
        prov_rows = {json.dumps(p, sort_keys=True): i for i, p in enumerate(prov_table)}
        validated, records = [], []
        for j, ep in enumerate(episodes):
            where = f"dataset {self.path!r}: episode {E0 + j}" + (f" (batch item {j})" if len(episodes) > 1 else "")
            arrays = validate_episode(self.schema, ep, where)
            prov = _check_provenance(ep.provenance, where)
            key = json.dumps(prov, sort_keys=True)
            if key not in prov_rows:
                prov_rows[key] = len(prov_table)
                prov_table.append(prov)
            validated.append(arrays)
            records.append(
                {
                    "returns": float(np.sum(arrays["rewards"], dtype=np.float64)),
                    "success": -1 if ep.success is None else int(bool(ep.success)),
                    "seed": -1 if ep.seed is None else _check_seed(ep.seed, where, seed_dtype),
                    "times": _check_times(ep, where),
                    "provenance": prov_rows[key],
                }
            )
        # Digests chain each episode to all before it: one hash names the whole history.
        fp = bytes.fromhex(self._index["fingerprint"])
        digests = []
        for arrays, rec in zip(validated, records):
            content = episode_digest(arrays, dict(rec, provenance=prov_table[rec["provenance"]]))
            fp = chain(fp, content)
            digests.append(np.frombuffer(content + fp, np.uint8))
        lengths = [len(a["actions"]) for a in validated]
        ends = T0 + np.cumsum(lengths)

        columns: dict[str, np.ndarray] = {}
        for key in validated[0]:
            part = [a[key] for a in validated]
            name = f"episodes/{key}" if key.startswith("final_obs/") else f"data/{key}"
            columns[name] = np.stack(part) if key.startswith("final_obs/") else np.concatenate(part)
        columns["episodes/ends"] = ends.astype(np.int64)
        for field in EPISODE_FIELDS:
            if field not in ("ends", "digest", "seed"):
                columns[f"episodes/{field}"] = np.asarray([r[field] for r in records], dtype=EPISODE_FIELDS[field][0])
        none = NO_SEED if seed_dtype == np.uint64 else -1
        columns["episodes/seed"] = np.asarray([none if r["seed"] < 0 else r["seed"] for r in records], dtype=seed_dtype)
        columns["episodes/digest"] = np.stack(digests)

        # Data first ...
        for name, values in columns.items():
            arr = self.array(name)
            start = self._committed_len(name)
            need = start + len(values)
            if need > arr.shape[0]:
                # Grow a chunk ahead: most commits then write rows without a metadata write.
                chunk = arr.chunks[0]
                arr.resize((-(-need // chunk) * chunk + chunk, *arr.shape[1:]))
            arr[start:need] = values
        self._zstore.sync_dirs()
        # ... the index last: the commit point.
        index = dict(
            self._index,
            episodes=E0 + len(episodes),
            steps=int(ends[-1]),
            fingerprint=fp.hex(),
            provenance=prov_table,
            updated=time.time(),
        )
        atomic_write_bytes(self.root / INDEX_KEY, json.dumps(index).encode())
        self._index = index
        return list(range(E0, E0 + len(episodes)))

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Trim the spare capacity (a writer) and release the lock. A store made by
        ``create(remove_if_empty=True)`` and closed with no episode committed is removed."""
        if self._lock is not None and self._lock.held and not getattr(self, "_opened", False):
            self._lock.release()  # failed while opening (damaged, locked...): nothing to trim, nothing touched
        if self._lock is not None and self._lock.held:
            try:
                if self._created and self.num_episodes == 0:
                    self._discard()
                else:
                    self._trim()
            finally:
                self._lock.release()

    def _discard(self) -> None:
        # Renamed away first: an interruption during the removal leaves a hidden folder, not a half-deleted
        # store at the path (a later create removes the hidden one).
        trash = self.root.parent / f".{self.root.name}{CREATING}{os.getpid()}-discarded"
        try:
            os.rename(self.root, trash)
        except OSError:  # a mount point: empty it in place
            for p in list(self.root.iterdir()):
                if p.name != ".o2o.lock":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            (self.root / ".o2o.lock").unlink(missing_ok=True)
            return
        if getattr(self, "_was_empty_dir", False):
            self.root.mkdir()  # the empty folder that was there before
        fsync_dir(self.root.parent)
        shutil.rmtree(trash, ignore_errors=True)

    def __enter__(self) -> "EpisodeStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EpisodeStore({self.path!r}, mode={self.mode!r}, {self.version})"


def _check_new_path(root: Path, path: str) -> bool:
    """Refuse to create a dataset over anything but nothing or an empty folder; True if an empty folder."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise NotADatasetError(f"dataset {path!r}: the path is a file, not a folder; choose another dataset path")
    entries = sorted(p.name for p in root.iterdir())
    if not entries:
        return True
    if EpisodeStore.is_dataset(root):
        raise FileExistsError(f"dataset {path!r} already exists; open it with mode='a' to append")
    shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
    raise NotADatasetError(
        f"dataset {path!r}: the folder exists, is not empty and is not an o2o dataset ({shown}); "
        "nothing was written. Choose another dataset path or empty the folder"
    )


def _remove_abandoned(root: Path) -> None:
    """Delete staging folders of creators that died before renaming theirs into place (their lock is free)."""
    for d in root.parent.glob(f".{root.name}{CREATING}*"):
        pid = d.name.rpartition(CREATING)[2].split("-")[0]
        if not pid.isdigit() or alive(int(pid)):
            continue
        lock = WriterLock(d)
        try:
            lock.acquire(str(d))
        except (StoreLockedError, OSError):
            continue  # still being built by a live process (or not ours to judge)
        try:
            shutil.rmtree(d, ignore_errors=True)
        finally:
            lock.release()


def _build_in_place(root: Path, path: str, schema: Schema, env, chunk_bytes: int) -> WriterLock:
    """Build a store inside the empty folder ``root`` under its writer lock (the rename could not replace
    it); returns the held lock. Another creator meanwhile: :class:`FileExistsError` or the lock error."""
    lock = WriterLock(root)
    lock.acquire(path)
    try:
        if any(p.name != lock.path.name for p in root.iterdir()):
            raise FileExistsError(
                f"dataset {path!r} was created by another process meanwhile; open it with mode='a' to append"
            )
        _build(root, schema, env, chunk_bytes)  # index.json last: readers see no store until it is whole
    except BaseException:
        lock.release()
        raise
    return lock


def _build(root: Path, schema: Schema, env: Mapping[str, Any] | None, chunk_bytes: int) -> None:
    """Write an empty store's metadata, arrays and commit index into ``root``."""
    zstore = DurableLocalStore(root)
    attrs = dict(
        schema.to_attrs(),
        env=dict(env) if env else None,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        o2o_version=o2o_version(),
        chunk_bytes=int(chunk_bytes),
    )
    g = zarr.create_group(zstore, attributes={"o2o": json.loads(json.dumps(attrs, default=str))})

    def make(name: str, shape: tuple, dtype: str):
        dt = np.dtype(dtype)
        row = int(np.prod(shape)) * dt.itemsize
        cap = MAX_STEP_CHUNK_ROWS if name.startswith("data/") else MAX_EPISODE_CHUNK_ROWS
        g.create_array(
            name,
            shape=(0, *shape),
            chunks=(_chunk_rows(row, chunk_bytes, cap), *shape),
            dtype=dt,
            compressors=_compressor(dt),
            fill_value=0,
            config={"write_empty_chunks": True},  # skips a full-chunk comparison on every write
        )

    for key, spec in schema.obs.items():
        make(f"data/obs/{key}", spec.shape, spec.dtype)
        make(f"episodes/final_obs/{key}", spec.shape, spec.dtype)
    make("data/actions", schema.action_space.shape, np.dtype(schema.action_space.dtype).name)
    make("data/rewards", (), "float32")
    for flag in ("terminals", "timeouts", "interventions"):
        make(f"data/{flag}", (), "bool")
    for name, (dtype, shape) in EPISODE_FIELDS.items():
        make(f"episodes/{name}", shape, dtype)
    zstore.sync_dirs()
    index = {
        "format": INDEX_FORMAT,
        "episodes": 0,
        "steps": 0,
        "fingerprint": EMPTY_FINGERPRINT,
        "provenance": [],
        "updated": time.time(),
    }
    atomic_write_bytes(root / INDEX_KEY, json.dumps(index).encode())


def _check_seed(seed, where: str, dtype: np.dtype = np.dtype(np.uint64)) -> int:
    """A seed as stored: 0 <= seed < 2**64 - 1 (uint64, e.g. Minari's automatic 64-bit seeds), or < 2**63
    in a store made before seeds went uint64 (its column is int64)."""
    top = int(NO_SEED) if dtype == np.uint64 else 2**63
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < top:
        older = (
            ""
            if dtype == np.uint64
            else "; this dataset was made by an older o2o that stores seeds as int64 — import into a new dataset "
            "for 64-bit seeds"
        )
        limit = "2**64 - 1" if dtype == np.uint64 else "2**63"
        raise ValueError(f"{where}: seed must be a non-negative integer < {limit} or None, got {seed!r}{older}")
    return int(seed)


def _check_times(ep: Episode, where: str) -> list[float]:
    times = [float(ep.start_time), float(ep.end_time)]
    if not np.isfinite(times).all():
        raise ValueError(f"{where}: start_time/end_time must be finite, got {times}")
    return times


def _check_provenance(prov: Mapping[str, Any] | Any, where: str) -> dict:
    if hasattr(prov, "to_dict"):
        prov = prov.to_dict()
    if not isinstance(prov, Mapping):
        raise ValueError(f"{where}: provenance must be a mapping, got {type(prov).__name__}")
    src = prov.get("source")
    if src not in SOURCES:
        raise ValueError(f"{where}: provenance source {src!r} is not one of {SOURCES}")
    if not prov.get("policy_id"):
        raise ValueError(f"{where}: provenance needs a policy_id")
    out = {
        "source": src,
        "policy_id": str(prov["policy_id"]),
        "policy_version": str(prov.get("policy_version", "1")),
        "params": dict(prov.get("params") or {}),
    }
    run = prov.get("run")
    if run is not None:  # which run (and part of it) wrote the episode: what a resumed run counts
        if not isinstance(run, Mapping) or not run.get("id"):
            raise ValueError(f"{where}: provenance run must be a mapping with an 'id', got {run!r}")
        out["run"] = dict(run)
    task = prov.get("task")
    if task is not None:  # the reset options the episode started from (its task): not the env's identity
        out["task"] = _check_task(task, where)
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def _check_task(task: Any, where: str) -> dict:
    """An episode's task (its reset options) as stored: a mapping of names to numbers, strings, booleans
    and lists of them, all finite; anything else is refused before anything is written."""
    if not isinstance(task, Mapping) or not task:
        raise ValueError(
            f"{where}: provenance task (the episode's reset options) must be a non-empty mapping, got {task!r}"
        )

    def plain(value: Any, key: str) -> Any:
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, (bool, int, str)) or value is None:
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{where}: provenance task {key} holds a non-finite number {value!r}")
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v, key) for v in value]
        raise ValueError(
            f"{where}: provenance task {key} must be numbers, strings, booleans or lists of them, "
            f"got {type(value).__name__} {value!r}"
        )

    out = {}
    for key, value in task.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}: provenance task keys must be non-empty strings, got {key!r}")
        out[key] = plain(value, key)
    return out
