"""Lockstep check: are o2o's IQL and CQL updates the same computations as d3rlpy's?

A quality comparison between two libraries mixes the algorithm with everything random
(initial weights, batches, sampled actions): with few seeds it cannot say whether a gap is
in the maths. This script removes the randomness. It builds o2o's algorithm as ``o2o
pretrain`` does, gives d3rlpy's the same initial weights, and feeds both the same batches
(sampled by o2o, already normalised; d3rlpy's scalers are off). CQL also samples actions
(uniform and from the policy at s and s', and one per state for the actor): those draws come
from one noise source, each library getting the same numbers for the same (state, sample,
action dimension) in whatever shape and order it draws them; a draw the script does not
expect stops it. After every update it compares the parameters of every network and the
losses. Equal computations drift apart only by float rounding (relative differences ~1e-7
at first, growing slowly: training is chaotic); a different loss, target, order or weighting
shows at once (1e-3 or more within a few updates).

o2o and d3rlpy differ in documented choices, which this script switches to d3rlpy's on the
o2o module for the check (only on that instance; o2o's defaults are unchanged):

* IQL: d3rlpy bounds the state-independent log-std by a sigmoid over [-5, 2]
  (``use_std_parameter``); o2o clamps a free parameter to [-5, 2]. d3rlpy computes the value
  and critic losses from the same pre-update networks (one optimiser over both), so the
  critic's target V(s') comes from *before* this update's value step; o2o follows the
  paper's reference code: V is updated first and the critic's target uses the new V.
* CQL: d3rlpy steps the entropy temperature *before* the actor's loss (which then uses the
  new temperature), on the loss ``-alpha (log pi + target)``; o2o steps it after the actor,
  on ``-log(alpha) (log pi + target)`` (SAC's reference code). d3rlpy clamps the policy's
  log-std to [-20, 2], o2o to [-5, 2]. d3rlpy's fixed-weight regulariser also subtracts a
  constant (``conservative_weight * alpha_threshold`` per critic): no gradient, so the table
  adds it back to d3rlpy's critic loss.

``--as-is`` skips the switches, to show how far the defaults alone move the numbers.

    python bench/lockstep_d3rlpy.py              # IQL: 300 updates, Reacher-v5 data, 64x64 nets
    python bench/lockstep_d3rlpy.py --algo cql   # CQL(H), fixed regulariser weight 5
    python bench/lockstep_d3rlpy.py --as-is      # o2o's own choices

d3rlpy is a benchmark-only dependency: ``pip install -r bench/requirements-bench.txt``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from torch.distributions import Normal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import print_table, verdict  # noqa: E402
from bench_train import d3rlpy_config, import_d3rlpy, make_dataset, quiet_fit  # noqa: E402

from o2o.datasets import EpisodeStore  # noqa: E402
from o2o.pipeline.config import load_config  # noqa: E402
from o2o.policies.algos import losses as LS  # noqa: E402
from o2o.policies.networks import LOG_STD_MAX, LOG_STD_MIN, adam  # noqa: E402
from o2o.policies.training import TrainerSpec, build_module, make_trainer, select_episodes, step_loader  # noqa: E402

REPORT_AT = (1, 2, 5, 10, 30, 100, 300, 1000, 3000)
# Relative parameter difference that float32 rounding stays under for the first 30 updates
# (measured ~1e-7); one different term in any loss gives >1e-3 there.
TOLERANCE = 1e-4
D3RLPY_CQL_LOG_STD_MIN = -20.0  # d3rlpy's create_normal_policy default (SAC, CQL)


# ---------------------------------------------------------------------------------- IQL
def as_d3rlpy_iql(module) -> None:
    """Switch this IQL instance to d3rlpy's log-std bound and update order (see the module doc)."""
    actor = module.actor

    def _dist(self, obs):
        mu = torch.tanh(self.mean(obs))
        log_std = LOG_STD_MIN + torch.sigmoid(self.log_std) * (LOG_STD_MAX - LOG_STD_MIN)
        return Normal(mu, log_std.exp()), mu

    actor._dist = types.MethodType(_dist, actor)
    value_loss = module.value_loss

    def value_loss_first_v(batch, scratch):
        with torch.no_grad():
            scratch["v_next_before"] = module.value(batch.next_observations)
        return value_loss(batch, scratch)

    def critic_loss_old_v(batch, scratch):
        with torch.no_grad():
            target = LS.td_target(batch.rewards, scratch["v_next_before"], batch.terminals, module.hp.gamma)
            scratch["v"] = module.value(batch.observations)  # V(s) for the actor's advantage, after the value step
        q = module.critic(batch.observations, batch.actions)
        return LS.LossOut(LS.critic_regression(q, target), {"q_mean": q.detach().mean()})

    module.value_loss, module.critic_loss = value_loss_first_v, critic_loss_old_v


