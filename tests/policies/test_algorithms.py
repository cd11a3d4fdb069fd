"""One contract for every algorithm config: train a few updates on real data, save, load, resume.

Parametrised over ``configs/algo/*.yaml``, so a new algorithm is checked by adding its config.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

import numpy as np
import pytest
import torch

from o2o.datasets import EpisodeStore
from o2o.pipeline.config import load_config
from o2o.pipeline.stages.pretrain import pretrain
from o2o.policies.algos import losses as L
from o2o.policies.algos.base import Scratch, load_algorithm, resolve_algorithm
from o2o.policies.training import native_bf16, resolve_precision

ALGOS = sorted(
    p.name.removesuffix(".yaml")
    for p in resources.files("o2o.configs").joinpath("algo").iterdir()
    if p.name.endswith(".yaml")
)
TINY = ["algo.hidden=[32,32]", "algo.batch_size=32", "algo.log_every=5", "trainer.progress=false"]
# Algorithm-specific keys that make a contract run tiny (only keys the algorithm knows).
TINY_FOR = {
    "combo": [
        "algo.dynamics_hidden=[32,32]",
        "algo.dynamics_weight_decay=0.0",
        "algo.dynamics_max_epochs=5",
        "algo.rollout_batch_size=256",
    ],
}


def tiny_cfg(algo: str, dataset: str, run_dir, *extra: str):
    return load_config(
        "pretrain",
        [
            f"algo={algo}",
            "env=pointmaze",
            f"dataset.path={dataset}",
            f"run_dir={run_dir}",
            *TINY,
            *TINY_FOR.get(algo, []),
            *extra,
        ],
    )


def test_every_algorithm_config_is_found():
    assert {"bc", "bc_filtered", "iql", "cql", "awac", "sac"} <= set(ALGOS)


@pytest.mark.parametrize("algo", ALGOS)
def test_algorithm_contract(algo, maze_dataset, tmp_path, capsys):
    cfg = tiny_cfg(algo, maze_dataset, tmp_path / "a", "trainer.max_steps=10", "eval.every=5", "eval.episodes=1")
    res = pretrain(cfg)
    assert res.updates == 10
    assert res.best_checkpoint and res.last_checkpoint
    assert [h["step"] for h in res.evaluations] == [5, 10]
    assert all(np.isfinite(h["return_mean"]) for h in res.evaluations)
    # Each periodic evaluation is printed; with a critic, its Q on start states next to the achieved return.
    printed = capsys.readouterr().out
    last = res.evaluations[-1]
    assert f"[eval @ 10 updates] return_mean {last['return_mean']:.3f}" in printed
    if "q_start_mean" in last:
        assert (
            f"q_start_mean {last['q_start_mean']:.3f} vs achieved (discounted) {last['mc_discounted_return_mean']:.3f}"
        ) in printed
    assert ("q_start_mean" in last) == (algo not in ("bc", "bc_filtered"))
    # Losses were logged and are finite.
    import csv

    rows = list(csv.DictReader(open(tmp_path / "a" / "csv" / "metrics.csv")))
    losses = [float(v) for r in rows for k, v in r.items() if k.endswith("_loss") and v]
    assert losses and np.all(np.isfinite(losses))

    # The checkpoint knows its data and rebuilds the same policy without unpickling code.
    ckpt = torch.load(res.last_checkpoint, weights_only=True, map_location="cpu")
    meta = ckpt["hyper_parameters"]["meta"]
    with EpisodeStore.open(maze_dataset) as store:
        assert meta["dataset"]["version"] == store.version.to_dict()
        obs = store.load_transitions().observations[:64]
    assert ckpt["o2o"]["updates"] == 10
    loaded = load_algorithm(res.last_checkpoint)
    np.testing.assert_array_equal(loaded.act(obs), res.module.act(obs))
    exported = loaded.policy()
    np.testing.assert_allclose(exported(torch.as_tensor(obs)).numpy(), res.module.act(obs), rtol=0, atol=1e-6)
    low, high = np.asarray(cfg_bounds(maze_dataset))
    a = loaded.act(obs)
    assert np.all(a >= low - 1e-6) and np.all(a <= high + 1e-6)

    # Resume continues from the saved step, with its optimiser state.
    cfg2 = tiny_cfg(
        algo,
        maze_dataset,
        tmp_path / "b",
        "trainer.max_steps=15",
        "eval.enabled=false",
        f"trainer.ckpt_path={res.last_checkpoint}",
    )
    res2 = pretrain(cfg2)
    assert res2.updates == 15
    assert torch.load(res2.last_checkpoint, weights_only=True)["o2o"]["updates"] == 15


def cfg_bounds(path):
    with EpisodeStore.open(path) as store:
        sp = store.schema.action_space
        return sp.low, sp.high


def test_unknown_hyperparameter_is_refused_with_its_name(maze_dataset, tmp_path):
    cls = resolve_algorithm("o2o.policies.algos.iql.IQL")
    with pytest.raises(ValueError, match=r"unknown config keys \['expectil'\]"):
        cls.merge_config({"expectil": 0.9})


def test_hyperparameters_are_the_algorithm_s_typed_frozen_config():
    import dataclasses

    from o2o.policies.algos.iql import IQL, IQLConfig
    from o2o.policies.data import Normalization

    m = IQL(3, 2, {"hidden": [8], "expectile": 0.8}, Normalization.identity(3, [-1.0, -1.0], [1.0, 1.0]).to_dict())
    assert type(m.hp) is IQLConfig and m.hp.expectile == 0.8 and m.hp.beta == 3.0 and m.hp.hidden == [8]
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.hp.expectile = 0.9
    with pytest.raises(AttributeError):
        m.hp.expectil  # noqa: B018


def test_checkpoint_class_outside_o2o_is_refused():
    with pytest.raises(ValueError, match="refused"):
        resolve_algorithm("os.system")


def test_wrong_env_for_dataset_is_refused(maze_dataset, tmp_path):
    cfg = load_config("pretrain", ["env=reacher", f"dataset.path={maze_dataset}", f"run_dir={tmp_path}"])
    with pytest.raises(ValueError, match="collected in env 'pointmaze'.*pass env=pointmaze"):
        pretrain(cfg)


def test_empty_selection_is_refused(maze_dataset, tmp_path):
    cfg = tiny_cfg("bc", maze_dataset, tmp_path, "data.sources=[human]")
    with pytest.raises(ValueError, match="holds no episodes"):
        pretrain(cfg)


def test_filtered_bc_keeps_top_episodes(maze_dataset):
    from o2o.policies.algos.bc import BC

    with EpisodeStore.open(maze_dataset) as store:
        tr = store.load_transitions()
        table = store.episodes_table()
    mask = BC.transition_mask({"top_fraction": 0.25}, tr)
    kept = np.unique(tr.episode_index[mask])
    best = np.argsort(-table["returns"], kind="stable")[: int(np.ceil(0.25 * len(table["returns"])))]
    assert sorted(kept.tolist()) == sorted(best.tolist())


def test_without_simulator_the_best_checkpoint_is_chosen_by_fqe(maze_dataset, tmp_path):
    cfg = tiny_cfg(
        "bc",
        maze_dataset,
        tmp_path,
        "trainer.max_steps=30",
        "eval.enabled=false",
        "eval.every=10",
        "ope.fqe_updates=200",
        "ope.fqe_hidden=[32,32]",
        "ope.behavior_updates=50",
    )
    res = pretrain(cfg)
    assert res.selection.startswith("OPE: highest ope/fqe_value over 3 checkpoints")
    assert [r["checkpoint"].rsplit("-", 1)[-1] for r in res.ope] == ["10.ckpt", "20.ckpt", "30.ckpt"]
    values = [r["ope/fqe_value"] for r in res.ope]
    assert all(np.isfinite(values))
    assert res.best_checkpoint == res.ope[int(np.argmax(values))]["checkpoint"]
    # The choice is said with its interval and the runner-up's estimate.
    best, second = sorted(res.ope, key=lambda r: -r["ope/fqe_value"])[:2]
    assert (
        f"step-{best['checkpoint'].rsplit('-', 1)[-1].removesuffix('.ckpt')}.ckpt {best['ope/fqe_value']:.4g} "
        f"[{best['ope/fqe_ci_low']:.4g}, {best['ope/fqe_ci_high']:.4g}]; runner-up " in res.selection
    )
    assert f"{second['ope/fqe_value']:.4g}" in res.selection


def test_bf16_mixed_update_sees_weights_stepped_earlier_in_the_same_update(maze_dataset, tmp_path):
    """Under autocast the cast copy of a weight is cached for the whole training_step; after a
    network's optimiser step the next loss (SAC's actor through the critic) must see the new weights."""
    res = pretrain(
        tiny_cfg(
            "sac", maze_dataset, tmp_path, "trainer.max_steps=2", "eval.enabled=false", "trainer.precision=bf16-mixed"
        )
    )
    m = res.module
    batch = m.replay.sample(16)
    opt = m.optimizers()[m._opt_index["critic"]]
    with torch.autocast("cpu", torch.bfloat16):
        m.critic(batch.observations, batch.actions)  # fills the cache with the current weights
        loss = m.critic_loss(batch, Scratch()).loss * 1e4  # a step big enough to change bf16 values
        m.step_optimizer(opt, loss)
        q_in_step = m.critic(batch.observations, batch.actions)
    with torch.autocast("cpu", torch.bfloat16):
        q_fresh = m.critic(batch.observations, batch.actions)
    torch.testing.assert_close(q_in_step, q_fresh, rtol=0, atol=0)


def _cpu_flags() -> set[str]:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def test_precision_auto_measures_where_the_cpu_computes_bf16_and_trains_as_the_choice_would(maze_dataset, tmp_path):
    """``trainer.precision=auto``: where the CPU has AVX512-BF16 or AMX (read here from /proc/cpuinfo,
    independently of torch's probes) float32 and bf16-mixed are both timed on copies of the module and
    the faster one trains; elsewhere float32, unmeasured. The run records the choice and the figures,
    and trains exactly as that precision named outright would (the probes leave no trace)."""
    native = bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert native_bf16("cpu") is native
    assert resolve_precision("auto", "cpu") == ("bf16-mixed" if native else "32-true")
    assert resolve_precision("32-true", "cpu") == "32-true" and resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    quick = ("trainer.max_steps=6", "eval.enabled=false", "ope.select=false")
    res = pretrain(tiny_cfg("iql", maze_dataset, tmp_path / "auto", *quick, "trainer.precision=auto"))
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert summary["precision"] == res.precision
    if native:
        assert set(res.precision_rates) == {"32-true", "bf16-mixed"} and min(res.precision_rates.values()) > 0
        assert res.precision == max(res.precision_rates, key=res.precision_rates.get)
        assert summary["precision_rates"] == res.precision_rates
    else:
        assert res.precision == "32-true" and res.precision_rates == {}
    named = pretrain(tiny_cfg("iql", maze_dataset, tmp_path / "named", *quick, f"trainer.precision={res.precision}"))
    for (name, a), (_, b) in zip(named.module.state_dict().items(), res.module.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.slow  # over ~5 s: outside the fast tier (pytest -m 'not slow'), in the full suite
def test_compiled_training_matches_eager_and_hands_back_an_eager_module(maze_dataset, tmp_path):
    """``trainer.compile=true`` trains CQL (the algorithm it is for) through torch.compile'd MLPs:
    the same data and seed give the same weights as eager training up to float rounding; the
    returned module and its exported policy run eagerly, the policy an independent copy."""
    common = ("trainer.max_steps=20", "eval.enabled=false", "trainer.seed=3")
    eager = pretrain(tiny_cfg("cql", maze_dataset, tmp_path / "e", *common)).module
    with pytest.warns(UserWarning, match="trainer.compile=true on a CPU"):  # said once, where it is slower
        res = pretrain(tiny_cfg("cql", maze_dataset, tmp_path / "c", *common, "trainer.compile=true"))
    m = res.module
    assert all(x._compiled_call_impl is None for x in m.modules())
    for (name, a), (_, b) in zip(eager.state_dict().items(), m.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)
    # Compiling again and exporting: the policy is an independent eager copy.
    assert m.compile_networks() == ["critic.net", "critic_target.net", "actor.trunk"]
    policy = m.policy()
    assert all(x._compiled_call_impl is None for x in policy.modules())
    obs = torch.randn(4, m.obs_dim)
    before = policy(obs)
    with torch.no_grad():
        m.actor.trunk[0].weight.add_(1.0)  # changing the trained module leaves the exported copy alone
    assert not torch.allclose(m.policy()(obs), before)
    torch.testing.assert_close(policy(obs), before, rtol=0, atol=0)
    m.compile_networks(False)


def test_iql_actor_reuses_the_update_s_values_and_gets_what_it_would_compute(maze_dataset, tmp_path):
    """IQL's actor step takes Q_target(s, a) from the value step and V(s) from the critic step's pass
    (after the value step, as the reference) through the update's scratch: the same advantage as
    computing them afresh. Nothing travels on the module; without the earlier steps the actor says so."""
    m = pretrain(tiny_cfg("iql", maze_dataset, tmp_path, "trainer.max_steps=5", "eval.enabled=false")).module
    batch = m.replay.sample(32)
    opts, scratch = m.optimizers(), Scratch()
    for name in ("value", "critic"):
        m.step_optimizer(opts[m._opt_index[name]], getattr(m, f"{name}_loss")(batch, scratch).loss)
    assert set(scratch) == {"q_target", "v"}
    reused = m.actor_loss(batch, scratch)
    with torch.no_grad():
        adv = m.critic_target(batch.observations, batch.actions).min(0).values - m.value(batch.observations)
    torch.testing.assert_close(reused.metrics["adv_mean"], adv.mean(), rtol=1e-6, atol=1e-6)
    w = L.awr_weights(adv, m.hp.beta, m.hp.max_weight)
    fresh = L.weighted_nll(m.actor.log_prob(batch.observations, batch.actions), w)
    torch.testing.assert_close(reused.loss, fresh, rtol=1e-6, atol=1e-6)
    with pytest.raises(KeyError, match=r"'q_target' is not in this update's scratch \(it holds \[\]\)"):
        m.actor_loss(batch, Scratch())
    assert not any(k.startswith(("_q_", "_v_")) for k in vars(m))


def test_iql_critic_layer_norm_puts_layernorm_in_its_critics_and_value_and_survives_a_checkpoint(
    maze_dataset, tmp_path
):
    """``algo.critic_layer_norm=true``: LayerNorm in every critic, their targets and V (not the actor), and a
    loaded checkpoint rebuilds the same networks with the same outputs."""
    run = pretrain(
        tiny_cfg(
            "iql", maze_dataset, tmp_path, "trainer.max_steps=5", "eval.enabled=false", "algo.critic_layer_norm=true"
        )
    )
    m = run.module

    def norms(net):
        return sum(isinstance(x, torch.nn.LayerNorm) for x in net.modules())

    assert norms(m.critic) == norms(m.critic_target) == norms(m.value) == 2 and norms(m.actor) == 0
    plain = pretrain(tiny_cfg("iql", maze_dataset, tmp_path / "plain", "trainer.max_steps=5", "eval.enabled=false"))
    assert norms(plain.module.critic) == norms(plain.module.value) == 0
    loaded = load_algorithm(run.last_checkpoint)
    batch = m.replay.sample(16)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.critic(batch.observations.to(loaded.device), batch.actions.to(loaded.device)).cpu(),
            m.critic(batch.observations, batch.actions).cpu(),
        )
        torch.testing.assert_close(
            loaded.value(batch.observations.to(loaded.device)).cpu(), m.value(batch.observations).cpu()
        )


def test_iql_actor_q_weight_adds_td3_bc_s_q_term_and_leaves_the_critics_gradients_alone(maze_dataset, tmp_path):
    """``actor_q_weight`` > 0: the actor's loss is the AWR loss plus ``w * -Q(s, mu(s)) / mean|Q|`` (the min over
    the critics), its gradient reaches the actor through mu(s) and never the critics' parameters; 0 is IQL's."""
    m = pretrain(tiny_cfg("iql", maze_dataset, tmp_path, "trainer.max_steps=5", "eval.enabled=false")).module
    batch = m.replay.sample(32)

    def actor_loss(weight: float):
        m.hp = dataclasses.replace(m.hp, actor_q_weight=weight)
        scratch = Scratch()
        m.value_loss(batch, scratch)
        m.critic_loss(batch, scratch)
        m.zero_grad(set_to_none=True)
        out = m.actor_loss(batch, scratch)
        out.loss.backward()
        return out

    plain = actor_loss(0.0)
    assert "actor_q" not in plain.metrics
    plain_grad = [p.grad.clone() for p in m.actor.parameters()]
    out = actor_loss(2.0)
    with torch.no_grad():
        q = m.critic(batch.observations, m.actor.act(batch.observations)).min(0).values
    torch.testing.assert_close(out.loss, plain.loss - 2.0 * q.mean() / q.abs().mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.metrics["actor_q"], q.mean())
    assert all(p.grad is None for p in m.critic.parameters()) and all(p.grad is None for p in m.value.parameters())
    assert any(not torch.equal(p.grad, g) for p, g in zip(m.actor.parameters(), plain_grad))
    assert all(p.requires_grad for p in m.critic.parameters())


def test_an_update_passes_values_between_its_losses_only_through_a_fresh_scratch(maze_dataset, tmp_path):
    """Each update hands every loss of update_order the same new Scratch; no two updates share one."""
    m = pretrain(
        tiny_cfg("cql", maze_dataset, tmp_path, "trainer.max_steps=2", "eval.enabled=false", "algo.lagrange=true")
    ).module
    seen: list[tuple[str, Scratch, list[str]]] = []
    for name in m.update_order:
        loss = getattr(m, f"{name}_loss")

        def spy(batch, scratch, _name=name, _loss=loss):
            seen.append((_name, scratch, sorted(scratch)))
            return _loss(batch, scratch)

        setattr(m, f"{name}_loss", spy)
    for _ in range(2):
        m.update(m.replay.sample(16))
    assert [n for n, _, _ in seen] == list(m.update_order) * 2 == ["critic", "actor", "alpha", "alpha_prime"] * 2
    first, second = seen[0][1], seen[4][1]
    assert all(s is first for _, s, _ in seen[:4]) and all(s is second for _, s, _ in seen[4:]) and first is not second
    assert [k for _, _, k in seen[:4]] == [[], ["cql_gap"], ["cql_gap", "log_prob"], ["cql_gap", "log_prob"]]


def test_td3bc_moves_its_actor_and_targets_only_every_policy_freq_updates(maze_dataset, tmp_path):
    """TD3's delayed updates: the critic steps every update; the actor and both targets after
    updates 0, k, 2k... (counted from 0), as the paper's code and d3rlpy."""
    import lightning as L

    from o2o.policies.training import TrainerSpec, build_module, make_trainer, select_episodes, step_loader

    cfg = tiny_cfg("td3bc", maze_dataset, tmp_path, "trainer.max_steps=7", "eval.enabled=false", "algo.policy_freq=3")
    with EpisodeStore.open(maze_dataset, mode="r") as store:
        module, _ = build_module(cfg, store, select_episodes(store, cfg.data))
    flat = lambda net: torch.cat([p.detach().flatten() for p in net.parameters()]).clone()  # noqa: E731
    nets = ("critic", "actor", "actor_target", "critic_target")
    seen = [{n: flat(getattr(module, n)) for n in nets}]

    class Watch(L.Callback):
        def updates_to_boundary(self, trainer, m) -> int:
            return 1  # it looks after every update: a Lightning step of several updates ends after each

        def on_train_batch_end(self, trainer, m, *args) -> None:
            seen.append({n: flat(getattr(m, n)) for n in nets})

    trainer = make_trainer(TrainerSpec.from_config(cfg.trainer, log_every=int(cfg.algo.log_every)), tmp_path, [Watch()])
    trainer.fit(module, train_dataloaders=step_loader())
    assert len(seen) == 8
    for k in range(7):  # update k (from 0) turned seen[k] into seen[k + 1]
        moved = {n: not torch.equal(seen[k][n], seen[k + 1][n]) for n in nets}
        due = k % 3 == 0
        assert moved == {"critic": True, "actor": due, "actor_target": due, "critic_target": due}, (k, moved)


