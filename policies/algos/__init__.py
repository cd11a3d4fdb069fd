"""Offline and online RL algorithms as Lightning modules (one module per algorithm)."""
