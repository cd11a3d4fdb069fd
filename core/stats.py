"""Standard errors of the comparisons o2o makes between two sets of episodes: the gate (policy vs its
data), the finetune rollback (now vs before finetuning) and the export's closed-loop check (runtime vs
the trained policy)."""

from __future__ import annotations

import math


def sample_std(std: float | None, n: float | None) -> float | None:
    """A population standard deviation (``np.std``) as the sample one (``ddof=1``); None if unknown."""
    if std is None or n is None or n < 2 or not math.isfinite(std):
        return None
    return float(std) * math.sqrt(n / (n - 1))


def mean_difference_se(std_a: float, n: float, std_b: float, m: float) -> float:
    """Standard error of a difference of two means (per-episode standard deviations, episode counts)."""
    return math.sqrt(float(std_a) ** 2 / float(n) + float(std_b) ** 2 / float(m))


def pooled_rate_se(p_a: float, n: float, p_b: float, m: float) -> float:
    """Standard error of a difference of two rates measured on ``n`` and ``m`` episodes, pooled binomial."""
    pooled = (p_a * n + p_b * m) / (n + m)
    return math.sqrt(max(pooled * (1.0 - pooled), 0.0) * (1.0 / n + 1.0 / m))
