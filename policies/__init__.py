"""Behaviour policies, networks, offline/online algorithms and off-policy evaluation."""
