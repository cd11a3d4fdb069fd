"""Online finetuning on the fast point-maze room: real env, real store, tiny networks.

Online episodes land in the same dataset with source ``online`` and the policy version
that collected them; batches mix the two data sources at the configured ratio; a policy
forced downhill is rolled back to its best weights; an interrupted run keeps its episodes.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from o2o.datasets import EpisodeStore
from o2o.deploy.manifest import sha256_file
from o2o.pipeline.config import load_config
from o2o.pipeline.stages.collect import collect
from o2o.pipeline.stages.finetune import clipped_share, finetune, summarize
from o2o.pipeline.stages.pretrain import pretrain
from o2o.policies.algos.base import load_algorithm
from o2o.policies.callbacks import SimEvaluation
from o2o.policies.data import Normalization, TensorReplay
from o2o.policies.evaluation import Evaluator

ROOM = [
    "env=pointmaze",
    "env.id=Open",
    "env.max_episode_steps=60",
    "env.kwargs.start_cells=[[3,1]]",
    "env.kwargs.goal_cells=[[1,3]]",
]
OFFLINE_UPDATES = 300


def run_cfg(dataset, *extra: str):
    return load_config(
        "run",
        [
            *ROOM,
            f"dataset.path={dataset}",
            "algo.hidden=[32,32]",
            "algo.gamma=0.95",
            "algo.batch_size=32",
            "finetune.steps=300",
            "finetune.warmup_steps=60",
            "finetune.eval.every=120",
            "finetune.eval.episodes=2",
            "evaluation.episodes=2",
            "finetune.seed=500",
            "finetune.updates_per_env_step=1",  # the mechanics below count updates; IQL's recipe says 2
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """12 room episodes (6 scripted, 6 random) and an IQL checkpoint trained on them."""
    root = tmp_path_factory.mktemp("offline")
    data = root / "room.zarr"
    for behavior in ("scripted", "random"):
        collect(
            load_config(
                "collect",
                [*ROOM, f"behavior={behavior}", "collect.episodes=6", f"dataset.path={data}", "collect.progress=false"],
            )
        )
    cfg = OmegaConf.merge(run_cfg(data), {"run_dir": str(root / "pre")})
    cfg.trainer.max_steps, cfg.eval.enabled, cfg.ope.select, cfg.trainer.progress = OFFLINE_UPDATES, False, False, False
    return {"data": data, "checkpoint": pretrain(cfg).last_checkpoint}


def fresh_copy(offline, tmp_path):
    """Each test grows its own copy of the dataset (same version, same fingerprint)."""
    path = tmp_path / "room.zarr"
    shutil.copytree(offline["data"], path)
    return path


def test_online_episodes_are_appended_with_the_policy_version_and_batches_follow_the_ratio(offline, tmp_path):
    data = fresh_copy(offline, tmp_path)
    res = finetune(
        run_cfg(data, "finetune.ratio.start=0.25", "finetune.ratio.end=0.25", "finetune.keep=last"),
        offline["checkpoint"],
        str(data),
        tmp_path / "ft",
    )
    # 300 env steps of 60-step episodes: 5 finished episodes, committed as dataset episodes 12..16.
    assert res["steps"] == 300 and res["episodes"] == 5 and res["episode_range"] == [12, 17]
    with EpisodeStore.open(data) as store:
        assert store.num_episodes == 17
        t = store.episodes_table(np.arange(12, 17))
        src_fp = sha256_file(offline["checkpoint"])
        assert set(t["source"]) == {"online"} and set(t["policy_id"]) == {f"iql-finetune-{src_fp[:12]}"}
        # The version is the update count when the episode began: two during the 60-step warm-up
        # (no update yet), then one every 60 steps, each step collected just before its update.
        assert [int(v) for v in t["policy_version"]] == [300, 300, 359, 419, 479]
        assert t["seed"].tolist() == [500, 501, 502, 503, 504] and t["length"].tolist() == [60] * 5
        ep = store.episode(14)
        assert np.isfinite(ep.rewards).all() and ep.episode_return == pytest.approx(float(t["returns"][2]))
    # 240 updates of 32 rows; the online buffer held rows from the first update on: 8 of 32 each time.
    assert res["updates"] == 240 and res["batch_rows"] == {"online": 240 * 8, "offline": 240 * 24}

    assert [c["step"] for c in res["curve"]] == [0, 180, 300] and not res["rolled_back"]
    assert 0.0 <= res["online"]["clipped_share"] <= 1.0  # the default data.obs_clip (10) is on
    assert res["fingerprint"] == sha256_file(res["checkpoint"]) and "return_mean" in res["evaluation"]
    # The one checkpoint finetuning writes; no Lightning default checkpoint beside the logs.
    assert sorted(p.name for p in (tmp_path / "ft").rglob("*.ckpt")) == ["finetuned.ckpt"]
    tuned, before = load_algorithm(res["checkpoint"]), load_algorithm(offline["checkpoint"])
    meta = tuned.hparams["meta"]["finetune"]
    assert meta["from_checkpoint"] == offline["checkpoint"] and meta["from_fingerprint"] == src_fp
    assert meta["offline_dataset_version"]["episodes"] == 12 and meta["online_episodes"] == [12, 17]
    assert meta["dataset_version_after"]["episodes"] == 17 and int(tuned.updates) == OFFLINE_UPDATES + 240
    assert tuned.hparams["algo"]["actor_lr_schedule"] == "constant"  # finetune.algo_overrides.iql
    assert tuned.hparams["algo"]["actor_lr"] == 3e-5 and before.hparams["algo"]["actor_lr"] == 3e-4
    obs = np.zeros((4, 6), np.float32)
    assert not np.allclose(tuned.act(obs), before.act(obs))  # it did learn something


@pytest.mark.parametrize(
    "steps, patience, stop_updates, keep",
    [(900, 2, 200, "last"), (300, 3, 240, "best")],
    ids=["stops-early", "judged-at-the-end"],
)
def test_rollback_restores_the_best_weights_when_performance_is_forced_down(
    offline, tmp_path, steps, patience, stop_updates, keep
):
    """The reward sign flipped in the checkpoint's normalisation (a sabotaged reward scale): finetuning
    then learns to move away from the goal, the return falls and the monitor rolls back — after two
    bad periodic evaluations (stopping early), or at the evaluation that ends training."""
    data = fresh_copy(offline, tmp_path)
    ckpt = torch.load(offline["checkpoint"], weights_only=True)
    ckpt["hyper_parameters"]["normalization"]["reward_scale"] = -1.0
    sabotaged = tmp_path / "sabotaged.ckpt"
    torch.save(ckpt, sabotaged)
    # The offline actor lr (not the gentler online default), so the sabotaged reward shows within the run.
    cfg = run_cfg(
        data,
        f"finetune.steps={steps}",
        "finetune.eval.every=100",
        "finetune.eval.episodes=3",
        f"finetune.rollback.patience={patience}",
        "finetune.rollback.margin=0.05",
        "finetune.algo_overrides.iql.actor_lr=3e-4",
        f"finetune.keep={keep}",
    )
    res = finetune(cfg, str(sabotaged), str(data), tmp_path / "ft")
    rb = res["rollback"]
    assert res["rolled_back"] and rb is not None and "ROLLED BACK at step" in res["summary"]
    assert rb["evaluations_below"] == patience and rb["value"] < rb["threshold"] == pytest.approx(
        rb["level"] - max(0.05 * abs(rb["level"]), 2.0 * rb["difference_se"])
    )
    assert rb["drop"] == pytest.approx(rb["level"] - rb["value"]) and rb["drop"] > 0.05 * abs(rb["level"])
    assert rb["updates"] == stop_updates and res["curve"][-1]["step"] == rb["step"]  # it stopped there
    # Whatever finetune.keep says, after a rollback the record names the restored weights, not the last.
    kept = res["kept"]
    assert kept["which"] == keep and kept["updates"] == rb["restored_updates"] and not kept["is_last"]
    assert kept["value"] == rb["restored_value"]
    # The saved policy is the best one seen: re-evaluated on the monitor's seeds it scores exactly that.
    saved = load_algorithm(res["checkpoint"])
    ev = Evaluator(
        OmegaConf.to_container(cfg.env, resolve=True),
        episodes=3,
        seed=int(cfg.finetune.eval.seed),
        gamma=float(saved.hp.gamma),
    )
    try:
        again = SimEvaluation(ev, 0).evaluate(saved)["return_mean"]
    finally:
        ev.close()
    assert again == pytest.approx(rb["restored_value"], abs=1e-6)
    if rb["restored_step"] == 0:  # nothing beat the starting point: the offline weights are back, exactly
        original = load_algorithm(str(sabotaged)).state_dict()
        assert all(torch.equal(v, original[k]) for k, v in saved.state_dict().items())


def test_an_interrupted_finetune_keeps_the_episodes_it_finished(offline, tmp_path):
    """Ctrl-C in the middle of finetuning: the episodes finished so far are committed on the way out
    (batches of 1000 episodes: none would be committed in the loop)."""
    data = fresh_copy(offline, tmp_path)
    script = textwrap.dedent(f"""
        import signal
        # Ctrl-C as at a terminal: a shell that starts jobs in the background (CI) hands them SIGINT
        # ignored, and Python then installs no KeyboardInterrupt handler.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import torch
        torch.set_num_threads(1)
        from o2o.pipeline.config import load_config
        from o2o.pipeline.stages.finetune import finetune
        cfg = load_config("run", {ROOM!r} + ["dataset.path={data}", "finetune.steps=100000",
              "finetune.warmup_steps=60", "finetune.eval.every=60", "finetune.eval.episodes=1",
              "finetune.commit_every_episodes=1000", "finetune.commit_every_s=1000", "finetune.rollback.enabled=false"])
        finetune(cfg, {offline["checkpoint"]!r}, "{data}", "{tmp_path / "ft"}", log=lambda s: print(s, flush=True))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "env step 300]" in line:  # 5 episodes finished (300 steps of 60)
                proc.send_signal(signal.SIGINT)
                break
        # Keep reading what it prints while it shuts down (a full pipe would block it); a hang
        # guard, not a timing check.
        rest, _ = proc.communicate(timeout=300)
        lines.append(rest)
    finally:
        proc.kill()
    assert any("env step 300]" in x for x in lines), "".join(lines[-20:])
    with EpisodeStore.open(data, mode="a") as store:  # the writer lock was released too
        t = store.episodes_table()
        online = t["source"] == "online"
        assert online.sum() >= 5 and t["length"][online].tolist() == [60] * int(online.sum())


