"""Lockstep check: is o2o's IQL update the same computation as d3rlpy's?

A quality comparison between two libraries mixes the algorithm with everything random
(initial weights, batches): with few seeds it cannot say whether a gap is in the maths.
This script removes the randomness. It builds o2o's IQL as ``o2o pretrain`` does, gives
d3rlpy's IQL exactly the same initial weights, and feeds both the same batches (sampled
by o2o, already normalised; d3rlpy's scalers are off). After every update it compares
the parameters of every network and the losses. Equal computations drift apart only by
float rounding (relative differences ~1e-7 at first, growing slowly: training is chaotic);
a different loss, target, order or weighting shows at once (1e-3 or more within a few updates).

o2o and d3rlpy differ in two documented choices, which this script switches to d3rlpy's
on the o2o module for the check (only on that instance; o2o's defaults are unchanged):

* d3rlpy bounds IQL's state-independent log-std by a sigmoid over [-5, 2]
  (``use_std_parameter``); o2o clamps a free parameter to [-5, 2];
* d3rlpy computes the value and critic losses from the same pre-update networks (one
  optimiser over both), so the critic's target V(s') comes from *before* this update's
  value step; o2o follows the paper's reference code: V is updated first and the critic's
  target uses the new V.

``--as-is`` skips both switches, to show how far the defaults alone move the numbers.

    python bench/lockstep_d3rlpy.py             # 300 updates, Reacher-v5 data, 64x64 nets
    python bench/lockstep_d3rlpy.py --as-is     # o2o's own log-std and update order

d3rlpy is a benchmark-only dependency: ``pip install -r bench/requirements-bench.txt``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path

import lightning as L
import torch
from torch.distributions import Normal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import print_table, verdict  # noqa: E402
from bench_train import d3rlpy_config, import_d3rlpy, make_dataset, quiet_fit  # noqa: E402

from o2o.datasets import EpisodeStore  # noqa: E402
from o2o.pipeline.config import load_config  # noqa: E402
from o2o.pipeline.stages.pretrain import _Steps, build_module, make_trainer, select_episodes  # noqa: E402
from o2o.policies.algos import losses as LS  # noqa: E402
from o2o.policies.networks import LOG_STD_MAX, LOG_STD_MIN  # noqa: E402

REPORT_AT = (1, 2, 5, 10, 30, 100, 300, 1000, 3000)
# Relative parameter difference that float32 rounding stays under for the first 30 updates
# (measured ~1e-7); one different term in any loss gives >1e-3 there.
TOLERANCE = 1e-4


def as_d3rlpy(module) -> None:
    """Switch this IQL instance to d3rlpy's log-std bound and update order (see the module doc)."""
    actor = module.actor

    def _dist(self, obs):
        mu = torch.tanh(self.mean(obs))
        log_std = LOG_STD_MIN + torch.sigmoid(self.log_std) * (LOG_STD_MAX - LOG_STD_MIN)
        return Normal(mu, log_std.exp()), mu

    actor._dist = types.MethodType(_dist, actor)
    value_loss = module.value_loss

    def value_loss_first_v(batch):
        with torch.no_grad():
            module._v_next_before = module.value(batch.next_observations)
        return value_loss(batch)

    def critic_loss_old_v(batch):
        with torch.no_grad():
            target = LS.td_target(batch.rewards, module._v_next_before, batch.terminals, module.hp.gamma)
            module._v_data = (batch, module.value(batch.observations))
        q = module.critic(batch.observations, batch.actions)
        return LS.LossOut(LS.critic_regression(q, target), {"q_mean": q.detach().mean()})

    module.value_loss, module.critic_loss = value_loss_first_v, critic_loss_old_v


def layer_pairs(module, impl) -> dict[str, list]:
    """Per network, every d3rlpy ``nn.Linear`` with the o2o (weight, bias) it corresponds to, as
    live views in d3rlpy's layout (o2o's ensembles store weights [n, in, out], Linear [out, in])."""
    M = impl.modules

    def ens(qfs, e):
        out = []
        for i, q in enumerate(qfs):
            out += [(q._encoder._layers[k], e.net.hidden[j].weight[i].T, e.net.hidden[j].bias[i, 0])
                    for j, k in ((0, 0), (1, 2))]
            out.append((q._fc, e.net.out.weight[i].T, e.net.out.bias[i, 0]))
        return out

    def seq(enc, head, s):
        return [(d, s[k].weight, s[k].bias) for d, k in ((enc._layers[0], 0), (enc._layers[2], 2), (head, 4))]

    return {"critic": ens(M.q_funcs, module.critic), "target": ens(M.targ_q_funcs, module.critic_target),
            "value": seq(M.value_func._encoder, M.value_func._fc, module.value.net),
            "actor": seq(M.policy._encoder, M.policy._mu, module.actor.mean)}


