"""OPE of checkpoints, and choosing among them when no simulator is available.

:func:`evaluate_policy` runs every estimator for one policy (FQE, then IS/WIS/DR with
FQE's critic as DR's model); :func:`evaluate_checkpoints` does it for checkpoint files,
sharing one dataset and one behaviour model; :func:`select_by_ope` returns the argmax.
The data may be given as a store path (+ episode indices), an :class:`OPEData`, or a
training module's own :class:`~o2o.policies.data.TensorReplay` (+ its normalisation).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from o2o.policies.data import Normalization, TensorReplay
from o2o.policies.ope import estimators as E
from o2o.policies.ope.config import OPEConfig
from o2o.policies.ope.data import OPEData, TargetPolicy
from o2o.policies.ope.fqe import fit_fqe
from o2o.policies.ope.importance import BehaviorModel, fit_behavior, importance_estimates, target_log_prob

OPE_METRICS = ("ope/fqe_value", "ope/is_value", "ope/wis_value", "ope/dr_value")


def as_ope_data(
    data: OPEData | TensorReplay | str | os.PathLike,
    episodes: Sequence[int] | np.ndarray | None = None,
    norm: Normalization | None = None,
    device: Any = None,
) -> OPEData:
    """Whatever names the evaluation data, as :class:`OPEData`.

    A store path (local or URL) loads ``episodes`` (default all) onto ``device`` (default
    CPU); a :class:`TensorReplay` needs the ``norm`` its rows were normalised with and stays
    on its device.
    """
    if isinstance(data, OPEData):
        return data
    if isinstance(data, TensorReplay):
        if norm is None:
            raise ValueError(
                "OPE on a TensorReplay needs the Normalization its rows were made with (pass norm=module.norm)"
            )
        return OPEData.from_replay(data, norm)
    if isinstance(data, (str, os.PathLike)):
        return OPEData.from_store(str(data), episodes, device=device or "cpu")
    raise TypeError(f"OPE data must be a store path, an OPEData or a TensorReplay, not {type(data).__name__}")


def evaluate_policy(
    policy: TargetPolicy,
    data: OPEData,
    cfg: OPEConfig | None = None,
    behavior: BehaviorModel | torch.Tensor | None = None,
    importance: bool = True,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Every OPE estimate of ``policy`` on ``data`` as ``{"ope/...": value}``.

    ``behavior``: a fitted :class:`BehaviorModel`, a known ``log mu`` per row, or None to fit
    one here (pass one in to share it between policies). ``importance=False`` runs FQE only.
    ``progress(FQE updates done)`` after every FQE update, refits counted on (their total is
    ``fqe_updates * (1 + fqe_refits)``).
    """
    cfg = cfg or OPEConfig()
    start = time.perf_counter()
    fqe = fit_fqe(data, policy, cfg, progress=progress)
    out: dict[str, Any] = {
        "ope/fqe_value": fqe.value,
        "ope/fqe_std": fqe.value_std,
        "ope/fqe_final_loss": fqe.losses[-1] if fqe.losses else None,
    }
    if cfg.fqe_refits:
        out.update(fqe_refit_interval(policy, data, cfg, progress))
    elif cfg.bootstrap and data.num_episodes > 1:  # the same episode draws as IS/WIS/DR's (same seed and sizes)
        counts = E.bootstrap_counts(data.num_episodes, int(cfg.bootstrap), cfg.seed)
        lo, hi = E.percentile_interval(
            E.bootstrap_means(torch.as_tensor(fqe.start_values, dtype=torch.float64), counts), cfg.confidence
        )
        out["ope/fqe_ci_low"], out["ope/fqe_ci_high"] = lo, hi
    if importance:
        if behavior is None:
            behavior = fit_behavior(data, cfg)
        log_mu = behavior.log_prob(data, cfg.chunk) if isinstance(behavior, BehaviorModel) else behavior
        res = importance_estimates(
            data, target_log_prob(policy, data, cfg), log_mu, cfg, fqe.q_taken, fqe.v, fqe.v_next
        )
        out.update(res.metrics())
    else:
        out.update({k: None for k in OPE_METRICS[1:]})
    out["ope/seconds"] = time.perf_counter() - start
    return out


