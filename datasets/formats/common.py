"""What every importer and exporter shares: selections, provenance records, and the all-or-nothing append.

An importer reads a foreign file into :class:`ForeignData` (episodes with provenance, the
schema the data has, the env it came from); :func:`append_foreign` then checks it against the
target store (or creates one), validates *every* episode, and only then appends them in one
commit. A bad file therefore leaves the store exactly as it was.

Exports carry an ``o2o`` record (schema, env, source version, and per episode: provenance,
seed, success, times, interventions) so that importing them back restores the episodes
bit for bit; foreign readers ignore it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from o2o.datasets.episode import Episode
from o2o.datasets.reading import parse_version
from o2o.datasets.schema import SOURCES, EpisodeValidationError, Schema, validate_episode
from o2o.datasets.store import EpisodeStore

O2O_FORMAT = 1  # version of the ``o2o`` record written into exports
ENV_IDENTITY_KEYS = ("name", "id", "kwargs")  # env settings that change what a step means


class ForeignFormatError(ValueError):
    """A foreign file is malformed or does not fit the target store; nothing was appended."""


@dataclass(frozen=True)
class Selection:
    """Which episodes to take: by source, by episode range (positions), by dataset version.

    ``episodes`` is a slice or a list of positions (episode indices of an o2o store, or the
    order of episodes in a foreign file). ``version`` is ``{"episodes": n, "fingerprint": fp}``
    (fp optional): only the episodes that made up that version of an o2o store.
    """

    sources: tuple[str, ...] | None = None
    episodes: slice | tuple[int, ...] | None = None
    version: dict | None = None

    @property
    def empty(self) -> bool:
        return self.sources is None and self.episodes is None and self.version is None

    def positions(self, n: int) -> np.ndarray:
        """The positions in ``range(n)`` the episode range keeps (all when none is given)."""
        idx = np.arange(n)
        if self.episodes is None:
            return idx
        if isinstance(self.episodes, slice):
            return idx[self.episodes]
        req = np.asarray(self.episodes, np.int64)
        bad = req[(req < 0) | (req >= n)]
        if len(bad):
            raise ForeignFormatError(f"episodes {bad[:5].tolist()} not in 0..{n - 1}")
        return np.unique(req)

    def to_dict(self) -> dict:
        ep = self.episodes
        if isinstance(ep, slice):
            ep = f"{'' if ep.start is None else ep.start}:{'' if ep.stop is None else ep.stop}"
        return {
            "sources": list(self.sources) if self.sources else None,
            "episodes": list(ep) if isinstance(ep, tuple) else ep,
            "version": self.version,
        }


def parse_episodes(text: str | None) -> slice | tuple[int, ...] | None:
    """``"10:20"`` -> slice(10, 20); ``":5"``, ``"7:"``; ``"3"`` or ``"0,4,9"`` -> those positions."""
    if text is None or str(text).strip() == "":
        return None
    text = str(text).strip()
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            return slice(int(a) if a.strip() else None, int(b) if b.strip() else None)
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"episode range {text!r}: expected START:STOP, N or N,M,... (integers)") from None


def make_selection(
    sources: Sequence[str] | None = None, episodes: str | None = None, version: str | None = None
) -> Selection:
    """A :class:`Selection` from command-line style strings (checked here, not later)."""
    bad = [s for s in (sources or ()) if s not in SOURCES]
    if bad:
        raise ValueError(f"source {bad[0]!r} is not one of {SOURCES}")
    return Selection(tuple(sources) if sources else None, parse_episodes(episodes), parse_version(version))


def open_hdf5(path: str | Path):
    """``path`` opened read-only with h5py; a file that is not HDF5 is a :class:`ForeignFormatError`."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ForeignFormatError(f"{Path(path).name}: not a readable HDF5 file ({e})") from None


@dataclass
class ForeignData:
    """Episodes read from a foreign file, ready to append.

    ``labels[i]`` says where episode ``i`` came from (``demo.hdf5: data/demo_3``) for error
    messages; ``schema`` and ``env`` describe the data (used when the store is created);
    ``origin`` is ``{"format", "file", "sha256"}``; ``stats`` holds importer figures.
    """

    episodes: list[Episode]
    labels: list[str]
    schema: Schema
    env: dict | None
    origin: dict
    notes: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    #: False when the file states no action bounds (plain D4RL): the store's bounds then rule.
    bounds_known: bool = True
    #: False when the file names no observation fields (plain D4RL): only shapes are compared.
    layout_known: bool = True


