"""CUDA graphs on the fast path (``trainer.cuda_graphs``): one whole update captured once, then replayed.

An update is hundreds of small kernels; launched one by one from Python the GPU mostly waits for the
host. Captured as one CUDA graph — sampling the batch from the device-resident replay, every loss
and backward pass, every optimiser step, the target updates, the metrics — it is relaunched with one
call per update and no host synchronisation (the recipe of PyTorch's "whole-network capture").

What that needs from an update, and where it is refused (:func:`graph_refusal`, said by name): the
module on a CUDA device; the same kernels every update — no entry updated only every few updates
(TD3+BC's delayed actor), no model rollouts every few updates (COMBO), no learning-rate schedule
stepped on the host other than a cosine (IQL's, computed inside the graph: :class:`DeviceCosine`); a
replay of fixed size (pretraining: finetuning's online replay grows between updates); optimisers that
can be captured (Adam with ``capturable=True``, set here before their first step) and a torch that
can capture the replay's own random generator.

The first Lightning steps of a fit (3 updates at least) run eagerly on a side stream (the warm-up that
initialises optimiser states and cuBLAS workspaces, as the recipe asks); the graph is captured after
it. Capturing records kernels without running them, so the update count is left as it was.

Not yet measured on a GPU: no GPU was lent to the session that wrote this, so ``trainer.cuda_graphs``
is off by default; ``tests/policies/test_updates_per_step.py`` holds the CUDA-only checks (graph
replays equal eager updates) that must pass before it is turned on by default.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from o2o.policies.algos.base import OfflineAlgorithm


WARM_UP_UPDATES = 3  # eager updates on a side stream before capturing (PyTorch's recipe uses a few)


def graph_refusal(module: "OfflineAlgorithm") -> str | None:
    """Why ``module``'s update cannot be captured as one CUDA graph, or None."""
    from o2o.policies.data import TensorReplay

    name = type(module).__name__
    if module.device.type != "cuda":
        return f"the module is on {module.device}, not a CUDA device"
    if not module.fast_updates:
        return "the fast path is off (trainer.fast_path=false, or refused for this fit)"
    if module.update_every:
        return f"{name} updates {sorted(module.update_every)} only every few updates"
    if not getattr(module, "graph_safe", True):
        return f"{name}: {module.graph_safe_reason}"
    if type(module.replay) is not TensorReplay:
        return "the replay changes size between updates (online finetuning)"
    for sched in schedulers(module):
        if not isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
            return f"{type(sched).__name__} is stepped on the host every update (a cosine schedule is captured)"
    if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        return f"torch {torch.__version__} cannot capture the replay's own random generator"
    return None


def schedulers(module: "OfflineAlgorithm") -> list[Any]:
    s: Any = module.lr_schedulers()
    return [] if s is None else (s if isinstance(s, list) else [s])


class DeviceCosine:
    """A ``CosineAnnealingLR`` computed inside the graph: its groups' learning rates become device tensors,
    set before each update from a device step count by the closed form, ``eta_min + (base - eta_min)(1 +
    cos(pi t / T_max)) / 2`` (what the scheduler's own steps give, to float rounding); the host-side
    scheduler is moved on after the replays, so checkpoints record where it is."""

    def __init__(self, sched: torch.optim.lr_scheduler.CosineAnnealingLR, device: torch.device):
        self.sched = sched
        self.groups = sched.optimizer.param_groups
        for group in self.groups:
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        self.t = torch.tensor(float(sched.last_epoch), device=device)

    def value(self, base: float, t: Any) -> Any:
        s = self.sched
        return (
            s.eta_min
            + (base - s.eta_min)
            * (1 + (torch.cos(math.pi * t / s.T_max) if torch.is_tensor(t) else math.cos(math.pi * t / s.T_max)))
            / 2
        )

    def set_lr(self) -> None:
        """Captured before the update: this update's learning rates; the count moves on."""
        for group, base in zip(self.groups, self.sched.base_lrs):
            group["lr"].copy_(self.value(float(base), self.t))
        self.t += 1

    def advance(self, k: int) -> None:
        """After ``k`` replays: the host-side scheduler where the device's is."""
        s = self.sched
        s.last_epoch += k
        s._last_lr = [float(self.value(float(base), s.last_epoch)) for base in s.base_lrs]

    def release(self) -> None:
        """Back to host floats (the optimiser outlives the graph): one read at the end of the fit."""
        for group in self.groups:
            if torch.is_tensor(group["lr"]):
                group["lr"] = float(group["lr"])


