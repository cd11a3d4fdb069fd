"""The repository's own checks, in the test suite so that CI (and the README's test command) runs
them: ruff's lint and format check, and mypy on the typed modules (``[tool.mypy] files`` in
pyproject.toml). Configuration lives in pyproject.toml; fix with ``ruff check --fix . && ruff format .``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(tool: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and f"No module named {tool}" in done.stderr:
        pytest.fail(f"{tool} is not installed: pip install -c constraints.txt '.[test]'")
    return done


def test_ruff_lint_is_clean():
    done = run("ruff", "check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_code_is_formatted():
    done = run("ruff", "format", "--no-cache", "--check", ".")
    assert done.returncode == 0, "run `ruff format .`:\n" + done.stdout + done.stderr


def test_typed_modules_type_check():
    done = run("mypy", "--no-incremental", "--cache-dir", "/dev/null")
    assert done.returncode == 0, done.stdout + done.stderr
