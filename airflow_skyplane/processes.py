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


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (field 22 of ``/proc/<pid>/stat``), or None when
    it is gone. With the pid it names one process: a pid reused by another process has another start."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after "pid (comm)", which may hold spaces: field 3 on
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None