def fqe_refit_interval(
    policy: TargetPolicy, data: OPEData, cfg: OPEConfig, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Bootstrapped FQE: ``cfg.fqe_refits`` fits, each on a resample of the episodes with its own
    seed; FQE's interval from their estimates (``ope/fqe_ci_low`` / ``_high``) and their spread.
    ``progress``: FQE updates counted on after the first fit's ``fqe_updates``."""
    g = torch.Generator().manual_seed(int(cfg.seed))
    values = []
    for k in range(int(cfg.fqe_refits)):
        ids = torch.randint(data.num_episodes, (data.num_episodes,), generator=g)
        done = (k + 1) * int(cfg.fqe_updates)
        on = None if progress is None else (lambda i, done=done: progress(done + i))
        values.append(fit_fqe(data.resample(ids), policy, replace(cfg, seed=int(cfg.seed) + 1 + k), progress=on).value)
    v = torch.tensor(values, dtype=torch.float64)
    lo, hi = E.percentile_interval(v, cfg.confidence)
    return {
        "ope/fqe_ci_low": lo,
        "ope/fqe_ci_high": hi,
        "ope/fqe_refit_std": float(v.std()),
        "ope/fqe_refits": len(values),
    }


def load_policy(path: str, data: OPEData):
    """The algorithm in checkpoint ``path``, on the data's device, and its :class:`TargetPolicy`."""
    from o2o.policies.algos.base import load_algorithm

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    module = load_algorithm(path, map_location=data.device).to(data.device).eval()
    if int(module.obs_dim) != int(data.observations.shape[1]):
        raise ValueError(
            f"checkpoint {path!r} expects observations of dim {module.obs_dim}, the OPE dataset "
            f"{data.source!r} has {data.observations.shape[1]}: it was trained on another env"
        )
    return module, TargetPolicy.from_module(module, data.norm, name=os.path.basename(path))


def evaluate_checkpoints(
    checkpoints: Sequence[str], data: OPEData, cfg: OPEConfig | None = None, importance: bool = True, log=None
) -> list[dict[str, Any]]:
    """:func:`evaluate_policy` for each checkpoint file, one row per checkpoint (``checkpoint`` = path).

    One behaviour model is fitted and shared: mu is a property of the data, not of the candidate.
    """
    cfg = cfg or OPEConfig()
    if not checkpoints:
        raise ValueError("OPE: no checkpoints given")
    behavior = fit_behavior(data, cfg) if importance else None
    rows = []
    for path in checkpoints:
        _, policy = load_policy(str(path), data)
        row = {"checkpoint": str(path), **evaluate_policy(policy, data, cfg, behavior, importance)}
        if behavior is not None:
            row["ope/behavior_nll"] = behavior.nll
        rows.append(row)
        if log is not None:
            log(row)
    return rows


def estimate_text(row: Mapping[str, Any], metric: str, sep: str = " ") -> str:
    """An OPE estimate of a row as text, its interval (when the row has one) after ``sep``:
    ``"66.8 [66.6, 67]"``; ``-`` for a missing or NaN estimate."""
    v = row.get(metric)
    text = "-" if v is None or v != v else f"{v:.4g}"
    key = metric.removesuffix("_value")
    lo, hi = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    return text + ("" if lo is None or hi is None else f"{sep}[{lo:.4g}, {hi:.4g}]")


def describe_choice(table: Sequence[Mapping[str, Any]], metric: str = "ope/fqe_value") -> str:
    """The chosen row's estimate with its interval, and whether the runner-up's estimate lies inside
    it (then the data does not tell the two apart): for logs and run summaries."""
    key = metric.removesuffix("_value")
    name = lambda r: os.path.basename(str(r["checkpoint"]))  # noqa: E731
    shown = lambda r: estimate_text(r, metric)  # noqa: E731
    finite = [r for r in table if r.get(metric) is not None and math.isfinite(r[metric])]
    ranked = sorted(finite, key=lambda r: -r[metric])
    if not ranked:
        return f"no finite {metric}"
    best = ranked[0]
    out = f"{name(best)} {shown(best)}"
    if len(ranked) > 1:
        second = ranked[1]
        lo = best.get(f"{key}_ci_low")
        inside = lo is not None and second[metric] >= lo
        out += f"; runner-up {name(second)} {shown(second)}" + (", inside the chosen one's interval" if inside else "")
    return out


def select_by_ope(
    checkpoints: Sequence[str],
    data: OPEData | TensorReplay | str | os.PathLike,
    cfg: OPEConfig | Mapping[str, Any] | None = None,
    *,
    episodes: Sequence[int] | None = None,
    norm: Normalization | None = None,
    device: Any = None,
    metric: str = "ope/fqe_value",
    importance: bool = False,
) -> tuple[str, list[dict[str, Any]]]:
    """The checkpoint with the highest OPE estimate (FQE by default) and the table of all of them.

    Called by pretrain when there is no simulator, e.g.
    ``select_by_ope(paths, cfg.dataset.path, cfg.ope, episodes=idx)`` or
    ``select_by_ope(paths, module.replay, cfg.ope, norm=module.norm)``. ``metric`` may be
    any of ``ope/fqe_value, ope/is_value, ope/wis_value, ope/dr_value`` (the last three need
    ``importance=True``). Rows whose estimate is not finite never win.
    """
    if metric not in OPE_METRICS:
        raise ValueError(f"select_by_ope: metric {metric!r} not one of {OPE_METRICS}")
    if metric != "ope/fqe_value" and not importance:
        importance = True
    cfg = OPEConfig.from_mapping(cfg)
    ope_data = as_ope_data(data, episodes, norm, device)
    table = evaluate_checkpoints(list(checkpoints), ope_data, cfg, importance=importance)
    scores = [r[metric] if r[metric] is not None and math.isfinite(r[metric]) else -math.inf for r in table]
    if all(s == -math.inf for s in scores):
        raise ValueError(
            f"select_by_ope: no checkpoint has a finite {metric} "
            f"({[r[metric] for r in table]}); check the dataset and ope settings"
        )
    best = int(np.argmax(scores))
    for i, r in enumerate(table):
        r["selected"] = i == best
    return table[best]["checkpoint"], table
