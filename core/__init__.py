"""The shared kernel every o2o package may import: standard library only.

- :mod:`o2o.core.resolve` — import an object named by a dotted path in a config or a
  checkpoint, only from inside a given package (a config can never run arbitrary code);
- :mod:`o2o.core.hashing` — SHA-256 of files and folders, and "is this file still the one recorded";
- :mod:`o2o.core.versions` — installed package versions, for provenance records;
- :mod:`o2o.core.processes` — whether a process is alive (leftovers of killed processes).

Nothing here imports another o2o package, NumPy or torch: the torch-free runtime
(:mod:`o2o.deploy.runtime`) and the training code use the same helpers.
"""
