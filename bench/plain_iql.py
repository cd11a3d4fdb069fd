"""A plain PyTorch IQL training loop (no framework): the peer of the GPU throughput benchmark.

The GPU benchmark compares o2o's Lightning-based training (updates/s) with this loop: the
same IQL update (Kostrikov, Nair & Levine 2021, as in CORL's ``algorithms/offline/iql.py``)
with nothing around it. Twin Q networks with Polyak target copies, a value network V and a
Gaussian actor with a state-independent log-std, all 256x256 ReLU MLPs trained by Adam. The
replay is moved to the device once and each update samples its batch there, so an update
never touches the host: no ``.item()``, no copies back; the three losses go into a
preallocated device tensor, read after the timed window.

Two variants:

* **eager**: ``update()`` called in a Python loop (runs on any device, CPU included);
* **CUDA graph**: the whole update (sampling, three forward/backward passes, three Adam steps
  with ``capturable=True``, the target update) captured once as one CUDA graph and replayed,
  which removes the per-kernel launch cost of Python and the dispatcher. This variant needs a
  CUDA device; asking for it elsewhere raises ``ValueError``.

    python bench/plain_iql.py                        # eager, cuda if available, 20,000 random transitions
    python bench/plain_iql.py --cuda-graph           # the captured variant (CUDA only)
    python bench/plain_iql.py --data transitions.npz # observations, actions, rewards, next_observations, terminals
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EXPECTILE = 0.7  # tau of V's expectile regression
BETA = 3.0  # inverse temperature of the advantage weights
MAX_WEIGHT = 100.0  # clip of exp(beta * A)
GAMMA = 0.99
TAU = 0.005  # Polyak rate of the target Q networks
LR = 3e-4
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # CORL's clamp of the actor's log-std
LOSS_NAMES = ("value_loss", "actor_loss", "q_loss")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out)
    )


class GaussianActor(nn.Module):
    """``N(tanh(mlp(s)), exp(log_std))`` with a state-independent log-std, as CORL's ``GaussianPolicy``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.net = _mlp(obs_dim, hidden, act_dim)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Log-density of ``act`` summed over action dimensions. Written out rather than through
        ``torch.distributions.Normal``, whose argument validation synchronises with the host."""
        mean = torch.tanh(self.net(obs))
        log_std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        z = (act - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)


def _make_update(
    data: tuple[torch.Tensor, ...],
    nets: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    metrics: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator | None,
    set_to_none: bool,
) -> Callable[[], None]:
    """One IQL update as a closure over device-resident state, with no host synchronisation.

    Order: value (expectile of min target Q - V), actor (advantage-weighted negative log-prob,
    weights from the same advantage), Q (TD target ``r + gamma (1 - done) V(s')``), then the
    Polyak update of the target Q networks. ``generator=None`` samples from the device's
    default generator.
    """
    obs, act, rew, next_obs, term = data
    n = obs.shape[0]
    device = obs.device
    q1, q2, q1_t, q2_t = nets["q1"], nets["q2"], nets["q1_target"], nets["q2_target"]
    value, actor = nets["value"], nets["actor"]
    v_opt, a_opt, q_opt = optimizers["value"], optimizers["actor"], optimizers["q"]
    target_params = [*q1_t.parameters(), *q2_t.parameters()]
    online_params = [*q1.parameters(), *q2.parameters()]
    sample_kw = {"generator": generator} if generator is not None else {}

    def update() -> None:
        idx = torch.randint(0, n, (batch_size,), device=device, **sample_kw)
        o, a = obs.index_select(0, idx), act.index_select(0, idx)
        r, d, o2 = rew.index_select(0, idx), term.index_select(0, idx), next_obs.index_select(0, idx)
        sa = torch.cat([o, a], dim=1)
        with torch.no_grad():
            target_q = torch.min(q1_t(sa), q2_t(sa)).squeeze(-1)
            next_v = value(o2).squeeze(-1)

        # value: V regresses to an upper expectile of the target critics' Q on dataset actions
        adv = target_q - value(o).squeeze(-1)
        v_loss = (torch.abs(EXPECTILE - (adv < 0).to(adv.dtype)) * adv.pow(2)).mean()
        v_opt.zero_grad(set_to_none=set_to_none)
        v_loss.backward()
        v_opt.step()

        # actor: advantage-weighted likelihood of dataset actions
        with torch.no_grad():
            weights = torch.exp(BETA * adv.detach()).clamp(max=MAX_WEIGHT)
        actor_loss = -(weights * actor.log_prob(o, a)).mean()
        a_opt.zero_grad(set_to_none=set_to_none)
        actor_loss.backward()
        a_opt.step()

        # critics: regress to r + gamma (1 - done) V(s')
        with torch.no_grad():
            target = r + GAMMA * (1.0 - d) * next_v
        q_loss = 0.5 * (F.mse_loss(q1(sa).squeeze(-1), target) + F.mse_loss(q2(sa).squeeze(-1), target))
        q_opt.zero_grad(set_to_none=set_to_none)
        q_loss.backward()
        q_opt.step()

        with torch.no_grad():
            torch._foreach_lerp_(target_params, online_params, TAU)  # target += tau * (online - target)
            metrics.copy_(torch.stack([v_loss.detach(), actor_loss.detach(), q_loss.detach()]))

    return update


def _capture(update: Callable[[], None], optimizers: list[torch.optim.Optimizer], generator: torch.Generator | None):
    """Capture one update as a CUDA graph (the documented whole-network capture).

    Warm-up on a side stream (lazy state: Adam's moments and step counters, cuBLAS handles),
    static ``.grad`` tensors (zeroed in place, never set to None), the sampling generator
    registered with the graph so each replay draws fresh indices. Warm-up and capture use the
    same side stream, as ``torch.cuda.make_graphed_callables`` does.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            update()
    torch.cuda.current_stream().wait_stream(side)
    for opt in optimizers:
        opt.zero_grad(set_to_none=False)
    graph = torch.cuda.CUDAGraph()
    if generator is not None:
        graph.register_generator_state(generator)
    with torch.cuda.graph(graph, stream=side):
        update()
    return graph


def measure(
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    next_observations: np.ndarray,
    terminals: np.ndarray,
    *,
    device: str,
    steps: int,
    warmup: int,
    cuda_graph: bool,
    batch_size: int = 256,
    hidden: int = 256,
    seed: int = 0,
) -> dict:
    """Train plain IQL on the given transitions and time ``steps`` updates after ``warmup`` untimed ones.

    Returns ``updates_per_s``, ``seconds`` (the timed window), ``steps``, ``device`` (its name),
    ``cuda_graph`` and ``losses`` (the last update's value, actor and Q losses, read after the
    clock stopped).
    """
    dev = torch.device(device)
    is_cuda = dev.type == "cuda"
    if cuda_graph and not is_cuda:
        raise ValueError(f"CUDA graphs need a CUDA device, got device={device!r}")
    n = len(observations)
    if not all(len(x) == n for x in (actions, rewards, next_observations, terminals)) or n == 0:
        raise ValueError(
            "observations, actions, rewards, next_observations and terminals must have the same length > 0"
        )
    if np.ndim(rewards) != 1 or np.ndim(terminals) != 1:
        raise ValueError("rewards and terminals must be 1-D")
    if is_cuda and dev.index is not None:
        torch.cuda.set_device(dev)

    def to_dev(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32)).to(dev)

    data = tuple(to_dev(x) for x in (observations, actions, rewards, next_observations, terminals))
    obs_dim, act_dim = data[0].shape[1], data[1].shape[1]

    torch.manual_seed(seed)  # networks initialised on the CPU: the same weights on every device
    q1, q2 = _mlp(obs_dim + act_dim, hidden, 1), _mlp(obs_dim + act_dim, hidden, 1)
    nets: dict[str, nn.Module] = {"q1": q1, "q2": q2, "value": _mlp(obs_dim, hidden, 1)}
    nets["actor"] = GaussianActor(obs_dim, act_dim, hidden)
    nets["q1_target"] = copy.deepcopy(q1).requires_grad_(False)
    nets["q2_target"] = copy.deepcopy(q2).requires_grad_(False)
    for net in nets.values():
        net.to(dev)
    adam = {"lr": LR, "capturable": cuda_graph}  # capturable: Adam's step counters live on the device
    optimizers = {
        "value": torch.optim.Adam(nets["value"].parameters(), **adam),
        "actor": torch.optim.Adam(nets["actor"].parameters(), **adam),
        "q": torch.optim.Adam([*q1.parameters(), *q2.parameters()], **adam),
    }
    metrics = torch.zeros(len(LOSS_NAMES), device=dev)

    generator: torch.Generator | None = torch.Generator(device=dev)
    generator.manual_seed(seed)
    if cuda_graph and not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        # A torch without CUDAGraph.register_generator_state cannot replay a private generator:
        # sample from the default CUDA generator instead, which every capture registers itself.
        generator = None
        torch.cuda.manual_seed(seed)
    update = _make_update(
        data, nets, optimizers, metrics, batch_size=batch_size, generator=generator, set_to_none=not cuda_graph
    )

    step: Callable[[], None] = update
    if cuda_graph:
        graph = _capture(update, list(optimizers.values()), generator)
        step = graph.replay

    for _ in range(warmup):
        step()
    if is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    losses = dict(zip(LOSS_NAMES, metrics.tolist()))
    return {
        "updates_per_s": steps / seconds if seconds > 0 else float("inf"),
        "seconds": seconds,
        "steps": steps,
        "device": torch.cuda.get_device_name(dev) if is_cuda else "cpu",
        "cuda_graph": cuda_graph,
        "losses": losses,
    }


def _random_transitions(n: int, obs_dim: int, act_dim: int, seed: int) -> tuple[np.ndarray, ...]:
    """Random transitions (HalfCheetah-sized by default): throughput does not depend on the values."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return (
        rng.standard_normal((n, obs_dim)).astype(f32),
        rng.uniform(-1.0, 1.0, (n, act_dim)).astype(f32),
        rng.standard_normal(n).astype(f32),
        rng.standard_normal((n, obs_dim)).astype(f32),
        (rng.random(n) < 0.01).astype(f32),
    )


def main() -> None:
    """Smoke entry point: one measurement, one line on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--cuda-graph", action="store_true", help="capture the update as one CUDA graph (CUDA only)")
    parser.add_argument("--data", help=".npz with observations, actions, rewards, next_observations, terminals")
    parser.add_argument("--n", type=int, default=20000, help="random transitions when no --data is given")
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.data:
        with np.load(args.data) as z:
            arrays = tuple(z[k] for k in ("observations", "actions", "rewards", "next_observations", "terminals"))
    else:
        arrays = _random_transitions(args.n, args.obs_dim, args.act_dim, args.seed)
    r = measure(
        *arrays,
        device=args.device,
        steps=args.steps,
        warmup=args.warmup,
        cuda_graph=args.cuda_graph,
        batch_size=args.batch_size,
        hidden=args.hidden,
        seed=args.seed,
    )
    losses = " ".join(f"{k}={v:.4g}" for k, v in r["losses"].items())
    variant = "cuda-graph" if r["cuda_graph"] else "eager"
    print(
        f"plain IQL {variant} on {r['device']}: {r['updates_per_s']:.1f} updates/s "
        f"({r['steps']} updates in {r['seconds']:.3f} s, batch {args.batch_size}); {losses}"
    )


if __name__ == "__main__":
    main()
