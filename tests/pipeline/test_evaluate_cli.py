"""`o2o evaluate`: OPE of checkpoints next to simulation, run as a user would (in-process)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from o2o.pipeline.cli import main
from o2o.pipeline.config import load_config
from o2o.pipeline.stages.collect import collect
from o2o.pipeline.stages.pretrain import pretrain

OPE_KEYS = ("ope/fqe_value", "ope/is_value", "ope/wis_value", "ope/dr_value")
SMALL = [
    "ope.fqe_updates=600",
    "ope.fqe_hidden=[32,32]",
    "ope.fqe_lr=1e-3",
    "ope.fqe_tau=0.05",
    "ope.behavior_updates=200",
    "ope.behavior_hidden=[32,32]",
]


@pytest.fixture(autouse=True)
def one_thread():
    # Small networks on 2 shared cores: a second intra-op thread only adds contention.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def maze_checkpoints(tmp_path_factory):
    """20 mixed point-maze episodes and a BC run with checkpoints after 100 and 200 updates."""
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "maze.zarr"
    collect(
        load_config(
            "collect",
            [
                "env=pointmaze",
                "behavior=mixed",
                "collect.episodes=20",
                f"dataset.path={data}",
                "collect.progress=false",
            ],
        )
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain(
            load_config(
                "pretrain",
                [
                    "algo=bc",
                    "env=pointmaze",
                    f"dataset.path={data}",
                    f"run_dir={root / 'bc'}",
                    "algo.hidden=[32,32]",
                    "algo.batch_size=64",
                    "algo.log_every=100",
                    "trainer.max_steps=200",
                    "eval.enabled=false",
                    "ope.select=false",
                    "eval.every=100",
                    "trainer.progress=false",
                ],
            )
        )
    finally:
        torch.set_num_threads(threads)
    ckpts = [str(root / "bc" / "checkpoints" / f"step-{n}.ckpt") for n in (100, 200)]
    assert all(Path(c).is_file() for c in ckpts)
    return data, ckpts


def test_evaluate_two_checkpoints_table_json_and_spearman(maze_checkpoints, tmp_path, capsys):
    data, ckpts = maze_checkpoints
    out = tmp_path / "report.json"
    rc = main(
        [
            "evaluate",
            "env=pointmaze",
            f"dataset.path={data}",
            f"ckpts=[{ckpts[0]},{ckpts[1]}]",
            *SMALL,
            "sim.episodes=3",
            f"output={out}",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    for col in (
        "checkpoint",
        "FQE",
        "IS",
        "WIS",
        "DR",
        "ESS",
        "sim disc. return",
        "sim return",
        "success",
        "Spearman vs sim disc. return",
        "step-100.ckpt",
        "step-200.ckpt",
    ):
        assert col in text, f"{col!r} missing from:\n{text}"
    assert "discounted returns (gamma=0.99)" in text and f"report: {out}" in text

    report = json.loads(out.read_text())
    assert [r["checkpoint"] for r in report["rows"]] == ckpts
    for row in report["rows"]:
        for key in (
            *OPE_KEYS,
            "ope/fqe_std",
            "ope/ess",
            "ope/clipped_step_fraction",
            "ope/clipped_cumulative_fraction",
            "eval/mc_discounted_return_mean",
            "eval/return_mean",
            "eval/success_rate",
        ):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (key, row[key])
    assert set(report["spearman"]) == set(OPE_KEYS)
    # Two checkpoints with different simulated returns: every rank correlation is +1 or -1.
    assert all(abs(report["spearman"][k]) == pytest.approx(1.0) for k in OPE_KEYS), report["spearman"]
    assert report["ope"]["horizon"] == 150 and report["dataset"]["episodes"] == 20
    assert "N(pi(s), 0.2^2)" in report["note"]
    # Every estimate with its 95% bootstrap interval over the 20 episodes, in the report and the table.
    for row in report["rows"]:
        for key in ("fqe", "is", "wis", "dr"):
            lo, hi, v = row[f"ope/{key}_ci_low"], row[f"ope/{key}_ci_high"], row[f"ope/{key}_value"]
            assert lo < hi and lo <= v <= hi, (key, lo, v, hi)
    assert f"[{report['rows'][0]['ope/fqe_ci_low']:.4g}, " in text and "95% bootstrap intervals" in text


def test_evaluate_without_simulator_from_a_checkpoint_folder(maze_checkpoints, tmp_path, capsys):
    data, ckpts = maze_checkpoints
    out = tmp_path / "r.json"
    folder = Path(ckpts[0]).parent
    rc = main(
        [
            "evaluate",
            "env=pointmaze",
            f"dataset.path={data}",
            f"ckpts=[{folder}]",
            *SMALL,
            "ope.fqe_updates=50",
            "sim.enabled=false",
            "ope.bootstrap=0",
            "ope.fqe_refits=2",
            f"output={out}",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    report = json.loads(out.read_text())
    assert {Path(r["checkpoint"]).name for r in report["rows"]} >= {"step-100.ckpt", "step-200.ckpt", "last.ckpt"}
    assert report["spearman"] == {} and report["sim"] is None
    assert "sim disc. return" not in text and "Spearman" not in text
    # Bootstrapped FQE only: FQE's interval from 2 refits, none for IS/WIS/DR.
    assert all(r["ope/fqe_refits"] == 2 and r["ope/fqe_ci_low"] <= r["ope/fqe_ci_high"] for r in report["rows"])
    assert not any("ope/is_ci_low" in r for r in report["rows"])
    assert "IS/WIS/DR: none, ope.bootstrap=0; FQE's from 2 refits on resampled episodes" in text


def test_evaluate_errors_name_what_is_wrong(maze_checkpoints, tmp_path, capsys):
    data, ckpts = maze_checkpoints
    assert main(["evaluate", "env=pointmaze", f"dataset.path={data}"]) == 2
    assert "no checkpoints given" in capsys.readouterr().err
    assert main(["evaluate", "env=pointmaze", f"dataset.path={data}", f"ckpts=[{tmp_path / 'nope.ckpt'}]"]) == 2
    assert "nope.ckpt' does not exist" in capsys.readouterr().err
    assert main(["evaluate", "env=reacher", f"dataset.path={data}", f"ckpts=[{ckpts[0]}]"]) == 2
    assert "pass env=pointmaze" in capsys.readouterr().err
    assert main(["evaluate", "env=pointmaze", f"dataset.path={data}", f"ckpts=[{ckpts[0]}]", "ope.fqe_update=3"]) == 2
    assert "fqe_update" in capsys.readouterr().err


def test_cfg_prints_the_ope_settings(capsys):
    assert main(["evaluate", "--cfg", "env=pointmaze", "ope.fqe_updates=123"]) == 0
    out = capsys.readouterr().out
    for key in ("fqe_updates: 123", "horizon: 150", "target_std: 0.2", "enabled: true", "ckpts: []"):
        assert key in out


def test_evaluate_reports_behaviour_model_fqe_and_simulation_progress_in_plain_lines(
    maze_checkpoints, tmp_path, capfd, monkeypatch
):
    data, ckpts = maze_checkpoints
    monkeypatch.setenv("O2O_PROGRESS_EVERY_S", "0.01")
    common = [
        "evaluate",
        "env=pointmaze",
        f"dataset.path={data}",
        f"ckpts=[{ckpts[1]}]",
        *SMALL,
        "ope.bootstrap=0",
        f"output={tmp_path / 'r.json'}",
    ]
    assert main([*common, "ope.fqe_updates=300", "ope.fqe_refits=2", "sim.episodes=3"]) == 0
    out = capfd.readouterr()
    assert "\r" not in out.out and "\r" not in out.err
    text = out.out
    assert re.search(r"^\[evaluate: behaviour model\] 200/200 updates \(100%\) in \d:\d\d:\d\d", text, re.M), text
    # FQE and its two refits, counted as one task.
    assert re.search(
        r"^\[evaluate 1/1: FQE\] [\d,]+/900 updates \(\d+%\), [\d.,]+ updates/s, ETA \d:\d\d:\d\d$", text, re.M
    ), text
    assert re.search(r"^\[evaluate 1/1: FQE\] 900/900 updates \(100%\) in ", text, re.M), text
    assert re.search(r"^\[evaluate 1/1: simulation\] 3/3 episodes \(100%\) in ", text, re.M), text
    assert main([*common, "ope.fqe_updates=50", "sim.enabled=false", "progress=false"]) == 0
    assert "[evaluate" not in capfd.readouterr().out
