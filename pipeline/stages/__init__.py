"""Pipeline stages: each a function of the artifacts it reads and writes."""
