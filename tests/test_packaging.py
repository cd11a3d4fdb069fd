"""The install layout: every subpackage is listed, data files ship, the CLI entry point exists."""

from __future__ import annotations

import re
from importlib import metadata, resources
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = {
    "pyproject.toml",
    "README.md",
    "core",
    "pipeline",
    "envs",
    "datasets",
    "policies",
    "deploy",
    "configs",
    "tests",
}
ALLOWED_EXTRA = {".ci", "bench", "docs", "constraints.txt", ".gitignore", ".git"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_top_level_is_the_fixed_layout():
    tracked = {
        p.name
        for p in ROOT.iterdir()
        if not p.name.startswith((".venv", "__pycache__", ".pytest", ".hypothesis", ".ruff_cache", ".mypy_cache"))
    }
    tracked -= {"build", "dist", "data", "runs", "outputs", "o2o.egg-info", ".whl"}  # .whl: bench/gpu/prepare.sh
    assert TOP_LEVEL <= tracked
    assert tracked - TOP_LEVEL <= ALLOWED_EXTRA, f"unexpected top-level entries {tracked - TOP_LEVEL - ALLOWED_EXTRA}"


def test_every_subpackage_is_listed():
    # A package missing from this list imports in an editable install but is absent from the wheel.
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = set()
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts and rel.parts[0] in TOP_LEVEL - {"tests"}:
            found.add("o2o." + ".".join(rel.parts))
    assert found == listed, f"not listed: {sorted(found - listed)}; listed but absent: {sorted(listed - found)}"


def test_config_and_asset_files_ship_with_the_package():
    configs = resources.files("o2o.configs")
    assert configs.joinpath("collect.yaml").is_file()
    for group in ("env", "behavior", "dataset"):
        assert any(p.name.endswith(".yaml") for p in configs.joinpath(group).iterdir()), group
    assets = resources.files("o2o.envs.assets")
    assert any(p.name.endswith(".xml") for p in assets.iterdir())


def test_console_script_and_version():
    eps = {e.name: e.value for e in metadata.entry_points(group="console_scripts") if e.name == "o2o"}
    assert eps == {"o2o": "o2o.pipeline.cli:main"}
    assert metadata.version("o2o") == _pyproject()["project"]["version"]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    assert len(commands) >= 2, "README must open with the install+run and install+test commands"
    test_cmd = commands[1].strip()
    assert "pytest" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text(), "`.ci/run` must run the README's test command verbatim"