def critic_pairs(qfs, ensemble) -> list:
    """d3rlpy's per-critic Linear layers with the matching views of o2o's stacked ensemble weights."""
    out = []
    for i, q in enumerate(qfs):
        out += [
            (q._encoder._layers[k], ensemble.net.hidden[j].weight[i].T, ensemble.net.hidden[j].bias[i, 0])
            for j, k in ((0, 0), (1, 2))
        ]
        out.append((q._fc, ensemble.net.out.weight[i].T, ensemble.net.out.bias[i, 0]))
    return out


def mlp_pairs(enc, heads: list, s) -> list:
    """d3rlpy's encoder layers and output heads with o2o's ``nn.Sequential`` MLP ``s``: each head
    takes its rows ``(start, stop)`` of the MLP's last layer (CQL's actor: mean, then log-std)."""
    last = s[len(s) - 1]
    return [(d, s[k].weight, s[k].bias) for d, k in ((enc._layers[0], 0), (enc._layers[2], 2))] + [
        (d, last.weight[a:b], last.bias[a:b]) for d, (a, b) in heads
    ]


def iql_pairs(module, impl) -> dict[str, list]:
    """Per network, every d3rlpy ``nn.Linear`` with the o2o (weight, bias) it corresponds to, as
    live views in d3rlpy's layout (o2o's ensembles store weights [n, in, out], Linear [out, in])."""
    M, A = impl.modules, module.act_dim
    return {
        "critic": critic_pairs(M.q_funcs, module.critic),
        "target": critic_pairs(M.targ_q_funcs, module.critic_target),
        "value": mlp_pairs(M.value_func._encoder, [(M.value_func._fc, (0, 1))], module.value.net),
        "actor": mlp_pairs(M.policy._encoder, [(M.policy._mu, (0, A))], module.actor.mean),
    }


def copy_iql_extras(module, impl, as_is: bool) -> None:
    """The IQL actor's state-independent log-std, into d3rlpy's (sigmoid-bounded unless ``as_is``)."""
    log_std = impl.modules.policy._logstd
    with torch.no_grad():
        if not as_is:  # same parameter, same map
            log_std.copy_(module.actor.log_std.view(1, -1))
        else:  # the sigmoid parameter giving o2o's initial log-std
            ls = module.actor.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
            log_std.copy_(torch.logit((ls - LOG_STD_MIN) / (LOG_STD_MAX - LOG_STD_MIN)).view(1, -1))


def iql_losses(o: dict, d: dict, module) -> list[str]:
    return [
        f"{float(o['critic_loss']):.5f} / {float(d['q_loss']):.5f}",
        f"{float(o['value_loss']):.5f} / {float(d['v_loss']):.5f}",
        f"{float(o['actor_loss']):.5f} / {float(d['actor_loss']):.5f}",
    ]


# ---------------------------------------------------------------------------------- CQL
def as_d3rlpy_cql(module) -> None:
    """Switch this CQL instance to d3rlpy's temperature step and log-std clamp (see the module doc).
    Call before training starts: the temperature gets its own optimiser, stepped inside the actor's loss."""
    module.actor.log_std_min = D3RLPY_CQL_LOG_STD_MIN
    module.update_order = tuple(n for n in module.update_order if n != "alpha")
    temp_opt = adam([module.log_alpha], lr=float(module.hp.alpha_lr))

    def actor_loss_temp_first(batch, scratch):
        pi = module.actor(batch.observations)
        temp_opt.zero_grad(set_to_none=True)
        (-(module.log_alpha.exp() * (pi.log_prob.detach() + module.target_entropy)).mean()).backward()
        temp_opt.step()
        q = module.critic_q_for_actor(batch.observations, pi.action).min(dim=0).values
        return LS.LossOut(LS.sac_actor_loss(q, pi.log_prob, module.alpha), {"alpha": module.alpha})

    module.actor_loss = actor_loss_temp_first