def raw_optimizers(module: "OfflineAlgorithm") -> list[torch.optim.Optimizer]:
    opts: Any = module.optimizers()
    opts = opts if isinstance(opts, list) else [opts]
    return [getattr(o, "optimizer", o) for o in opts]


def make_capturable(optimizers: list[torch.optim.Optimizer]) -> None:
    """Optimisers that a graph can hold: ``capturable`` on, their step counts on the parameters' device
    (a resumed optimiser's counts come from the checkpoint on the host)."""
    for opt in optimizers:
        for group in opt.param_groups:
            if "capturable" not in group:
                raise ValueError(f"{type(opt).__name__} cannot be captured in a CUDA graph (no capturable option)")
            group["capturable"] = True
            for p in group["params"]:
                state = opt.state.get(p)
                if state and "step" in state and torch.is_tensor(state["step"]):
                    state["step"] = state["step"].to(p.device)


class UpdateGraph:
    """One update of ``module`` captured as a CUDA graph: :meth:`replay` runs it again (one update)."""

    def __init__(self, module: "OfflineAlgorithm"):
        self.module = module
        self.graph: Any = None
        self.metrics: dict[str, torch.Tensor] = {}
        self.warm = 0  # eager updates run so far (the graph is captured after WARM_UP_UPDATES)
        self.cosines: list[DeviceCosine] = []

    def capture(self) -> None:
        """Record one update (after eager updates have warmed it up); the module's weights and count are
        left as they were: capturing runs nothing."""
        m = self.module
        count, counted = m._update_count, m._fast_counted
        self.cosines = [DeviceCosine(s, m.device) for s in schedulers(m)]
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(m.replay.generator)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        m.capturing = True  # update() leaves its schedulers to the graph (DeviceCosine)
        try:
            with torch.cuda.graph(graph, stream=stream):
                for cosine in self.cosines:
                    cosine.set_lr()
                self.metrics = m.update(m.replay.sample(int(m.hp.batch_size)))
        finally:
            m.capturing = False
        torch.cuda.current_stream().wait_stream(stream)
        m._update_count, m._fast_counted = count, counted  # capture ran update()'s Python once; no update happened
        self.graph = graph

    def run(self, k: int) -> dict[str, torch.Tensor]:
        """``k`` updates: the first time eagerly on a side stream (the warm-up), then captured; after
        that ``k`` replays. The last update's metrics (device tensors, read only when logged)."""
        if self.graph is None:
            metrics = warm_up(self.module, k)
            self.warm += k
            if self.warm >= WARM_UP_UPDATES:
                self.capture()
            return {name: v.detach() for name, v in metrics.items()}
        for _ in range(k):
            metrics = self.replay()
        self.module._fast_counted += k  # each replay stepped the counted optimiser once
        for cosine in self.cosines:
            cosine.advance(k)
        return metrics

    def release(self) -> None:
        """The end of the fit: learning rates back to host floats, the graph freed."""
        for cosine in self.cosines:
            cosine.release()
        self.graph = None

    def replay(self) -> dict[str, torch.Tensor]:
        """One update: the graph relaunched (the device's update count moves inside it)."""
        self.graph.replay()
        self.module._update_count += 1
        return self.metrics


def warm_up(module: "OfflineAlgorithm", updates: int) -> dict[str, torch.Tensor]:
    """``updates`` eager updates on a side stream (what capturing needs first), their last metrics."""
    make_capturable(raw_optimizers(module))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    metrics: dict[str, torch.Tensor] = {}
    with torch.cuda.stream(stream):
        for _ in range(updates):
            metrics = module.update(module.replay.sample(int(module.hp.batch_size)))
    torch.cuda.current_stream().wait_stream(stream)
    return metrics