def test_finetune_reports_updates_env_steps_and_episodes_in_plain_lines(offline, tmp_path, capfd, monkeypatch):
    data = fresh_copy(offline, tmp_path)
    monkeypatch.setenv("O2O_PROGRESS_EVERY_S", "0.02")
    capfd.readouterr()
    finetune(
        run_cfg(data, "finetune.steps=180", "finetune.eval.every=60"), offline["checkpoint"], str(data), tmp_path / "ft"
    )
    out = capfd.readouterr()
    assert "\r" not in out.out and "\r" not in out.err
    assert re.search(
        r"^\[finetune\] [\d,]+/120 updates \(\d+%\), [\d.,]+ updates/s, ETA \d:\d\d:\d\d, .*critic_loss "
        r"[\d.e-]+, .*env steps \d+/180, episodes \d$",
        out.out,
        re.M,
    ), out.out
    assert re.search(r"^\[finetune\] 120/120 updates \(100%\) in .*, env steps 180/180, episodes 3$", out.out, re.M)


def test_finetune_refuses_a_warmup_as_long_as_the_run(offline, tmp_path):
    with pytest.raises(ValueError, match=r"finetune.steps \(60\) must exceed finetune.warmup_steps \(60\)"):
        finetune(
            run_cfg(offline["data"], "finetune.steps=60"), offline["checkpoint"], str(offline["data"]), tmp_path / "ft"
        )


