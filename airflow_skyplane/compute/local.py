"""The local relay backend: gateways as processes on this machine (the embedded default).

Each gateway runs as ``python -m airflow_skyplane.gateway --program FILE --ready-file FILE`` in its
own session (process group), exactly as on a relay VM, with its program file written 0600. On
loopback by default; with an :class:`~airflow_skyplane.compute.netns.EmulatedWAN`, each gateway runs
inside the network namespace of its region, so the bytes between regions cross shaped veth links.

The gateway writes its bound ports to the ready file once it listens; :meth:`LocalRelayBackend.start`
waits for it. :meth:`LocalRelayBackend.teardown` stops every gateway this backend started, and only
those (by process group), and is idempotent; it runs from ``finally`` blocks and ``atexit``.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_skyplane.exceptions import TransferError
from airflow_skyplane.gateway.program import Program


@dataclass
class LocalGateway:
    gateway_id: str
    region: str | None
    process: subprocess.Popen[bytes]
    program_path: Path
    log_path: Path
    listen_port: int | None = None
    control_port: int | None = None
    control_host: str = "127.0.0.1"
    info: dict[str, Any] = field(default_factory=dict)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class LocalRelayBackend:
    """Start, watch and stop gateway processes for one fleet."""

    def __init__(
        self, workdir: str | os.PathLike[str], wan: Any | None = None, fleet_id: str | None = None
    ) -> None:
        self.fleet_id = fleet_id or uuid.uuid4().hex[:12]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        self.wan = wan
        self.gateways: dict[str, LocalGateway] = {}
        atexit.register(self.teardown)

    def _env(self) -> dict[str, str]:
        # the gateway imports this very package; on a VM it is installed, here it is on our path
        root = str(Path(__file__).resolve().parents[2])
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def start(self, program: Program, region: str | None = None, timeout: float = 30.0) -> LocalGateway:
        safe = "".join(c if c.isalnum() else "-" for c in program.gateway_id)
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
            if self.wan is not None and region is not None:
                process = self.wan.popen(
                    region,
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env(),
                    start_new_session=True,
                )
            else:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env(),
                    start_new_session=True,
                )
        gateway = LocalGateway(program.gateway_id, region, process, program_path, log_path)
        gateway.control_host = program.control.host
        self.gateways[program.gateway_id] = gateway
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise TransferError(
                    f"gateway {program.gateway_id} exited with code {process.returncode} while starting; "
                    f"its log ends with:\n{gateway.log_tail()}"
                )
            if ready_path.exists():
                try:
                    gateway.info = json.loads(ready_path.read_text())
                except json.JSONDecodeError:
                    time.sleep(0.02)
                    continue
                gateway.listen_port = gateway.info.get("listen_port")
                gateway.control_port = gateway.info.get("control_port")
                return gateway
            time.sleep(0.02)
        self.stop(program.gateway_id)
        raise TransferError(
            f"gateway {program.gateway_id} did not become ready in {timeout:.0f} s: {gateway.log_tail()}"
        )

    def stop(self, gateway_id: str, timeout: float = 10.0) -> int | None:
        gateway = self.gateways.get(gateway_id)
        if gateway is None:
            return None
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
        return proc.returncode

    def teardown(self) -> None:
        for gateway_id in list(self.gateways):
            self.stop(gateway_id)
        for path in self.workdir.glob("*.program.json"):
            path.unlink(missing_ok=True)  # they hold credentials

    def running(self) -> list[str]:
        return [g for g, gw in self.gateways.items() if gw.process.poll() is None]
