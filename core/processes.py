"""Whether a process is alive: how leftovers of a killed process are told from those of a live one
(a dataset's creation folder, an export's staging folder, an interrupted run's attempt)."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True when process ``pid`` exists on this host (also when it belongs to another user)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