@dataclass
class ImportResult:
    """What an import appended."""

    path: str
    origin: dict
    episodes: list[int]
    steps: int
    created: bool
    seconds: float
    version: dict
    notes: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _canon(v: Any) -> Any:
    return json.loads(json.dumps(v, sort_keys=True, default=str))


def env_problems(have: Mapping | None, want: Mapping | None) -> list[str]:
    """Env identity differences between a store's env record and the incoming data's."""
    if not have or not want:
        return []
    return [
        f"env {k} {want.get(k)!r} != {have.get(k)!r}"
        for k in ENV_IDENTITY_KEYS
        if k in have and k in want and _canon(have[k]) != _canon(want[k])
    ]


def spaces_problems(
    store_schema: Schema, data_schema: Schema, bounds_known: bool = True, layout_known: bool = True
) -> list[str]:
    """Why data of ``data_schema`` cannot go into a store of ``store_schema`` (empty: it can).

    Shapes and keys must match; a dtype may differ within its kind (float64 data into a
    float32 store, as validation casts it); action bounds must match.
    """
    problems = []
    if list(store_schema.obs) != list(data_schema.obs):
        problems.append(f"observation keys {list(data_schema.obs)} != store {list(store_schema.obs)}")
    for k, s in store_schema.obs.items():
        d = data_schema.obs.get(k)
        if d is not None and (d.shape != s.shape or np.dtype(d.dtype).kind != np.dtype(s.dtype).kind):
            problems.append(f"observation {k!r} shape {d.shape} {d.dtype} != store {s.shape} {s.dtype}")
    a, b = store_schema.action_space, data_schema.action_space
    if a.shape != b.shape:
        problems.append(f"action shape {b.shape} != store {a.shape}")
    elif bounds_known and not (np.allclose(a.low, b.low) and np.allclose(a.high, b.high)):
        problems.append(
            f"action bounds [{b.low.tolist()}, {b.high.tolist()}] != store [{a.low.tolist()}, {a.high.tolist()}]"
        )
    la, lb = store_schema.obs_layout, data_schema.obs_layout
    if layout_known and la is not None and lb is not None and la != lb:
        problems.append(f"observation fields {lb.keys} != store {la.keys}")
    return problems


def append_foreign(target: str | Path, data: ForeignData, action_bounds: str | None = None) -> ImportResult:
    """Append ``data`` to the store at ``target`` (created from the data if absent), all or nothing.

    The store is checked as a reader first (a refused import leaves even its lock file
    untouched), every episode is validated against the store's schema, and only then are
    they appended in a single commit.
    """
    start = time.perf_counter()
    target = Path(target)
    name = data.origin.get("file", "?")
    if not data.episodes:
        raise ForeignFormatError(f"{name}: the selection holds no episodes; nothing appended")
    exists = EpisodeStore.is_dataset(target)
    if exists:
        with EpisodeStore.open(target, mode="r") as existing:
            schema = existing.schema
            problems = spaces_problems(schema, data.schema, data.bounds_known, data.layout_known) + env_problems(
                existing.env, data.env
            )
        if problems:
            raise ForeignFormatError(
                f"{name} does not fit dataset '{target}': "
                + "; ".join(problems)
                + " (nothing appended; import into another dataset path)"
            )
    else:
        schema = data.schema
        if action_bounds is not None:
            schema = Schema(schema.obs, schema.action_space, action_bounds, schema.obs_layout)
    for ep, label in zip(data.episodes, data.labels):
        try:
            validate_episode(schema, ep, where=label)
        except EpisodeValidationError as e:
            raise ForeignFormatError(f"{e} (nothing appended to '{target}')") from None
    # A new dataset that gets no episode (a refusal at commit) is removed again: nothing half-made stays.
    store = (
        EpisodeStore.open(target, mode="a")
        if exists
        else EpisodeStore.create(target, schema, env=data.env, remove_if_empty=True)
    )
    try:
        indices = store.append_many(data.episodes)
        version = store.version.to_dict()
    finally:
        store.close()
    return ImportResult(
        path=str(target),
        origin=data.origin,
        episodes=indices,
        steps=int(sum(len(e) for e in data.episodes)),
        created=not exists,
        seconds=time.perf_counter() - start,
        version=version,
        notes=data.notes,
        stats=data.stats,
    )


