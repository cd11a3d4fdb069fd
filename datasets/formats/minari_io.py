"""Minari datasets (Farama): import from a local Minari root or a path, export loadable by ``minari.load_dataset``.

Minari stores per episode ``observations`` with one row more than the steps (the final
observation last), ``actions``, ``rewards``, ``terminations``, ``truncations`` and
``infos``; storage is HDF5 or Arrow. An o2o episode maps onto that exactly:
``observations + [final_observation]``. Exports add ``infos["interventions"]`` (row ``t+1``
is step ``t``, as Minari's ``DataCollector`` aligns infos), an ``o2o`` record per episode
(provenance, seed, success, times) and one for the dataset (schema, env, source version),
so importing an export back restores every episode exactly.

The env spec of an export rebuilds the o2o env through :func:`o2o.envs.make_from_spec`
(``dataset.recover_environment()``), when the store knows its env config.
"""

from __future__ import annotations

import json
import os
import shutil
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
    restore_episode,
    select_plain,
    select_records,
)
from o2o.datasets.schema import FLAT_OBS_KEY, Schema
from o2o.datasets.store import EpisodeStore
from o2o.envs.spaces import ObsLayout

FORMATS = ("hdf5", "arrow")


def _obs_space(schema: Schema) -> gym.Space:
    def box(spec):
        return gym.spaces.Box(-np.inf, np.inf, shape=spec.shape, dtype=np.dtype(spec.dtype))

    if schema.flat:
        return box(schema.obs[FLAT_OBS_KEY])
    return gym.spaces.Dict({k: box(s) for k, s in schema.obs.items()})


def env_spec_of(env: Mapping | None) -> gym.envs.registration.EnvSpec | None:
    """A Gymnasium spec that rebuilds the store's o2o env, or None when the store has no env config."""
    if not env or not env.get("factory") or not env.get("id") or env.get("max_episode_steps") is None:
        return None
    config = {k: env.get(k) for k in ("name", "factory", "id", "max_episode_steps", "kwargs", "scripted_controller")}
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in str(env.get("name") or env["id"]))
    # The o2o env already has its time limit: no second TimeLimit, no passive checker around it.
    return gym.envs.registration.EnvSpec(
        id=f"o2o/{name}-v0",
        entry_point="o2o.envs:make_from_spec",
        kwargs={"config": json.loads(json.dumps(config))},
        max_episode_steps=None,
        disable_env_checker=True,
    )


def export_minari(
    store: EpisodeStore,
    indices: np.ndarray,
    dataset_id: str,
    root: str | Path | None = None,
    data_format: str = "hdf5",
    selection: Selection = Selection(),
    author: str | None = None,
) -> dict:
    """Write the selected episodes as Minari dataset ``dataset_id`` under ``root`` (or Minari's default root)."""
    from minari.dataset.minari_dataset import parse_dataset_id

    if data_format not in FORMATS:
        raise ValueError(f"Minari data format {data_format!r} not one of {FORMATS}")
    parse_dataset_id(dataset_id)  # raises Minari's own message for a malformed id
    if len(indices) == 0:
        raise ValueError(f"dataset {store.path!r}: the selection holds no episodes; nothing exported")
    # Absolute: Minari's HDF5 storage joins relative paths twice.
    root = (Path(root) if root is not None else _default_root()).resolve()
    ds_dir = root / dataset_id
    if ds_dir.exists():
        raise FileExistsError(f"Minari dataset {dataset_id!r} already exists at {ds_dir}; choose another id")
    (ds_dir / "data").mkdir(parents=True)
    try:
        spec = _write(store, indices, ds_dir / "data", dataset_id, data_format, selection, author)
    except BaseException:
        shutil.rmtree(ds_dir, ignore_errors=True)  # no half-written dataset for Minari to list
        raise
    steps = int(np.sum(store.episodes_table(indices)["length"]))
    return {
        "path": str(ds_dir),
        "dataset_id": dataset_id,
        "episodes": len(indices),
        "steps": steps,
        "env_spec": spec.id if spec else None,
    }


