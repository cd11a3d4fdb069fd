"""Hydra config groups of o2o (YAML only; a package so ``pkg://o2o.configs`` resolves)."""
