"""``o2o run`` on the fast built-in task: the real stages end to end, twice, then with new data."""

from __future__ import annotations

import json

import pytest

from o2o.datasets import EpisodeStore
from o2o.pipeline import run as R
from o2o.pipeline.config import load_config
from o2o.pipeline.dag import GraphError

ROOM = ["env=pointmaze", "env.id=Open", "env.max_episode_steps=60", "env.kwargs.start_cells=[[3,1]]",
        "env.kwargs.goal_cells=[[1,3]]"]


def cfg_for(tmp_path, run: str, *extra: str):
    return load_config("run", [*ROOM, f"dataset.path={tmp_path / 'data' / 'room.zarr'}",
                               f"run_dir={tmp_path / 'runs' / run}", f"state_dir={tmp_path / 'runs' / '.state'}",
                               "collect.behaviors=[{behavior: scripted, episodes: 6},{behavior: random, episodes: 6}]",
                               "algo.hidden=[32,32]", "algo.gamma=0.95", "trainer.max_steps=200", "eval.every=100",
                               "eval.episodes=2", "evaluation.episodes=3", *extra])


def test_run_twice_skips_everything_and_new_data_retrains(tmp_path):
    logs: list[str] = []
    r1 = R.run(cfg_for(tmp_path, "one"), log=logs.append)
    status = {x.name: x.status for x in r1.records}
    assert status["collect"] == status["pretrain"] == status["evaluate"] == status["report"] == "ran"
    assert status["gate"] in ("ran", "failed")  # a 200-update policy may not pass; the decision is recorded
    m = json.loads((tmp_path / "runs" / "one" / "manifest.json").read_text())
    assert [s["name"] for s in m["stages"]] == ["collect", "pretrain", "evaluate", "gate", "report"]
    assert m["dataset_version"].startswith("12@") and m["lineage"]["dataset_version"] == m["dataset_version"]
    assert m["versions"]["torch"] and m["versions"]["python"]
    gate = json.loads((tmp_path / "runs" / "one" / "gate" / "decision.json").read_text())
    assert gate["criteria"] and (gate["passed"] == (status["gate"] == "ran"))
    assert (tmp_path / "runs" / "one" / "report" / "report.md").read_text().startswith("# o2o run report")

    r2 = R.run(cfg_for(tmp_path, "two"))
    assert {x.name: x.status for x in r2.records if x.name != "gate"} == {
        "collect": "skipped", "pretrain": "skipped", "evaluate": "skipped", "report": "skipped"}
    with EpisodeStore.open(tmp_path / "data" / "room.zarr") as store:
        assert store.num_episodes == 12  # the skipped collect appended nothing

    # More data (a different behaviour mix): collect appends, everything downstream reruns.
    r3 = R.run(cfg_for(tmp_path, "three", "collect.behaviors=[{behavior: noisy, episodes: 4}]"))
    assert {x.name: x.status for x in r3.records if x.name != "gate"} == {
        "collect": "ran", "pretrain": "ran", "evaluate": "ran", "report": "ran"}
    assert r3.artifacts["dataset"]["episodes"] == 16
    assert r3.artifacts["checkpoint"]["dataset"]["version"]["episodes"] == 16


def test_unknown_stage_is_refused_before_anything_runs(tmp_path):
    cfg = cfg_for(tmp_path, "x", "pipeline.stages=[collect,pretrain,finetuen]")
    with pytest.raises(GraphError, match=r"unknown stage 'finetuen' in pipeline.stages; known stages: \[.*'pretrain'"):
        R.run(cfg)
    assert not (tmp_path / "data").exists()