def _write(
    store: EpisodeStore,
    indices: np.ndarray,
    data_dir: Path,
    dataset_id: str,
    data_format: str,
    selection: Selection,
    author: str | None,
):
    from minari import __version__ as minari_version
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    spec = env_spec_of(store.env)
    storage = MinariStorage.new(
        data_dir,
        observation_space=_obs_space(store.schema),
        action_space=store.schema.action_space,
        env_spec=spec,
        data_format=data_format,
    )
    buffers, metas = [], []
    for i in indices:
        ep = store.episode(int(i))
        if store.schema.flat:
            obs = np.concatenate([ep.observations, ep.final_observation[None]])
        else:
            obs = {k: np.concatenate([v, ep.final_observation[k][None]]) for k, v in ep.observations.items()}
        # A list, not an array: Minari 0.5.3's Arrow storage cannot read back 1-D info arrays.
        iv = [False] + np.asarray(ep.interventions, bool).tolist()
        buffers.append(
            EpisodeBuffer(
                id=None,
                seed=ep.seed,
                observations=obs,
                actions=ep.actions,
                rewards=ep.rewards,
                terminations=ep.terminals,
                truncations=ep.timeouts,
                infos={"interventions": iv},
            )
        )
        metas.append({"o2o": json.dumps(episode_record(store, int(i), ep))})
    storage.update_episodes(buffers)
    storage.update_episode_metadata(metas, range(len(buffers)))
    meta = {
        "dataset_id": dataset_id,
        "minari_version": minari_version,
        "description": f"exported by o2o from {store.path} ({store.version})",
        "algorithm_name": ",".join(
            sorted({m["provenance"]["policy_id"] for m in (json.loads(x["o2o"]) for x in metas)})
        )[:200],
        "o2o": dataset_record(store, indices, selection),
    }
    if author:
        meta["author"] = {author}
    storage.update_metadata(meta)
    return spec


def _default_root() -> Path:
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")


def resolve(source: str | Path, root: str | Path | None = None) -> tuple[Path, str]:
    """The ``data`` folder of a Minari dataset given as a path or as an id under ``root``; and its name."""
    p = Path(source)
    for cand in (p / "data", p):
        if (cand / "metadata.json").is_file():
            return cand, str(source)
    base = Path(root) if root is not None else _default_root()
    cand = base / str(source) / "data"
    if (cand / "metadata.json").is_file():
        return cand, str(source)
    raise ForeignFormatError(
        f"Minari dataset {str(source)!r}: not a dataset folder, and no dataset of that id "
        f"under the Minari root {base} (set --minari-root or MINARI_DATASETS_PATH)"
    )


def read_minari(
    source: str | Path,
    root: str | Path | None = None,
    selection: Selection = Selection(),
    source_label: str | None = None,
    policy_id: str | None = None,
    env_cfg: Mapping | None = None,
) -> ForeignData:
    """Read a Minari dataset (HDF5 or Arrow storage) into episodes.

    A dataset exported by o2o gets its records back; any other gets provenance
    ``source_label`` (default ``human``) and ``policy_id`` (default: its algorithm name or id).
    ``env_cfg`` names the o2o env the data comes from (spaces and observation fields).
    """
    from minari import MinariDataset

    data_dir, name = resolve(source, root)
    data_dir = data_dir.resolve()
    origin = {"format": "minari", "file": name, "sha256": sha256_path(data_dir)}
    try:
        ds = MinariDataset(data_dir)
    except Exception as e:  # Minari raises assorted errors for damaged metadata
        raise ForeignFormatError(f"Minari dataset {name!r}: cannot be loaded: {type(e).__name__}: {e}") from None
    meta = ds.storage.metadata
    o2o = meta.get("o2o")
    if o2o is not None and o2o.get("format") != O2O_FORMAT:
        raise ForeignFormatError(f"Minari dataset {name!r}: key 'o2o' has format {o2o.get('format')}")
    n = ds.storage.total_episodes
    ep_meta = list(ds.storage.get_episode_metadata(range(n)))
    records = None
    if o2o is not None:
        try:
            records = [json.loads(m["o2o"]) for m in ep_meta]
        except (KeyError, ValueError) as e:
            raise ForeignFormatError(
                f"Minari dataset {name!r}: episode metadata key 'o2o' is missing or not JSON ({e})"
            ) from None
    src = source_label or "human"
    keep = (
        select_records(records, selection, name) if records is not None else select_plain(n, selection, [src] * n, name)
    )
    if records is not None:
        schema, env, bounds_known = Schema.from_attrs(o2o["schema"]), o2o.get("env"), True
    elif env_cfg is not None:
        (schema, env), bounds_known = env_schema(env_cfg), True
    else:
        schema, env, bounds_known = _schema_from_spaces(ds, name), _env_record(ds), False
    prov = imported_provenance(origin, src, policy_id or meta.get("algorithm_name") or name)
    episodes, labels = [], []
    for j, raw in zip(keep, ds.storage.get_episodes(keep)):
        label = f"Minari dataset {name!r}: episode {j}"
        ep = _episode(raw, schema, label)
        if records is not None:
            ep = restore_episode(ep, records[j], origin)
        else:
            ep.provenance = prov
            ep.seed = ep_meta[j].get("seed")
            ep.success = _success(raw.get("infos") or {})
        episodes.append(ep)
        labels.append(label)
    # Minari states action bounds, but names no observation fields unless o2o wrote it.
    return ForeignData(episodes, labels, schema, env, origin, layout_known=bounds_known)


