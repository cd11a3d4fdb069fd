"""Promotion: a finetuned policy replaces the offline one only if it is better and succeeds as often."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from o2o.datasets import DatasetVersion
from o2o.pipeline.artifacts import (
    CheckpointArtifact,
    DataBehaviour,
    EvaluationArtifact,
    FinetuneArtifact,
    GateArtifact,
    TrainedOn,
)
from o2o.pipeline.dag import StageContext
from o2o.pipeline.stages.promote import run_stage


def promote(tmp_path, offline: dict, tuned: dict | None, **cfg) -> dict:
    """The promoted policy (as recorded) for an offline evaluation and, optionally, a finetuned one."""
    v0, v1 = DatasetVersion(10, 500, "a" * 32), DatasetVersion(13, 650, "b" * 32)
    trained_on = TrainedOn(path="d.zarr", version=v0, episodes=10, transitions=500)
    inputs = {
        "checkpoint": CheckpointArtifact(
            path="off.ckpt", fingerprint="a", algo="iql", updates=100, selection="simulation", dataset=trained_on
        ).to_dict(),
        "evaluation": EvaluationArtifact(
            checkpoint="off.ckpt",
            gamma=0.99,
            horizon=60,
            sim=offline,
            data=DataBehaviour(episodes=10, return_mean=-100.0),
        ).to_dict(),
        "gate": GateArtifact(passed=True, criteria=[]).to_dict(),
    }
    if tuned is not None:
        inputs["finetune"] = FinetuneArtifact(
            checkpoint="ft.ckpt",
            fingerprint="b",
            algo="iql",
            from_checkpoint="off.ckpt",
            evaluation=tuned,
            steps=180,
            updates=120,
            episodes=3,
            dataset_before=v0,
            dataset_after=v1,
        ).to_dict()
    conf = OmegaConf.create(
        {"promote": {"metric": "return_mean", "min_improvement": 0.0, "max_success_drop": 0.0, **cfg}}
    )
    return run_stage(StageContext("promote", conf, inputs, Path(tmp_path), log=lambda m: None))["policy"].to_dict()


def test_promotion_rules(tmp_path):
    off = {"return_mean": -85.0, "success_rate": 1.0}
    assert promote(tmp_path, off, None)["origin"] == "offline"
    assert promote(tmp_path, off, {"return_mean": -80.0, "success_rate": 1.0})["path"] == "ft.ckpt"
    worse = promote(tmp_path, off, {"return_mean": -90.0, "success_rate": 1.0})
    assert worse["origin"] == "offline" and "not better" in worse["reason"]
    # Better return, fewer successes (measured on the point-maze room): a regression, not promoted.
    drop = promote(tmp_path, off, {"return_mean": -80.7, "success_rate": 0.15})
    assert drop["origin"] == "offline" and "success_rate 0.15 < offline 1.00" in drop["reason"]
    assert (
        promote(tmp_path, off, {"return_mean": -80.7, "success_rate": 0.9}, max_success_drop=0.2)["origin"]
        == "finetuned"
    )
    assert (
        promote(tmp_path, off, {"return_mean": -84.0, "success_rate": 1.0}, min_improvement=2.0)["origin"] == "offline"
    )
