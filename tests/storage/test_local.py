"""The local store's own housekeeping: what a killed writer leaves is removed, a live one's is not."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from airflow_skyplane.storage.local import LocalStore


def test_tidy_removes_a_killed_writers_temporary_file_and_keeps_a_live_ones(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("kept.txt", b"whole")
    uploads = tmp_path / ".skyplane-uploads"
    uploads.mkdir(exist_ok=True)
    host = socket.gethostname().replace("-", "_")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid is gone
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits, and is not waited for yet:
    deadline = time.monotonic() + 30  # a killed writer its parent has not reaped
    while "State:\tZ" not in Path(f"/proc/{zombie.pid}/status").read_text():
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    left = {
        "dead": uploads / f"tmp-{host}-{dead.pid}-0a",
        "zombie": uploads / f"tmp-{host}-{zombie.pid}-0b",
        "live": uploads / f"tmp-{host}-{os.getpid()}-0c",
        "other machine": uploads / f"tmp-elsewhere_host-{dead.pid}-0d",
    }
    for path in left.values():
        path.write_bytes(b"half an object")
    store.tidy()
    zombie.wait()
    assert sorted(p.name for p in uploads.iterdir()) == sorted(
        left[k].name for k in ("live", "other machine")
    )
    assert [o.key for o in store.list()] == ["kept.txt"]
