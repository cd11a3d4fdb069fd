"""Installed package versions, as provenance records (run manifests, exports, datasets) store them."""

from __future__ import annotations

from importlib import metadata
from typing import Iterable


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (e.g. ``"o2o"``, ``"hydra-core"``); None if not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """``{name: version or None}`` for each distribution, in the order given."""
    return {name: package_version(name) for name in names}
