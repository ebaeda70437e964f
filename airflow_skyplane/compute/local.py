"""The local relay backend: gateways as processes on this machine (the embedded default).

Each gateway runs as ``python -m airflow_skyplane.gateway --program FILE --ready-file FILE`` in its
own session (process group), exactly as on a relay VM, with its program file written 0600. On
loopback by default; with an :class:`~airflow_skyplane.compute.netns.EmulatedWAN`, each gateway runs
inside the network namespace of its region, so the bytes between regions cross shaped veth links.

With ``via_ssh`` (emulated WAN only), each region also runs its own ``sshd`` inside its namespace,
reached over the region's control link, and gateways are bootstrapped exactly as on a cloud VM:
paramiko connects with the fleet's SSH key and a pinned host key, ships this package as a zip, the
program and every file it names (certificates, keys, manifest) over SFTP (0600), starts the daemon
detached, and reads its ready file back.

The gateway writes its bound ports to the ready file once it listens; :meth:`LocalRelayBackend.start`
waits for it. :meth:`LocalRelayBackend.teardown` stops every gateway this backend started, and only
those (by process group), and is idempotent; it runs from ``finally`` blocks and ``atexit``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_skyplane.compute import fleets
from airflow_skyplane.exceptions import InvalidInputError, TransferError
from airflow_skyplane.gateway.program import Program


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def ship_program(session: Any, remote: str, program: Program) -> str:
    """Hand ``program`` and every file it names (certificates, keys, manifest, uploads) to a relay
    over SFTP, each 0600 before a byte is written, the program naming the relay's copies; return the
    program's path on the relay."""
    raw = program.raw()
    shipped: dict[str, str] = {}

    def ship(path: str) -> str:
        if path not in shipped:
            shipped[path] = f"{remote}/{len(shipped):02d}-{Path(path).name}"
            session.put(shipped[path], Path(path).read_bytes(), mode=0o600)
        return shipped[path]

    raw["tls"] = {role: ship(path) for role, path in raw["tls"].items()}
    if raw.get("cipher_key_file"):
        raw["cipher_key_file"] = ship(raw["cipher_key_file"])
    if raw.get("source"):
        raw["source"] = {**raw["source"], "manifest": ship(raw["source"]["manifest"])}
    if raw.get("destination", {}).get("uploads_file"):
        raw["destination"] = {**raw["destination"], "uploads_file": ship(raw["destination"]["uploads_file"])}
    session.put(f"{remote}/program.json", Program.parse(raw).dumps().encode(), mode=0o600)
    return f"{remote}/program.json"


def launch_over_ssh(
    session: Any,
    remote: str,
    program: Program,
    region: str,
    *,
    python: str,
    package: str,
    timeout: float,
    gateways: dict[str, Any],
    forward_control: bool,
) -> SSHGateway:
    """Ship ``program`` to the relay's folder ``remote``, start the gateway detached with ``package``
    (this package's zip) on its path, record it in ``gateways`` (so a teardown finds it even if it
    never becomes ready) and wait for its ready file. With ``forward_control``, its control endpoint
    (on the relay's loopback) is reached through an SSH port forward."""
    program_path = ship_program(session, remote, program)
    pid = session.start_daemon(
        [python, "-m", "airflow_skyplane.gateway", "--program", program_path,
         "--ready-file", f"{remote}/ready.json"],
        workdir=remote,
        log_path=f"{remote}/gateway.log",
        env={"PYTHONPATH": package},
    )  # fmt: skip
    gateway = SSHGateway(program.gateway_id, region, session, pid, f"{remote}/gateway.log")
    gateway.control_host = "127.0.0.1" if forward_control else program.control.host
    gateways[program.gateway_id] = gateway
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = session.run(f"cat {shlex.quote(remote)}/ready.json 2>/dev/null", check=False)
        if probe.exit_status == 0 and probe.stdout.strip():
            gateway.info = json.loads(probe.stdout)
            gateway.listen_port = gateway.info.get("listen_port")
            port = int(gateway.info["control_port"])
            gateway.control_port = session.forward(port) if forward_control else port
            return gateway
        if not session.is_running(pid):
            raise TransferError(
                f"gateway {program.gateway_id} on relay {region} ({session.host_id}) exited while "
                f"starting; its log ends with:\n{gateway.log_tail()}"
            )
        time.sleep(0.1)
    raise TransferError(
        f"gateway {program.gateway_id} on relay {region} did not become ready in {timeout:.0f} s; its log "
        f"ends with:\n{gateway.log_tail()}"
    )


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
        return _tail(self.log_path, lines)

    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def exit_code(self) -> int | None:
        return self.process.returncode


