"""The package graph stays acyclic and layered (docs/architecture.md: Layers), and stages are not a library.

Read from the source (``ast``), so a lazy import inside a function counts too:

- ``envs`` imports no other o2o package; ``datasets`` only ``envs``; ``deploy`` only ``envs``
  (the controller-side runtime stays free of training code); ``policies`` only ``datasets``,
  ``envs`` and ``deploy``; ``pipeline`` anything. A ``core`` package, if present, is the bottom
  layer every package may use.
- No stage module imports another stage module: what two stages share lives in the training
  layer (``o2o.policies.training``) or below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "core": set(),
    "envs": set(),
    "datasets": {"envs"},
    "deploy": {"envs"},
    "policies": {"datasets", "envs", "deploy"},
    "pipeline": {"datasets", "deploy", "envs", "policies", "configs"},
    "configs": set(),
}


def o2o_imports(path: Path) -> list[tuple[str, int]]:
    """``(module, line)`` of every ``o2o.`` import in the file (lazy ones included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("o2o.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("o2o."):
            out.append((node.module, node.lineno))
    return out


@pytest.mark.parametrize("package", sorted(p for p in ALLOWED if (ROOT / p).is_dir()))
def test_packages_import_only_the_layers_below(package):
    allowed = ALLOWED[package] | {package, "core"}
    bad = [
        f"{f.relative_to(ROOT)}:{line} imports {mod}"
        for f in sorted((ROOT / package).rglob("*.py"))
        for mod, line in o2o_imports(f)
        if mod.split(".")[1] not in allowed
    ]
    assert not bad, f"{package} may import only {sorted(allowed)}:\n" + "\n".join(bad)


def test_no_stage_imports_another_stage():
    stages = ROOT / "pipeline" / "stages"
    bad = []
    for f in sorted(stages.glob("*.py")):
        for mod, line in o2o_imports(f):
            parts = mod.split(".")
            if parts[:3] == ["o2o", "pipeline", "stages"] and len(parts) > 3 and parts[3] != f.stem:
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "stages share code through o2o.policies.training (or below), not each other:\n" + "\n".join(bad)


def test_the_rules_see_a_violation(tmp_path):
    """The checker itself: an import of a stage from a stage, and of pipeline from policies, are found."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from o2o.pipeline.stages.pretrain import pretrain\n    import o2o.pipeline.dag\n")
    assert o2o_imports(f) == [("o2o.pipeline.stages.pretrain", 2), ("o2o.pipeline.dag", 3)]