def cql_pairs(module, impl) -> dict[str, list]:
    M, A = impl.modules, module.act_dim
    return {
        "critic": critic_pairs(M.q_funcs, module.critic),
        "target": critic_pairs(M.targ_q_funcs, module.critic_target),
        "actor": mlp_pairs(
            M.policy._encoder, [(M.policy._mu, (0, A)), (M.policy._logstd, (A, 2 * A))], module.actor.trunk
        ),
    }


def d3rlpy_param(p) -> torch.Tensor:
    """The tensor inside one of d3rlpy's ``Parameter`` modules (its ``get_parameter``)."""
    from d3rlpy.models.torch import get_parameter

    return get_parameter(p)


def copy_cql_extras(module, impl, as_is: bool) -> None:
    """The entropy temperature (both log 1 = 0 by default; copied so the check does not depend on it)."""
    with torch.no_grad():
        d3rlpy_param(impl.modules.log_temp).copy_(module.log_alpha.view(1, 1))


def cql_losses(o: dict, d: dict, module) -> list[str]:
    shift = float(module.hp.cql_alpha) * 10.0 * int(module.hp.n_critics)  # d3rlpy's alpha_threshold (10) term
    return [
        f"{float(o['critic_loss']):.4f} / {float(d['critic_loss']) + shift:.4f}",
        f"{float(o['actor_loss']):.5f} / {float(d['actor_loss']):.5f}",
        f"{float(module.alpha):.6f} / {float(d['temp']):.6f}",
    ]


# ---------------------------------------------------------------------------------- TD3+BC
def td3bc_pairs(module, impl) -> dict[str, list]:
    M, A = impl.modules, module.act_dim
    return {
        "critic": critic_pairs(M.q_funcs, module.critic),
        "target": critic_pairs(M.targ_q_funcs, module.critic_target),
        "actor": mlp_pairs(M.policy._encoder, [(M.policy._fc, (0, A))], module.actor.net),
        "actor target": mlp_pairs(M.targ_policy._encoder, [(M.targ_policy._fc, (0, A))], module.actor_target.net),
    }


def td3bc_losses(o: dict, d: dict, module) -> list[str]:
    actor = f"{float(o['actor_loss']):.5f} / {float(d['actor_loss']):.5f}" if "actor_loss" in d else "(not this update)"
    return [f"{float(o['critic_loss']):.5f} / {float(d['critic_loss']):.5f}", actor]


class SharedNoise:
    """One source for the random draws of both libraries' CQL updates.

    Per update it draws Gaussian noise for the K policy samples at s and at s' (``[K, B, A]``
    each), K uniform actions per state (``[B, K, A]``) and the actor's sample (``[B, A]``), then
    serves them to whichever library is updating, in the shapes and order that library draws
    them: d3rlpy samples s and s' separately, o2o once over ``[s; s']``. While serving, torch's
    Gaussian sampler (``Normal.rsample``) and ``Tensor.uniform_`` take their numbers from the
    queue; a draw of another shape, or one too many or too few, is an error.
    """

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)
        self.normal: list[torch.Tensor] | None = None
        self.uniform: list[torch.Tensor] | None = None
        self._std_normal = torch.distributions.normal._standard_normal
        self._uniform_ = torch.Tensor.uniform_
        self._randn, self._randn_like = torch.randn, torch.randn_like
        noise = self

        def std_normal(shape, dtype=None, device=None):
            if noise.normal is None:
                return noise._std_normal(shape, dtype=dtype, device=device)
            return noise._pop(noise.normal, tuple(shape), "Gaussian").to(dtype=dtype, device=device)

        def randn(*size, **kw):
            if noise.normal is None or kw.get("generator") is not None:
                return noise._randn(*size, **kw)
            shape = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else tuple(size)
            return noise._pop(noise.normal, shape, "Gaussian").to(
                dtype=kw.get("dtype") or torch.float32, device=kw.get("device")
            )

        def randn_like(t, **kw):
            if noise.normal is None:
                return noise._randn_like(t, **kw)
            return noise._pop(noise.normal, tuple(t.shape), "Gaussian").to(
                dtype=kw.get("dtype") or t.dtype, device=t.device
            )

        def uniform_(t, a=0.0, b=1.0, *, generator=None):
            if noise.uniform is None:
                return noise._uniform_(t, a, b, generator=generator)
            if (a, b) != (-1.0, 1.0):
                raise RuntimeError(f"lockstep: a uniform draw over [{a}, {b}], expected [-1, 1]")
            src = noise._pop(noise.uniform, None, "uniform")
            if src.numel() != t.numel():
                raise RuntimeError(f"lockstep: a uniform draw of shape {tuple(t.shape)}, expected {src.numel()} values")
            with torch.no_grad():
                return t.copy_(src.reshape(t.shape))

        self._patches = (std_normal, uniform_, randn, randn_like)

    @staticmethod
    def _pop(queue: list, shape, kind: str) -> torch.Tensor:
        if not queue:
            raise RuntimeError(
                f"lockstep: an unexpected extra {kind} draw{'' if shape is None else f' of shape {shape}'}"
            )
        t = queue.pop(0)
        if shape is not None and tuple(t.shape) != shape:
            raise RuntimeError(
                f"lockstep: a {kind} draw of shape {shape}, expected {tuple(t.shape)}: the draws changed"
            )
        return t

    def draw(self, batch: int, k: int, act_dim: int) -> dict[str, torch.Tensor]:
        g = self.gen
        return {
            "s": torch.randn(k, batch, act_dim, generator=g),
            "next": torch.randn(k, batch, act_dim, generator=g),
            "uniform": torch.rand(batch, k, act_dim, generator=g) * 2.0 - 1.0,
            "actor": torch.randn(batch, act_dim, generator=g),
            "target": torch.randn(batch, act_dim, generator=g),
        }

    @contextmanager
    def serving(self, normal: list[torch.Tensor], uniform: list[torch.Tensor]):
        (torch.distributions.normal._standard_normal, torch.Tensor.uniform_, torch.randn, torch.randn_like) = (
            self._patches
        )
        self.normal, self.uniform = list(normal), list(uniform)
        try:
            yield
            if self.normal or self.uniform:
                raise RuntimeError(
                    f"lockstep: {len(self.normal)} Gaussian and {len(self.uniform)} uniform draws "
                    "served but never taken: the update draws less than expected"
                )
        finally:
            self.normal = self.uniform = None
            (torch.distributions.normal._standard_normal, torch.Tensor.uniform_, torch.randn, torch.randn_like) = (
                self._std_normal,
                self._uniform_,
                self._randn,
                self._randn_like,
            )