@dataclass
class AttachedGateway:
    """A gateway started by another process (a task that deferred or returned), found by its record.

    The same surface as :class:`LocalGateway`; liveness comes from ``/proc`` (see
    :func:`~airflow_skyplane.compute.fleets.runs_gateway`), since the gateway is not our child.
    """

    gateway_id: str
    region: str | None
    pid: int
    log_path: Path
    listen_port: int | None = None
    control_port: int | None = None
    control_host: str = "127.0.0.1"
    info: dict[str, Any] = field(default_factory=dict)

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    def alive(self) -> bool:
        return fleets.runs_gateway(self.pid)

    @property
    def exit_code(self) -> int | None:
        return None if self.alive() else -1


@dataclass
class SSHGateway:
    """A gateway started over SSH (see ``via_ssh``); the same surface as :class:`LocalGateway`."""

    gateway_id: str
    region: str
    session: Any  # RelaySSH
    pid: int
    log_path: str
    listen_port: int | None = None
    control_port: int | None = None
    control_host: str = "127.0.0.1"
    info: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False

    def alive(self) -> bool:
        return not self.stopped and bool(self.session.is_running(self.pid))

    @property
    def exit_code(self) -> int | None:
        return None if self.alive() else -1

    def log_tail(self, lines: int = 30) -> str:
        try:
            data = self.session.get(self.log_path)
        except Exception as err:  # noqa: BLE001 - only for an error message
            return f"(log unavailable: {err})"
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