def test_an_online_override_the_algorithm_does_not_know_is_refused_by_name(offline, tmp_path):
    with pytest.raises(ValueError, match=r"finetune.algo_overrides.iql .*unknown config keys \['cql_alpha'\]"):
        finetune(
            run_cfg(offline["data"], "+finetune.algo.cql_alpha=1.0"),
            offline["checkpoint"],
            str(offline["data"]),
            tmp_path / "ft",
        )


def test_a_bad_exploration_setting_is_refused_and_leaves_the_dataset_unlocked(offline, tmp_path):
    data = fresh_copy(offline, tmp_path)
    with pytest.raises(ValueError, match=r"finetune.explore_temperature must be in \[0, 1\].*got 1.5"):
        finetune(run_cfg(data, "finetune.explore_temperature=1.5"), offline["checkpoint"], str(data), tmp_path / "ft")
    with EpisodeStore.open(data, mode="a") as store:  # the writer lock was released
        assert store.num_episodes == 12


def test_a_td3bc_checkpoint_finetunes_online_with_exploration_noise(offline, tmp_path):
    """TD3+BC's actor is deterministic: online it explores with TD3's Gaussian noise, so its online
    episodes differ from the deterministic policy's, and its delayed actor still learns."""
    data = fresh_copy(offline, tmp_path)
    cfg = OmegaConf.merge(run_cfg(data, "algo=td3bc"), {"run_dir": str(tmp_path / "pre")})
    cfg.trainer.max_steps, cfg.eval.enabled, cfg.ope.select, cfg.trainer.progress = 100, False, False, False
    ckpt = pretrain(cfg).last_checkpoint
    res = finetune(run_cfg(data, "algo=td3bc", "finetune.keep=last"), ckpt, str(data), tmp_path / "ft")
    assert res["episodes"] == 5 and res["updates"] == 240
    before, tuned = load_algorithm(ckpt), load_algorithm(res["checkpoint"])
    assert int(tuned.updates) == 100 + 240 and tuned.hparams["algo"]["explore_noise"] == 0.1
    with EpisodeStore.open(data) as store:
        first = store.episode(12)  # collected during the warm-up by the offline policy, exploring
    assert first.observations.shape[0] == 60
    greedy = before.act(first.observations[:60])
    assert not np.allclose(first.actions, greedy, atol=1e-3)  # the noise was there
    assert np.abs(first.actions - greedy).max() < 1.0  # and it is small (std 0.1 of the half-range)
    obs = np.zeros((4, 6), np.float32)
    assert not np.allclose(tuned.act(obs), before.act(obs))


