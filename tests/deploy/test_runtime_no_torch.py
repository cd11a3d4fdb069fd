"""The runtime imports and runs in a process where torch (Lightning, Hydra, zarr, gymnasium...) cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    import numpy as np

    try:
        import torch  # noqa: F401
    except ImportError as e:
        blocked = str(e)
    else:
        raise SystemExit("torch imported: the blocker did not work")

    from o2o.deploy.runtime import ControlLoop, Guard, GuardWarning, PolicyRuntime
    import o2o.deploy.manifest, o2o.deploy.server  # noqa: F401  (the action server is runtime side too)

    rt = PolicyRuntime(sys.argv[1], max_delta=0.5)
    with np.load(sys.argv[1] + "/reference.npz") as d:
        obs = d["observations"]
    actions = [rt.infer(o[None])[0].tolist() for o in obs]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bad = obs[0].copy(); bad[0] = float("nan")
        nan = rt.step(bad)
    sent = []
    report = ControlLoop(rt, lambda: obs[len(sent) % len(obs)], lambda a, r: sent.append(a), rate_hz=200).run(steps=10)
    heavy = sorted(m for m in ("torch", "lightning", "hydra", "omegaconf", "zarr", "gymnasium", "mujoco")
                   if m in sys.modules)
    print(json.dumps({"blocked": blocked, "actions": actions, "nan_flags": int(nan.flags),
                      "nan_action": nan.action.tolist(), "warned": [str(w.message) for w in caught],
                      "loop_steps": report.steps, "heavy_modules": heavy}))
""")


def test_runtime_runs_where_torch_cannot_be_imported(maze_export, torch_blocker):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, maze_export.out_dir],
        env=torch_blocker,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "torch is blocked" in out["blocked"]
    assert out["heavy_modules"] == []
    with np.load(f"{maze_export.out_dir}/reference.npz") as d:
        np.testing.assert_allclose(np.asarray(out["actions"]), d["actions"], rtol=0, atol=1e-5)
    assert out["nan_flags"] == 4 and out["nan_action"] == [0.0, 0.0]
    assert any("non-finite observation in fields ['position']" in w for w in out["warned"])
    assert out["loop_steps"] == 10


def test_the_blocker_really_blocks_torch(torch_blocker):
    proc = subprocess.run(
        [sys.executable, "-c", "import torch"], env=torch_blocker, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "torch is blocked in this process" in proc.stderr
