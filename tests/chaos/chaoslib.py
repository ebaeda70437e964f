"""What every chaos test checks after its fault, and the ledger ``make chaos`` prints its table from.

:func:`audit` looks at what a transfer left: every object at the destination must be byte-exact (a
transfer that completed must have written all of them; one that failed may have written some, whole),
and nothing may be left behind: no gateway process, no network namespace, no multipart upload, no
secret file. It appends one line per fault to ``$SKYPLANE_CHAOS_LEDGER`` (JSON lines; ``make chaos``
sets it) and then asserts, so a failing check still shows in the table.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from airflow_skyplane.compute import fleets
from airflow_skyplane.compute.local import LocalRelayBackend
from airflow_skyplane.exceptions import TransferError
from airflow_skyplane.storage.local import LocalStore
from airflow_skyplane.testing.netns import list_namespaces
from airflow_skyplane.transfer import control
from airflow_skyplane.transfer.job import TransferJob

#: make test runs a short cut and a small load; make chaos sets these to the full figures
FULL_TIER = "1" in (os.environ.get("SKYPLANE_FULL_TIER"), os.environ.get("SKYPLANE_CHAOS_FULL"))
CUT_SECONDS = float(os.environ.get("SKYPLANE_CHAOS_CUT_S", "3"))
LOAD_OBJECTS = int(os.environ.get("SKYPLANE_CHAOS_LOAD_OBJECTS", "2000"))
#: concurrent DAG runs of the load suite: a full-tier test, so only make chaos runs them
LOAD_DAG_RUNS = int(os.environ.get("SKYPLANE_CHAOS_DAG_RUNS", "8" if FULL_TIER else "0"))


@dataclass
class Audit:
    test: str
    fault: str
    backend: str
    outcome: str  # "completed" (byte-exact) or "failed" (with a clear error)
    faults_injected: int
    objects: int
    objects_written: int
    lost_or_corrupt: list[str] = field(default_factory=list)
    leaked: list[str] = field(default_factory=list)
    error: str = ""
    transfers: int = 1


def own_namespaces() -> set[str]:
    """The emulated-WAN namespaces of this process (other checkouts on the machine make their own)."""
    return {ns for ns in list_namespaces() if ns.split("-")[1] == str(os.getpid())}


def _ledger(entry: Audit) -> None:
    path = os.environ.get("SKYPLANE_CHAOS_LEDGER")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(entry)) + "\n")


def audit(
    request: pytest.FixtureRequest,
    *,
    fault: str,
    backend: str,
    outcome: str,
    expected: Mapping[str, bytes | Iterable[bytes]],
    destination: Any,
    destination_prefix: str = "",
    fleet_dirs: Iterable[Path] = (),
    job_dirs: Iterable[Path] = (),
    running: Callable[[], list[str]] | None = None,
    namespaces_before: Iterable[str] | None = None,
    faults_injected: int = 1,
    error: BaseException | None = None,
    allow_missing: Iterable[str] = (),
    transfers: int = 1,
) -> Audit:
    """Check the destination and the leftovers of one faulted transfer; record it; assert.

    ``expected`` maps each source key (relative to the prefixes) to its bytes, or to the versions
    of it that are acceptable. A completed transfer must have written every key; a failed one any
    subset, each whole.
    """
    lost: list[str] = []
    written = {
        info.key[len(destination_prefix) :]: info
        for info in destination.list(destination_prefix)
        if not info.key.startswith(".skyplane-")
    }
    for key, info in written.items():
        wanted = expected.get(key)
        versions = [wanted] if isinstance(wanted, bytes | bytearray) else list(wanted or [])
        if not versions:
            lost.append(f"{key}: not a source object")
        elif destination.read(destination_prefix + key) not in versions:
            lost.append(f"{key}: {info.size} bytes that match no version of the source object")
    if outcome == "completed":
        lost += [
            f"{key}: missing" for key in expected if key not in written and key not in set(allow_missing)
        ]
    leaked: list[str] = []
    if running is not None:
        leaked += [f"gateway {g} still running" for g in running()]
    for folder in fleet_dirs:
        leaked += [f"gateway process {pid} under {folder}" for pid in fleets.gateways_under(folder)]
        leaked += [f"secret file {p}" for p in Path(folder).glob("*.program.json")]
    for folder in job_dirs:
        leaked += [
            f"secret file {folder / n}" for n in ("transfer.key", "uploads.json") if (folder / n).exists()
        ]
    leaked += [f"multipart upload {u.key}" for u in destination.list_multipart_uploads(destination_prefix)]
    if namespaces_before is not None:
        leaked += [f"namespace {ns}" for ns in sorted(own_namespaces() - set(namespaces_before))]
    entry = Audit(
        request.node.nodeid, fault, backend, outcome, faults_injected, len(expected), len(written),
        lost, leaked, str(error or "")[:300], transfers,
    )  # fmt: skip
    _ledger(entry)
    assert lost == [], f"objects lost or corrupted after {fault}: {lost}"
    assert leaked == [], f"resources left behind after {fault}: {leaked}"
    return entry


def drive(
    job: TransferJob,
    inject: Callable[[], Any] | None = None,
    when: Callable[[dict[str, Any]], bool] = lambda status: status["chunks_sent"] >= 1,
) -> tuple[str, Any]:
    """Run ``job``, calling ``inject`` once the reading gateway's status satisfies ``when``.

    Returns ("completed", result) or ("failed", the TransferError); always closes the job.
    """
    injected = inject is None
    try:
        job.start()
        while True:
            done = job.poll()
            if not injected and job.started and when(control.status(job.started[job.overlay.source])):
                inject()  # type: ignore[misc]
                injected = True
                continue
            if done:
                break
            time.sleep(0.02)
        assert injected, "the transfer finished before the fault could be injected"
        return "completed", job.finish()
    except TransferError as err:
        assert injected, f"the transfer failed before the fault was injected: {err}"
        return "failed", err
    finally:
        job.close()


def local_store(path: Path) -> LocalStore:
    path.mkdir(parents=True, exist_ok=True)
    return LocalStore(path)


def kill_gateway(backend: LocalRelayBackend, gateway_id: str) -> None:
    gateway = backend.gateways[gateway_id]
    os.kill(gateway.process.pid, signal.SIGKILL)
    gateway.process.wait(timeout=30)