def test_the_share_of_online_states_beyond_the_data_is_counted_and_said():
    norm = Normalization(
        np.zeros(2, np.float32), np.ones(2, np.float32), -np.ones(1, np.float32), np.ones(1, np.float32), obs_clip=3.0
    )
    online = TensorReplay(2, 1, 8)
    obs = np.array([[0.5, -1.0], [2.9, 0.0], [-7.0, 0.0], [0.0, 3.0]], np.float32)  # rows 2 and 3 at the clip
    online.add_raw(obs, np.zeros((4, 1)), np.zeros(4), obs, np.zeros(4), np.zeros(4), norm)
    assert clipped_share(online, norm.obs_clip) == 0.5
    assert clipped_share(online, 0.0) is None and clipped_share(TensorReplay(2, 1, 4), 3.0) is None
    res = {
        "algo": "iql",
        "steps": 4,
        "updates": 2,
        "episodes": 0,
        "dataset_before": {"episodes": 3},
        "dataset_after": {"episodes": 3},
        "evaluation": {"return_mean": 1.0},
        "pre_finetune": {"return_mean": 1.0},
        "rollback": None,
        "online": {"clipped_share": 0.5, "obs_clip": 3.0},
    }
    assert (
        "50% of the online states had a feature more than 3 standard deviations from the offline data's mean"
        in summarize(res, "return_mean")
    )
    assert "standard deviations" not in summarize(
        {**res, "online": {"clipped_share": 0.0, "obs_clip": 3.0}}, "return_mean"
    )


def test_the_finetuned_checkpoint_carries_its_final_evaluation(offline, tmp_path):
    """The evaluation promote and export judge the finetuned policy by travels in its checkpoint, with
    the digest of the weights it evaluated (export compares the exported policy with it)."""
    data = fresh_copy(offline, tmp_path)
    cfg = run_cfg(data, "finetune.steps=120", "finetune.eval.every=60")
    res = finetune(cfg, offline["checkpoint"], str(data), tmp_path / "ft")
    o2o = torch.load(res["checkpoint"], weights_only=True)["o2o"]
    ev = o2o["evaluation"]
    assert ev["weights_sha256"] == o2o["weights_sha256"] and ev["step"] == o2o["updates"]
    assert ev["episodes"] == int(cfg.evaluation.episodes) and ev["seed"] == int(cfg.evaluation.seed)
    for key in ("return_mean", "return_std", "success_rate"):
        assert ev[key] == pytest.approx(res["evaluation"][key]), key
    load_algorithm(res["checkpoint"])  # digest and record check out


