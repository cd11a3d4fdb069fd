"""What a dataset holds: observation keys, action space, and the checks every episode passes.

The schema is fixed when a dataset is created (from the env's spaces) and stored in the
Zarr group's attributes. Every episode is validated against it *before* anything is
written, so bad input never reaches the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from o2o.envs.spaces import ObsLayout, space_from_dict, space_to_dict

SCHEMA_VERSION = 1
FLAT_OBS_KEY = "state"  # the one observation key of a flat (Box) observation space
ACTION_BOUNDS_POLICIES = ("error", "clip", "ignore")
SOURCES = ("scripted", "human", "learned", "random", "online")  # where an episode came from


class EpisodeValidationError(ValueError):
    """An episode does not fit the dataset's schema; nothing was written."""


@dataclass(frozen=True)
class KeySpec:
    """Per-step shape and dtype of one observation key."""

    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Schema:
    """Observation keys (ordered), the action space and how out-of-bounds actions are treated."""

    obs: dict[str, KeySpec]
    action_space: gym.spaces.Box
    action_bounds: str = "error"
    obs_layout: ObsLayout | None = None
    version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.action_bounds not in ACTION_BOUNDS_POLICIES:
            raise ValueError(f"action_bounds {self.action_bounds!r} not one of {ACTION_BOUNDS_POLICIES}")
        if not self.obs:
            raise ValueError("a schema needs at least one observation key")

    @classmethod
    def from_spaces(
        cls,
        observation_space: gym.Space,
        action_space: gym.spaces.Box,
        obs_layout: ObsLayout | None = None,
        action_bounds: str = "error",
    ) -> "Schema":
        """Schema of an env: a Box observation becomes key ``state``; a Dict one key per entry."""
        if isinstance(observation_space, gym.spaces.Dict):
            obs = {}
            for k, sp in observation_space.spaces.items():
                if not isinstance(sp, gym.spaces.Box):
                    raise TypeError(f"observation key {k!r}: only Box sub-spaces are stored, got {sp}")
                obs[k] = KeySpec(tuple(sp.shape), np.dtype(sp.dtype).name)
        elif isinstance(observation_space, gym.spaces.Box):
            obs = {FLAT_OBS_KEY: KeySpec(tuple(observation_space.shape), np.dtype(observation_space.dtype).name)}
        else:
            raise TypeError(f"observation space must be Box or Dict of Box, got {observation_space}")
        if not isinstance(action_space, gym.spaces.Box):
            raise TypeError(f"action space must be a Box, got {action_space}")
        return cls(obs=obs, action_space=action_space, action_bounds=action_bounds, obs_layout=obs_layout)

    @property
    def action_dim(self) -> int:
        return int(np.prod(self.action_space.shape))

    @property
    def flat(self) -> bool:
        return list(self.obs) == [FLAT_OBS_KEY]

    def to_attrs(self) -> dict:
        return {
            "schema_version": self.version,
            "observation_keys": {k: s.to_dict() for k, s in self.obs.items()},
            "action_space": space_to_dict(self.action_space),
            "action_bounds": self.action_bounds,
            "obs_layout": self.obs_layout.to_dict() if self.obs_layout is not None else None,
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping) -> "Schema":
        version = int(attrs.get("schema_version", -1))
        if version != SCHEMA_VERSION:
            raise ValueError(f"dataset schema version {version} is not supported (this o2o reads {SCHEMA_VERSION})")
        obs = {k: KeySpec(tuple(d["shape"]), d["dtype"]) for k, d in attrs["observation_keys"].items()}
        layout = attrs.get("obs_layout")
        return cls(
            obs=obs,
            action_space=space_from_dict(attrs["action_space"]),
            action_bounds=attrs.get("action_bounds", "error"),
            obs_layout=ObsLayout.from_dict(layout) if layout else None,
        )

    def compatible_with(self, other: "Schema") -> list[str]:
        """Differences that make ``other`` (e.g. an env's schema) unfit for this dataset."""
        problems = []
        if list(self.obs) != list(other.obs):
            problems.append(f"observation keys {list(other.obs)} != dataset {list(self.obs)}")
        for k in self.obs:
            if k in other.obs and self.obs[k] != other.obs[k]:
                o, s = other.obs[k], self.obs[k]
                problems.append(f"observation {k!r} shape {o.shape} {o.dtype} != dataset {s.shape} {s.dtype}")
        a, b = self.action_space, other.action_space
        if a.shape != b.shape:
            problems.append(f"action shape {b.shape} != dataset {a.shape}")
        elif not (np.allclose(a.low, b.low) and np.allclose(a.high, b.high)):
            problems.append(f"action bounds [{b.low}, {b.high}] != dataset [{a.low}, {a.high}]")
        if self.obs_layout and other.obs_layout and self.obs_layout != other.obs_layout:
            problems.append(f"observation fields {other.obs_layout.keys} != dataset {self.obs_layout.keys}")
        return problems


