"""Build a behaviour policy from a ``configs/behavior/<name>.yaml`` node.

The node's ``kind`` picks a builder from :data:`BEHAVIOR_BUILDERS`; a new kind (e.g.
``human``) is one builder function and one entry there. Example nodes::

    {kind: scripted, noise_std: 0.3}
    {kind: scripted, noise_std: 0.3, controller: {target_cell: [3, 3]}}   # the controller's own options
    {kind: random}
    {kind: learned, checkpoint: runs/x/policy.onnx, action_scale: unit, exploration: gaussian}
    {kind: mixture, components: [{weight: 0.8, behavior: {kind: scripted}},
                                 {weight: 0.2, behavior: {kind: random}}]}
    {kind: human, operator: alice, driver: {kind: scripted}}   # teleoperation / interventions
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np
from omegaconf import DictConfig, OmegaConf

from o2o.policies.behavior.base import BehaviorPolicy
from o2o.policies.behavior.learned import LearnedPolicy
from o2o.policies.behavior.mixture import MixturePolicy
from o2o.policies.behavior.random_policy import RandomPolicy
from o2o.policies.behavior.scripted import load_scripted_controller

Builder = Callable[[DictConfig, gym.Env, "DictConfig | None", "int | None"], BehaviorPolicy]


@dataclass(frozen=True)
class BehaviorKind:
    """A ``kind`` of behaviour config: its builder and the keys its node may hold."""

    build: Builder
    keys: frozenset[str]


def make_behavior(
    cfg: DictConfig | Mapping[str, Any],
    env: gym.Env,
    env_cfg: DictConfig | Mapping[str, Any] | None = None,
    *,
    seed: int | None = None,
) -> BehaviorPolicy:
    """Build the behaviour policy described by ``cfg`` for ``env``.

    Args:
        cfg: a behaviour config node (``kind`` plus that kind's keys).
        env: the env it will drive (its action space; its ``obs_layout`` for scripted).
        env_cfg: the env's config node (``name``, ``scripted_controller``); needed for
            ``scripted``, used in error messages otherwise.
        seed: seeds the policy's randomness until the first ``reset(seed)``.
    """
    cfg = _as_config(cfg)
    env_cfg = None if env_cfg is None else _as_config(env_cfg)
    kind = cfg.get("kind")
    spec = BEHAVIOR_BUILDERS.get(kind)
    if spec is None:
        raise ValueError(
            f"behavior config: unknown kind {kind!r} (env {_env_name(env, env_cfg)!r}); "
            f"expected one of {sorted(BEHAVIOR_BUILDERS)}"
        )
    unknown = sorted(set(cfg.keys()) - spec.keys - {"kind"})
    if unknown:
        raise ValueError(f"behavior {kind!r}: unknown keys {unknown}; allowed: {sorted(spec.keys)}")
    return spec.build(cfg, env, env_cfg, seed)


# -- builders ------------------------------------------------------------------------------


def _build_scripted(cfg: DictConfig, env: gym.Env, env_cfg: DictConfig | None, seed: int | None) -> BehaviorPolicy:
    name = _env_name(env, env_cfg)
    path = None if env_cfg is None else env_cfg.get("scripted_controller")
    if not path:
        raise ValueError(
            f"behavior 'scripted': env {name!r} has no scripted controller (scripted_controller is null "
            f"or absent in its env config); use behavior=random, or behavior=learned with a checkpoint"
        )
    try:  # the path comes from YAML stored with datasets: the loader only accepts o2o's controllers
        cls = load_scripted_controller(path)
    except ValueError as e:
        raise ValueError(f"env {name!r}: {e}") from e
    try:
        env.get_wrapper_attr("obs_layout")
    except AttributeError:
        raise ValueError(
            f"behavior 'scripted': env {name!r} exposes no obs_layout; build it with o2o.envs.make_env"
        ) from None
    extra = cfg.get("controller") or {}
    if not isinstance(extra, Mapping):
        raise ValueError(
            f"behavior 'scripted': controller must be a mapping of {cls.__name__}'s options, got {extra!r}"
        )
    extra = OmegaConf.to_container(extra, resolve=True) if isinstance(extra, DictConfig) else dict(extra)
    allowed = sorted(cls.options)
    unknown = sorted(set(extra) - set(allowed))
    if unknown:
        raise ValueError(
            f"behavior 'scripted': controller options {unknown} are not options of {cls.__name__} "
            f"(env {name!r}); it takes {allowed or 'none'}"
        )
    # from_env, not the constructor: a controller may need more of the env than its spaces (the maze map).
    return cls.from_env(
        env, noise_std=float(cfg.get("noise_std", 0.0)), policy_id=cfg.get("policy_id"), seed=seed, **extra
    )


def _build_random(cfg: DictConfig, env: gym.Env, env_cfg: DictConfig | None, seed: int | None) -> BehaviorPolicy:
    return RandomPolicy(env.action_space, seed=seed, policy_id=cfg.get("policy_id") or "random")


def _build_learned(cfg: DictConfig, env: gym.Env, env_cfg: DictConfig | None, seed: int | None) -> BehaviorPolicy:
    if "checkpoint" not in cfg or OmegaConf.is_missing(cfg, "checkpoint") or not cfg.checkpoint:
        raise ValueError(
            f"behavior 'learned' (env {_env_name(env, env_cfg)!r}): no checkpoint given; set "
            "behavior.checkpoint=<an o2o export folder, an o2o .ckpt, or a .onnx or TorchScript .pt file>"
        )
    kwargs: dict[str, Any] = {
        # No default here either: configs/behavior/learned.yaml states it explicitly.
        "action_scale": cfg.get("action_scale"),
        "exploration": cfg.get("exploration", "none"),
        "noise_std": float(cfg.get("noise_std", 0.1)),
        "epsilon": float(cfg.get("epsilon", 0.1)),
        "seed": seed,
    }
    if cfg.get("policy_id"):
        kwargs["policy_id"] = cfg.policy_id
    return LearnedPolicy.from_file(cfg.checkpoint, env.action_space, **kwargs)


def _build_mixture(cfg: DictConfig, env: gym.Env, env_cfg: DictConfig | None, seed: int | None) -> BehaviorPolicy:
    items = cfg.get("components")
    if not items:
        raise ValueError("behavior 'mixture': needs a non-empty components list of {weight, behavior}")
    # Independent child seeds from the mixture's (components are reseeded at every reset
    # anyway; this only makes construction itself reproducible).
    child_seeds = (
        [None] * len(items)
        if seed is None
        else [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(len(items))]
    )
    components, weights = [], []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or set(item.keys()) != {"weight", "behavior"}:
            raise ValueError(
                f"behavior 'mixture': component {i} must have exactly the keys weight and behavior, got {item}"
            )
        components.append(make_behavior(item.behavior, env, env_cfg, seed=child_seeds[i]))
        weights.append(float(item.weight))
    return MixturePolicy(components, weights, seed=seed)


def _build_human(cfg: DictConfig, env: gym.Env, env_cfg: DictConfig | None, seed: int | None) -> BehaviorPolicy:
    # Imported here: a terminal and device drivers are needed only when a person drives.
    from o2o.policies.behavior.devices import DEVICES, RobosuiteDevice
    from o2o.policies.behavior.human import HumanPolicy
    from o2o.policies.behavior.terminal import Terminal

    device = str(cfg.get("device") or "terminal")
    if device not in DEVICES:
        raise ValueError(f"behavior 'human': device {device!r} not one of {DEVICES}")
    driver = None
    if cfg.get("driver"):
        if cfg.driver.get("kind") in ("human", "mixture"):
            raise ValueError("behavior 'human': the driver must be one policy (scripted, learned, random)")
        driver = make_behavior(cfg.driver, env, env_cfg, seed=seed)
    rate = cfg.get("rate_hz")
    if rate is None:
        freq = getattr(env.unwrapped, "control_freq", None) or (
            1.0 / env.unwrapped.dt if getattr(env.unwrapped, "dt", None) else 20.0
        )
        rate = float(freq)
    moves = RobosuiteDevice(env, device) if device != "terminal" else None
    terminal = Terminal()
    try:
        return HumanPolicy(
            env,
            terminal,
            operator=cfg.get("operator"),
            driver=driver,
            realtime=bool(cfg.get("realtime", True)),
            rate_hz=float(rate),
            hold_s=float(cfg.get("hold_s", 0.15)),
            step=float(cfg.get("step", 0.5)),
            policy_id=cfg.get("policy_id"),
            device=moves,
            device_name=device,
        )
    except BaseException:
        terminal.close()
        raise


#: kind -> builder and allowed keys. No if/elif chain: a new kind is one entry.
BEHAVIOR_BUILDERS: dict[str, BehaviorKind] = {
    "scripted": BehaviorKind(_build_scripted, frozenset({"noise_std", "policy_id", "controller"})),
    "random": BehaviorKind(_build_random, frozenset({"policy_id"})),
    "learned": BehaviorKind(
        _build_learned, frozenset({"checkpoint", "action_scale", "exploration", "noise_std", "epsilon", "policy_id"})
    ),
    "mixture": BehaviorKind(_build_mixture, frozenset({"components"})),
    "human": BehaviorKind(
        _build_human, frozenset({"operator", "device", "realtime", "rate_hz", "hold_s", "step", "driver", "policy_id"})
    ),
}


def _as_config(cfg: DictConfig | Mapping[str, Any]) -> DictConfig:
    if isinstance(cfg, DictConfig):
        return cfg
    if isinstance(cfg, Mapping):
        return OmegaConf.create(dict(cfg))
    raise TypeError(f"behavior config must be a mapping, got {type(cfg).__name__}: {cfg!r}")


def _env_name(env: gym.Env, env_cfg: DictConfig | None) -> str:
    if env_cfg is not None and env_cfg.get("name"):
        return str(env_cfg.name)
    spec = getattr(env, "spec", None)
    return spec.id if spec is not None else type(env.unwrapped).__name__
