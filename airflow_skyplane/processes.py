"""Whether a process of this machine still runs (standard library only: the gateway uses it too)."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: object) -> bool:
    """True while ``pid`` is a running process: not gone, and not a zombie waiting to be reaped (a
    killed child of a process that has not waited for it yet). Another user's process counts."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 1:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True  # no /proc: the signal said it exists
    return "\nState:\tZ" not in status and "\nState:\tX" not in status
