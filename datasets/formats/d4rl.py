"""D4RL-style HDF5: flat arrays of all steps, episodes delimited by ``terminals``/``timeouts``.

Keys read and written: ``observations (N, D)``, ``actions (N, A)``, ``rewards (N,)``,
``terminals (N,)``, ``timeouts (N,)``, optional ``next_observations (N, D)`` and ``infos/*``
(``infos/success`` or ``infos/is_success`` give an episode's success). An export adds an
``o2o`` group (episode ends, interventions, per-episode records) and an ``o2o`` attribute
(schema, env, source version) that make the round trip exact; other readers ignore them.

Without ``next_observations`` the observation after an episode's last step is unknown: that
step is dropped and the step before it becomes the (truncated) end, as D4RL's own
``qlearning_dataset`` does; the import notes how many steps this cost.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import gymnasium as gym
import numpy as np

from o2o.core.hashing import sha256_path
from o2o.datasets.episode import Episode
from o2o.datasets.formats.common import (
    O2O_FORMAT,
    ForeignData,
    ForeignFormatError,
    Selection,
    dataset_record,
    env_schema,
    episode_record,
    imported_provenance,
    open_hdf5,
    restore_episode,
    select_plain,
    select_records,
)
from o2o.datasets.schema import FLAT_OBS_KEY, Schema
from o2o.datasets.store import EpisodeStore
from o2o.envs.spaces import ObsLayout

REQUIRED = ("observations", "actions", "rewards", "terminals", "timeouts")


def export_d4rl(store: EpisodeStore, indices: np.ndarray, out: str | Path, selection: Selection = Selection()) -> dict:
    """Write the selected episodes of ``store`` as a D4RL-style HDF5 file; returns a summary."""
    import h5py

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose another output path")
    if not store.schema.flat:
        raise ValueError(
            f"dataset {store.path!r}: D4RL-style files hold one flat observation array; this store "
            f"has keys {list(store.schema.obs)} (export to Minari instead)"
        )
    if len(indices) == 0:
        raise ValueError(f"dataset {store.path!r}: the selection holds no episodes; nothing exported")
    tr = store.load_transitions(indices)
    eps = [store.episode(int(i)) for i in indices]
    ends = np.cumsum([len(e) for e in eps]).astype(np.int64)
    records = [episode_record(store, int(i), e) for i, e in zip(indices, eps)]
    interventions = np.concatenate([np.asarray(e.interventions, bool) for e in eps])
    tmp = out.with_name(out.name + ".partial")
    with h5py.File(tmp, "w") as f:
        for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
            f.create_dataset(key, data=np.asarray(getattr(tr, key)), compression="gzip", compression_opts=1)
        g = f.create_group("o2o")
        g.create_dataset("episode_ends", data=ends)
        g.create_dataset("interventions", data=interventions)
        g.create_dataset("episodes", data=json.dumps(records))
        f.attrs["o2o"] = json.dumps(dataset_record(store, indices, selection))
    tmp.replace(out)  # a reader never sees a half-written file under the final name
    flagless = int(sum(not (e.terminated or e.truncated) for e in eps))
    notes = (
        [
            f"{flagless} episodes end without a terminal or timeout flag; other D4RL readers will join each "
            "with the next (o2o/episode_ends keeps the boundaries)"
        ]
        if flagless
        else []
    )
    return {"path": str(out), "episodes": len(eps), "steps": int(ends[-1]), "notes": notes}


def _read(f, key: str, name: str) -> np.ndarray:
    if key not in f:
        raise ForeignFormatError(f"{name}: key {key!r} is missing (D4RL-style files need {list(REQUIRED)})")
    obj = f[key]
    if not hasattr(obj, "shape"):
        raise ForeignFormatError(f"{name}: key {key!r} is a group, expected an array")
    return obj[()]


def read_d4rl(
    path: str | Path,
    selection: Selection = Selection(),
    source: str | None = None,
    policy_id: str | None = None,
    env_cfg: Mapping | None = None,
) -> ForeignData:
    """Read a D4RL-style HDF5 file into episodes (see the module docstring for the layout).

    ``source``/``policy_id`` (default ``human`` and the file's stem) label episodes of a
    file not exported by o2o; ``env_cfg`` (an o2o env config) names the env the data
    comes from, so a new store gets that env's spaces, bounds and observation fields.
    """

    path = Path(path)
    name = path.name
    origin = {"format": "d4rl", "file": name, "sha256": sha256_path(path)}
    with open_hdf5(path) as f:
        arr = {k: _read(f, k, name) for k in REQUIRED}
        nxt = _read(f, "next_observations", name) if "next_observations" in f else None
        infos = {k: f["infos"][k][()] for k in f["infos"]} if "infos" in f and hasattr(f["infos"], "keys") else {}
        o2o = json.loads(f.attrs["o2o"]) if "o2o" in f.attrs else None
        extra = (
            {k: f["o2o"][k][()] for k in ("episode_ends", "interventions", "episodes")}
            if o2o is not None and "o2o" in f
            else None
        )
    n = len(arr["observations"])
    for key, a in list(arr.items()) + [("next_observations", nxt)] + [(f"infos/{k}", v) for k, v in infos.items()]:
        if a is not None and (a.ndim == 0 or len(a) != n):
            raise ForeignFormatError(
                f"{name}: key {key!r} has {a.shape[0] if a.ndim else 0} rows, observations has {n}"
            )
    if arr["observations"].ndim != 2 or arr["actions"].ndim != 2:
        raise ForeignFormatError(
            f"{name}: observations and actions must be 2-D (steps, dim), got "
            f"{arr['observations'].shape} and {arr['actions'].shape}"
        )
    if nxt is not None and nxt.shape != arr["observations"].shape:
        raise ForeignFormatError(
            f"{name}: key 'next_observations' shape {nxt.shape} != observations {arr['observations'].shape}"
        )
    for key in ("terminals", "timeouts"):
        if arr[key].dtype.kind not in "bui" or arr[key].ndim != 1:
            raise ForeignFormatError(
                f"{name}: key {key!r} must be a 1-D boolean array, got {arr[key].dtype} {arr[key].shape}"
            )
        if arr[key].dtype.kind != "b":
            if not np.isin(arr[key], (0, 1)).all():
                raise ForeignFormatError(f"{name}: key {key!r} holds values other than 0/1")
            arr[key] = arr[key].astype(bool)

    notes: list[str] = []
    if extra is not None:
        ends = np.asarray(extra["episode_ends"], np.int64)
        if len(ends) == 0 or ends[-1] != n or np.any(np.diff(np.concatenate([[0], ends])) < 1):
            raise ForeignFormatError(f"{name}: key 'o2o/episode_ends' does not cut the {n} steps into episodes")
    else:
        ends = np.flatnonzero(arr["terminals"] | arr["timeouts"]) + 1
        if len(ends) == 0 or ends[-1] != n:
            notes.append(
                f"the last {n - (ends[-1] if len(ends) else 0)} steps carry no terminal/timeout flag: "
                "imported as an episode cut short (timeout)"
            )
            ends = np.concatenate([ends, [n]]).astype(np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    records = json.loads(extra["episodes"]) if extra is not None else None
    if records is not None and len(records) != len(ends):
        raise ForeignFormatError(f"{name}: key 'o2o/episodes' has {len(records)} records for {len(ends)} episodes")
    src = source or "human"
    keep = (
        select_records(records, selection, name)
        if records is not None
        else select_plain(len(ends), selection, [src] * len(ends), name)
    )
    if records is None and nxt is None:
        notes.append(
            f"no next_observations: the last step of each of {len(keep)} episodes was dropped "
            "(its next observation is unknown)"
        )
    prov = imported_provenance(origin, src, policy_id or path.stem) if records is None else None
    success_key = next((k for k in ("success", "is_success") if k in infos), None)
    episodes, labels = [], []
    for j in keep:
        s, e = int(starts[j]), int(ends[j])
        last = e - 1 if (nxt is None and records is None) else e  # rows of this episode
        label = f"{name}: episode {j} (rows {s}:{e})"
        if last - s < 1:
            notes.append(f"episode {j} (rows {s}:{e}) skipped: one step and no next observation")
            continue
        obs = arr["observations"][s:last]
        final = nxt[last - 1] if (nxt is not None) else arr["observations"][last]
        term, tout = arr["terminals"][s:last].copy(), arr["timeouts"][s:last].copy()
        if last != e:
            term[-1], tout[-1] = False, True
        elif records is None and not (term[-1] or tout[-1]):
            tout[-1] = True
        ep = Episode(
            observations=obs,
            actions=arr["actions"][s:last],
            rewards=arr["rewards"][s:last],
            terminals=term,
            timeouts=tout,
            final_observation=final,
            provenance=prov,
            interventions=None if extra is None else extra["interventions"][s:e],
            success=bool(np.any(infos[success_key][s:e])) if success_key else None,
        )
        episodes.append(restore_episode(ep, records[j], origin) if records is not None else ep)
        labels.append(label)
    if o2o is None and env_cfg is not None:
        schema, env = env_schema(env_cfg)
        bounds_known = True
    else:
        schema, env = _schema_of(arr, o2o, name)
        bounds_known = o2o is not None
    return ForeignData(
        episodes, labels, schema, env, origin, notes, bounds_known=bounds_known, layout_known=bounds_known
    )


def _schema_of(arr: dict[str, np.ndarray], o2o: dict | None, name: str) -> tuple[Schema, dict | None]:
    if o2o is not None:
        if o2o.get("format") != O2O_FORMAT:
            raise ForeignFormatError(
                f"{name}: attribute 'o2o' has format {o2o.get('format')}, this o2o reads {O2O_FORMAT}"
            )
        return Schema.from_attrs(o2o["schema"]), o2o.get("env")
    obs, act = arr["observations"], arr["actions"]
    # A plain D4RL file states no action bounds: the data's range, widened to [-1, 1] (D4RL's tasks).
    low = np.minimum(act.min(0), -1.0).astype(np.float32)
    high = np.maximum(act.max(0), 1.0).astype(np.float32)
    obs_space = gym.spaces.Box(-np.inf, np.inf, shape=obs.shape[1:], dtype=np.float32)
    schema = Schema.from_spaces(
        obs_space, gym.spaces.Box(low, high, dtype=np.float32), ObsLayout.single(FLAT_OBS_KEY, int(obs.shape[1]))
    )
    return schema, None
