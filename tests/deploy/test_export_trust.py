"""Export refuses a checkpoint whose weights changed, an unreadable one, and a policy that no longer
scores what its checkpoint was evaluated at (matching a broken torch policy proves nothing)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from o2o.deploy.check import closed_loop_check
from o2o.deploy.export import ExportRefused
from o2o.pipeline.cli import main
from o2o.pipeline.config import load_config
from o2o.pipeline.stages.export import export
from o2o.policies.algos.base import load_algorithm, weights_digest


@pytest.fixture(scope="module")
def evaluated_run(maze_data, trainer, tmp_path_factory):
    """BC with periodic evaluation (5 episodes every 200 updates): its checkpoints carry their evaluation."""
    run = trainer(
        maze_data,
        tmp_path_factory.mktemp("evaluated") / "bc",
        "bc",
        400,
        "eval.enabled=true",
        "eval.every=200",
        "eval.episodes=5",
    )
    ev = torch.load(run.best_checkpoint, weights_only=True)["o2o"]["evaluation"]
    assert ev["success_rate"] == 1.0  # the scripted data is solved: a broken copy has something to fall from
    return run


def args(ckpt, out, *extra: str) -> list[str]:
    return [f"ckpt={ckpt}", f"out={out}", "parity.observations=128", "closed_loop.episodes=5", *extra]


def still_policy(src, dst, restamp: bool = True, legacy: bool = False) -> Path:
    """``src`` with every actor weight zeroed (the policy outputs zero force: it never reaches the goal).

    ``restamp``: the weights digest and the evaluation record's are recomputed, as a tool or a person
    rewriting the file could; ``legacy``: both removed, as in checkpoints written before o2o had them.
    """
    ckpt = torch.load(src, weights_only=True)
    for k, v in ckpt["state_dict"].items():
        if k.startswith("actor."):
            ckpt["state_dict"][k] = torch.zeros_like(v)
    o2o = ckpt["o2o"]
    if legacy:
        del o2o["weights_sha256"], o2o["evaluation"]
    elif restamp:
        o2o["weights_sha256"] = o2o["evaluation"]["weights_sha256"] = weights_digest(ckpt["state_dict"])
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, dst)
    return dst


def test_o2o_export_refuses_a_checkpoint_whose_weights_changed(evaluated_run, tmp_path, capsys):
    """The issue's case: one actor weight changed in best-<step>.ckpt; export said rc 0, "success 0.00 vs 0.00"."""
    ckpt = torch.load(evaluated_run.best_checkpoint, weights_only=True)
    name = next(k for k in ckpt["state_dict"] if k.startswith("actor.") and k.endswith("weight"))
    ckpt["state_dict"][name][0, 0] += 3.0
    bad = tmp_path / Path(evaluated_run.best_checkpoint).name
    torch.save(ckpt, bad)
    out = tmp_path / "out"
    assert main(["export", *args(bad, out)]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint '{bad}': weights changed after it was written (digest" in err.replace("\n", ""), err
    assert not out.exists()

    empty = tmp_path / "best-2000.ckpt"
    empty.touch()
    assert main(["export", *args(empty, out)]) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert f"checkpoint '{empty}' is empty (0 bytes)" in err and "EOFError" not in err, err
    assert not out.exists()


def test_export_compares_the_closed_loop_with_the_evaluation_the_checkpoint_carries(evaluated_run, tmp_path):
    res = export(load_config("export", args(evaluated_run.best_checkpoint, tmp_path / "out")))
    record = torch.load(evaluated_run.best_checkpoint, weights_only=True)["o2o"]["evaluation"]
    vs = res.closed_loop["vs_evaluation"]
    assert vs["passed"] and vs["metric"] == "success_rate" and vs["evaluated"] == 1.0 and vs["runtime"] >= 0.8
    assert vs["source"] == (
        f"the checkpoint's own evaluation record: update {record['step']}, 5 episodes from seed 10000"
    )
    assert vs["allowed_drop"] == pytest.approx(2 * vs["noise"] + 0.1) and vs["evaluated_episodes"] == 5
    assert any(vs["source"] in n and "compared with the trained torch policy" in n for n in res.notes)
    m = json.loads(Path(res.manifest_path).read_text())
    assert m["evaluation"]["checkpoint"] == record and m["evaluation"]["closed_loop"]["vs_evaluation"] == vs


def test_a_policy_that_no_longer_scores_what_its_checkpoint_was_evaluated_at_is_refused(
    evaluated_run, tmp_path, capsys
):
    """Weights broken and every digest recomputed: the torch policy and the export agree (both fail), so only
    the evaluation the checkpoint carries can tell."""
    bad = still_policy(evaluated_run.best_checkpoint, tmp_path / "best.ckpt")
    load_algorithm(bad)  # consistent: the digests cannot tell
    out = tmp_path / "out"
    assert main(["export", *args(bad, out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "the exported policy through the runtime succeeds in 0.00 over 5 episodes (seed 20000), but the "
        "checkpoint was evaluated at 1.00 over 5 episodes (the checkpoint's own evaluation record: "
        "update"
    ) in err, err
    assert (
        "The trained torch policy scores 0.00 on the same episodes, as low: the checkpoint's weights do not behave as "
        "they did when it was evaluated"
    ) in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt"]  # nothing left behind


def test_a_checkpoint_without_the_record_is_compared_with_its_runs_summary(evaluated_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(evaluated_run.run_dir, run, ignore=shutil.ignore_patterns("tb", "csv"))
    ckpt = run / "checkpoints" / Path(evaluated_run.best_checkpoint).name
    still_policy(ckpt, ckpt, legacy=True)
    with pytest.raises(
        ExportRefused,
        match=rf"evaluated at 1.00 over 5 episodes \({run / 'summary.json'}: evaluation at "
        r"update \d+, 5 episodes \(the checkpoint has no evaluation record\)\)",
    ):
        export(load_config("export", args(ckpt, tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_without_any_evaluation_the_export_says_what_it_compared_with(maze_export):
    assert maze_export.closed_loop.get("vs_evaluation") is None
    assert any(
        "compared with the trained torch policy only: the checkpoint has no evaluation record" in n
        for n in maze_export.notes
    )


def test_returns_are_compared_where_there_is_no_success_signal(maze_export):
    env_cfg = load_config("pretrain", ["env=pointmaze"]).env
    policy = load_algorithm(maze_export.checkpoint).policy()

    def trained(obs):
        with torch.no_grad():
            return policy(torch.as_tensor(obs)).numpy()

    base = closed_loop_check(maze_export.out_dir, env_cfg, trained, 3, seed=30_000)["runtime"]
    same = {"return_mean": base["return_mean"], "return_std": base["return_std"], "episodes": 3, "source": "as run"}
    ok = closed_loop_check(maze_export.out_dir, env_cfg, trained, 3, seed=30_000, reference=same)["vs_evaluation"]
    assert ok["passed"] and ok["metric"] == "return_mean" and ok["runtime"] == pytest.approx(base["return_mean"])
    claimed = dict(same, return_mean=base["return_mean"] + 0.5 * abs(base["return_mean"]) + 10, source="claimed")
    with pytest.raises(
        ExportRefused,
        match=r"the runtime has a mean return of -?\d.* over 3 episodes .* but the "
        r"checkpoint was evaluated at .* \(claimed\); allowed drop",
    ):
        closed_loop_check(maze_export.out_dir, env_cfg, trained, 3, seed=30_000, reference=claimed)


def test_an_env_without_success_exports_and_compares_returns(tmp_path):
    """Hopper reports no success: the export records NaN-free figures and compares mean returns."""
    from o2o.pipeline.stages.collect import collect
    from o2o.pipeline.stages.pretrain import pretrain

    data = tmp_path / "hopper.zarr"
    collect(
        load_config(
            "collect",
            ["env=hopper", "behavior=random", "collect.episodes=5", f"dataset.path={data}", "collect.progress=false"],
        )
    )
    run = pretrain(
        load_config(
            "pretrain",
            [
                "algo=bc",
                "env=hopper",
                f"dataset.path={data}",
                f"run_dir={tmp_path / 'run'}",
                "algo.hidden=[32,32]",
                "trainer.max_steps=20",
                "eval.every=20",
                "eval.episodes=2",
                "ope.select=false",
                "trainer.progress=false",
            ],
        )
    )
    res = export(load_config("export", args(run.best_checkpoint, tmp_path / "out", "closed_loop.episodes=2")))
    vs = res.closed_loop["vs_evaluation"]
    assert vs["passed"] and vs["metric"] == "return_mean" and res.closed_loop["runtime"]["success_rate"] is None
    assert json.loads(Path(res.manifest_path).read_text())["evaluation"]["closed_loop"]["success_noise"] is None
    # The record claims far more than the weights do: refused on returns.
    ckpt = torch.load(run.best_checkpoint, weights_only=True)
    ckpt["o2o"]["evaluation"]["return_mean"] = 10 * abs(vs["evaluated"]) + 100
    claimed = tmp_path / "claimed.ckpt"
    torch.save(ckpt, claimed)
    with pytest.raises(ExportRefused, match=r"has a mean return of .* but the checkpoint was evaluated at"):
        export(load_config("export", args(claimed, tmp_path / "out2", "closed_loop.episodes=2")))
    assert np.isfinite(vs["noise"]) and not (tmp_path / "out2").exists()
