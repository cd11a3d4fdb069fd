"""The episode store: a growing, crash-safe Zarr dataset of episodes with provenance."""

from o2o.datasets.durable import StoreLockedError
from o2o.datasets.episode import Episode, EpisodeRecorder
from o2o.datasets.reading import NormStats, Transitions
from o2o.datasets.schema import SOURCES, EpisodeValidationError, Schema
from o2o.datasets.store import DatasetVersion, EpisodeStore

__all__ = [
    "DatasetVersion", "Episode", "EpisodeRecorder", "EpisodeStore", "EpisodeValidationError",
    "NormStats", "SOURCES", "Schema", "StoreLockedError", "Transitions",
]
