"""Making o2o environments by name from a config (``configs/env/<name>.yaml``).

A config names a *factory* (a function in ``o2o.envs.*``), the suite's env ``id``,
``max_episode_steps`` and ``kwargs``. Configs are stored with datasets and rebuilt later,
so only factories inside ``o2o.envs.`` are accepted: a config can never run arbitrary code.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any, Callable, Mapping

import gymnasium as gym

from o2o.core.resolve import resolve
from o2o.envs.spaces import ObsLayout, space_to_dict
from o2o.envs.wrappers import SeedOnFirstReset

__all__ = [
    "make_env",
    "make_from_spec",
    "make_vector_env",
    "env_metadata",
    "check_reset_options",
    "resolve_factory",
    "ObsLayout",
]

FACTORY_PREFIX = "o2o.envs."


def _plain(cfg: Any) -> dict[str, Any]:
    """A plain-dict deep copy of a Mapping or an OmegaConf DictConfig."""
    from omegaconf import DictConfig, OmegaConf  # here, not at import: Hydra is not needed to make envs

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"env config must be a mapping, got {type(cfg).__name__}")
    return copy.deepcopy(dict(cfg))


def resolve_factory(path: str) -> Callable[..., gym.Env]:
    """The env factory function at dotted ``path``, which must lie inside ``o2o.envs.``."""
    return resolve(
        path,
        FACTORY_PREFIX,
        what="env factory",
        rule=f"factories must be functions inside '{FACTORY_PREFIX}' (e.g. 'o2o.envs.gym_mujoco.make'); "
        "env configs are rebuilt from datasets and may not run other code",
    )


def make_env(cfg: Mapping[str, Any], seed: int | None = None) -> gym.Env:
    """Build the env described by ``cfg`` (keys: factory, id, max_episode_steps, kwargs).

    ``seed`` is used by the first ``reset()`` that passes no seed of its own (and seeds
    the action space), so ``make_env(cfg, 0)`` then ``env.reset()`` is reproducible.
    """
    cfg = _plain(cfg)
    missing = [k for k in ("factory", "id", "max_episode_steps") if k not in cfg]
    if missing:
        raise ValueError(f"env config {cfg.get('name', '?')!r} lacks keys {missing}")
    factory = resolve_factory(cfg["factory"])
    env = factory(cfg["id"], int(cfg["max_episode_steps"]), **(cfg.get("kwargs") or {}))
    return SeedOnFirstReset(env, seed)


def make_from_spec(config: Mapping[str, Any]) -> gym.Env:
    """Entry point of the Gymnasium specs that o2o writes into exported datasets.

    ``gym.make(spec)`` (and Minari's ``recover_environment``) calls it with the env config
    stored in the spec's kwargs; the same factory check as :func:`make_env` applies.
    """
    return make_env(config)


def make_vector_env(
    cfg: Mapping[str, Any], num_envs: int, seed: int | None = None, asynchronous: bool = True, **vector_kwargs: Any
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of the env in a Gymnasium vector env; copy ``i`` is seeded ``seed + i``.

    Uses ``SyncVectorEnv`` when ``num_envs == 1`` or ``asynchronous`` is False, else
    ``AsyncVectorEnv`` (one process per copy). ``vector_kwargs`` go to the vector env
    (e.g. ``autoreset_mode``).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    plain = _plain(cfg)
    resolve_factory(plain.get("factory"))  # refuse a bad config here, not in a subprocess
    fns = [partial(make_env, plain, None if seed is None else seed + i) for i in range(num_envs)]
    if num_envs == 1 or not asynchronous:
        return gym.vector.SyncVectorEnv(fns, **vector_kwargs)
    return gym.vector.AsyncVectorEnv(fns, **vector_kwargs)


def check_reset_options(env: gym.Env, options: Any, where: str = "reset options") -> dict[str, Any]:
    """``options`` for ``env.reset(options=...)``, checked by the env and in the plain form it
    records (an episode's task), or a ValueError naming ``where`` and the key.

    An env takes reset options when it has a ``check_options(options, where)`` method (the point
    maze: start and goal cells; robosuite Lift: the cube's placement); any other env takes none."""
    check = _attr(env, "check_options")
    if check is None:
        name = env.spec.id if getattr(env, "spec", None) is not None else type(env.unwrapped).__name__
        raise ValueError(f"{where}: env {name!r} takes no reset options (it varies no task per episode)")
    return dict(check(_plain(options) if _is_mapping(options) else options, where))


def _is_mapping(value: Any) -> bool:
    from omegaconf import DictConfig

    return isinstance(value, (Mapping, DictConfig))


def _attr(env: gym.Env, name: str) -> Any:
    try:
        return env.get_wrapper_attr(name)
    except AttributeError:
        return None


def env_metadata(env: gym.Env, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-friendly description of ``env`` built from ``cfg``, stored with datasets and exports."""
    cfg = _plain(cfg)
    layout: ObsLayout = env.get_wrapper_attr("obs_layout")
    freq = _attr(env, "control_freq")
    if freq is None and getattr(env.unwrapped, "dt", None):
        freq = 1.0 / float(env.unwrapped.dt)
    return {
        "name": cfg.get("name"),
        "id": cfg.get("id"),
        "factory": cfg.get("factory"),
        "kwargs": cfg.get("kwargs") or {},
        "max_episode_steps": int(cfg["max_episode_steps"]),
        "observation_space": space_to_dict(env.observation_space),
        "action_space": space_to_dict(env.action_space),
        "obs_layout": layout.to_dict(),
        "control_freq": None if freq is None else float(freq),
        "controller_type": _attr(env, "controller_type"),
        "scripted_controller": cfg.get("scripted_controller"),
    }