def env_schema(env_cfg: Mapping) -> tuple[Schema, dict]:
    """The schema and env record of an o2o env config (built once to read its spaces)."""
    from o2o.envs import env_metadata, make_env

    env = make_env(env_cfg)
    try:
        layout = env.get_wrapper_attr("obs_layout")
        return Schema.from_spaces(env.observation_space, env.action_space, layout), env_metadata(env, env_cfg)
    finally:
        env.close()


def imported_provenance(
    origin: Mapping, source: str, policy_id: str, params: Mapping | None = None, policy_version: str = "1"
) -> dict:
    """Provenance of an imported episode: the given source/policy plus where it was imported from."""
    if source not in SOURCES:
        raise ValueError(f"source {source!r} is not one of {SOURCES}")
    return {
        "source": source,
        "policy_id": str(policy_id),
        "policy_version": str(policy_version),
        "params": dict(params or {}, imported=dict(origin)),
    }


# --------------------------------------------------------------------------- the o2o record of exports
def episode_record(store: EpisodeStore, i: int, ep: Episode) -> dict:
    """Everything about episode ``i`` besides its arrays, as written into an export."""
    digest = bytes(store.array("episodes/digest")[i])
    return {
        "index": int(i),
        "provenance": ep.provenance,
        "seed": ep.seed,
        "success": ep.success,
        "times": [float(ep.start_time), float(ep.end_time)],
        "content": digest[:16].hex(),
        "fingerprint": digest[16:].hex(),
    }


def dataset_record(store: EpisodeStore, indices: np.ndarray, selection: Selection) -> dict:
    """The dataset-level ``o2o`` record of an export: schema, env, version, selection."""
    return {
        "format": O2O_FORMAT,
        "schema": store.schema.to_attrs(),
        "env": store.env,
        "store": store.path,
        "version": store.version.to_dict(),
        "selection": selection.to_dict(),
        "episodes": len(indices),
    }


def restore_episode(ep: Episode, rec: Mapping, origin: Mapping) -> Episode:
    """Give an episode read from an o2o export back its record; provenance notes the import."""
    prov = dict(rec["provenance"])
    prov["params"] = dict(prov.get("params") or {}, imported=dict(origin))
    ep.provenance = prov
    ep.seed = rec.get("seed")
    ep.success = rec.get("success")
    ep.start_time, ep.end_time = (float(t) for t in rec["times"])
    return ep


def select_records(records: Sequence[Mapping], selection: Selection, name: str) -> list[int]:
    """Positions of the o2o records (of an export) that a selection keeps."""
    keep = selection.positions(len(records)).tolist()
    if selection.sources is not None:
        keep = [j for j in keep if records[j]["provenance"]["source"] in selection.sources]
    if selection.version is not None:
        n, fp = int(selection.version["episodes"]), selection.version.get("fingerprint")
        last = [r for r in records if int(r["index"]) == n - 1]
        if fp is not None:
            if not last:
                raise ForeignFormatError(f"{name}: holds no episode {n - 1}, cannot check version {n}@{fp}")
            if len(fp) < 8 or not last[0]["fingerprint"].startswith(fp):
                raise ForeignFormatError(
                    f"{name}: fingerprint at {n} episodes is {last[0]['fingerprint'][:12]}, "
                    f"not {fp[:12]}: the file is not from that dataset version"
                )
        keep = [j for j in keep if int(records[j]["index"]) < n]
    return keep


def select_plain(n: int, selection: Selection, sources: Sequence[str], name: str) -> list[int]:
    """Positions kept from a foreign file without o2o records (all episodes share ``sources``)."""
    if selection.version is not None:
        raise ForeignFormatError(
            f"{name}: a dataset version selects episodes of an o2o store; this file was "
            "not exported by o2o (select by episode range instead)"
        )
    keep = selection.positions(n).tolist()
    if selection.sources is not None:
        keep = [j for j in keep if sources[j] in selection.sources]
    return keep
