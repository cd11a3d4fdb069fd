"""Checkpoints carry a digest of their weights and the evaluation they were judged by; reading one
refuses a changed, empty, truncated or foreign file by name, and never unpickles code."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch

from o2o.pipeline.config import load_config
from o2o.pipeline.stages.pretrain import pretrain
from o2o.policies.algos.base import CheckpointError, load_algorithm, read_checkpoint, weights_digest


def tiny(dataset, run_dir, *extra: str):
    return pretrain(
        load_config(
            "pretrain",
            [
                "algo=iql",
                "env=pointmaze",
                f"dataset.path={dataset}",
                f"run_dir={run_dir}",
                "algo.hidden=[32,32]",
                "algo.batch_size=32",
                "algo.log_every=5",
                "trainer.progress=false",
                "ope.select=false",
                *extra,
            ],
        )
    )


@pytest.fixture(scope="module")
def run(maze_dataset, tmp_path_factory):
    """10 IQL updates, evaluated (2 episodes) every 5: best-{step} and last checkpoints."""
    return tiny(
        maze_dataset,
        tmp_path_factory.mktemp("trust") / "run",
        "trainer.max_steps=10",
        "eval.every=5",
        "eval.episodes=2",
    )


def changed_actor_weight(src, dst, restamp: bool = False) -> str:
    """``src`` with one actor weight changed (as a bad copy or a person could), saved to ``dst``."""
    ckpt = torch.load(src, weights_only=True)
    name = next(k for k in ckpt["state_dict"] if k.startswith("actor.") and k.endswith("weight"))
    ckpt["state_dict"][name][0, 0] += 0.5
    if restamp:
        ckpt["o2o"]["weights_sha256"] = weights_digest(ckpt["state_dict"])
    torch.save(ckpt, dst)
    return name


def test_every_checkpoint_records_the_digest_of_its_weights(run):
    for path in (run.best_checkpoint, run.last_checkpoint):
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["o2o"]["weights_sha256"] == weights_digest(ckpt["state_dict"])
    module = load_algorithm(run.last_checkpoint)
    assert weights_digest(module.state_dict()) == weights_digest(torch.load(run.last_checkpoint)["state_dict"])
    # The digest reads values, dtype and shape, not where or how they are stored.
    sd = module.state_dict()
    moved = {k: (v.t().contiguous().t() if v.ndim == 2 else v.clone()) for k, v in sd.items()}
    assert weights_digest(moved) == weights_digest(sd)
    name = next(k for k in sd if k.endswith("weight"))
    for change in (lambda t: t + 1e-7, lambda t: t.double(), lambda t: t.reshape(-1)):
        assert weights_digest({**sd, name: change(sd[name])}) != weights_digest(sd)
    assert weights_digest({**sd, "x" + name: sd[name]}) != weights_digest(sd)


def test_a_changed_weight_is_refused_by_name(run, tmp_path):
    bad = tmp_path / "best-10.ckpt"
    changed_actor_weight(run.last_checkpoint, bad)
    with pytest.raises(
        CheckpointError,
        match=rf"checkpoint '{bad}': weights changed after it was written \(digest "
        r"[0-9a-f]{16}\.\.\. != recorded [0-9a-f]{16}\.\.\.\)",
    ):
        load_algorithm(bad)
    with pytest.raises(CheckpointError, match=rf"init_from '{bad}': weights changed"):
        read_checkpoint(bad, "init_from")


def test_an_evaluation_record_of_other_weights_is_refused(run, tmp_path):
    """Weights changed and the digest recomputed: the evaluation record still names the weights it judged."""
    bad = tmp_path / "restamped.ckpt"
    changed_actor_weight(run.best_checkpoint, bad, restamp=True)
    with pytest.raises(CheckpointError, match=r"its evaluation record \(step \d+\) is of other weights"):
        load_algorithm(bad)


def test_an_older_checkpoint_without_a_digest_loads_with_one_warning(run, tmp_path, caplog):
    ckpt = torch.load(run.last_checkpoint, weights_only=True)
    del ckpt["o2o"]["weights_sha256"], ckpt["o2o"]["evaluation"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    with caplog.at_level(logging.WARNING, logger="o2o.policies.algos.base"):
        load_algorithm(old)
        load_algorithm(old)
    warned = [r.getMessage() for r in caplog.records if "records no weights digest" in r.getMessage()]
    assert len(warned) == 1 and str(old) in warned[0], caplog.text


def test_unreadable_files_are_refused_by_name_and_code_is_never_run(run, tmp_path):
    empty = tmp_path / "best-2000.ckpt"
    empty.touch()
    with pytest.raises(
        CheckpointError,
        match=rf"checkpoint '{empty}' is empty \(0 bytes\): it was not written "
        "completely",
    ):
        load_algorithm(empty)
    data = open(run.last_checkpoint, "rb").read()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError,
        match=rf"checkpoint '{truncated}' \(\d+ bytes\) cannot be read as a torch "
        r"checkpoint \((OSError|RuntimeError): .*\); it is truncated, damaged or not a "
        "checkpoint",
    ):
        load_algorithm(truncated)
    text = tmp_path / "notes.ckpt"
    text.write_text("hello, this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match=rf"checkpoint '{text}' \(\d+ bytes\) cannot be read as a torch"):
        load_algorithm(text)
    not_o2o = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, not_o2o)
    with pytest.raises(CheckpointError, match="is not an o2o algorithm checkpoint"):
        load_algorithm(not_o2o)
    with pytest.raises(FileNotFoundError, match=rf"checkpoint '{tmp_path / 'nope.ckpt'}' does not exist"):
        load_algorithm(tmp_path / "nope.ckpt")

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"o2o": {}, "hyper_parameters": {}, "x": Payload()}, evil)
    with pytest.raises(
        CheckpointError,
        match=rf"checkpoint '{evil}' refused: it holds Python objects that loading "
        r"would have to execute \(.*system.*\); o2o loads checkpoints with "
        r"torch.load\(weights_only=True\)",
    ):
        load_algorithm(evil)
    assert not marker.exists()


def test_periodic_evaluations_travel_with_the_checkpoints_they_judged(run):
    summary = json.loads(open(os.path.join(run.run_dir, "summary.json")).read())
    rows = {int(r["step"]): r for r in summary["evaluations"]}
    for path in (run.best_checkpoint, run.last_checkpoint):
        o2o = torch.load(path, weights_only=True)["o2o"]
        ev = o2o["evaluation"]
        assert ev["step"] == o2o["updates"] and ev["weights_sha256"] == o2o["weights_sha256"]
        assert ev["episodes"] == 2 and ev["seed"] == 10_000
        row = rows[ev["step"]]
        for key in ("return_mean", "return_std", "success_rate"):
            assert ev[key] == pytest.approx(row[key]), key


def test_resume_refuses_a_changed_or_empty_checkpoint(run, maze_dataset, tmp_path):
    bad = tmp_path / "changed.ckpt"
    changed_actor_weight(run.last_checkpoint, bad)
    with pytest.raises(CheckpointError, match=rf"trainer.ckpt_path '{bad}': weights changed after it was written"):
        tiny(maze_dataset, tmp_path / "r1", "trainer.max_steps=12", "eval.enabled=false", f"trainer.ckpt_path={bad}")
    empty = tmp_path / "empty.ckpt"
    empty.touch()
    with pytest.raises(CheckpointError, match=rf"trainer.ckpt_path '{empty}' is empty \(0 bytes\)"):
        tiny(maze_dataset, tmp_path / "r2", "trainer.max_steps=12", "eval.enabled=false", f"trainer.ckpt_path={empty}")
    res = tiny(
        maze_dataset,
        tmp_path / "r3",
        "trainer.max_steps=12",
        "eval.enabled=false",
        f"trainer.ckpt_path={run.last_checkpoint}",
    )  # the intact one resumes
    assert res.updates == 12 and np.isfinite(load_algorithm(res.last_checkpoint).act(np.zeros((1, 6)))).all()
