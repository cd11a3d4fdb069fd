"""Behaviour policies for data collection: scripted, random, learned, mixtures (and human, later)."""