def _episode(raw: Mapping, schema: Schema, label: str) -> Episode:
    T = len(raw["rewards"])
    obs = raw["observations"]
    keys = None if schema.flat else list(schema.obs)
    if keys is None and isinstance(obs, Mapping):
        raise ForeignFormatError(f"{label}: key 'observations' is a dict {list(obs)}, the target holds one flat array")
    if keys is not None and not isinstance(obs, Mapping):
        raise ForeignFormatError(f"{label}: key 'observations' is one array, the target has keys {keys}")
    parts = {FLAT_OBS_KEY: np.asarray(obs)} if keys is None else {k: np.asarray(obs[k]) for k in obs}
    for k, v in parts.items():
        if v.ndim == 0 or len(v) != T + 1:
            raise ForeignFormatError(
                f"{label}: key 'observations' ({k}) has {len(v) if v.ndim else 0} rows for {T} "
                "steps; Minari stores one more (the final observation)"
            )
    infos = raw.get("infos") or {}
    iv = infos.get("interventions")
    interventions = None if iv is None or len(iv) != T + 1 else np.asarray(iv[1:], bool)
    if keys is None:
        observations, final = parts[FLAT_OBS_KEY][:-1], parts[FLAT_OBS_KEY][-1]
    else:
        observations, final = {k: v[:-1] for k, v in parts.items()}, {k: v[-1] for k, v in parts.items()}
    return Episode(
        observations=observations,
        actions=np.asarray(raw["actions"]),
        rewards=np.asarray(raw["rewards"]),
        terminals=np.asarray(raw["terminations"]),
        timeouts=np.asarray(raw["truncations"]),
        final_observation=final,
        provenance={},
        interventions=interventions,
    )


def _success(infos: Mapping) -> bool | None:
    for key in ("success", "is_success"):
        if key in infos:
            return bool(np.any(np.asarray(infos[key])))
    return None


def _schema_from_spaces(ds, name: str) -> Schema:
    obs_space, act_space = ds.observation_space, ds.action_space
    if not isinstance(act_space, gym.spaces.Box):
        raise ForeignFormatError(
            f"Minari dataset {name!r}: action space {act_space} is not a Box; o2o stores continuous actions"
        )
    try:
        layout = (
            ObsLayout.single(FLAT_OBS_KEY, int(np.prod(obs_space.shape)))
            if isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1
            else None
        )
        return Schema.from_spaces(obs_space, act_space, layout)
    except TypeError as e:
        raise ForeignFormatError(f"Minari dataset {name!r}: observation space: {e}") from None


def _env_record(ds) -> dict | None:
    spec = ds.spec.env_spec
    # Only what is known: a store's env record is compared key by key with later appends.
    return {"id": spec.id, "origin": "minari"} if spec is not None else None
