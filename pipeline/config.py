"""Composing o2o's Hydra configs from the command line (``o2o <command> key=value ...``)."""

from __future__ import annotations

from typing import Any, Sequence

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

# Hydra registers ``${now:...}`` only inside a @hydra.main app; o2o composes configs itself.
if not OmegaConf.has_resolver("now"):
    from datetime import datetime

    OmegaConf.register_new_resolver("now", lambda pattern: datetime.now().strftime(pattern), use_cache=True)

CONFIG_MODULE = "o2o.configs"


def load_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``configs/<name>.yaml`` with Hydra ``overrides`` applied.

    Raises Hydra's own errors for unknown groups/keys; the CLI shows them without a traceback.
    """
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def plain(cfg: Any) -> Any:
    """``cfg`` as plain, resolved Python containers (a DictConfig/ListConfig), or unchanged."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
