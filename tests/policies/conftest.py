"""Shared fixtures of the policy tests: small real datasets from the built-in point maze."""

from __future__ import annotations

import pytest

from o2o.pipeline.config import load_config
from o2o.pipeline.stages.collect import collect


def make_maze_dataset(path, behavior: str = "mixed", episodes: int = 20, extra: tuple[str, ...] = ()) -> str:
    """Collect ``episodes`` point-maze episodes of ``behavior`` into a store at ``path`` (appends)."""
    cfg = load_config(
        "collect",
        [
            "env=pointmaze",
            f"behavior={behavior}",
            f"collect.episodes={episodes}",
            f"dataset.path={path}",
            "collect.progress=false",
            *extra,
        ],
    )
    collect(cfg)
    return str(path)


@pytest.fixture(scope="session")
def maze_dataset(tmp_path_factory) -> str:
    """20 mixed (scripted / noisy / random) point-maze episodes, 3000 transitions."""
    return make_maze_dataset(tmp_path_factory.mktemp("maze") / "maze.zarr")


@pytest.fixture(scope="session")
def make_dataset():
    """The :func:`make_maze_dataset` function."""
    return make_maze_dataset
