"""The local relay backend: gateways as processes on this machine, on loopback (the embedded default).

Each gateway runs as ``python -m airflow_skyplane.gateway --program FILE --ready-file FILE`` in its
own session (process group), exactly as on a relay VM, with its program file written 0600. The
gateway writes its bound ports to the ready file once it listens; :meth:`LocalRelayBackend.start`
waits for it. Every gateway is recorded in ``gateways.json`` of the transfer's folder, so the fleet is
found and torn down by its id alone (:meth:`LocalRelayBackend.attach`,
:func:`~airflow_skyplane.compute.fleets.teardown_fleet`). :meth:`LocalRelayBackend.teardown` stops
every gateway this backend started, and only those (by process group), and is idempotent; it runs
from ``finally`` blocks and ``atexit``.

The tests' emulated wide-area network runs the same processes inside network namespaces
(:mod:`airflow_skyplane.testing.wan_relays`), through :meth:`LocalRelayBackend._popen` and the
address methods of the :class:`~airflow_skyplane.compute.launcher.GatewayLauncher` seam.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from airflow_skyplane.compute import fleets
from airflow_skyplane.compute.launcher import GatewayHandle, StartedGateway
from airflow_skyplane.exceptions import TransferError
from airflow_skyplane.gateway.program import Program


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def safe_name(gateway_id: str) -> str:
    """A gateway id as a file name."""
    return "".join(c if c.isalnum() else "-" for c in gateway_id)


@dataclass(kw_only=True)
class LocalGateway(StartedGateway):
    """A gateway process this backend started (its child)."""

    process: subprocess.Popen[bytes]
    program_path: Path
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def exit_code(self) -> int | None:
        return self.process.returncode


@dataclass(kw_only=True)
class AttachedGateway(StartedGateway):
    """A gateway started by another process (a task that deferred or returned), found by its record.

    Liveness comes from ``/proc`` (see :func:`~airflow_skyplane.compute.fleets.runs_gateway`), since
    the gateway is not our child.
    """

    pid: int
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    def alive(self) -> bool:
        return fleets.runs_gateway(self.pid)

    @property
    def exit_code(self) -> int | None:
        return None if self.alive() else -1


class LocalRelayBackend:
    """Start, watch and stop the gateway processes of one transfer (a ``GatewayLauncher``)."""

    def __init__(
        self, workdir: str | os.PathLike[str], fleet_id: str | None = None, *, workers: int | None = None
    ) -> None:
        self.fleet_id = fleet_id or uuid.uuid4().hex[:12]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        #: worker processes per gateway (None: each gets a fair share of this machine's CPUs)
        self.gateway_workers = workers
        self.gateways: dict[str, Any] = {}
        self.detached = False
        atexit.register(self.teardown)

    @classmethod
    def attach(cls, workdir: str | os.PathLike[str], fleet_id: str | None = None) -> LocalRelayBackend:
        """The backend of gateways another process started in ``workdir`` (from their record)."""
        backend = cls(workdir, fleet_id=fleet_id)
        for gid, raw in fleets.read_gateways(backend.workdir).items():
            backend.gateways[gid] = AttachedGateway(
                gateway_id=gid,
                region=raw.get("region"),
                pid=raw["pid"],
                log_path=Path(raw["log"]),
                listen_port=raw.get("listen_port"),
                control_port=raw.get("control_port"),
                control_host=raw.get("control_host", "127.0.0.1"),
            )
        return backend

    # -- where gateways listen and how they reach each other (GatewayLauncher) ---------------------
    @property
    def same_machine(self) -> bool:
        return True

    @property
    def shared_cpus(self) -> int:
        """Every gateway of this backend runs on this machine: they share its CPUs (each gets a fair
        share of worker processes, see transfer/tuning.py)."""
        return os.cpu_count() or 1

    def listen_endpoint(self, region: str | None) -> tuple[str, int]:
        return ("0.0.0.0" if region else "127.0.0.1"), 0

    def control_host(self, region: str | None) -> str:
        return "127.0.0.1"

    def hop_address(self, src_region: str | None, dst_region: str | None) -> str:
        return "127.0.0.1"

    def cert_addresses(self, region: str | None, peers: Sequence[str | None]) -> list[str]:
        return []

    # -- gateways ---------------------------------------------------------------------------------
    def _record(self) -> None:
        """Write ``gateways.json``, so the fleet can be found and torn down by its id alone."""
        fleets.write_gateways(
            self.workdir,
            {
                gid: {
                    "pid": gw.process.pid if isinstance(gw, LocalGateway) else gw.pid,
                    "region": gw.region,
                    "log": str(gw.log_path),
                    "listen_port": gw.listen_port,
                    "control_port": gw.control_port,
                    "control_host": gw.control_host,
                }
                for gid, gw in self.gateways.items()
            },
        )

    def detach(self) -> None:
        """Leave the gateways running after this process exits (a deferred or detached transfer).

        They are stopped later through :meth:`attach` or
        :func:`~airflow_skyplane.compute.fleets.teardown_fleet`, or by the sweeper at expiry.
        """
        self.detached = True
        atexit.unregister(self.teardown)

    def _env(self) -> dict[str, str]:
        # the gateway imports this very package; on a VM it is installed, here it is on our path
        root = str(Path(__file__).resolve().parents[2])
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def _command(self, argv: list[str], region: str | None) -> list[str]:
        """The command line that runs a gateway of ``region`` (the emulated WAN wraps it to run in
        the region's network namespace)."""
        return argv

    def _popen(self, argv: list[str], region: str | None, log: IO[bytes]) -> subprocess.Popen[bytes]:
        """Run a gateway's command in its own session."""
        return subprocess.Popen(
            self._command(argv, region),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env(),
            start_new_session=True,
        )

    def start(self, program: Program, region: str | None = None, timeout: float = 30.0) -> GatewayHandle:
        safe = safe_name(program.gateway_id)
        program_path = self.workdir / f"{safe}.program.json"
        ready_path = self.workdir / f"{safe}.ready.json"
        log_path = self.workdir / f"{safe}.log"
        ready_path.unlink(missing_ok=True)
        fd = os.open(program_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(program.dumps())
        argv = [sys.executable, "-m", "airflow_skyplane.gateway", "--program", str(program_path)]
        argv += ["--ready-file", str(ready_path)]
        with log_path.open("ab") as log:
            process = self._popen(argv, region, log)
        gateway = LocalGateway(
            gateway_id=program.gateway_id,
            region=region,
            process=process,
            program_path=program_path,
            log_path=log_path,
        )
        gateway.control_host = program.control.host
        self.gateways[program.gateway_id] = gateway
        self._record()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise TransferError(
                    f"gateway {program.gateway_id} exited with code {process.returncode} while starting; "
                    f"its log ends with:\n{gateway.log_tail()}"
                )
            if ready_path.exists():
                try:
                    ready = json.loads(ready_path.read_text())
                except json.JSONDecodeError:
                    time.sleep(0.02)
                    continue
                gateway.info = ready
                gateway.listen_port, gateway.control_port = (
                    ready.get("listen_port"),
                    ready.get("control_port"),
                )
                self._record()
                return gateway
            time.sleep(0.02)
        self.stop(program.gateway_id)
        raise TransferError(
            f"gateway {program.gateway_id} did not become ready in {timeout:.0f} s: {gateway.log_tail()}"
        )

    def stop(self, gateway_id: str, timeout: float = 10.0) -> None:
        gateway = self.gateways.get(gateway_id)
        if gateway is None:
            return
        if isinstance(gateway, AttachedGateway):
            fleets.stop_process_group(gateway.pid, timeout)
            return
        proc = gateway.process
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)

    def teardown(self) -> None:
        atexit.unregister(self.teardown)
        # ask every gateway to stop first, then wait for each: they wind down together
        for gateway in list(self.gateways.values()):
            if isinstance(gateway, LocalGateway) and gateway.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(gateway.process.pid, signal.SIGTERM)
        for gateway_id in list(self.gateways):
            self.stop(gateway_id)
        for path in self.workdir.glob("*.program.json"):
            path.unlink(missing_ok=True)  # they hold credentials

    def running(self) -> list[str]:
        return [g for g, gw in self.gateways.items() if gw.alive()]