# ---------------------------------------------------------------------------------- both
def cql_draws(e: dict) -> tuple[tuple[list, list], tuple[list, list]]:
    """(Gaussian, uniform) queues for d3rlpy's CQL update (pi(s), pi(s'), actor) and o2o's ([s; s'], actor)."""
    return ([e["s"], e["next"], e["actor"]], [e["uniform"]]), (
        [torch.cat([e["s"], e["next"]], dim=1), e["actor"]],
        [e["uniform"]],
    )


def td3bc_draws(e: dict) -> tuple[tuple[list, list], tuple[list, list]]:
    """Both libraries draw one Gaussian per update: the target policy's smoothing noise."""
    return ([e["target"]], []), ([e["target"]], [])


def no_switch(module) -> None:
    """TD3+BC: o2o and d3rlpy make the same choices (nothing to switch)."""


SPECS = {
    "iql": {
        "switch": as_d3rlpy_iql,
        "pairs": iql_pairs,
        "extras": copy_iql_extras,
        "losses": iql_losses,
        "loss_names": ["critic loss", "value loss", "actor loss"],
        "draws": None,
        "overrides": ["algo.tau=0.005"],  # d3rlpy's (and the paper's) target rate; o2o's default is 0.1
    },
    "cql": {
        "switch": as_d3rlpy_cql,
        "pairs": cql_pairs,
        "extras": copy_cql_extras,
        "losses": cql_losses,
        "loss_names": ["critic loss (incl. regulariser)", "actor loss", "temperature"],
        "draws": cql_draws,
    },
    "td3bc": {
        "switch": no_switch,
        "pairs": td3bc_pairs,
        "extras": lambda *a: None,
        "losses": td3bc_losses,
        "loss_names": ["critic loss", "actor loss"],
        "draws": td3bc_draws,
    },
}


def copy_weights(pairs: dict[str, list]) -> None:
    """o2o's initial weights into d3rlpy's modules."""
    with torch.no_grad():
        for layers in pairs.values():
            for d, w, b in layers:
                d.weight.copy_(w)
                d.bias.copy_(b)


