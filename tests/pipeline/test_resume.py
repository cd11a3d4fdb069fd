"""``o2o run`` killed (SIGKILL) in the middle of a stage resumes where it stopped.

Real processes, real kills: collect completes the configured composition instead of adding it
again; a run killed while finetuning skips pretraining on the rerun and finetunes on from its
last saved state with the online episodes it had committed; a run killed while exporting
leaves nothing behind once rerun. ``--dry-run`` says what a rerun will do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from o2o.datasets import EpisodeStore
from o2o.pipeline import run as R
from o2o.pipeline.cli import main
from o2o.pipeline.config import load_config

ROOM = [
    "env=pointmaze",
    "env.id=Open",
    "env.max_episode_steps=60",
    "env.kwargs.start_cells=[[3,1]]",
    "env.kwargs.goal_cells=[[1,3]]",
]
PASSABLE_GATE = ["gate.return_vs_data_se=null", "gate.max_q_overestimation=null"]


def overrides(tmp_path: Path, run: str, *extra: str) -> list[str]:
    return [
        *ROOM,
        f"dataset.path={tmp_path / 'data' / 'room.zarr'}",
        f"run_dir={tmp_path / 'runs' / run}",
        f"state_dir={tmp_path / 'runs' / '.state'}",
        "algo.hidden=[32,32]",
        "algo.gamma=0.95",
        "trainer.max_steps=200",
        "eval.every=100",
        "eval.episodes=2",
        "evaluation.episodes=3",
        "export.closed_loop.episodes=2",
        "export.parity.observations=64",
        *PASSABLE_GATE,
        *extra,
    ]


def start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, O2O_PROGRESS_EVERY_S="1000")
    return subprocess.Popen(
        [sys.executable, "-m", "o2o.pipeline.cli", "run", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )


def kill_when(p: subprocess.Popen, ready, what: str, timeout: float = 240, meanwhile=None) -> None:
    deadline = time.time() + timeout
    while not ready():
        if p.poll() is not None:
            raise AssertionError(f"the run ended (rc {p.returncode}) before {what}: {p.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"never reached: {what}"
        time.sleep(0.01)
    if meanwhile is not None:  # with the run paused: alive, yet not finishing while we look
        os.killpg(p.pid, signal.SIGSTOP)
        try:
            meanwhile()
        finally:
            os.killpg(p.pid, signal.SIGKILL)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    p.stderr.close()


def committed(path: Path) -> int:
    try:
        return int(json.loads((path / "index.json").read_text())["episodes"])
    except (OSError, ValueError, KeyError):
        return 0


def test_a_killed_collect_completes_the_configured_composition(tmp_path, capsys):
    data = tmp_path / "data" / "room.zarr"
    mix = [
        "pipeline.stages=[collect]",
        "collect.commit_every_episodes=2",
        "collect.commit_every_s=0.05",
        "collect.behaviors=[{behavior: scripted, episodes: 30},{behavior: random, episodes: 30}]",
    ]

    def second_copy() -> None:  # the same run started again while the first one still runs: refused
        with pytest.raises(RuntimeError, match="the same run .* is in progress in process"):
            R.run(load_config("run", overrides(tmp_path, "copy", *mix)), log=lambda m: None)

    kill_when(
        start(overrides(tmp_path, "one", *mix)),
        lambda: committed(data) >= 6,
        "6 committed episodes",
        meanwhile=second_copy,
    )
    killed_at = committed(data)
    assert 6 <= killed_at < 60

    assert main(["run", "--dry-run", *overrides(tmp_path, "two", *mix)]) == 0
    plan = capsys.readouterr().out
    assert "resumes the attempt interrupted in" in plan and "resumes the run interrupted" in plan, plan

    logs: list[str] = []
    res = R.run(load_config("run", overrides(tmp_path, "two", *mix)), log=logs.append)
    assert res.record("collect").status == "ran"
    assert any("resuming the attempt interrupted" in m for m in logs), logs
    with EpisodeStore.open(data) as store:
        t = store.episodes_table()
        runs = [store.provenance_table[int(r)]["run"] for r in store._episode_column("provenance")]
    # The configured 30 + 30, not 30 + 30 on top of what the killed attempt had committed.
    assert list(t["source"]) == ["scripted"] * 30 + ["random"] * 30
    assert t["seed"].tolist() == list(range(60))  # seeds continue where the kill stopped them
    assert {r["id"] for r in runs} == {runs[0]["id"]} and [r["part"] for r in runs] == [0] * 30 + [1] * 30
    again = R.run(load_config("run", overrides(tmp_path, "three", *mix)), log=lambda m: None)
    assert again.record("collect").status == "skipped"
    assert not list((tmp_path / "runs" / ".state" / "attempts").glob("*.json"))
    # Turning the content checks off (to get past a damaged episode) or committing more often collects nothing new.
    quiet = overrides(tmp_path, "four", *mix, "dataset.verify=false", "collect.commit_every_episodes=7")
    assert dict(R.plan(load_config("run", quiet)))["collect"].startswith("skip")


@pytest.mark.slow  # over 10 s: outside the fast tier (pytest -m 'not slow'), in the full suite
def test_a_run_killed_in_finetuning_and_in_export_resumes_without_retraining(tmp_path, capsys):
    data = tmp_path / "data" / "room.zarr"
    state = tmp_path / "runs" / ".state"
    ft = [
        "collect.behaviors=[{behavior: scripted, episodes: 6},{behavior: random, episodes: 6}]",
        "finetune.steps=600",
        "finetune.warmup_steps=60",
        "finetune.eval.every=60",
        "finetune.eval.episodes=1",
        "finetune.commit_every_episodes=1",
        "finetune.rollback.enabled=false",
    ]

    def finetune_saved() -> bool:  # a resumable checkpoint recorded and online episodes committed after it
        for p in (state / "attempts").glob("*.json"):
            try:
                rec = json.loads(p.read_text())
            except FileNotFoundError:  # a stage finished between the listing and the read
                continue
            if rec.get("stage") == "finetune" and rec.get("resume_updates"):
                return committed(data) >= 12 + 4
        return False

    kill_when(start(overrides(tmp_path, "one", *ft)), finetune_saved, "a finetune checkpoint")
    with EpisodeStore.open(data) as store:
        online_before = store.num_episodes - 12
    assert main(["run", "--dry-run", *overrides(tmp_path, "two", *ft)]) == 0
    plan = capsys.readouterr().out
    assert "pretrain" in plan and "skip (unchanged" in plan.split("pretrain")[1].split("\n")[0], plan

    # The rerun changes a later stage's setting (export's closed loop): still the interrupted run's data.
    ft2 = [*ft, "export.closed_loop.episodes=1"]
    two = tmp_path / "runs" / "two"
    kill_when(
        start(overrides(tmp_path, "two", *ft2)),
        lambda: any(two.glob(".export.staging-*")),
        "the export's staging folder",
    )
    manifest = {s["name"]: s["status"] for s in json.loads((two / "manifest.json").read_text())["stages"]}
    assert manifest["pretrain"] == manifest["evaluate"] == manifest["gate"] == "skipped", manifest
    assert manifest["finetune"] == "ran", manifest
    result = json.loads((two / "finetune" / "finetune.json").read_text())
    assert result["resumed"]["updates"] >= 60 and result["resumed"]["episodes"] >= online_before - 1
    assert result["steps"] == 600
    assert not (two / "finetune" / "resume.ckpt").exists()
    assert not (tmp_path / "runs" / "one" / "finetune" / "resume.ckpt").exists()
    with EpisodeStore.open(data) as store:
        online = store.select(sources="online")
        table = store.provenance_table
        tags = {table[int(store._episode_column("provenance")[i])]["run"]["id"] for i in online}
        steps = int(store.episodes_table(online)["length"].sum())
    assert len(tags) == 1 and len(online) == result["episodes"]  # one finetuning, resumed, not two
    assert steps <= 600

    logs: list[str] = []
    three = R.run(load_config("run", overrides(tmp_path, "three", *ft2)), log=logs.append)
    status = {r.name: r.status for r in three.records}
    assert status == {
        "collect": "skipped",
        "pretrain": "skipped",
        "evaluate": "skipped",
        "gate": "skipped",
        "finetune": "skipped",
        "promote": "skipped",
        "export": "ran",
        "report": "ran",
    }, status
    assert not list(two.glob(".export.staging-*")) and not (two / "export").exists()
    assert (tmp_path / "runs" / "three" / "export" / "manifest.json").is_file()
    # The run ended: a fourth run sees the online episodes as new data and retrains (the keep-the-dataset loop).
    assert dict(R.plan(load_config("run", overrides(tmp_path, "four", *ft2))))["pretrain"].startswith("run")
    assert not list(
        (state / "attempts").glob("*.json")
    )  # the adopted run's attempt ended with the one that took it over
