"""Safety during online finetuning: periodic evaluation and rollback to the best weights.

The policy is evaluated before the first update (the pre-finetune level) and every
``every`` updates on the same seeds; the weights of the best evaluation are kept (in
memory, and in the resumable checkpoint), so the finetune stage can end on them rather than
on the last weights (``finetune.keep``). When the monitored metric stays more than the
rule's margin below the pre-finetune level for ``patience`` evaluations in a row, the
weights of the best evaluation so far (the starting weights included) are restored,
training stops, and the record says when, by how much and what was restored.

Two evaluations of a few episodes differ by chance: ten Lift episodes with a return spread of
50 give means that differ by 22 (one standard error of the difference) between identical
policies. With ``se`` the margin is at least that many standard errors of the difference
between the pre-finetune evaluation and the current one (from the returns' spread for a
``*_mean`` metric, pooled binomial for ``success_rate``), so the dip finetuning often starts
with is not mistaken for a collapse, and a real collapse still is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import lightning as L

from o2o.core.stats import mean_difference_se, pooled_rate_se, sample_std
from o2o.policies.algos.base import updates_to_multiple
from o2o.policies.callbacks import SimEvaluation


@dataclass(frozen=True)
class RollbackRule:
    """Roll back after ``patience`` consecutive evaluations with ``metric`` below the threshold:
    ``level - max(margin * |level|, se * SE)`` (``relative``; else ``margin`` in metric units),
    ``level`` the pre-finetune value and ``SE`` the standard error of the difference between the
    pre-finetune evaluation and the current one (:func:`difference_se`; 0 where unknown)."""

    metric: str = "return_mean"
    margin: float = 0.1
    patience: int = 2
    relative: bool = True
    se: float = 0.0

    def __post_init__(self):
        if float(self.margin) < 0:
            raise ValueError(f"finetune.rollback.margin must be >= 0, got {self.margin!r}")
        if int(self.patience) < 1:
            raise ValueError(f"finetune.rollback.patience must be >= 1 evaluation, got {self.patience!r}")
        if not float(self.se) >= 0:
            raise ValueError(f"finetune.rollback.se must be >= 0 standard errors, got {self.se!r}")

    def threshold(self, level: float, noise: float = 0.0) -> float:
        """The value below which an evaluation counts as worse; ``noise`` is the difference's standard error."""
        margin = float(self.margin) * (abs(level) if self.relative else 1.0)
        return level - max(margin, float(self.se) * float(noise))


def difference_se(before: dict[str, Any], after: dict[str, Any], metric: str) -> float:
    """Standard error of ``after[metric] - before[metric]`` for two evaluations' summaries: from the
    sample spreads (``<name>_std``, population form, and ``episodes``) for ``<name>_mean``, pooled
    binomial for ``success_rate``; 0.0 when the summaries do not say (then only the margin counts)."""
    try:
        n0, n1 = float(before["episodes"]), float(after["episodes"])
    except (KeyError, TypeError, ValueError):
        return 0.0
    if not (n0 >= 2 and n1 >= 2):
        return 0.0
    if metric == "success_rate":
        se = pooled_rate_se(float(before[metric]), n0, float(after[metric]), n1)
    elif metric.endswith("_mean"):
        std = f"{metric[:-5]}_std"
        # Evaluations report the population spread: as sample spreads.
        s0, s1 = sample_std(before.get(std), n0), sample_std(after.get(std), n1)
        if s0 is None or s1 is None:
            return 0.0
        se = mean_difference_se(s0, n0, s1, n1)
    else:
        return 0.0
    return se if math.isfinite(se) else 0.0


