"""Settings of off-policy evaluation, one frozen dataclass shared by FQE, IS/DR and selection."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping


@dataclass(frozen=True)
class OPEConfig:
    """How OPE estimates are computed. Every estimate is a *discounted* return in env reward units."""

    gamma: float = 0.99
    """Discount of every estimate (keep it equal across the candidates being compared)."""
    horizon: int | None = None
    """Steps per episode the value counts (the env's time limit), so estimates match a simulated
    episode's discounted return; FQE then conditions on time and stops bootstrapping at the
    limit. None: infinite-horizon value (FQE bootstraps through time-limit cuts)."""
    fqe_updates: int = 20_000
    """Gradient updates of the FQE critic (a fixed budget: FQE has no early-stopping signal)."""
    fqe_batch_size: int = 256
    fqe_hidden: tuple[int, ...] = (256, 256)
    fqe_lr: float = 3e-4
    fqe_tau: float = 0.01
    """Polyak rate of the FQE target network."""
    fqe_critics: int = 2
    """Ensemble members, trained on independent targets: their spread is reported as ``ope/fqe_std``."""
    fqe_layer_norm: bool = True
    """LayerNorm in the critic keeps bootstrapped values bounded on out-of-distribution actions."""
    reward_scale: float | None = None
    """Rewards are multiplied by this inside FQE (undone in every reported figure); None: 1/std of
    the dataset's rewards, so the critic's targets are O(1/(1-gamma)) whatever the env."""
    stochastic: bool = False
    """Evaluate the policy's sampled actions (its own density for IS) instead of its deterministic
    action, which is what simulation and deployment run."""
    policy_samples: int = 4
    """Actions sampled per next state for a stochastic target's FQE backup (expected SARSA)."""
    target_std: float = 0.2
    """IS/DR for a deterministic target: its density is degenerate, so it is treated as a Gaussian
    N(pi(s), target_std^2) per action dimension in the normalised [-1, 1] action space. IS, WIS
    and DR then estimate that smoothed policy's value; smaller is less biased, more variable."""
    behavior_updates: int = 5_000
    """Updates of the Gaussian behaviour-cloning model of the unknown behaviour policy mu."""
    behavior_hidden: tuple[int, ...] = (256, 256)
    behavior_lr: float = 1e-3
    behavior_batch_size: int = 256
    step_clip: float | None = 10.0
    """Upper clip of each per-step ratio pi/mu (None: no clip)."""
    cumulative_clip: float | None = 100.0
    """Upper clip of each cumulative weight prod_k pi/mu (None: no clip)."""
    bootstrap: int = 1000
    """Bootstrap resamples of the dataset's episodes for each estimate's confidence interval
    (``ope/<estimator>_ci_low`` / ``_ci_high``); 0: no intervals. FQE's interval resamples its
    start-state values (the fitted critic held fixed), so it leaves out the critic's own error."""
    confidence: float = 0.95
    """Coverage of those intervals (percentile bootstrap)."""
    fqe_refits: int = 0
    """Bootstrapped FQE: refit FQE this many times, each on a bootstrap resample of the episodes
    (and its own seed), and take FQE's interval from the refits' estimates, which then includes
    the critic's fitting error; costs ``fqe_refits`` more FQE fits per policy. With few refits
    the interval's ends are close to the smallest and largest estimate."""
    seed: int = 0
    chunk: int = 65_536
    """Rows per forward pass when evaluating networks over the whole dataset."""

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | "OPEConfig" | None = None, **overrides: Any) -> "OPEConfig":
        """An OPEConfig from a plain mapping (e.g. the ``ope`` section of a Hydra config); an unknown
        key is an error that lists the known ones."""
        if isinstance(d, OPEConfig):
            d = asdict(d)
        d = {**dict(d or {}), **overrides}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ope config: unknown keys {unknown}; known keys: {sorted(known)}")
        out = {}
        for k, v in d.items():
            if k in ("fqe_hidden", "behavior_hidden"):
                v = tuple(int(x) for x in v)
            elif k == "horizon":
                v = None if v is None else int(v)
            elif k in ("reward_scale", "step_clip", "cumulative_clip"):
                v = None if v is None else float(v)
            out[k] = v
        cfg = cls(**out)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Refuse settings that would make an estimate meaningless, naming the key."""
        if not 0.0 <= self.gamma < 1.0 and self.horizon is None:
            raise ValueError(f"ope.gamma must be in [0, 1) for an infinite horizon, got {self.gamma}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"ope.gamma must be in [0, 1], got {self.gamma}")
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"ope.horizon must be >= 1 or null, got {self.horizon}")
        for k in ("fqe_updates", "behavior_updates"):
            if int(getattr(self, k)) < 0:
                raise ValueError(f"ope.{k} must be >= 0, got {getattr(self, k)}")
        for k in ("fqe_batch_size", "behavior_batch_size", "fqe_critics", "policy_samples", "chunk"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"ope.{k} must be >= 1, got {getattr(self, k)}")
        if int(self.fqe_refits) < 0 or int(self.fqe_refits) == 1:
            raise ValueError(f"ope.fqe_refits must be 0 (no refits) or >= 2, got {self.fqe_refits}")
        if int(self.bootstrap) < 0:
            raise ValueError(f"ope.bootstrap must be >= 0 (0: no confidence intervals), got {self.bootstrap}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"ope.confidence must be in (0, 1), got {self.confidence}")
        if self.target_std <= 0:
            raise ValueError(f"ope.target_std must be > 0, got {self.target_std}")
        for k in ("step_clip", "cumulative_clip", "reward_scale"):
            v = getattr(self, k)
            if v is not None and v <= 0:
                raise ValueError(f"ope.{k} must be > 0 or null, got {v}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) for JSON reports."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
