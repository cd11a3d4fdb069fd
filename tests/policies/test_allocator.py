"""trainer.cpu_allocator: glibc mallopt settings applied once per process, bad values refused."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from o2o.policies.allocator import tune_cpu_allocator

CODE = """
from o2o.policies.allocator import tune_cpu_allocator
print(tune_cpu_allocator('default'))
print(tune_cpu_allocator('tuned'))
print(tune_cpu_allocator('tuned'))
print(tune_cpu_allocator('default'))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings exist on glibc only")
def test_tuned_applies_mallopt_once_and_cannot_be_undone():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "glibc defaults"
    assert out[1].startswith("glibc mallopt: mmap threshold 32 MiB, trim threshold 1024 MiB"), out
    assert out[2] == out[1]  # idempotent
    assert out[3].startswith("already glibc mallopt")


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="trainer.cpu_allocator must be 'tuned' or 'default', got 'fast'"):
        tune_cpu_allocator("fast")
