"""What the stages of ``o2o run`` read and write, typed.

Each artifact is a frozen dataclass with a JSON round trip (``to_dict`` / ``from_dict``): the
runner records the dicts (``<state_dir>/stages/``, the run manifest), a stage reads its inputs
typed (``ctx.artifact("checkpoint")``) and returns typed outputs. Open-ended measurements (an
evaluation's metrics, a gate criterion, a curve) stay mappings inside them.

``fingerprint`` fields are what downstream stages key on (:func:`o2o.pipeline.dag.artifact_fingerprint`):
the dataset's chained fingerprint, a checkpoint's or manifest's SHA-256.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Mapping

from o2o.datasets.reading import DatasetVersion


class ArtifactError(ValueError):
    """A recorded artifact that does not have the fields its type needs."""


class Artifact:
    """Base of the typed artifacts: ``to_dict`` and ``from_dict`` (nested artifacts and versions too)."""

    NAME: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if hasattr(v, "to_dict") else v
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | "Artifact") -> Any:
        if isinstance(d, cls):
            return d
        if not isinstance(d, Mapping):
            raise ArtifactError(f"artifact {cls.NAME or cls.__name__}: expected a mapping, got {type(d).__name__}")
        kwargs = {}
        missing = []
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name in d:
                kwargs[f.name] = _decode(cls, f.name, d[f.name])
            elif f.default is MISSING and f.default_factory is MISSING:  # type: ignore[misc]
                missing.append(f.name)
        if missing:
            raise ArtifactError(
                f"artifact {cls.NAME or cls.__name__} lacks {missing} (it has {sorted(d)}): recorded "
                "by another version of o2o; rerun the stage that writes it (--force)"
            )
        return cls(**kwargs)


def _decode(cls: type, name: str, value: Any) -> Any:
    kind = cls.NESTED.get(name) if hasattr(cls, "NESTED") else None
    if kind is None or value is None:
        return value
    return kind.from_dict(value)


def _version(d: Mapping[str, Any] | DatasetVersion) -> DatasetVersion:
    return d if isinstance(d, DatasetVersion) else DatasetVersion.from_dict(d)


class _Version:
    """Adapter: DatasetVersion as a nested field type."""

    from_dict = staticmethod(_version)


@dataclass(frozen=True)
class DatasetArtifact(Artifact):
    """The dataset as it stood for this run: its path and version (episodes + chained fingerprint)."""

    NAME: ClassVar[str] = "dataset"
    path: str
    episodes: int
    fingerprint: str
    transitions: int
    verify: bool = True  # whether readers check contents (not part of the fingerprint)

    @property
    def selector(self) -> str:
        """The version as ``data.version`` takes it: ``EPISODES@FINGERPRINT``."""
        return f"{self.episodes}@{self.fingerprint}"


@dataclass(frozen=True)
class TrainedOn(Artifact):
    """The data a checkpoint was trained on (what its ``meta.dataset`` records)."""

    NAME: ClassVar[str] = "trained-on"
    NESTED: ClassVar[dict] = {"version": _Version}
    path: str
    version: DatasetVersion
    episodes: int
    transitions: int
    selection: dict | None = None

    @property
    def selector(self) -> str:
        return f"{self.version.episodes}@{self.version.fingerprint}"


@dataclass(frozen=True)
class CheckpointArtifact(Artifact):
    """Pretraining's chosen checkpoint, how it was chosen, and what it was trained on."""

    NAME: ClassVar[str] = "checkpoint"
    NESTED: ClassVar[dict] = {"dataset": TrainedOn}
    path: str
    fingerprint: str  # SHA-256 of the file
    algo: str
    updates: int
    selection: str
    dataset: TrainedOn
    last: str | None = None
    best_eval: dict | None = None
    evaluations: list = field(default_factory=list)
    summary: str | None = None  # the run's summary.json


