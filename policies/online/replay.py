"""Batches that mix the offline data with the growing online data at a configured ratio.

Offline-to-online methods keep sampling the offline data while the online data is small
(RLPD, Ball et al. 2023, draws half of every batch from each; Cal-QL and IQL finetuning
sample the union). Here each batch draws exactly ``round(ratio * batch_size)`` rows from
the online buffer and the rest from the offline one, with ``ratio`` fixed or annealed
linearly over the updates, so the mix is what the config says whatever the buffer sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from o2o.policies.data import Batch, TensorReplay, cat_batches


@dataclass(frozen=True)
class RatioSchedule:
    """The online fraction of batch number ``k``: ``start`` -> ``end`` linearly over ``anneal``
    batches, ``end`` afterwards (``anneal`` 0: always ``end``; start == end: fixed)."""

    start: float
    end: float
    anneal: int = 0

    def __post_init__(self):
        for name in ("start", "end"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"finetune.ratio.{name} must be a fraction in [0, 1], got {v!r}")
        if int(self.anneal) < 0:
            raise ValueError(f"finetune.ratio anneal length must be >= 0 updates, got {self.anneal!r}")

    def __call__(self, k: int) -> float:
        if self.anneal <= 0:
            return float(self.end)
        f = min(max(k, 0) / self.anneal, 1.0)
        return float(self.start + f * (self.end - self.start))


class MixedReplay:
    """Offline rows (a fixed :class:`TensorReplay`) and online rows (a growing one), mixed per batch.

    Quacks like a :class:`TensorReplay` where algorithms use one (``sample``, ``all``,
    ``to``, ``generator``). Until the online buffer holds a row, batches are all offline.
    ``rows`` counts the rows drawn from each part (what the ratio tests check).
    """

    def __init__(self, offline: TensorReplay, online: TensorReplay, ratio: RatioSchedule):
        if (
            offline.observations.shape[1:] != online.observations.shape[1:]
            or offline.actions.shape[1:] != online.actions.shape[1:]
        ):
            raise ValueError(
                f"mixed replay: offline rows (obs {tuple(offline.observations.shape[1:])}, action "
                f"{tuple(offline.actions.shape[1:])}) and online rows (obs "
                f"{tuple(online.observations.shape[1:])}, action {tuple(online.actions.shape[1:])}) differ"
            )
        if offline.has_mc_returns != online.has_mc_returns:
            raise ValueError(
                "mixed replay: both parts must carry MC returns or neither (enable_mc_returns on the "
                "online buffer when the offline one has them)"
            )
        if len(offline) == 0:
            raise ValueError("mixed replay: the offline buffer is empty")
        self.offline, self.online, self.ratio = offline, online, ratio
        self.draws = 0
        self.rows = {"offline": 0, "online": 0}

    @property
    def has_mc_returns(self) -> bool:
        return self.offline.has_mc_returns

    @property
    def generator(self):
        return self.offline.generator

    def __len__(self) -> int:
        return len(self.offline) + len(self.online)

    def online_rows(self, batch_size: int) -> int:
        """How many rows of the next batch of ``batch_size`` come from the online buffer."""
        if len(self.online) == 0:
            return 0
        return int(round(self.ratio(self.draws) * batch_size))

    def sample(self, batch_size: int) -> Batch:
        """``batch_size`` rows: the online share from the online buffer, the rest offline (uniform in each)."""
        n_on = self.online_rows(batch_size)
        parts = []
        if batch_size - n_on > 0:
            parts.append(self.offline.sample(batch_size - n_on))
        if n_on > 0:
            parts.append(self.online.sample(n_on))
        self.draws += 1
        self.rows["offline"] += batch_size - n_on
        self.rows["online"] += n_on
        return parts[0] if len(parts) == 1 else cat_batches(parts)

    def all(self) -> Batch:
        """Every row, offline then online (a copy when both hold rows)."""
        parts = [p.all() for p in (self.offline, self.online) if len(p)]
        return parts[0] if len(parts) == 1 else cat_batches(parts)

    def to(self, device: Any) -> "MixedReplay":
        self.offline.to(device)
        self.online.to(device)
        return self
