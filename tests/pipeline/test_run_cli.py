"""``o2o run`` from the command line: the plan, a refused graph, a failed gate's exit status."""

from __future__ import annotations

import subprocess
import sys

import pytest

ROOM = [
    "env=pointmaze",
    "env.id=Open",
    "env.max_episode_steps=60",
    "env.kwargs.start_cells=[[3,1]]",
    "env.kwargs.goal_cells=[[1,3]]",
]


def o2o(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "o2o.pipeline.cli", "run", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow  # over 10 s: outside the fast tier (pytest -m 'not slow'), in the full suite
def test_plan_refused_graph_and_failed_gate_exit_codes(tmp_path):
    tiny = [
        *ROOM,
        "collect.behaviors=[{behavior: scripted, episodes: 4}]",
        "algo.hidden=[16,16]",
        "trainer.max_steps=20",
        "eval.every=20",
        "eval.episodes=1",
        "evaluation.episodes=2",
        "pipeline.stages=[collect,pretrain,evaluate,gate,promote,export,report]",
    ]
    p = o2o(tmp_path, "--dry-run", *tiny)
    assert p.returncode == 0, p.stderr
    assert "collect" in p.stdout and "no finished record" in p.stdout
    assert not (tmp_path / "data").exists()  # planning ran nothing

    p = o2o(tmp_path, *ROOM, "pipeline.stages=[collect,pretrain,evaluat]")
    assert p.returncode == 2 and "unknown stage 'evaluat'" in p.stderr

    p = o2o(tmp_path, *tiny, "gate.min_success=1.01")
    assert p.returncode == 3, p.stdout[-2000:] + p.stderr[-2000:]
    assert "o2o run: stage gate failed: gate failed: success_rate: FAILED" in p.stderr.replace("\n", " ")
    assert "blocked" in p.stdout and "report:" in p.stdout
    assert (tmp_path / "data" / "pointmaze.zarr").exists()  # the dataset sits outside the run folder