def rel_diff(layers: list) -> float:
    """max over the layers' weights and biases of max|d3rlpy - o2o| / max|o2o|."""
    return max(
        float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
        for d, w, bias in layers
        for a, b in ((d.weight, w), (d.bias, bias))
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--algo", choices=sorted(SPECS), default="iql")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--hidden", default="64,64")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--as-is", action="store_true", help="keep o2o's own choices (no switches)")
    args = ap.parse_args(argv)
    spec = SPECS[args.algo]
    d3rlpy = import_d3rlpy()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="o2o-lockstep-") as tmp:
        work = Path(tmp)
        path = make_dataset(work / "reacher.zarr", ["env=reacher"], [("scripted", 10), ("random", 30)])
        cfg = load_config(
            "pretrain",
            [
                "env=reacher",
                f"algo={args.algo}",
                f"algo.hidden=[{args.hidden}]",
                f"dataset.path={path}",
                f"trainer.max_steps={args.steps}",
                f"trainer.seed={args.seed}",
                "eval.enabled=false",
                "trainer.progress=false",
                "trainer.accelerator=cpu",
                f"run_dir={work / 'run'}",
                *spec.get("overrides", []),
            ],
        )
        L.seed_everything(args.seed, verbose=False)
        with EpisodeStore.open(path, mode="r") as store:
            module, _ = build_module(cfg, store, select_episodes(store, cfg.data))
            space = store.schema.action_space
        if not args.as_is:
            spec["switch"](module)
        dcfg = d3rlpy_config(d3rlpy, args.algo, args.steps, space, hidden=[int(h) for h in args.hidden.split(",")])
        dcfg.observation_scaler = dcfg.action_scaler = None  # o2o's batches come normalised
        agent = dcfg.create(device=False)
        agent.create_impl((module.obs_dim,), module.act_dim)
        pairs = spec["pairs"](module, agent.impl)
        copy_weights(pairs)
        spec["extras"](module, agent.impl, args.as_is)
        from d3rlpy.torch_utility import TorchMiniBatch

        noise = SharedNoise(args.seed) if spec["draws"] else None
        rows, worst_early = [], 0.0
        update = module.update

        def both(batch):
            n = len(batch)
            col = lambda t: t.view(-1, 1).clone()  # noqa: E731
            tb = TorchMiniBatch(
                observations=batch.observations.clone(),
                actions=batch.actions.clone(),
                rewards=col(batch.rewards),
                next_observations=batch.next_observations.clone(),
                next_actions=torch.zeros_like(batch.actions),
                returns_to_go=torch.zeros(n, 1),
                terminals=col(batch.terminals),
                intervals=torch.ones(n, 1),
                device="cpu:0",
            )
            if noise is None:
                d = agent.impl.update(tb, module.update_count)
                o = update(batch)
            else:
                e = noise.draw(n, int(getattr(module.hp, "n_actions", 1)), module.act_dim)
                for_d3rlpy, for_o2o = spec["draws"](e)
                with noise.serving(*for_d3rlpy):
                    d = agent.impl.update(tb, module.update_count)
                with noise.serving(*for_o2o):
                    o = update(batch)
            k = module.update_count
            if k in REPORT_AT or k == args.steps:
                diffs = {name: rel_diff(p) for name, p in pairs.items()}
                nonlocal worst_early
                if k <= 30:
                    worst_early = max(worst_early, *diffs.values())
                rows.append([str(k), *(f"{v:.1e}" for v in diffs.values()), *spec["losses"](o, d, module)])
            return o

        module.update = both
        with quiet_fit():
            trainer = make_trainer(
                TrainerSpec.from_config(cfg.trainer, log_every=int(cfg.algo.get("log_every", 50))), work / "run", []
            )
            trainer.fit(module, train_dataloaders=step_loader())
    mode = "o2o as is" if args.as_is else "o2o switched to d3rlpy's documented choices"
    same = "same initial weights, same batches" + (", same sampled noise" if spec["draws"] else "")
    print_table(
        f"{args.algo.upper()} lockstep, o2o vs d3rlpy {d3rlpy.__version__} ({mode}): {same}; "
        "relative parameter difference per network, losses o2o / d3rlpy",
        rows,
        ["update", *pairs, *spec["loss_names"]],
    )
    ok = worst_early < TOLERANCE
    print(
        f"\nworst relative difference in updates 1-30: {worst_early:.1e} (tolerance {TOLERANCE:.0e}): "
        f"{verdict(ok)} ({'within float rounding' if args.as_is and ok else 'the same computation' if ok else 'the updates differ'})"
    )
    return 0 if ok or args.as_is else 1


if __name__ == "__main__":
    sys.exit(main())
