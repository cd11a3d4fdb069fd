"""Composing o2o's Hydra configs from the command line (``o2o <command> key=value ...``).

Hydra refuses ``key=value`` for a key no config declares, but its hint, ``+key=value``,
adds any key silently: ``+trainer.max_step=10`` would run with the configured
``trainer.max_steps``. :func:`load_config` therefore refuses every key an override adds
(``+key=value``, ``++key=value``) that the composed config does not declare, naming the
key, its section, the nearest known keys and the section's keys — except below the
sections in :data:`OPEN_SECTIONS`, which are free-form by design.

An algorithm's hyperparameters and their defaults are written once, in its class's config
dataclass (:class:`o2o.policies.algos.base.AlgoConfig`): :func:`load_config` puts each in
Hydra's ConfigStore as ``algo_class/<class path>``, and ``configs/algo/<name>.yaml`` starts
from it (``defaults: [/algo_class@_here_: <class path>, _self_]``), setting only what differs.
The composed ``algo`` section therefore holds every key the class takes.
"""

from __future__ import annotations

import difflib
import re
from importlib import resources
from typing import Any, Iterator, NamedTuple, Sequence

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, ListConfig, OmegaConf

# Hydra registers ``${now:...}`` only inside a @hydra.main app; o2o composes configs itself.
if not OmegaConf.has_resolver("now"):
    from datetime import datetime

    OmegaConf.register_new_resolver("now", lambda pattern: datetime.now().strftime(pattern), use_cache=True)

CONFIG_MODULE = "o2o.configs"
# The ConfigStore group holding each algorithm class's keys and defaults (see the module's doc).
ALGO_CLASS_GROUP = "algo_class"

# Sections whose keys are open by design: an added key below them is passed on to what reads
# the section, which checks it itself. Every other section refuses keys its config does not declare.
OPEN_SECTIONS = {
    "env.kwargs": "keyword arguments of the env's factory (o2o.envs.*.make), which refuses those it does not take",
    "finetune.algo": "online changes to the checkpoint's algorithm config, whichever algorithm it is: the algorithm "
    "class refuses unknown keys, naming finetune.algo",
    "finetune.algo_overrides": "online changes per algorithm name (iql, cql, ...), checked by that algorithm's class",
}


class UnknownConfigKeyError(ValueError):
    """An override names a config key that no config declares (most often a typo)."""


def load_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``configs/<name>.yaml`` with Hydra ``overrides`` applied.

    Raises :class:`UnknownConfigKeyError` for a key an override adds (or tries to set) that the
    config does not declare, outside :data:`OPEN_SECTIONS`; Hydra's own errors otherwise (the CLI
    shows both without a traceback).
    """
    overrides = list(overrides)
    try:
        cfg = _compose(name, overrides)
    except ConfigCompositionException as e:  # `key=value` for an undeclared key: say which key, and the near ones
        m = re.match(r"Could not override '([^']+)'", str(e))
        bad = [o for o in _parse(overrides) if m and o.key_or_group == m.group(1) and not _is_group_override(o)]
        if bad:
            _check_added(name, [o for o in overrides if o != bad[0].input_line], bad)
        raise
    added = [o for o in _parse(overrides) if (o.is_add() or o.is_force_add()) and not _is_group_override(o)]
    if added:
        _check_added(name, [o for o in overrides if o not in {a.input_line for a in added}], added)
    return cfg


def _compose(name: str, overrides: list[str]) -> DictConfig:
    """Hydra's composition of ``name`` with ``overrides``; ``+algo.<key>=v`` for a key the algorithm
    declares is taken as ``++algo.<key>=v``: the spelling such a key needed while the algorithm
    YAMLs left some of their class's keys out."""
    if any(g.group == "algo" for g in command_groups(name)):
        register_algorithm_configs()
    for _ in range(len(overrides) + 1):
        try:
            return _compose_once(name, overrides)
        except ConfigCompositionException as e:
            m = re.match(r"Could not append to config\. An item is already at '(algo\.[^']+)'", str(e))
            if not m:
                raise
            overrides = [f"+{o}" if o.startswith(f"+{m.group(1)}=") else o for o in overrides]
    return _compose_once(name, overrides)