def test_td3bc_explores_with_gaussian_noise_around_its_action(maze_dataset, tmp_path):
    from o2o.policies.training import build_module, select_episodes

    cfg = tiny_cfg("td3bc", maze_dataset, tmp_path, "algo.explore_noise=0.3")
    with EpisodeStore.open(maze_dataset, mode="r") as store:
        module, replay = build_module(cfg, store, select_episodes(store, cfg.data))
    obs = np.repeat(replay.observations[:1].numpy() * module.obs_std.numpy() + module.obs_mean.numpy(), 4000, 0)
    torch.manual_seed(0)
    mode, explored = module.act(obs, deterministic=True), module.act(obs, deterministic=False)
    assert np.allclose(mode, mode[:1])  # the deterministic action does not move
    dev = (explored - mode) / module.act_half.numpy()  # back to normalised units
    inside = np.abs(mode[0] / module.act_half.numpy()) < 0.5  # dimensions the [-1, 1] clip leaves alone
    assert inside.any()
    assert np.allclose(dev[:, inside].std(0), 0.3, rtol=0.1), dev.std(0)
    assert np.allclose(dev[:, inside].mean(0), 0.0, atol=0.03)


@pytest.mark.parametrize(
    "key, value",
    [("policy_freq", 0), ("policy_freq", 1.5), ("alpha", -1.0), ("policy_noise", -0.1), ("explore_noise", -0.2)],
)
def test_td3bc_refuses_bad_settings_by_name(maze_dataset, tmp_path, key, value):
    cfg = tiny_cfg("td3bc", maze_dataset, tmp_path, f"algo.{key}={value}", "trainer.max_steps=1")
    with pytest.raises(ValueError, match=f"td3bc: {key}"):
        pretrain(cfg)


def test_the_update_count_is_kept_on_the_host_and_follows_loaded_state(maze_dataset, tmp_path):
    """``update_count`` (read every update by the loop and callbacks) is a Python int, so a GPU
    run never waits on the device to know its step; it always equals the checkpointed buffer."""
    cfg = tiny_cfg("iql", maze_dataset, tmp_path, "trainer.max_steps=12", "eval.enabled=false")
    res = pretrain(cfg)
    module = load_algorithm(res.last_checkpoint)
    assert isinstance(module.update_count, int) and module.update_count == int(module.updates) == 12
    state = module.state_dict()
    state["updates"] = torch.tensor(5)
    module.load_state_dict(state)  # e.g. a rollback to earlier weights
    assert module.update_count == 5