def _check_array(where: str, key: str, value: Any, shape: tuple, dtype: np.dtype, kind_ok: str) -> np.ndarray:
    """``value`` as an array of ``shape``/``dtype``, or an EpisodeValidationError naming the key."""
    arr = np.asarray(value)
    if arr.shape != shape:
        raise EpisodeValidationError(f"{where}: {key} shape {arr.shape} != expected {shape}")
    if arr.dtype.kind not in kind_ok:
        raise EpisodeValidationError(f"{where}: {key} dtype {arr.dtype} cannot be stored as {dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise EpisodeValidationError(f"{where}: {key} has a non-finite value {arr[tuple(bad)]} at index {tuple(bad)}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=dtype)
    # A same-kind cast may still overflow (1e39 -> float32 inf, 300 -> int8 44): refuse, never store it changed.
    if dtype.kind == "f" and not np.isfinite(out).all():
        bad = np.argwhere(~np.isfinite(out))[0]
        raise EpisodeValidationError(
            f"{where}: {key} value {arr[tuple(bad)]} at index {tuple(bad)} does not fit in {dtype}"
        )
    if dtype.kind in "iu" and arr.dtype.kind in "iu" and not np.array_equal(out, arr):
        bad = np.argwhere(out != arr)[0]
        raise EpisodeValidationError(
            f"{where}: {key} value {arr[tuple(bad)]} at index {tuple(bad)} does not fit in {dtype}"
        )
    return out


def _kinds_for(dtype: np.dtype) -> str:
    # Casting within a kind (float64 -> float32) is allowed; across kinds (bool -> float) is not.
    return {"f": "fiu", "i": "iu", "u": "u", "b": "b"}.get(dtype.kind, dtype.kind)


def validate_episode(schema: Schema, ep, where: str = "episode") -> dict[str, np.ndarray]:
    """Check one episode against the schema; return its arrays converted to stored dtypes.

    Raises :class:`EpisodeValidationError` naming the key, the expected and the actual
    value. Never mutates ``ep``.
    """
    actions = np.asarray(ep.actions)
    if actions.ndim < 1 or actions.shape[0] < 1:
        raise EpisodeValidationError(f"{where}: episode length must be >= 1, got actions of shape {actions.shape}")
    T = actions.shape[0]
    out: dict[str, np.ndarray] = {}
    obs = ep.observations if isinstance(ep.observations, Mapping) else {FLAT_OBS_KEY: ep.observations}
    final = ep.final_observation if isinstance(ep.final_observation, Mapping) else {FLAT_OBS_KEY: ep.final_observation}
    for src, name in ((obs, "observations"), (final, "final_observation")):
        extra = sorted(set(src) - set(schema.obs))
        if extra:
            raise EpisodeValidationError(f"{where}: {name} has keys {extra} not in the schema {list(schema.obs)}")
    for k, spec in schema.obs.items():
        dt = np.dtype(spec.dtype)
        if k not in obs or k not in final:
            raise EpisodeValidationError(f"{where}: observation key {k!r} is missing (schema keys {list(schema.obs)})")
        out[f"obs/{k}"] = _check_array(where, f"observations[{k!r}]", obs[k], (T, *spec.shape), dt, _kinds_for(dt))
        out[f"final_obs/{k}"] = _check_array(
            where, f"final_observation[{k!r}]", final[k], tuple(spec.shape), dt, _kinds_for(dt)
        )
    act_space = schema.action_space
    adt = np.dtype(act_space.dtype)
    a = _check_array(where, "actions", actions, (T, *act_space.shape), adt, _kinds_for(adt))
    if schema.action_bounds != "ignore":
        low, high = act_space.low, act_space.high
        outside = (a < low - 1e-6) | (a > high + 1e-6)
        if outside.any():
            if schema.action_bounds == "error":
                t, *i = np.argwhere(outside)[0]
                raise EpisodeValidationError(
                    f"{where}: actions[{t}] = {a[t].tolist()} outside the action space "
                    f"[{low.tolist()}, {high.tolist()}] (dimension {tuple(i)})"
                )
            a = np.clip(a, low, high).astype(adt)
    out["actions"] = a
    out["rewards"] = _check_array(where, "rewards", ep.rewards, (T,), np.dtype(np.float32), "fiu")
    for key in ("terminals", "timeouts"):
        flags = _check_array(where, key, getattr(ep, key), (T,), np.dtype(bool), "b")
        if flags[:-1].any():
            raise EpisodeValidationError(
                f"{where}: {key} is True at step {int(np.argmax(flags))} before the last step {T - 1}"
            )
        out[key] = flags
    if out["terminals"][-1] and out["timeouts"][-1]:
        raise EpisodeValidationError(f"{where}: last step is both terminal and timeout")
    iv = ep.interventions if ep.interventions is not None else np.zeros(T, bool)
    out["interventions"] = _check_array(where, "interventions", iv, (T,), np.dtype(bool), "b")
    return out
