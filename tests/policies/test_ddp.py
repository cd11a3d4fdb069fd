"""Multi-process data parallel training (``trainer.strategy=ddp``), checked on CPU with gloo.

Two processes each draw their own batch; DDP averages the gradients of every network's
loss. With mean-reduced losses that is one update on the two batches together, so the DDP
run must end with the weights of a single-process run that trains on both ranks' batches
concatenated (same seeds), to float tolerance.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from o2o.pipeline.config import load_config
from o2o.pipeline.stages.pretrain import pretrain
from o2o.policies.algos.base import OfflineAlgorithm
from o2o.policies.data import Batch, TensorReplay

DDP = ["trainer.devices=2", "trainer.strategy=ddp"]


def overrides(dataset, run_dir, *extra: str) -> list[str]:
    return [
        "algo=iql",
        "env=pointmaze",
        f"dataset.path={dataset}",
        f"run_dir={run_dir}",
        "algo.hidden=[32,32]",
        "algo.batch_size=32",
        "trainer.progress=false",
        "trainer.max_steps=4",
        "eval.enabled=false",
        "ope.select=false",
        "trainer.accelerator=cpu",
        "trainer.seed=3",
        *extra,
    ]


@pytest.mark.slow  # two processes and gloo start-up: ~20-45 s
def test_ddp_on_two_cpu_processes_equals_one_process_on_both_batches(maze_dataset, tmp_path, monkeypatch):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "o2o.pipeline.cli", "pretrain", *overrides(maze_dataset, tmp_path / "ddp", *DDP)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ddp["o2o"]["updates"] == 4

    # The same run in one process, each update on rank 0's and rank 1's batches together.
    seed = 3

    def two_rank_sample(self: TensorReplay, batch_size: int):
        parts = [self.gather(torch.randint(0, self.size, (batch_size,), generator=g)) for g in self._ranks]
        return Batch(*(torch.cat([getattr(b, f.name) for b in parts]) for f in dataclasses.fields(Batch)))

    def on_fit_start(self: OfflineAlgorithm) -> None:
        self.replay._ranks = [torch.Generator().manual_seed(seed * 1_000_003 + r) for r in (0, 1)]

    monkeypatch.setattr(TensorReplay, "sample", two_rank_sample)
    monkeypatch.setattr(OfflineAlgorithm, "on_fit_start", on_fit_start)
    single = pretrain(load_config("pretrain", overrides(maze_dataset, tmp_path / "one")))
    assert single.updates == 4
    one = torch.load(single.last_checkpoint, weights_only=True)["state_dict"]
    for k, v in one.items():
        torch.testing.assert_close(ddp["state_dict"][k], v, rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    # And it is not what one process on one batch gives (the test can tell the difference).
    monkeypatch.undo()
    plain = torch.load(
        pretrain(load_config("pretrain", overrides(maze_dataset, tmp_path / "plain"))).last_checkpoint,
        weights_only=True,
    )["state_dict"]
    assert not torch.allclose(plain["actor.mean.0.weight"], ddp["state_dict"]["actor.mean.0.weight"], atol=1e-6)
