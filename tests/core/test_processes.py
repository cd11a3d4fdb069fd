"""core.processes: a live process (this one, a child) and one that ended."""

from __future__ import annotations

import os
import subprocess
import sys

from o2o.core.processes import alive


def test_alive_tells_a_running_process_from_an_ended_one():
    assert alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not alive(child.pid)
