"""Fleet records: find, tear down and sweep a fleet of local relays by its id alone.

Every fleet the local relay backend starts lives in a folder ``<state_dir>/<fleet_id>/`` on the
worker: one sub-folder per transfer of the fleet (one per destination), each with the gateways'
programs, logs and ``gateways.json`` (process ids and control endpoints), and ``fleet.json`` at the
top (who started it, when, and when it expires). That record is what lets a task that is not the
one that started the fleet act on it: the sensor and the trigger that watch a detached transfer,
the ``on_failure_callback`` that tears a failed task's fleet down, and the sweeper that removes
fleets a dead worker left behind.

Tearing down is idempotent and careful: a process id is signalled only while it still runs the
gateway module (a recycled id is never killed), secrets (TLS keys, the transfer key, programs) are
deleted, and the record is removed last.

No Airflow here: the CLI and tests use this module as is. (Cloud fleets are found by their tags in
the clouds, not by these records.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.processes import alive

FLEET_FILE = "fleet.json"
GATEWAYS_FILE = "gateways.json"
GATEWAY_MODULE = "airflow_skyplane.gateway"


def default_state_dir() -> Path:
    """``$AIRFLOW_HOME/skyplane/fleets`` (``~/airflow`` when AIRFLOW_HOME is unset), as Airflow does."""
    home = os.environ.get("AIRFLOW_HOME") or os.path.join(os.path.expanduser("~"), "airflow")
    return Path(home) / "skyplane" / "fleets"


def check_fleet_id(fleet_id: Any) -> str:
    if not isinstance(fleet_id, str) or not fleet_id or not all(c.isalnum() or c in "-_" for c in fleet_id):
        raise InvalidInputError(
            f"fleet_id={fleet_id!r} is not a fleet id: pass the 'fleet_id' of the transfer's XCom summary "
            "(letters, digits, '-' and '_')"
        )
    return fleet_id


@dataclass
class FleetRecord:
    """What ``fleet.json`` holds."""

    fleet_id: str
    backend: str
    created_at: float
    expires_at: float
    owner: dict[str, Any] = field(default_factory=dict)  # dag_id, run_id, task_id, try_number
    state: str = "running"  # running -> done | failed | torn_down

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        tmp = folder / (FLEET_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, folder / FLEET_FILE)

    @classmethod
    def read(cls, folder: Path) -> FleetRecord:
        raw = json.loads((folder / FLEET_FILE).read_text())
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


def fleet_dir(state_dir: str | os.PathLike[str], fleet_id: str) -> Path:
    return Path(state_dir) / check_fleet_id(fleet_id)


def write_gateways(folder: Path, gateways: dict[str, dict[str, Any]]) -> None:
    """Record the gateways of one transfer (pid, control endpoint, log), atomically."""
    tmp = folder / (GATEWAYS_FILE + ".tmp")
    tmp.write_text(json.dumps(gateways, indent=1))
    os.replace(tmp, folder / GATEWAYS_FILE)


def read_gateways(folder: Path) -> dict[str, dict[str, Any]]:
    try:
        data: dict[str, dict[str, Any]] = json.loads((folder / GATEWAYS_FILE).read_text())
    except FileNotFoundError:
        return {}
    return data


def runs_gateway(pid: int) -> bool:
    """True while ``pid`` is a live (not zombie) process running the gateway module."""
    if not alive(pid):
        return False
    try:
        return GATEWAY_MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_process_group(pid: int, grace_s: float = 10.0) -> bool:
    """SIGTERM the gateway's process group, SIGKILL after ``grace_s``; True if it was running."""
    if not runs_gateway(pid):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while runs_gateway(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if runs_gateway(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return True


def transfer_dirs(folder: Path) -> list[Path]:
    """The per-transfer folders of a fleet (those with a gateways record)."""
    return sorted(p.parent for p in folder.glob(f"*/{GATEWAYS_FILE}"))


def teardown_fleet(state_dir: str | os.PathLike[str], fleet_id: str, *, grace_s: float = 10.0) -> list[str]:
    """Stop every gateway of the fleet and delete its folder; returns the gateways that were running.

    Idempotent: an unknown or already removed fleet is a no-op.
    """
    folder = fleet_dir(state_dir, fleet_id)
    stopped: list[str] = []
    if not folder.exists():
        return stopped
    for sub in transfer_dirs(folder):
        for gid, gw in read_gateways(sub).items():
            pid = gw.get("pid")
            if isinstance(pid, int) and stop_process_group(pid, grace_s):
                stopped.append(f"{sub.name}/{gid}")
    shutil.rmtree(folder, ignore_errors=True)
    return stopped


def list_fleets(state_dir: str | os.PathLike[str]) -> Iterator[tuple[FleetRecord, list[str]]]:
    """Each recorded fleet, with the ids of its gateways that still run."""
    root = Path(state_dir)
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        if not (folder / FLEET_FILE).exists():
            continue
        try:
            record = FleetRecord.read(folder)
        except (OSError, ValueError, TypeError):
            continue
        running = [
            f"{sub.name}/{gid}"
            for sub in transfer_dirs(folder)
            for gid, gw in read_gateways(sub).items()
            if isinstance(gw.get("pid"), int) and runs_gateway(gw["pid"])
        ]
        yield record, running


def sweep(
    state_dir: str | os.PathLike[str], *, now: float | None = None, older_than_s: float | None = None
) -> list[str]:
    """Tear down fleets past their expiry (or older than ``older_than_s``); returns their ids."""
    now = time.time() if now is None else now
    swept = []
    for record, _running in list(list_fleets(state_dir)):
        expired = now >= record.expires_at
        if older_than_s is not None:
            expired = expired or now - record.created_at >= older_than_s
        if expired:
            teardown_fleet(state_dir, record.fleet_id)
            swept.append(record.fleet_id)
    return swept


def gateways_under(folder: str | os.PathLike[str]) -> list[int]:
    """Process ids of live gateways whose program lies under ``folder`` (records or not)."""
    needle = str(folder).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and runs_gateway(int(proc.name)):
            try:
                if needle in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def fleet_ids(state_dir: str | os.PathLike[str]) -> list[str]:
    """Ids of the fleets recorded in ``state_dir`` (folders; the lock file and strays are not fleets)."""
    root = Path(state_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir())
