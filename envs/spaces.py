"""Observation layouts and space descriptions shared by envs, datasets and deploy.

An o2o env always emits one flat float32 vector. ``ObsLayout`` records which named
fields sit where in that vector, so a dataset, a scripted controller or a robot-side
runtime can rebuild (or pick apart) the observation without the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class ObsField:
    """One named field of a flat observation: ``flat[start:stop]`` reshaped to ``shape``."""

    key: str
    shape: tuple[int, ...]
    start: int
    stop: int


class ObsLayout:
    """Ordered named fields of a flat observation vector."""

    def __init__(self, fields: Sequence[tuple[str, Sequence[int]]]):
        out, start = [], 0
        for key, shape in fields:
            shape = tuple(int(s) for s in shape)
            size = int(np.prod(shape)) if shape else 1
            out.append(ObsField(key, shape, start, start + size))
            start += size
        keys = [f.key for f in out]
        if len(set(keys)) != len(keys):
            raise ValueError(f"observation layout has duplicate keys: {keys}")
        self.fields: tuple[ObsField, ...] = tuple(out)
        self.dim = start
        self._by_key = {f.key: f for f in out}

    @property
    def keys(self) -> list[str]:
        return [f.key for f in self.fields]

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def slice(self, key: str) -> slice:
        """The slice of ``key`` in the flat vector (works on ``obs[..., s]`` for batches)."""
        try:
            f = self._by_key[key]
        except KeyError:
            raise KeyError(f"observation field {key!r} not in layout {self.keys}") from None
        return slice(f.start, f.stop)

    def get(self, flat: np.ndarray, key: str) -> np.ndarray:
        """Field ``key`` of a flat observation (or a batch of them, leading dims kept)."""
        f = self._by_key[key] if key in self._by_key else None
        if f is None:
            raise KeyError(f"observation field {key!r} not in layout {self.keys}")
        part = flat[..., f.start : f.stop]
        return part.reshape(part.shape[:-1] + f.shape)

    def flatten(self, obs: Mapping[str, Any], dtype=np.float32) -> np.ndarray:
        """Concatenate a dict observation into the flat vector, in layout order."""
        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise KeyError(f"observation is missing fields {missing} of layout {self.keys}")
        return np.concatenate([np.asarray(obs[f.key], dtype=dtype).reshape(-1) for f in self.fields])

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Split a flat observation (or batch) into its named fields."""
        return {f.key: self.get(flat, f.key) for f in self.fields}

    def to_dict(self) -> list[dict]:
        """JSON-friendly form, stored in dataset attributes and export manifests."""
        return [{"key": f.key, "shape": list(f.shape), "start": f.start, "stop": f.stop} for f in self.fields]

    @classmethod
    def from_dict(cls, items: Sequence[Mapping]) -> "ObsLayout":
        return cls([(d["key"], d["shape"]) for d in items])

    @classmethod
    def single(cls, key: str, dim: int) -> "ObsLayout":
        """A layout with one field: for envs whose observation has no named parts."""
        return cls([(key, (dim,))])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObsLayout) and self.fields == other.fields

    def __repr__(self) -> str:
        return f"ObsLayout({[(f.key, f.shape) for f in self.fields]})"


def space_to_dict(space: gym.Space) -> dict:
    """A JSON-friendly description of a Box space (shape, dtype, bounds)."""
    if not isinstance(space, gym.spaces.Box):
        raise TypeError(f"o2o stores Box spaces only, got {type(space).__name__}: {space}")
    return {
        "type": "Box",
        "shape": list(space.shape),
        "dtype": np.dtype(space.dtype).name,
        "low": _bound_list(space.low),
        "high": _bound_list(space.high),
    }


def space_from_dict(d: Mapping) -> gym.spaces.Box:
    """Inverse of :func:`space_to_dict`."""
    if d.get("type") != "Box":
        raise ValueError(f"unsupported space description {d!r}")
    dtype = np.dtype(d["dtype"])
    low = np.asarray([_unjson(v) for v in d["low"]], dtype=np.float64).reshape(d["shape"])
    high = np.asarray([_unjson(v) for v in d["high"]], dtype=np.float64).reshape(d["shape"])
    return gym.spaces.Box(low=low.astype(dtype), high=high.astype(dtype), shape=tuple(d["shape"]), dtype=dtype)


def _bound_list(a: np.ndarray) -> list:
    # JSON has no inf: store unbounded as strings so the description round-trips.
    return [("inf" if v > 0 else "-inf") if np.isinf(v) else float(v) for v in np.asarray(a, np.float64).ravel()]


def _unjson(v) -> float:
    return float(v)
