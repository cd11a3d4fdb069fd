"""``trainer.updates_per_step``: several updates per Lightning step give the same training as one.

Each step of K updates ends early where a periodic evaluation, a checkpoint, the training log,
a resume point, an online env step or ``max_steps`` must see the weights, so everything that
counts updates counts them exactly; the updates themselves are the same calls on the same
batches, so the weights are the same to the bit on the CPU. Every registered algorithm config
is checked (real point-maze data, tiny networks).
"""

from __future__ import annotations

import csv
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from o2o.datasets import EpisodeStore
from o2o.pipeline.config import load_config
from o2o.pipeline.stages.collect import collect
from o2o.pipeline.stages.finetune import finetune
from o2o.pipeline.stages.pretrain import pretrain
from o2o.policies.algos.base import load_algorithm
from o2o.policies.callbacks import fast_path_refusal
from o2o.policies.training import TrainerSpec, updates_per_step_of

from .test_algorithms import ALGOS, tiny_cfg


def train_rows(run_dir) -> list[dict]:
    """The training log's rows without the wall-clock rate (the one column that may differ)."""
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    return [{k: v for k, v in r.items() if k != "train/updates_per_s"} for r in rows]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("algo", ALGOS)
def test_k_updates_per_step_on_the_fast_path_train_exactly_as_lightning_s_one_per_step(algo, maze_dataset, tmp_path):
    """The reference is Lightning's own loop: one update per step through its optimiser wrappers
    (``trainer.fast_path=false``). Against it: 4 updates per step on the fast path (bare optimisers,
    the default). 23 updates, evaluated and checkpointed every 10, logged every 5: the steps of 4 must
    end at 5, 10, 15, 20 and 23."""
    common = ("trainer.max_steps=23", "eval.every=10", "eval.episodes=1", "trainer.seed=7")
    one = pretrain(
        tiny_cfg(algo, maze_dataset, tmp_path / "k1", *common, "trainer.fast_path=false", "trainer.updates_per_step=1")
    )
    four = pretrain(tiny_cfg(algo, maze_dataset, tmp_path / "k4", *common, "trainer.updates_per_step=4"))
    assert one.updates == four.updates == 23
    assert_same_weights(one.module, four.module)
    assert [h["step"] for h in four.evaluations] == [h["step"] for h in one.evaluations] == [10, 20, 23]
    assert [h["return_mean"] for h in four.evaluations] == [h["return_mean"] for h in one.evaluations]
    assert train_rows(tmp_path / "k4") == train_rows(tmp_path / "k1")
    assert sorted(p.name for p in (tmp_path / "k4" / "checkpoints").iterdir()) == sorted(
        p.name for p in (tmp_path / "k1" / "checkpoints").iterdir()
    )
    assert four.module.updates_per_step == 1 and not four.module.fast_updates  # the fit's settings, not the module's


def test_the_fast_path_under_bf16_autocast_equals_lightning_s_steps(maze_dataset, tmp_path):
    """bf16-mixed: Lightning's precision plugin steps the optimisers without a scaler; the fast path does
    the same steps inside the same autocast. Gradient clipping (float32) clips the same norms."""
    quick = ("trainer.max_steps=12", "eval.enabled=false", "ope.select=false")
    for name, extra in (("bf16", "trainer.precision=bf16-mixed"), ("clip", "algo.grad_clip=0.5")):
        slow = pretrain(
            tiny_cfg("cql", maze_dataset, tmp_path / f"{name}-slow", *quick, extra, "trainer.fast_path=false")
        )
        fast = pretrain(
            tiny_cfg("cql", maze_dataset, tmp_path / f"{name}-fast", *quick, extra, "trainer.fast_path=true")
        )
        assert slow.updates == fast.updates == 12
        assert_same_weights(slow.module, fast.module)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algo", ["iql", "cql", "td3bc"])
