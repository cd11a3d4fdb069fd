"""Lightning callbacks of training: periodic evaluation in simulation and throughput.

The evaluation logs ``eval/return_mean``, ``eval/success_rate``, ``eval/normalized_score``
and the value diagnostic "how well it thinks it does vs how well it does":
``eval/q_start_mean`` (the critic's Q of the policy's action on each episode's start
state) next to ``eval/mc_discounted_return_mean`` (the discounted return it achieved from
there). A Q far above the achieved return is the signature of offline overestimation.

Each evaluation is also recorded on the module (:meth:`OfflineAlgorithm.record_evaluation`):
a checkpoint written at the same step (``ModelCheckpoint`` runs after this callback) carries
it in ``checkpoint["o2o"]["evaluation"]``, which export compares the exported policy with.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import lightning as L
import numpy as np
import torch

from o2o.policies.algos.base import updates_to_multiple
from o2o.policies.evaluation import Evaluator


class SimEvaluation(L.Callback):
    """Every ``every`` updates (and after the last), run the deterministic policy in simulation."""

    def __init__(self, evaluator: Evaluator, every: int, references: Mapping[str, float] | None = None):
        self.evaluator = evaluator
        self.every = int(every)
        self.references = dict(references or {})
        self.history: list[dict[str, float]] = []
        self._last_eval_step = -1

    def evaluate(self, module, progress: Callable[[int], None] | None = None) -> dict[str, float]:
        """The evaluator's summary of ``module``'s deterministic policy, with the value diagnostic;
        ``progress(episodes done)`` after each episode."""
        was_training = module.training
        module.eval()
        try:
            res = self.evaluator(lambda obs: module.act(obs, deterministic=True), progress=progress)
            metrics = res.summary(self.references)
            with torch.no_grad():
                o = module.normalize_obs(torch.as_tensor(res.start_observations, device=module.device))
                a = module.actor.act(o)
                q = module.q_value(o, a)
            if q is not None:
                metrics["q_start_mean"] = float(q.mean())
                metrics["q_minus_mc"] = metrics["q_start_mean"] - metrics["mc_discounted_return_mean"]
            # The weights just judged remember it: a checkpoint saved before they change carries it.
            record = getattr(module, "record_evaluation", None)
            if record is not None:
                record(metrics, episodes=len(res.returns), seed=self.evaluator.seed)
        finally:
            module.train(was_training)
        return metrics

    def updates_to_boundary(self, trainer, pl_module) -> int | None:
        """Updates until the next evaluation (a step of several updates ends there)."""
        return updates_to_multiple(pl_module.update_count, self.every)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = pl_module.update_count
        if self.every > 0 and step % self.every == 0 and step != self._last_eval_step:
            self._run(trainer, pl_module, step)

    def on_train_end(self, trainer, pl_module) -> None:
        step = pl_module.update_count
        if step != self._last_eval_step:
            # Recorded for the summary; too late for Lightning's logging and checkpoint hooks.
            metrics = self.evaluate(pl_module)
            self.history.append({"step": step, **metrics})
            self._last_eval_step = step

    def _run(self, trainer, pl_module, step: int) -> None:
        metrics = self.evaluate(pl_module)
        self.history.append({"step": step, **metrics})
        self._last_eval_step = step
        pl_module.log_dict(
            {f"eval/{k}": float(v) for k, v in metrics.items()},
            on_step=True,
            on_epoch=False,
            prog_bar=False,
            batch_size=1,
        )
        shown = {k: metrics[k] for k in ("return_mean", "success_rate", "q_start_mean") if k in metrics}
        line = ", ".join(f"{k} {v:.3f}" for k, v in shown.items())
        if "q_start_mean" in shown:  # the value diagnostic: what the critic expects vs what the policy got
            line += f" vs achieved (discounted) {metrics['mc_discounted_return_mean']:.3f}"
        pl_module.print(f"[eval @ {step} updates] {line}")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.evaluator.close()

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))


class UpdateRate(L.Callback):
    """Logs ``train/updates_per_s`` (to the progress bar too) every ``every`` updates."""

    def __init__(self, every: int = 50):
        self.every = int(every)
        self._t0: float | None = None
        self._n0 = 0
        self.rates: list[float] = []

    def updates_to_boundary(self, trainer, pl_module) -> int | None:
        return updates_to_multiple(pl_module.update_count, self.every)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = pl_module.update_count
        if self._t0 is None:
            self._t0, self._n0 = time.perf_counter(), n
            return
        if n % self.every == 0 and n > self._n0:
            now = time.perf_counter()
            rate = (n - self._n0) / max(now - self._t0, 1e-9)
            self.rates.append(rate)
            pl_module.log("train/updates_per_s", rate, prog_bar=True, on_step=True, on_epoch=False, batch_size=1)
            self._t0, self._n0 = now, n


class UpdateChunks(L.Callback):
    """``trainer.updates_per_step``: each Lightning step of the fit runs up to ``k`` updates
    (:func:`~o2o.policies.algos.base.updates_this_step` cuts a step where a callback, a checkpoint,
    the log or ``max_steps`` must see the weights), so Lightning's per-step work (hooks, logging,
    progress) is paid once per ``k`` updates. The module is told for the fit only."""

    def __init__(self, k: int):
        if int(k) < 1:
            raise ValueError(f"trainer.updates_per_step must be an integer >= 1, got {k!r}")
        self.k = int(k)

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.updates_per_step = self.k

    def teardown(self, trainer, pl_module, stage: str) -> None:
        pl_module.updates_per_step = 1


FAST_PATH_MODES = ("auto", "true", "false")


def fast_path_refusal(trainer) -> str | None:
    """Why the fast path cannot run in ``trainer``'s fit, or None: it steps the bare optimisers, which is
    what Lightning does for float32 and bf16-mixed on one process, not for a loss scaler (16-mixed) or a
    distributed strategy (whose backward hooks Lightning's manual_backward prepares)."""
    if int(trainer.world_size) > 1:
        return f"{trainer.world_size} processes (strategy {type(trainer.strategy).__name__})"
    precision = str(trainer.precision)
    if precision not in ("32-true", "32", "bf16-mixed", "bf16-true"):
        return f"precision {precision} (a loss scaler)"
    return None


class FastPath(L.Callback):
    """``trainer.fast_path``: ``auto``/``true`` run each update's optimiser steps on the bare torch
    optimisers (:meth:`~o2o.policies.algos.base.OfflineAlgorithm.step_optimizer`) — the same math without
    Lightning's per-optimiser-step hooks — where that is what Lightning would do (float32, bf16-mixed, one
    process); ``true`` says when it cannot; ``false`` keeps Lightning's optimiser wrapper. Set for the fit only."""

    def __init__(self, mode: str, cuda_graphs: bool = False):
        mode = str(mode).lower()
        if mode not in FAST_PATH_MODES:
            raise ValueError(f"trainer.fast_path must be one of {list(FAST_PATH_MODES)}, got {mode!r}")
        self.mode = mode
        self.cuda_graphs = bool(cuda_graphs)

    def on_fit_start(self, trainer, pl_module) -> None:
        refusal = fast_path_refusal(trainer) if self.mode != "false" else "trainer.fast_path=false"
        if refusal is not None and self.mode == "true":
            pl_module.print(f"trainer.fast_path=true: not used with {refusal}; Lightning's optimiser steps instead")
        pl_module.fast_updates = refusal is None
        if self.cuda_graphs:
            from o2o.policies.graphs import UpdateGraph, graph_refusal

            refused = graph_refusal(pl_module)
            if refused is None:
                pl_module.update_graph = UpdateGraph(pl_module)
            else:
                pl_module.print(f"trainer.cuda_graphs=true: not used: {refused}; eager updates instead")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        pl_module.fast_updates = False
        if pl_module.update_graph is not None:
            pl_module.update_graph.release()
        pl_module.update_graph = None


class TrainingProgress(L.Callback):
    """Reports training's progress to ``display`` (rank 0 only): ``display.update(updates, stats)``
    after every update, where the stats are the losses logged to the progress bar plus ``extra()``
    (e.g. env steps while finetuning), computed only when ``display`` asks; ``display.close()``
    when training ends or fails. ``display`` is any object with ``update`` and ``close``
    (``o2o.pipeline.progress.Progress``), built by ``make(initial_updates, total_updates)`` at the
    start of training."""

    def __init__(self, make: Callable[[int, int], Any], extra: Callable[[], Mapping[str, Any]] | None = None):
        self.make, self.extra = make, extra
        self.display = None

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.display = self.make(int(trainer.global_step), int(trainer.max_steps))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.display is not None:
            self.display.update(int(trainer.global_step), lambda: self.stats(trainer))

    def stats(self, trainer) -> dict[str, Any]:
        out: dict[str, Any] = {
            k.removeprefix("train/"): v for k, v in trainer.progress_bar_metrics.items() if k.endswith("_loss")
        }
        if self.extra is not None:
            out.update(self.extra())
        return out

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.display is not None:
            self.display.close()
            self.display = None


def best_from_history(history: list[dict[str, float]], metric: str) -> dict[str, float] | None:
    """The evaluation with the highest ``metric`` (first one on ties), or None."""
    rows = [h for h in history if metric in h and np.isfinite(h[metric])]
    return max(rows, key=lambda h: h[metric]) if rows else None
