"""Typed stage artifacts: a JSON round trip for each, clear refusals of records that lack fields,
and the runner recording typed outputs as the dicts it keys and stores."""

from __future__ import annotations

import json

import pytest

from o2o.datasets import DatasetVersion
from o2o.pipeline.artifacts import (
    ARTIFACTS,
    ArtifactError,
    CheckpointArtifact,
    DataBehaviour,
    DatasetArtifact,
    EvaluationArtifact,
    ExportedArtifact,
    FinetuneArtifact,
    GateArtifact,
    PolicyArtifact,
    ReportArtifact,
    TrainedOn,
    typed,
)
from o2o.pipeline.dag import GraphError, Pipeline, Stage, StageCache, artifact_fingerprint, order_stages

V0, V1 = DatasetVersion(12, 720, "a" * 32), DatasetVersion(15, 900, "b" * 32)
EXAMPLES = [
    DatasetArtifact(path="data/room.zarr", episodes=12, fingerprint="a" * 32, transitions=720, verify=False),
    CheckpointArtifact(
        path="best.ckpt",
        fingerprint="f" * 64,
        algo="iql",
        updates=200,
        selection="simulation",
        dataset=TrainedOn(path="data/room.zarr", version=V0, episodes=12, transitions=720, selection={"sources": None}),
        last="last.ckpt",
        best_eval={"return_mean": -80.0},
        evaluations=[{"step": 100}],
    ),
    EvaluationArtifact(
        checkpoint="best.ckpt",
        gamma=0.95,
        horizon=60,
        sim={"return_mean": -80.0},
        data=DataBehaviour(
            episodes=12, return_mean=-120.0, success_rate=0.5, reward_max=1.0, sources={"random": {"episodes": 6}}
        ),
    ),
    GateArtifact(
        passed=True,
        criteria=[{"name": "actions finite", "passed": True}],
        checkpoint="best.ckpt",
        actions={"finite": True},
    ),
    FinetuneArtifact(
        checkpoint="finetuned.ckpt",
        fingerprint="e" * 64,
        algo="iql",
        from_checkpoint="best.ckpt",
        evaluation={"return_mean": -75.0},
        steps=180,
        updates=120,
        episodes=3,
        dataset_before=V0,
        dataset_after=V1,
        episode_range=[12, 15],
        curve=[{"step": 0}],
        summary="iql: ...",
    ),
    PolicyArtifact(path="finetuned.ckpt", fingerprint="e" * 64, origin="finetuned", reason="better", value=-75.0),
    ExportedArtifact(
        dir="export",
        manifest="export/manifest.json",
        fingerprint="d" * 64,
        origin="finetuned",
        parity={"onnxruntime": 1e-7},
    ),
    ReportArtifact(path="report/report.md", plots=["training.png"]),
]


@pytest.mark.parametrize("artifact", EXAMPLES, ids=lambda a: type(a).__name__)
def test_json_round_trip(artifact):
    d = json.loads(json.dumps(artifact.to_dict()))
    back = type(artifact).from_dict(d)
    assert back == artifact
    assert typed(type(artifact).NAME, d) == artifact
    assert type(artifact).NAME in ARTIFACTS


def test_versions_are_typed_and_fingerprints_are_the_datasets_own():
    ckpt = CheckpointArtifact.from_dict(json.loads(json.dumps(EXAMPLES[1].to_dict())))
    assert isinstance(ckpt.dataset.version, DatasetVersion) and ckpt.dataset.selector == f"12@{'a' * 32}"
    ft = FinetuneArtifact.from_dict(EXAMPLES[4].to_dict())
    assert ft.dataset_after.episodes - ft.dataset_before.episodes == ft.episodes
    assert artifact_fingerprint(EXAMPLES[0].to_dict()) == "a" * 32  # downstream stages key on the data's chain


def test_a_record_without_a_field_is_refused_by_name():
    d = EXAMPLES[0].to_dict()
    del d["fingerprint"]
    with pytest.raises(ArtifactError, match=r"artifact dataset lacks \['fingerprint'\].*rerun the stage"):
        DatasetArtifact.from_dict(d)


def test_typed_outputs_are_recorded_as_dicts_and_read_back_typed(tmp_path):
    seen = {}

    def make(ctx):
        return {"dataset": EXAMPLES[0]}

    def use(ctx):
        seen["dataset"] = ctx.artifact("dataset")
        return {"report": ReportArtifact(path="r.md")}

    res = Pipeline([Stage("a", (), ("dataset",), make), Stage("b", ("dataset",), ("report",), use)], code="t").run(
        {}, StageCache(tmp_path / "s"), tmp_path / "r", log=lambda m: None
    )
    assert res.artifacts["dataset"] == EXAMPLES[0].to_dict() and seen["dataset"] == EXAMPLES[0]
    assert res.artifact("report") == ReportArtifact(path="r.md")
    assert json.loads((tmp_path / "s" / "stages" / f"{res.record('a').fingerprint}.json").read_text())["outputs"] == {
        "dataset": EXAMPLES[0].to_dict()
    }


def test_finetune_declares_that_it_appends_to_the_dataset():
    from o2o.pipeline.stages import finetune

    assert finetune.STAGE.appends == ("dataset",) and "dataset" in finetune.STAGE.reads
    with pytest.raises(GraphError, match="appends to \\['dataset'\\] without reading it"):
        order_stages(
            [Stage("c", (), ("dataset",), lambda c: {}), Stage("f", (), ("x",), lambda c: {}, appends=("dataset",))]
        )
