"""Which dataset version produced which policy, across runs: ``<state_dir>/lineage.jsonl``.

``o2o run`` appends one line per run that trained (the dataset version, the offline
checkpoint, the promoted policy). The next run can warm-start pretraining from the latest
checkpoint of the same algorithm (``pretrain.init=previous``) when the dataset grew.
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


def latest_checkpoint(state_dir: str | os.PathLike, algo: str) -> dict[str, Any] | None:
    """The newest entry whose offline checkpoint is of ``algo`` and still exists."""
    for e in reversed(read(state_dir)):
        if e.get("algo") == algo and e.get("checkpoint") and Path(e["checkpoint"]).is_file():
            return e
    return None
