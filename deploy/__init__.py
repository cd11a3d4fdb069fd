"""Export (ONNX, TorchScript, manifest, parity check) and the controller-side runtime (guards, watchdog).

- :mod:`o2o.deploy.export` — a deterministic policy to ``policy.onnx`` + ``policy.pt`` +
  ``reference.npz`` + ``manifest.json``, refused unless both files reproduce it (torch side);
- :mod:`o2o.deploy.manifest` — the manifest format and its hash checks (standard library only);
- :mod:`o2o.deploy.runtime` — :class:`PolicyRuntime` and :class:`ControlLoop` (NumPy + onnxruntime);
- :mod:`o2o.deploy.server` — the ZeroMQ action server behind ``o2o serve`` (+ pyzmq);
- :mod:`o2o.deploy.check` — the closed-loop check in simulation (+ o2o.envs).

Nothing is imported here: ``import o2o.deploy.runtime`` must not pull in torch.
"""