@pytest.mark.parametrize("utd", [1, 3])
def test_the_best_evaluated_weights_are_kept_and_are_what_the_evaluation_saw(offline, tmp_path, utd):
    """keep=best: the checkpoint holds the weights of the best periodic evaluation (by the monitored
    metric, the pre-finetune weights included): evaluated again on the periodic seeds they score what
    the curve says; with 3 updates per env step the schedule runs 3x the updates on the same env steps."""
    data = fresh_copy(offline, tmp_path)
    cfg = run_cfg(
        data, "finetune.eval.every=60", f"finetune.updates_per_env_step={utd}", "finetune.rollback.enabled=false"
    )
    res = finetune(cfg, offline["checkpoint"], str(data), tmp_path / "ft")
    assert res["steps"] == 300 and res["updates"] == 240 * utd
    curve, kept = res["curve"], res["kept"]
    # eval.every counts env steps: every 60 of them, i.e. 60 x utd updates
    assert [c["updates"] for c in curve] == list(range(0, 240 * utd + 1, 60 * utd))
    assert [c["step"] for c in curve] == [0, 120, 180, 240, 300]
    best = max(curve, key=lambda c: c["return_mean"])  # the first of equals, as the monitor keeps it
    assert kept["which"] == "best" and kept["updates"] == best["updates"] and kept["value"] == best["return_mean"]
    assert kept["is_last"] == (best is curve[-1]) and kept["pre_finetune"] == (best is curve[0])
    tuned = load_algorithm(res["checkpoint"])
    assert int(tuned.updates) == OFFLINE_UPDATES + best["updates"]  # the update counter travels with the weights
    e = cfg.finetune.eval
    again = SimEvaluation(
        Evaluator(dict(cfg.env), episodes=int(e.episodes), num_envs=1, seed=int(e.seed), gamma=0.95), 0
    ).evaluate(tuned)
    assert again["return_mean"] == pytest.approx(best["return_mean"], rel=1e-5)
    if not kept["is_last"]:
        assert "Kept the weights of the best periodic evaluation" in res["summary"]


def test_an_update_to_data_ratio_below_one_whole_update_is_refused(offline, tmp_path):
    data = fresh_copy(offline, tmp_path)
    for bad in ("finetune.updates_per_env_step=0", "finetune.updates_per_env_step=1.5"):
        with pytest.raises(ValueError, match="updates_per_env_step"):
            finetune(run_cfg(data, bad), offline["checkpoint"], str(data), tmp_path / "ft")
    with pytest.raises(ValueError, match="set one of them"):
        finetune(
            run_cfg(data, "finetune.updates_per_env_step=2", "finetune.env_steps_per_update=2"),
            offline["checkpoint"],
            str(data),
            tmp_path / "ft",
        )
    with EpisodeStore.open(data) as store:
        assert store.num_episodes == 12  # nothing appended


@pytest.mark.parametrize(
    "algo, expect",
    [
        ("iql", {"updates_per_env_step": 2, "explore_temperature": 0.3}),
        ("rlpd", {"updates_per_env_step": 5, "ratio": {"start": 0.5, "end": 0.5}}),
        ("wsrl", {"updates_per_env_step": 4, "ratio": {"start": 1.0, "end": 1.0}}),
        ("calql", {"updates_per_env_step": 4}),
        ("cql", {"updates_per_env_step": 4}),
        ("awac", {"updates_per_env_step": 1, "explore_temperature": 1.0}),
    ],
)
def test_each_algorithm_finetunes_with_its_online_recipe_which_the_command_line_and_experiments_override(algo, expect):
    """configs/online/<algo>.yaml composes over finetune/default (AWAC has none: the defaults)."""
    ft = load_config("run", [f"algo={algo}"]).finetune
    for key, value in expect.items():
        got = ft[key] if not isinstance(value, dict) else {k: ft[key][k] for k in value}
        assert got == value, (algo, key, got)
    assert load_config("run", [f"algo={algo}", "finetune.updates_per_env_step=3"]).finetune.updates_per_env_step == 3
    # room_poor explores with IQL's full learned std (the maze's goal is found by exploring)
    assert load_config("run", [f"algo={algo}", "+experiment=room_poor"]).finetune.explore_temperature == 1.0
    if algo == "wsrl":
        assert ft.algo_overrides.wsrl.cql_alpha == 0
