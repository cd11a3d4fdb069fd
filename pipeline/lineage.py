"""Which dataset version produced which policy, across runs: ``<state_dir>/lineage.jsonl``.

``o2o run`` appends one line per run that trained (the dataset version, the offline
checkpoint, how the offline and finetuned policies scored on the evaluate stage's seeds, the
promoted policy). The next run can warm-start pretraining from the latest checkpoint of the
same algorithm (``pretrain.init=previous``) when the dataset grew, and its report sets its
own offline policy beside the earlier runs' (:func:`comparable`): the "keep the dataset"
claim, checked on every run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

LINEAGE = "lineage.jsonl"


def append(state_dir: str | os.PathLike, entry: dict[str, Any]) -> None:
    """Append ``entry`` (with a timestamp) as one JSON line; one ``write`` call, so lines never interleave."""
    path = Path(state_dir) / LINEAGE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry}, default=str) + "\n"
    with open(path, "a") as f:
        f.write(line)


def read(state_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every entry, oldest first (a damaged line is skipped, not fatal)."""
    path = Path(state_dir) / LINEAGE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _scores(sim: dict | None) -> dict[str, Any] | None:
    if not sim:
        return None
    keys = ("return_mean", "success_rate", "episodes")
    return {k: (None if sim.get(k) is None else float(sim[k])) for k in keys}


def entry(ckpt, evaluation=None, finetune=None, policy=None, evaluation_seed: int | None = None) -> dict[str, Any]:
    """A run's lineage record from its artifacts (checkpoint, evaluation, finetune, policy; any may be None)."""
    return {
        "checkpoint": ckpt.path,
        "dataset_version": ckpt.dataset.selector,
        "algo": ckpt.algo,
        "updates": ckpt.updates,
        "evaluation_seed": evaluation_seed,
        "offline": _scores(None if evaluation is None else evaluation.sim),
        "finetuned": _scores(None if finetune is None else finetune.evaluation),
        "promoted": None if policy is None else policy.origin,
    }


def comparable(entries: list[dict[str, Any]], current: dict[str, Any]) -> list[dict[str, Any]]:
    """The earlier runs whose offline policy can be set beside ``current``'s: same algorithm, evaluated on
    the same seeds and number of episodes, another checkpoint; oldest first."""
    cur = current.get("offline") or {}
    out = []
    for e in entries:
        off = e.get("offline") or {}
        if (
            e.get("algo") == current.get("algo")
            and e.get("checkpoint") != current.get("checkpoint")
            and e.get("evaluation_seed") is not None
            and e.get("evaluation_seed") == current.get("evaluation_seed")
            and off.get("episodes") == cur.get("episodes")
        ):
            out.append(e)
    return out


def latest_checkpoint(state_dir: str | os.PathLike, algo: str) -> dict[str, Any] | None:
    """The newest entry whose offline checkpoint is of ``algo`` and still exists."""
    for e in reversed(read(state_dir)):
        if e.get("algo") == algo and e.get("checkpoint") and Path(e["checkpoint"]).is_file():
            return e
    return None