class LocalRelayBackend:
    """Start, watch and stop gateway processes for one fleet."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        wan: Any | None = None,
        fleet_id: str | None = None,
        *,
        via_ssh: bool = False,
    ) -> None:
        self.fleet_id = fleet_id or uuid.uuid4().hex[:12]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        self.wan = wan
        if via_ssh and wan is None:
            raise InvalidInputError("via_ssh needs an emulated WAN: each region's sshd runs in its namespace")
        self.via_ssh = via_ssh
        self.gateways: dict[str, Any] = {}
        self._sshd: dict[str, Any] = {}
        self._sessions: dict[str, Any] = {}
        self._ssh_key: Any = None
        self.detached = False
        atexit.register(self.teardown)

    @classmethod
    def attach(cls, workdir: str | os.PathLike[str], fleet_id: str | None = None) -> LocalRelayBackend:
        """The backend of gateways another process started in ``workdir`` (from their record)."""
        backend = cls(workdir, fleet_id=fleet_id)
        for gid, raw in fleets.read_gateways(backend.workdir).items():
            backend.gateways[gid] = AttachedGateway(
                gid,
                raw.get("region"),
                raw["pid"],
                Path(raw["log"]),
                raw.get("listen_port"),
                raw.get("control_port"),
                raw.get("control_host", "127.0.0.1"),
            )
        return backend

    # -- where gateways listen and how they reach each other (GatewayLauncher) ---------------------
    @property
    def same_machine(self) -> bool:
        return not self.via_ssh  # a gateway started over SSH outlives no process of ours

    def listen_endpoint(self, region: str | None) -> tuple[str, int]:
        return ("0.0.0.0" if region else "127.0.0.1"), 0

    def control_host(self, region: str | None) -> str:
        """Loopback, or in the emulated WAN the host-facing control address of the region."""
        return self.wan.control_address(region) if self.wan is not None and region else "127.0.0.1"

    def hop_address(self, src_region: str | None, dst_region: str | None) -> str:
        if self.wan is not None and src_region and dst_region:
            return str(self.wan.address(src_region, dst_region))
        return "127.0.0.1"

    def cert_addresses(self, region: str | None, peers: Sequence[str | None]) -> list[str]:
        if self.wan is None or region is None:
            return []
        return [self.wan.address(peer or "", region) for peer in peers]

    def _record(self) -> None:
        """Write ``gateways.json``, so the fleet can be found and torn down by its id alone."""
        if self.via_ssh:
            return  # relays reached over SSH stop with their session (see teardown)
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
        if self.via_ssh:
            raise InvalidInputError(
                "a transfer whose relays are reached over SSH cannot be detached from its task: "
                "use wait_for_completion=True"
            )
        self.detached = True
        atexit.unregister(self.teardown)

    def _env(self) -> dict[str, str]:
        # the gateway imports this very package; on a VM it is installed, here it is on our path
        root = str(Path(__file__).resolve().parents[2])
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def start(self, program: Program, region: str | None = None, timeout: float = 30.0) -> Any:
        if self.via_ssh:
            if region is None:
                raise InvalidInputError(f"gateway {program.gateway_id}: via_ssh needs the gateway's region")
            return self._start_ssh(program, region, timeout)
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
                    gateway.info = json.loads(ready_path.read_text())
                except json.JSONDecodeError:
                    time.sleep(0.02)
                    continue
                gateway.listen_port = gateway.info.get("listen_port")
                gateway.control_port = gateway.info.get("control_port")
                self._record()
                return gateway
            time.sleep(0.02)
        self.stop(program.gateway_id)
        raise TransferError(
            f"gateway {program.gateway_id} did not become ready in {timeout:.0f} s: {gateway.log_tail()}"
        )

    # -- over SSH, as on a cloud VM --------------------------------------------------------------
    def _session(self, region: str) -> Any:
        from airflow_skyplane.compute.ssh import HostKeyPins, RelaySSH, SSHKeyPair
        from airflow_skyplane.compute.sshd import LocalSSHD

        if region in self._sessions:
            return self._sessions[region]
        if self._ssh_key is None:
            self._ssh_key = SSHKeyPair.generate(f"skyplane-fleet-{self.fleet_id}")
        assert self.wan is not None  # checked in __init__
        host = self.wan.control_address(region)
        sshd = LocalSSHD(
            self._ssh_key.public_openssh,
            address=host,
            port=22,  # the namespace has its own ports, as a VM has
            wrap=["ip", "netns", "exec", self.wan.namespace(region)],
        )
        self._sshd[region] = sshd
        sshd.start()
        pins = HostKeyPins({f"{host}:{sshd.port}": sshd.host_public_key}, pin_on_first_use=False)
        session = RelaySSH(host, port=sshd.port, username=sshd.username, key=self._ssh_key, pins=pins)
        session.connect()
        self._sessions[region] = session
        return session

    def _start_ssh(self, program: Program, region: str, timeout: float) -> SSHGateway:
        session = self._session(region)
        safe = "".join(c if c.isalnum() else "-" for c in program.gateway_id)
        remote = f"{self.workdir}/remote-{safe}"  # the relay's own folder ("/opt/skyplane" on a VM)
        session.run(f"mkdir -p -m 700 {remote}")
        package = session.ship_package(remote)
        return launch_over_ssh(
            session, remote, program, region, python=sys.executable, package=package, timeout=timeout,
            gateways=self.gateways, forward_control=False,  # the region's control link reaches it
        )  # fmt: skip

    def stop(self, gateway_id: str, timeout: float = 10.0) -> None:
        gateway = self.gateways.get(gateway_id)
        if gateway is None:
            return
        if isinstance(gateway, SSHGateway):
            if not gateway.stopped:
                with contextlib.suppress(Exception):
                    gateway.session.stop(gateway.pid, grace_s=timeout)
                gateway.stopped = True
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
        for gateway_id in list(self.gateways):
            self.stop(gateway_id)
        for region, session in list(self._sessions.items()):
            with contextlib.suppress(Exception):
                session.run(f"rm -rf {self.workdir}/remote-*", check=False)
            session.close()
            del self._sessions[region]
        for region in list(self._sshd):
            self._sshd.pop(region).stop()
        for path in self.workdir.glob("*.program.json"):
            path.unlink(missing_ok=True)  # they hold credentials

    def running(self) -> list[str]:
        return [g for g, gw in self.gateways.items() if gw.alive()]
