"""The stage DAG, its runner, the gate and the ``o2o`` command line."""
