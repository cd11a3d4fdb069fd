"""`o2o collect` and `o2o dataset info|verify`, run as a user would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr

from o2o.datasets import EpisodeStore
from o2o.pipeline.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed console script in a fresh process (what a user types)."""
    exe = shutil.which("o2o") or sys.executable
    cmd = [exe, *args] if exe != sys.executable else [exe, "-m", "o2o.pipeline.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def tree_bytes(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_collect_twice_grows_one_dataset_with_provenance(tmp_path, capsys):
    path = tmp_path / "maze.zarr"
    common = ["env=pointmaze", f"dataset.path={path}", "collect.progress=false"]
    assert main(["collect", *common, "behavior=scripted", "collect.episodes=4"]) == 0
    out = capsys.readouterr().out
    assert "collected 4 episodes" in out and "scripted" in out
    with EpisodeStore.open(path) as store:
        v1 = store.version
        assert v1.episodes == 4
    assert main(["collect", *common, "behavior=random", "collect.episodes=3"]) == 0
    with EpisodeStore.open(path) as store:
        assert store.num_episodes == 7 and store.version.fingerprint != v1.fingerprint
        table = store.episodes_table()
        assert list(table["source"]) == ["scripted"] * 4 + ["random"] * 3
        # Seeds continue after the dataset's episodes, so the second run adds new starts.
        assert list(table["seed"]) == list(range(7))
        assert store.select(version=v1).tolist() == [0, 1, 2, 3]
        scripted = table["success"][:4]
        assert scripted.mean() >= 0.75, f"scripted maze controller success {scripted}"

    capsys.readouterr()
    assert main(["dataset", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 7 and set(info["sources"]) == {"scripted", "random"}
    assert info["sources"]["scripted"]["episodes"] == 4 and info["sources"]["random"]["episodes"] == 3
    assert info["env"]["name"] == "pointmaze" and info["size_on_disk_bytes"] > 0
    assert info["action_space"]["shape"] == [2]

    assert main(["dataset", "info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "7 episodes" in text and "scripted" in text and "random" in text

    assert main(["dataset", "verify", str(path)]) == 0
    assert "every invariant holds" in capsys.readouterr().out


def test_collect_refuses_another_env_before_stepping(tmp_path, capsys):
    path = tmp_path / "maze.zarr"
    assert (
        main(
            [
                "collect",
                "env=pointmaze",
                "behavior=random",
                "collect.episodes=2",
                f"dataset.path={path}",
                "collect.progress=false",
            ]
        )
        == 0
    )
    before = tree_bytes(path)
    rc = main(
        [
            "collect",
            "env=reacher",
            "behavior=random",
            "collect.episodes=2",
            f"dataset.path={path}",
            "collect.progress=false",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "another env or spaces" in err and "reacher" in err and "nothing collected" in err
    assert tree_bytes(path) == before


def test_verify_fails_with_reasons_on_a_tampered_dataset(tmp_path):
    path = tmp_path / "maze.zarr"
    res = run_cli(
        "collect",
        "env=pointmaze",
        "behavior=random",
        "collect.episodes=3",
        f"dataset.path={path}",
        "collect.progress=false",
    )
    assert res.returncode == 0, res.stderr
    ok = run_cli("dataset", "verify", str(path))
    assert ok.returncode == 0 and "every invariant holds" in ok.stdout
    rewards = zarr.open_array(str(path / "data" / "rewards"), mode="r+")
    rewards[5] = np.float32(rewards[5]) + 1.0
    bad = run_cli("dataset", "verify", str(path))
    assert bad.returncode == 1
    assert "content digest mismatch in 1 episode (0)" in bad.stderr, bad.stderr
    assert "episodes affected: 0 (1 of 3; the other 2 are intact" in bad.stderr, bad.stderr


def test_cfg_prints_documented_keys(capsys):
    assert main(["collect", "--cfg", "env=pointmaze", "collect.episodes=7"]) == 0
    out = capsys.readouterr().out
    for key in ("episodes: 7", "path: data/pointmaze.zarr", "action_bounds: error", "kind: scripted"):
        assert key in out


def test_unknown_override_is_a_clear_error(capsys):
    assert main(["collect", "env=nosuchenv"]) == 2
    assert "nosuchenv" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args", [["dataset", "info", "/nonexistent/x.zarr"], ["dataset", "verify", "/nonexistent/x.zarr"]]
)
def test_missing_dataset_is_reported(args, capsys):
    rc = main(args)
    captured = capsys.readouterr()
    assert rc in (1, 2)
    assert "/nonexistent/x.zarr" in captured.err + captured.out


def test_collect_and_pretrain_refuse_a_damaged_dataset(tmp_path, capsys):
    """The issue's case: a changed row used to be appended on top of and trained on (rc 0)."""
    path = tmp_path / "maze.zarr"
    common = ["env=pointmaze", f"dataset.path={path}"]
    assert main(["collect", *common, "behavior=random", "collect.episodes=4", "collect.progress=false"]) == 0
    obs = zarr.open_array(str(path / "data" / "obs" / "state"), mode="r+")
    obs[30] = obs[30] + 0.33
    before = tree_bytes(path)
    capsys.readouterr()
    assert main(["collect", *common, "behavior=random", "collect.episodes=1", "collect.progress=false"]) == 2
    err = capsys.readouterr().err
    assert "is damaged: content digest mismatch" in err and "Nothing was appended" in err, err
    after = tree_bytes(path)
    assert {k: v for k, v in after.items() if k != ".o2o.lock"} == {k: v for k, v in before.items() if k != ".o2o.lock"}
    train = [
        "pretrain",
        *common,
        "algo=bc",
        "trainer.max_steps=2",
        "trainer.progress=false",
        "eval.enabled=false",
        "ope.select=false",
        f"run_dir={tmp_path / 'run'}",
    ]
    assert main(train) == 2
    err = capsys.readouterr().err
    assert "is damaged: content digest mismatch" in err and "Nothing was loaded" in err, err
    assert main([*train, "dataset.verify=false"]) == 0  # the explicit opt-out
