"""CUDA graphs on the fast path (``trainer.cuda_graphs``): one whole update captured once, then replayed.

An update is hundreds of small kernels; launched one by one from Python the GPU mostly waits for the
host. Captured as one CUDA graph — sampling the batch from the device-resident replay, every loss
and backward pass, every optimiser step, the target updates, the metrics — it is relaunched with one
call per update and no host synchronisation (the recipe of PyTorch's "whole-network capture").

What that needs from an update, and where it is refused (:func:`graph_refusal`, said by name): the
module on a CUDA device; the same kernels every update — no entry updated only every few updates
(TD3+BC's delayed actor), no model rollouts every few updates (COMBO), no learning-rate schedule
stepped on the host (IQL's default cosine: ``algo.actor_lr_schedule=constant`` is capturable); a
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
    if module.lr_schedulers():
        return "a learning-rate schedule is stepped on the host every update (IQL: algo.actor_lr_schedule=constant)"
    if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        return f"torch {torch.__version__} cannot capture the replay's own random generator"
    return None


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

    def capture(self) -> None:
        """Record one update (after eager updates have warmed it up); the module's weights and count are
        left as they were: capturing runs nothing."""
        m = self.module
        count, counted = m._update_count, m._fast_counted
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(m.replay.generator)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.graph(graph, stream=stream):
            self.metrics = m.update(m.replay.sample(int(m.hp.batch_size)))
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
        return metrics

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
