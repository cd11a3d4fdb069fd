"""robomimic low-dimensional HDF5 datasets as o2o episodes.

Layout (robomimic's ``dataset_states_to_obs.py`` output)::

    data.attrs["env_args"]          JSON: env_name, type, env_kwargs
    data/demo_N/obs/<key>           (T, ...) per observation key
    data/demo_N/next_obs/<key>      (T, ...)
    data/demo_N/actions (T, A), rewards (T,), dones (T,), states (T, S) (unused here)
    mask/<filter_key>               names of the demos in a split (``train``, ``valid``...)

The observation keys are concatenated, in the order given (default: the target store's
or env's observation fields, else the file's keys in sorted order), into one flat
``state`` vector named by an :class:`ObsLayout`; ``final_observation`` is the last
``next_obs``. ``dones`` at the last step becomes the episode's terminal (robomimic also
sets it on success steps before the end; o2o ends an episode once, so those inner flags are
counted in the notes). Success is ``rewards > 0`` somewhere when the env's reward is sparse
(robomimic's default), unknown otherwise.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np

from o2o.core.hashing import sha256_path
from o2o.datasets.episode import Episode
from o2o.datasets.formats.common import (
    ForeignData,
    ForeignFormatError,
    Selection,
    env_schema,
    imported_provenance,
    open_hdf5,
    select_plain,
)
from o2o.datasets.schema import Schema
from o2o.envs.spaces import ObsLayout


def read_robomimic(
    path: str | Path,
    selection: Selection = Selection(),
    source: str | None = None,
    policy_id: str | None = None,
    obs_keys: Sequence[str] | None = None,
    filter_key: str | None = None,
    env_cfg: Mapping[str, Any] | None = None,
) -> ForeignData:
    """Read a robomimic low-dim HDF5 file; ``env_cfg`` (an o2o env config) fixes keys, bounds and env."""

    path = Path(path)
    name = path.name
    origin = {"format": "robomimic", "file": name, "sha256": sha256_path(path)}
    schema_env = env_schema(env_cfg) if env_cfg is not None else None
    if obs_keys is None and schema_env is not None and schema_env[0].obs_layout is not None:
        obs_keys = schema_env[0].obs_layout.keys
    with open_hdf5(path) as f:
        if "data" not in f:
            raise ForeignFormatError(f"{name}: group 'data' is missing (not a robomimic dataset)")
        data = f["data"]
        try:
            env_args = json.loads(data.attrs["env_args"]) if "env_args" in data.attrs else {}
        except ValueError as e:
            raise ForeignFormatError(f"{name}: data.attrs['env_args'] is not JSON ({e})") from None
        names = sorted((k for k in data.keys() if re.fullmatch(r"demo_\d+", k)), key=lambda k: int(k[5:]))
        if filter_key is not None:
            if f"mask/{filter_key}" not in f:
                raise ForeignFormatError(
                    f"{name}: key 'mask/{filter_key}' is missing (filter keys: "
                    f"{sorted(f['mask']) if 'mask' in f else []})"
                )
            wanted = {x.decode() if isinstance(x, bytes) else str(x) for x in f[f"mask/{filter_key}"][()]}
            names = [n for n in names if n in wanted]
        if not names:
            raise ForeignFormatError(
                f"{name}: group 'data' holds no demo_N groups"
                + (f" in filter key {filter_key!r}" if filter_key else "")
            )
        first = data[names[0]]
        if "obs" not in first:
            raise ForeignFormatError(
                f"{name}: key 'data/{names[0]}/obs' is missing (image-only or states-only "
                "files need robomimic's dataset_states_to_obs.py first)"
            )
        keys = list(obs_keys) if obs_keys is not None else sorted(first["obs"].keys())
        keep = select_plain(len(names), selection, [source or "human"] * len(names), name)
        sparse = not bool((env_args.get("env_kwargs") or {}).get("reward_shaping", False))
        prov = imported_provenance(
            origin,
            source or "human",
            policy_id or path.stem,
            {"env_name": env_args.get("env_name")} if env_args.get("env_name") else None,
        )
        episodes, labels, inner_dones, shapes = [], [], 0, None
        for j in keep:
            demo = names[j]
            g = data[demo]
            label = f"{name}: data/{demo}"
            arr = {}
            for key in ("actions", "rewards", "dones"):
                if key not in g:
                    raise ForeignFormatError(f"{name}: key 'data/{demo}/{key}' is missing")
                arr[key] = g[key][()]
            T = len(arr["actions"])
            obs, nxt = [], []
            for group, out in (("obs", obs), ("next_obs", nxt)):
                for k in keys:
                    if f"{group}/{k}" not in g:
                        have = sorted(g[group].keys()) if group in g else []
                        raise ForeignFormatError(f"{name}: key 'data/{demo}/{group}/{k}' is missing (has {have})")
                    v = g[group][k][()]
                    if len(v) != T:
                        raise ForeignFormatError(
                            f"{name}: key 'data/{demo}/{group}/{k}' has {len(v)} rows for {T} actions"
                        )
                    out.append(v.reshape(T, -1))
            demo_shapes = [o.shape[1] for o in obs]
            if shapes is None:
                shapes = [g["obs"][k].shape[1:] for k in keys]
            elif demo_shapes != [int(np.prod(s)) for s in shapes]:
                raise ForeignFormatError(
                    f"{label}/obs: key sizes {dict(zip(keys, demo_shapes))} differ from the first demo's"
                )
            dones = np.asarray(arr["dones"]).astype(bool)
            if len(dones) != T or len(arr["rewards"]) != T:
                raise ForeignFormatError(f"{name}: keys 'data/{demo}/rewards' and 'dones' must have {T} rows")
            inner_dones += int(dones[:-1].sum())
            flat_obs = np.concatenate(obs, axis=1)
            final = np.concatenate([n[-1] for n in nxt])
            term = np.zeros(T, bool)
            term[-1] = dones[-1]
            ep = Episode(
                observations=flat_obs,
                actions=arr["actions"],
                rewards=arr["rewards"],
                terminals=term,
                timeouts=~term & (np.arange(T) == T - 1),
                final_observation=final,
                provenance=prov,
                success=bool(np.any(arr["rewards"] > 0)) if sparse else None,
            )
            episodes.append(ep)
            labels.append(label)
    notes = (
        [
            f"{inner_dones} 'dones' flags before an episode's last step (robomimic marks success steps) were not "
            "kept; each episode ends once"
        ]
        if inner_dones
        else []
    )
    if schema_env is not None:
        schema, env = schema_env
    else:
        layout = ObsLayout([(k, s) for k, s in zip(keys, shapes)])
        act = np.concatenate([e.actions for e in episodes]) if episodes else np.zeros((0, 1))
        # robosuite's controllers take [-1, 1]; a file states no bounds, so that range unless the data exceeds it.
        low = np.minimum(act.min(0), -1.0).astype(np.float32) if len(act) else -np.ones(1, np.float32)
        high = np.maximum(act.max(0), 1.0).astype(np.float32) if len(act) else np.ones(1, np.float32)
        schema = Schema.from_spaces(
            gym.spaces.Box(-np.inf, np.inf, (layout.dim,), np.float32),
            gym.spaces.Box(low, high, dtype=np.float32),
            layout,
        )
        env = (
            {"id": env_args["env_name"], "origin": "robomimic", "env_args": env_args}
            if env_args.get("env_name")
            else None
        )
    return ForeignData(episodes, labels, schema, env, origin, notes, bounds_known=schema_env is not None)
