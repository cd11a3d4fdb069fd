"""A checkpoint from `o2o pretrain` drives `o2o collect` as a learned behaviour policy."""

from __future__ import annotations

import numpy as np

from o2o.datasets import EpisodeStore
from o2o.pipeline.config import load_config
from o2o.pipeline.stages.collect import collect
from o2o.pipeline.stages.pretrain import pretrain


def test_pretrained_checkpoint_collects_into_the_same_dataset(tmp_path, make_dataset):
    path = make_dataset(tmp_path / "maze.zarr", "scripted", 6)
    res = pretrain(
        load_config(
            "pretrain",
            [
                "env=pointmaze",
                "algo=bc",
                f"dataset.path={path}",
                f"run_dir={tmp_path / 'run'}",
                "algo.hidden=[32,32]",
                "trainer.max_steps=300",
                "eval.enabled=false",
                "trainer.progress=false",
            ],
        )
    )
    cfg = load_config(
        "collect",
        [
            "env=pointmaze",
            "behavior=learned",
            f"behavior.checkpoint={res.last_checkpoint}",
            "collect.episodes=3",
            f"dataset.path={path}",
            "collect.progress=false",
        ],
    )
    out = collect(cfg)
    assert len(out.episodes) == 3
    with EpisodeStore.open(path) as store:
        table = store.episodes_table()
        assert list(table["source"]) == ["scripted"] * 6 + ["learned"] * 3
        assert set(table["policy_id"][6:]) == {"last"}
        ep = store.episode(7)
        obs = np.asarray(ep.observations)
    # The logged actions are the checkpoint's deterministic actions on the logged observations.
    np.testing.assert_allclose(ep.actions, res.module.act(obs), atol=1e-5)