def test_on_cuda_the_fast_path_with_k_updates_per_step_equals_lightning_s_loop(algo, maze_dataset, tmp_path):
    """On a GPU: 8 updates per step on the fast path against Lightning's loop of one, to float rounding
    (kernels may differ in the order they reduce)."""
    quick = ("trainer.max_steps=24", "eval.enabled=false", "ope.select=false", "trainer.accelerator=gpu")
    slow = pretrain(
        tiny_cfg(algo, maze_dataset, tmp_path / "slow", *quick, "trainer.fast_path=false", "trainer.updates_per_step=1")
    )
    fast = pretrain(tiny_cfg(algo, maze_dataset, tmp_path / "fast", *quick, "trainer.updates_per_step=8"))
    assert slow.updates == fast.updates == 24
    for (name, a), (_, b) in zip(slow.module.state_dict().items(), fast.module.state_dict().items()):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-4, atol=1e-5, msg=name)


def test_cuda_graphs_asked_for_without_a_gpu_say_why_and_train_as_without(maze_dataset, tmp_path, capsys):
    quick = ("trainer.max_steps=12", "eval.enabled=false", "ope.select=false", "trainer.updates_per_step=4")
    plain = pretrain(tiny_cfg("cql", maze_dataset, tmp_path / "plain", *quick))
    asked = pretrain(tiny_cfg("cql", maze_dataset, tmp_path / "asked", *quick, "trainer.cuda_graphs=true"))
    assert "trainer.cuda_graphs=true: not used: the module is on cpu, not a CUDA device" in capsys.readouterr().out
    assert_same_weights(plain.module, asked.module)
    assert asked.module.update_graph is None
    with pytest.raises(ValueError, match=r"trainer.cuda_graphs must be true or false, got 'yes'"):
        TrainerSpec.from_config({"max_steps": 10, "cuda_graphs": "yes"})