def _compose_once(name: str, overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _parse(overrides: Sequence[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def _is_group_override(o) -> bool:
    """Whether Hydra takes override ``o`` as a choice of config group (``+experiment=room``): its key names
    a group (a folder of configs/, or one of Hydra's own) and its value is not a mapping (Hydra's rule)."""
    key = o.key_or_group
    folder = config_root()
    for part in key.split("/"):  # one name per joinpath: Python 3.10's Traversable takes one
        folder = folder.joinpath(part)
    is_group = key.split(".")[0] == "hydra" or folder.is_dir()
    return is_group and not (o.type.name != "DEL" and isinstance(o.value(), dict))


_registered = False


def register_algorithm_configs() -> None:
    """Each algorithm class's keys with their defaults (its config dataclass) in Hydra's ConfigStore, as
    ``algo_class/<class path>`` with ``cls`` set to the class (once per process: it imports every
    algorithm, so only commands that compose ``algo`` call it). ``seed`` follows ``trainer.seed``
    unless the algorithm's config sets it (as ``o2o pretrain`` did before the key was shown)."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    from o2o.policies.algos.base import algorithm_classes

    store = ConfigStore.instance()
    for path, cls in algorithm_classes().items():
        store.store(
            group=ALGO_CLASS_GROUP, name=path, node={**cls.config.defaults(), "cls": path, "seed": "${trainer.seed}"}
        )
    _registered = True


def config_root():
    """The config package's folder (importlib.resources: works from an editable install and a wheel)."""
    return resources.files(CONFIG_MODULE)


def group_options(group: str) -> list[str]:
    """The options of config group ``group`` (the YAML files in ``configs/<group>/``), sorted."""
    folder = config_root().joinpath(group)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


class GroupChoice(NamedTuple):
    """A config group a command composes: its name, default option, and the key that overrides it."""

    group: str
    default: str
    override: str  # e.g. ``algo``; ``export@_global_`` for a group placed at the top (``export@_here_``)


def command_groups(name: str) -> list[GroupChoice]:
    """The config groups ``configs/<name>.yaml`` composes, with their default options, in order."""
    import yaml

    out = []
    for entry in yaml.safe_load(config_root().joinpath(f"{name}.yaml").read_text()).get("defaults", []):
        if not isinstance(entry, dict) or len(entry) != 1:
            continue  # _self_
        ((key, option),) = entry.items()
        if "${" in str(option):
            continue  # a choice that follows another group's (the online recipe follows algo): not a user's choice
        group, _, package = str(key).removeprefix("optional ").partition("@")
        out.append(GroupChoice(group, str(option), group if not package else f"{group}@_global_"))
    return out


def _check_added(name: str, base_overrides: list[str], added: list) -> None:
    """Refuse each key of ``added`` (parsed overrides) that the config composed from ``base_overrides``
    does not declare (each leaf of a mapping value counts as a key)."""
    base = _compose(name, base_overrides)
    for o in added:
        for path in _paths(o.key_or_group, o.value() if o.type.name != "DEL" else None):
            problem = unknown_key(base, path)
            if problem:
                what, rest = problem
                rest = rest.replace("known top-level keys", f"known top-level keys of configs/{name}.yaml")
                raise UnknownConfigKeyError(
                    f"{what} (from {o.input_line}){rest} (keys can be added freely only below "
                    f"{', '.join(OPEN_SECTIONS)})"
                )


def _paths(key: str, value: Any) -> Iterator[str]:
    """``key`` and, for a mapping value, the dotted path of every key inside it."""
    yield key
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(f"{key}.{k}", v)


def unknown_key(cfg: DictConfig, path: str) -> tuple[str, str] | None:
    """None when ``path`` (dotted) is declared in ``cfg`` or lies below an open section; else the
    error's two parts: what is unknown, and the suggestion with the section's known keys."""
    parts = path.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        here = ".".join(parts[: i + 1])
        if here in OPEN_SECTIONS:
            return None
        if isinstance(node, DictConfig) and part in node:
            node = node._get_node(part)
            continue
        if isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
            continue
        section = ".".join(parts[:i])
        if not isinstance(node, (DictConfig, ListConfig)):
            return (
                f"config key {here!r} is not declared",
                f": {section!r} is a value ({node._value()!r}), not a section",
            )
        known = sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []
        extra = class_keys(cfg, section)
        if i == len(parts) - 1 and part in extra:
            return None  # a key the reading class takes, left at its default by the YAML
        known = sorted(set(known) | extra)
        near = difflib.get_close_matches(part, known, n=3, cutoff=0.6)
        prefix = f"{section}." if section else ""
        hint = f"; did you mean {' or '.join(repr(prefix + k) for k in near)}?" if near else ";"
        where = f"known keys of {section}" if section else "known top-level keys"
        return f"unknown config key {here!r}", f"{hint} {where}: {', '.join(known) or '(none)'}"
    return None


def class_keys(cfg: DictConfig, section: str) -> set[str]:
    """Keys the class that reads ``section`` takes beyond those its YAML lists (left at their
    defaults): an algorithm's hyperparameters, a behaviour kind's keys."""
    try:
        if section == "algo" and cfg.algo.get("cls"):
            from o2o.policies.algos.base import resolve_algorithm

            return set(resolve_algorithm(str(cfg.algo.cls)).config.keys())
        if section == "behavior" and cfg.behavior.get("kind"):
            from o2o.policies.behavior.factory import BEHAVIOR_BUILDERS

            spec = BEHAVIOR_BUILDERS.get(str(cfg.behavior.kind))
            return set(spec.keys) if spec is not None else set()
    except Exception:  # the class cannot be loaded: its keys are unknown here, it reports that itself later
        return set()
    return set()


def plain(cfg: Any) -> Any:
    """``cfg`` as plain, resolved Python containers (a DictConfig/ListConfig), or unchanged."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
