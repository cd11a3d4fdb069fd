"""The episode store: a growing, crash-safe Zarr dataset of episodes with provenance."""

from o2o.datasets.durable import StoreLockedError
from o2o.datasets.episode import Episode, EpisodeRecorder
from o2o.datasets.integrity import DatasetDamagedError
from o2o.datasets.reading import NormStats, Transitions
from o2o.datasets.schema import SOURCES, EpisodeValidationError, Schema
from o2o.datasets.store import DatasetVersion, EpisodeStore, NotADatasetError

__all__ = [
    "DatasetDamagedError",
    "DatasetVersion",
    "Episode",
    "EpisodeRecorder",
    "EpisodeStore",
    "EpisodeValidationError",
    "NormStats",
    "NotADatasetError",
    "SOURCES",
    "Schema",
    "StoreLockedError",
    "Transitions",
]
