"""Pipeline stages: each a function of the artifacts it reads and writes."""

from __future__ import annotations

from typing import Any


def dataset_verify(cfg: Any) -> bool:
    """``dataset.verify`` (default true): whether loads and appends check the stored content's digests.

    In ``o2o run`` the collect stage puts it in the dataset artifact (``verify``), so the stages
    that read the dataset follow it without it entering their fingerprints."""
    value = (cfg.get("dataset") or {}).get("verify", True) if hasattr(cfg, "get") else True
    if not isinstance(value, bool):
        raise ValueError(f"dataset.verify must be true or false, got {value!r}")
    return value