def test_a_cosine_schedule_computed_on_the_device_follows_the_schedulers_own_steps():
    """IQL's actor rate inside a captured graph: the closed form from a device step count, set before
    each update, gives the rates CosineAnnealingLR's own steps give (here run on the CPU)."""
    from o2o.policies.graphs import DeviceCosine

    def opt_and_sched():
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=3e-4)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50)

    opt, sched = opt_and_sched()
    stepped = []
    for _ in range(60):  # past T_max too
        stepped.append(opt.param_groups[0]["lr"])
        sched.step()
    opt2, sched2 = opt_and_sched()
    for _ in range(7):  # the eager warm-up before the capture
        sched2.step()
    cosine = DeviceCosine(sched2, torch.device("cpu"))
    device_rates = stepped[:7]
    for _ in range(53):
        cosine.set_lr()
        device_rates.append(float(opt2.param_groups[0]["lr"]))
    np.testing.assert_allclose(device_rates, stepped, rtol=1e-5, atol=1e-9)
    cosine.advance(53)
    assert sched2.last_epoch == sched.last_epoch == 60
    assert sched2.get_last_lr()[0] == pytest.approx(sched.get_last_lr()[0], abs=1e-9)
    cosine.release()
    assert isinstance(opt2.param_groups[0]["lr"], float)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "algo, extra",
    [
        ("cql", ()),
        ("awac", ()),
        ("bc", ()),
        ("sac", ()),
        ("calql", ()),
        ("iql", ()),
        ("iql", ("trainer.precision=bf16-mixed",)),  # autocast's weight casts inside the graph
    ],
)
def test_on_cuda_updates_replayed_from_one_captured_graph_equal_eager_updates(algo, extra, maze_dataset, tmp_path):
    """The graph is captured after 3 eager warm-up updates and replayed for the rest: weights, the update
    count and the logged losses as eager updates on the fast path give, to float rounding."""
    quick = ("trainer.max_steps=40", "eval.enabled=false", "ope.select=false", "trainer.accelerator=gpu")
    quick = (*quick, "trainer.updates_per_step=4", *extra)
    eager = pretrain(tiny_cfg(algo, maze_dataset, tmp_path / "eager", *quick))
    graph = pretrain(tiny_cfg(algo, maze_dataset, tmp_path / "graph", *quick, "trainer.cuda_graphs=true"))
    assert eager.updates == graph.updates == 40
    tol = dict(rtol=2e-2, atol=2e-3) if extra else dict(rtol=1e-4, atol=1e-5)
    for (name, a), (_, b) in zip(eager.module.state_dict().items(), graph.module.state_dict().items()):
        torch.testing.assert_close(a.cpu(), b.cpu(), msg=name, **tol)
    assert int(graph.module.updates) == 40
    losses = lambda d: [float(r["train/critic_loss" if algo != "bc" else "train/actor_loss"]) for r in train_rows(d)]  # noqa: E731
    np.testing.assert_allclose(losses(tmp_path / "graph"), losses(tmp_path / "eager"), **tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_updates_that_change_from_one_to_the_next_are_not_captured(maze_dataset, tmp_path, capsys):
    quick = ("trainer.max_steps=8", "eval.enabled=false", "ope.select=false", "trainer.accelerator=gpu")
    for algo, why in (
        ("td3bc", "TD3BC updates ['actor'] only every few updates"),
        ("combo", "COMBO: model rollouts every rollout_every updates"),
    ):
        pretrain(tiny_cfg(algo, maze_dataset, tmp_path / algo, *quick, "trainer.cuda_graphs=true"))
        assert why in capsys.readouterr().out


def test_the_fast_path_is_refused_where_lightning_s_steps_do_more():
    plain = SimpleNamespace(world_size=1, precision="32-true", strategy=object())
    assert fast_path_refusal(plain) is None
    assert fast_path_refusal(SimpleNamespace(world_size=1, precision="bf16-mixed", strategy=object())) is None
    assert "16-mixed" in fast_path_refusal(SimpleNamespace(world_size=1, precision="16-mixed", strategy=object()))
    assert "2 processes" in fast_path_refusal(SimpleNamespace(world_size=2, precision="32-true", strategy=object()))
    with pytest.raises(ValueError, match=r"trainer.fast_path must be one of \['auto', 'true', 'false'\], got 'fast'"):
        TrainerSpec.from_config({"max_steps": 10, "fast_path": "fast"})
    assert TrainerSpec.from_config({"max_steps": 10, "fast_path": False}).fast_path == "false"


def test_the_last_checkpoint_holds_the_final_updates_when_max_steps_is_not_a_multiple_of_the_period(
    maze_dataset, tmp_path
):
    res = pretrain(tiny_cfg("iql", maze_dataset, tmp_path, "trainer.max_steps=23", "eval.every=10", "eval.episodes=1"))
    last = torch.load(res.last_checkpoint, weights_only=True)
    assert res.updates == 23 and last["o2o"]["updates"] == 23 and last["global_step"] == 23
    assert_same_weights(load_algorithm(res.last_checkpoint), res.module)
    # The final evaluation (after update 23) travels with the weights it judged.
    assert last["o2o"]["evaluation"]["step"] == 23
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names[-1] == "last.ckpt" and names[:-1] in (["best-10.ckpt"], ["best-20.ckpt"])


def test_a_fit_of_k_updates_per_step_resumes_where_one_per_step_would(maze_dataset, tmp_path):
    """Resumed from a checkpoint written mid-run (by a fit of 3 per step), at 7 per step (a K that
    divides nothing): the same weights and log as resuming it at one update per step, and as a run
    that was never interrupted."""
    quick = ("eval.enabled=false", "ope.select=false", "eval.every=10")
    first = pretrain(
        tiny_cfg("cql", maze_dataset, tmp_path / "first", "trainer.max_steps=17", *quick, "trainer.updates_per_step=3")
    )
    ckpt = tmp_path / "first" / "checkpoints" / "step-10.ckpt"
    assert first.updates == 17 and torch.load(ckpt, weights_only=True)["o2o"]["updates"] == 10
    rest = {
        k: pretrain(
            tiny_cfg(
                "cql",
                maze_dataset,
                tmp_path / f"rest{k}",
                "trainer.max_steps=30",
                *quick,
                f"trainer.updates_per_step={k}",
                f"trainer.ckpt_path={ckpt}",
            )
        )
        for k in (1, 7)
    }
    assert rest[1].updates == rest[7].updates == 30
    assert_same_weights(rest[1].module, rest[7].module)
    # The checkpoint carries the random streams (torch's, the replay's): resumed, the run draws the batches
    # and noise it would have drawn uninterrupted, and ends with the same weights as one that never stopped.
    whole = pretrain(
        tiny_cfg("cql", maze_dataset, tmp_path / "whole", "trainer.max_steps=30", *quick, "trainer.updates_per_step=1")
    )
    assert_same_weights(whole.module, rest[7].module)
    assert train_rows(tmp_path / "rest7") == train_rows(tmp_path / "rest1")
    assert [int(r["step"]) for r in train_rows(tmp_path / "rest7")] == [14, 19, 24, 29]


ROOM = [
    "env=pointmaze",
    "env.id=Open",
    "env.max_episode_steps=60",
    "env.kwargs.start_cells=[[3,1]]",
    "env.kwargs.goal_cells=[[1,3]]",
]


def test_finetuning_with_k_updates_per_step_steps_the_env_where_one_per_step_does(maze_dataset, tmp_path):
    """Online finetuning at 2 updates per env step: a Lightning step of up to 5 updates still takes
    each env step before the update it precedes (steps end where an env step is due), evaluates after
    the same updates and ends with the same weights, curve and appended episodes."""
    root = tmp_path / "data.zarr"
    for behavior in ("scripted", "random"):
        cfg = load_config(
            "collect",
            [*ROOM, f"behavior={behavior}", "collect.episodes=4", f"dataset.path={root}", "collect.progress=false"],
        )
        collect(cfg)

    def run_cfg(data, *extra: str):
        return load_config(
            "run",
            [
                *ROOM,
                f"dataset.path={data}",
                "algo.hidden=[32,32]",
                "algo.batch_size=32",
                "finetune.steps=240",
                "finetune.warmup_steps=60",
                "finetune.eval.every=60",
                "finetune.eval.episodes=1",
                "finetune.updates_per_env_step=2",
                "finetune.seed=500",
                "finetune.progress=false",
                "trainer.progress=false",
                *extra,
            ],
        )

    pre = OmegaConf.merge(run_cfg(root), {"run_dir": str(tmp_path / "pre")})
    pre.trainer.max_steps, pre.eval.enabled, pre.ope.select = 40, False, False
    ckpt = pretrain(pre).last_checkpoint
    results = {}
    # The reference: Lightning's loop, one update per step. Then the fast path asked for 1 (raised to the
    # 2 updates per env step) and for 5 (cut to 2 wherever an env step is due).
    settings = {
        1: ("trainer.fast_path=false", "trainer.updates_per_step=1"),
        2: ("trainer.updates_per_step=1",),
        5: ("trainer.updates_per_step=5",),
    }
    for k, extra in settings.items():
        data = tmp_path / f"k{k}.zarr"
        shutil.copytree(root, data)
        results[k] = finetune(run_cfg(data, *extra), ckpt, str(data), tmp_path / f"ft{k}", log=lambda s: None)
    for k in (2, 5):
        assert_same_finetuning(results[1], results[k], tmp_path / "k1.zarr", tmp_path / f"k{k}.zarr")


def assert_same_finetuning(one: dict, five: dict, data_one, data_other) -> None:
    assert one["updates"] == five["updates"] == 360 and one["steps"] == five["steps"]
    assert [(c["step"], c["updates"], c["return_mean"]) for c in five["curve"]] == [
        (c["step"], c["updates"], c["return_mean"]) for c in one["curve"]
    ]
    assert_same_weights(load_algorithm(one["checkpoint"]), load_algorithm(five["checkpoint"]))
    tables = []
    for path in (data_one, data_other):
        with EpisodeStore.open(path) as store:
            t = store.episodes_table(np.arange(8, store.num_episodes))
            tables.append((t["policy_version"].tolist(), t["returns"].tolist(), t["seed"].tolist()))
    assert tables[0] == tables[1] and len(tables[0][0]) >= 3


@pytest.mark.parametrize("value", [0, -2, 1.5, "four", True, None])
def test_updates_per_step_must_be_a_positive_integer_and_says_so(value):
    with pytest.raises(ValueError, match=r"trainer.updates_per_step must be an integer >= 1, got"):
        updates_per_step_of(value)
    with pytest.raises(ValueError, match=r"trainer.updates_per_step"):
        TrainerSpec.from_config({"max_steps": 10, "updates_per_step": value})


def test_updates_per_step_is_read_from_the_trainer_config():
    assert TrainerSpec.from_config({"max_steps": 10}).updates_per_step == 1
    assert load_config("pretrain").trainer.updates_per_step == 16  # the default: 16 per Lightning step
    assert TrainerSpec.from_config({"max_steps": 10, "updates_per_step": "8"}).updates_per_step == 8
    assert load_config("pretrain", ["trainer.updates_per_step=16"]).trainer.updates_per_step == 16