class FinetuneMonitor(L.Callback):
    """Evaluates the module before finetuning and every ``every`` updates; applies ``rule`` (None: never
    rolls back). ``curve`` holds every evaluation with ``step`` (env steps, from ``env_steps()``) and
    ``updates`` (finetuning updates); ``rollback`` describes a rollback, or is None."""

    def __init__(
        self,
        evaluation: SimEvaluation,
        every: int,
        rule: RollbackRule | None,
        metric: str = "return_mean",
        env_steps: Callable[[], int] = lambda: 0,
        log: Callable[[str], None] = print,
    ):
        self.evaluation, self.every, self.rule = evaluation, int(every), rule
        self.metric = rule.metric if rule is not None else str(metric)
        self.env_steps, self.say = env_steps, log  # not `log`: Lightning sets callback.log
        self.curve: list[dict[str, Any]] = []
        self.rollback: dict[str, Any] | None = None
        self.level: float | None = None  # the pre-finetune value of the metric
        self.best: dict[str, Any] | None = None  # the best evaluation so far
        self._best_state: dict | None = None
        self._start = 0
        self._below = 0

    def state_dict(self) -> dict[str, Any]:
        """What a resumed finetuning needs (saved in its Lightning checkpoint): the curve, the pre-finetune
        level, the best evaluation and its weights, the rollback count and record."""
        return {
            "curve": self.curve,
            "rollback": self.rollback,
            "level": self.level,
            "best": self.best,
            "best_state": self._best_state,
            "start": self._start,
            "below": self._below,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curve, self.rollback, self.level = list(state["curve"]), state["rollback"], state["level"]
        self.best, self._best_state = state["best"], state["best_state"]
        self._start, self._below = int(state["start"]), int(state["below"])

    def on_train_start(self, trainer, pl_module) -> None:
        if self.curve:  # already evaluated (a second fit on the same monitor, or resumed from a checkpoint)
            return
        self._start = pl_module.update_count
        entry = self._evaluate(pl_module, "before finetuning")
        self.level = entry[self.metric]
        self.best, self._best_state = entry, _copy_state(pl_module)

    def updates_to_boundary(self, trainer, pl_module) -> int | None:
        """Updates until the next evaluation (a step of several updates ends there)."""
        if self.rollback is not None:
            return None
        return updates_to_multiple(pl_module.update_count - self._start, self.every)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        k = pl_module.update_count - self._start
        if self.every <= 0 or k % self.every or self.rollback is not None:
            return
        entry = self._evaluate(pl_module, f"after {k} updates")
        pl_module.log_dict(
            {
                f"eval/{m}": float(v)
                for m, v in entry.items()
                if isinstance(v, (int, float)) and m not in ("step", "updates")
            },
            on_step=True,
            on_epoch=False,
            batch_size=1,
        )
        if self._judge(pl_module, entry):
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        k = pl_module.update_count - self._start
        if self.rollback is None and self.curve and self.curve[-1]["updates"] != k:
            # The curve ends where training ended, and the weights that will be saved are judged too.
            self._judge(pl_module, self._evaluate(pl_module, f"after {k} updates (end)"))

    def keep(self, module, which: str = "best") -> dict[str, Any]:
        """Settle which weights ``module`` ends with and describe them: ``best`` loads those of the best
        evaluation (the pre-finetune ones included) unless they are already there; ``last`` keeps the
        module's own. After a rollback either way the module holds the restored best weights, and the
        record says so. Returns the kept evaluation's metric, step and updates, and whether it is the
        last evaluation or the one before finetuning."""
        if self.best is None or self._best_state is None:
            raise RuntimeError("finetune monitor: no evaluation yet, so no weights to keep")
        last = self.curve[-1]
        entry = self.best if which == "best" or self.rollback is not None else last
        if which == "best" and self.rollback is None and entry["updates"] != last["updates"]:
            module.load_state_dict(self._best_state)
            self.say(
                f"  kept the weights of env step {entry['step']} ({entry['updates']} updates): "
                f"{self.metric} {entry[self.metric]:.4g}, the best periodic evaluation; the last one "
                f"({last['updates']} updates) had {last[self.metric]:.4g}"
            )
        return {
            "which": which,
            "metric": self.metric,
            "value": entry[self.metric],
            "step": entry["step"],
            "updates": entry["updates"],
            "is_last": entry["updates"] == last["updates"],
            "pre_finetune": entry["updates"] == self.curve[0]["updates"],
        }

    def _judge(self, module, entry: dict[str, Any]) -> bool:
        """Track the best weights; roll back to them when the rule says so. True when it rolled back."""
        value = entry[self.metric]
        if _better(value, self.best[self.metric]):
            self.best, self._best_state = entry, _copy_state(module)
        if self.rule is None:
            return False
        noise = difference_se(self.curve[0], entry, self.metric)
        threshold = self.rule.threshold(self.level, noise)
        self._below = self._below + 1 if not value >= threshold else 0  # NaN counts as below
        if self._below < self.rule.patience:
            return False
        module.load_state_dict(self._best_state)
        self.rollback = {
            "step": entry["step"],
            "updates": entry["updates"],
            "value": value,
            "level": self.level,
            "threshold": threshold,
            "difference_se": noise,
            "drop": self.level - value,
            "evaluations_below": self._below,
            "metric": self.metric,
            "restored_step": self.best["step"],
            "restored_updates": self.best["updates"],
            "restored_value": self.best[self.metric],
            "rule": asdict(self.rule),
        }
        self.say(
            f"  ROLLBACK at env step {entry['step']} ({entry['updates']} updates): {self.metric} {value:.4g} is "
            f"{self.level - value:.4g} below the pre-finetune {self.level:.4g} (threshold {threshold:.4g}, "
            f"{self.rule.se:g} x SE {noise:.3g} or the margin) for "
            f"{self._below} evaluations; restored the weights of step {self.best['step']} "
            f"({self.metric} {self.best[self.metric]:.4g}) and stopped"
        )
        return True

    def _evaluate(self, module, when: str) -> dict[str, Any]:
        metrics = self.evaluation.evaluate(module)
        if self.metric not in metrics:
            raise ValueError(
                f"finetune: the monitored metric {self.metric!r} is not in the evaluation "
                f"(it has {sorted(metrics)}); set finetune.rollback.metric to one of those"
            )
        entry = {"step": int(self.env_steps()), "updates": module.update_count - self._start, **metrics}
        self.curve.append(entry)
        shown = {m: metrics[m] for m in ("return_mean", "success_rate") if m in metrics}
        self.say(
            f"  [finetune eval {when}, env step {entry['step']}] " + ", ".join(f"{m} {v:.3f}" for m, v in shown.items())
        )
        return entry


def _better(a: float, b: float) -> bool:
    return not math.isnan(a) and (math.isnan(b) or a > b)


def _copy_state(module) -> dict:
    """A detached copy of every weight and buffer (targets and the update counter included)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