@dataclass(frozen=True)
class DataBehaviour(Artifact):
    """The dataset's own behaviour over the version trained on: what a policy is judged against."""

    NAME: ClassVar[str] = "data-behaviour"
    episodes: int
    return_mean: float
    success_rate: float | None = None
    reward_max: float | None = None
    sources: dict = field(default_factory=dict)
    return_std: float | None = None  # sample standard deviation of the episode returns (the gate's standard error)
    reward_min: float | None = None


@dataclass(frozen=True)
class EvaluationArtifact(Artifact):
    """The chosen checkpoint on fresh seeds (``sim``: the evaluator's summary), its value diagnostic,
    optional OPE, and the data's behaviour."""

    NAME: ClassVar[str] = "evaluation"
    NESTED: ClassVar[dict] = {"data": DataBehaviour}
    checkpoint: str
    gamma: float
    horizon: int
    data: DataBehaviour
    sim: dict | None = None
    ope: dict | None = None


@dataclass(frozen=True)
class GateArtifact(Artifact):
    """The gate's decision: every criterion with its value, threshold and margin."""

    NAME: ClassVar[str] = "gate"
    passed: bool
    criteria: list
    checkpoint: str | None = None
    actions: dict | None = None
    critic: dict | None = None  # its starting level, its Q on the data's start states vs their discounted return


@dataclass(frozen=True)
class FinetuneArtifact(Artifact):
    """Online finetuning: the finetuned checkpoint and its evaluation, and what it appended to the
    dataset (``dataset_before`` -> ``dataset_after``: the stage appends to the dataset it reads)."""

    NAME: ClassVar[str] = "finetune"
    NESTED: ClassVar[dict] = {"dataset_before": _Version, "dataset_after": _Version}
    checkpoint: str
    fingerprint: str
    algo: str
    from_checkpoint: str
    evaluation: dict
    steps: int
    updates: int
    episodes: int
    dataset_before: DatasetVersion
    dataset_after: DatasetVersion
    episode_range: list | None = None
    resumed: dict | None = None
    online: dict = field(default_factory=dict)
    batch_rows: dict = field(default_factory=dict)
    rolled_back: bool = False
    rollback: dict | None = None
    pre_finetune: dict | None = None
    curve: list = field(default_factory=list)
    kept: dict | None = None  # which weights the checkpoint holds: best or last, of which evaluation
    seconds: float = 0.0
    summary: str = ""


@dataclass(frozen=True)
class PolicyArtifact(Artifact):
    """The promoted policy: which checkpoint, offline or finetuned, and why."""

    NAME: ClassVar[str] = "policy"
    path: str
    fingerprint: str
    origin: str  # offline | finetuned
    reason: str
    metric: str = "return_mean"
    value: float | None = None  # its evaluation's ``metric``


@dataclass(frozen=True)
class ExportedArtifact(Artifact):
    """The export folder of the promoted policy; ``fingerprint``: its manifest's SHA-256."""

    NAME: ClassVar[str] = "exported"
    dir: str
    manifest: str
    fingerprint: str
    origin: str
    parity: dict = field(default_factory=dict)
    closed_loop: dict | None = None
    files: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ReportArtifact(Artifact):
    """The run's report page and its plots."""

    NAME: ClassVar[str] = "report"
    path: str
    plots: list = field(default_factory=list)


ARTIFACTS: dict[str, type[Artifact]] = {
    a.NAME: a
    for a in (
        DatasetArtifact,
        CheckpointArtifact,
        EvaluationArtifact,
        GateArtifact,
        FinetuneArtifact,
        PolicyArtifact,
        ExportedArtifact,
        ReportArtifact,
    )
}


def typed(name: str, value: Any) -> Any:
    """``value`` (a recorded dict) as the artifact type registered for ``name``; unknown names unchanged."""
    kind = ARTIFACTS.get(name)
    return value if kind is None or value is None else kind.from_dict(value)


def plain_artifact(value: Any) -> Any:
    """An artifact as the runner records it (a dict); anything else unchanged."""
    return value.to_dict() if isinstance(value, Artifact) else value