def copy_weights(module, impl, pairs: dict[str, list], d3rlpy_log_std: bool) -> None:
    """o2o's initial weights into d3rlpy's IQL modules."""
    with torch.no_grad():
        for layers in pairs.values():
            for d, w, b in layers:
                d.weight.copy_(w)
                d.bias.copy_(b)
        log_std = impl.modules.policy._logstd
        if d3rlpy_log_std:  # same parameter, same map
            log_std.copy_(module.actor.log_std.view(1, -1))
        else:  # the sigmoid parameter giving o2o's initial log-std
            ls = module.actor.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
            log_std.copy_(torch.logit((ls - LOG_STD_MIN) / (LOG_STD_MAX - LOG_STD_MIN)).view(1, -1))


def rel_diff(layers: list) -> float:
    """max over the layers' weights and biases of max|d3rlpy - o2o| / max|o2o|."""
    return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
               for d, w, bias in layers for a, b in ((d.weight, w), (d.bias, bias)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--hidden", default="64,64")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--as-is", action="store_true", help="keep o2o's own log-std bound and update order")
    args = ap.parse_args(argv)
    d3rlpy = import_d3rlpy()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="o2o-lockstep-") as tmp:
        work = Path(tmp)
        path = make_dataset(work / "reacher.zarr", ["env=reacher"], [("scripted", 10), ("random", 30)])
        cfg = load_config("pretrain", ["env=reacher", "algo=iql", f"algo.hidden=[{args.hidden}]",
                                       f"dataset.path={path}", f"trainer.max_steps={args.steps}",
                                       f"trainer.seed={args.seed}", "eval.enabled=false", "trainer.progress=false",
                                       "trainer.accelerator=cpu", f"run_dir={work / 'run'}"])
        L.seed_everything(args.seed, verbose=False)
        with EpisodeStore.open(path, mode="r") as store:
            module, _ = build_module(cfg, store, select_episodes(store, cfg.data))
            space = store.schema.action_space
        if not args.as_is:
            as_d3rlpy(module)
        dcfg = d3rlpy_config(d3rlpy, "iql", args.steps, space, hidden=[int(h) for h in args.hidden.split(",")])
        dcfg.observation_scaler = dcfg.action_scaler = None  # o2o's batches come normalised
        agent = dcfg.create(device=False)
        agent.create_impl((module.obs_dim,), module.act_dim)
        pairs = layer_pairs(module, agent.impl)
        copy_weights(module, agent.impl, pairs, d3rlpy_log_std=not args.as_is)
        from d3rlpy.torch_utility import TorchMiniBatch

        rows, worst_early = [], 0.0
        update = module.update

        def both(batch):
            n = len(batch)
            col = lambda t: t.view(-1, 1).clone()  # noqa: E731
            tb = TorchMiniBatch(observations=batch.observations.clone(), actions=batch.actions.clone(),
                                rewards=col(batch.rewards), next_observations=batch.next_observations.clone(),
                                next_actions=torch.zeros_like(batch.actions), returns_to_go=torch.zeros(n, 1),
                                terminals=col(batch.terminals), intervals=torch.ones(n, 1), device="cpu:0")
            d = agent.impl.update(tb, int(module.updates))
            o = update(batch)
            k = int(module.updates)
            if k in REPORT_AT or k == args.steps:
                diffs = {name: rel_diff(p) for name, p in pairs.items()}
                nonlocal worst_early
                if k <= 30:
                    worst_early = max(worst_early, *diffs.values())
                rows.append([str(k), *(f"{v:.1e}" for v in diffs.values()),
                             f"{float(o['critic_loss']):.5f} / {float(d['q_loss']):.5f}",
                             f"{float(o['value_loss']):.5f} / {float(d['v_loss']):.5f}",
                             f"{float(o['actor_loss']):.5f} / {float(d['actor_loss']):.5f}"])
            return o

        module.update = both
        with quiet_fit():
            trainer = make_trainer(cfg, work / "run", [])
            trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(_Steps(), batch_size=None))
    mode = "o2o as is" if args.as_is else "o2o with d3rlpy's log-std bound and update order"
    print_table(f"IQL lockstep, o2o vs d3rlpy {d3rlpy.__version__} ({mode}): same initial weights, same batches; "
                "relative parameter difference per network, losses o2o / d3rlpy",
                rows, ["update", "critic", "target", "value", "actor", "critic loss", "value loss", "actor loss"])
    ok = worst_early < TOLERANCE
    print(f"\nworst relative difference in updates 1-30: {worst_early:.1e} (tolerance {TOLERANCE:.0e}): "
          f"{verdict(ok)} ({'the same computation' if ok else 'the updates differ'})")
    return 0 if ok or args.as_is else 1


if __name__ == "__main__":
    sys.exit(main())
