"""Gateways on relay machines reached over SSH: cloud VMs, or the emulated ones of the tests.

A :class:`RelayHosts` is the fleet's set of machines, one per region (:class:`RelayHost`), with the
fleet's SSH key and host-key pins, and one paramiko session per machine, opened on first use and
shared by every transfer of the fleet. :meth:`RelayHosts.backend` gives one transfer its gateway
backend, :class:`SSHRelayBackend`, a :class:`~airflow_skyplane.compute.launcher.GatewayLauncher`
that also tells the transfer job where its gateways listen and how they reach each other:

* a gateway **listens** on its machine's own address (a VM's private address, which the cloud maps
  its public one to) on a port of :data:`~airflow_skyplane.compute.relays.GATEWAY_PORTS`, the range
  the fleet's firewall rules admit from the fleet's own addresses only;
* other gateways **dial** the machine's data address (its public address, or its private one when
  the worker and relays share a network: ``relay_address="private"``);
* its **control endpoint** listens on the machine's loopback only; the worker reaches it through an
  SSH port forward (:meth:`~airflow_skyplane.compute.ssh.RelaySSH.forward`), so nothing but SSH from
  the worker's address is ever admitted to a relay.

Starting a gateway: check the relay's Python has the gateway's light dependencies (install them with
pip from the ``gateway`` extra of this package's metadata when it does not, or fail naming the fix),
ship this worker's own ``airflow_skyplane`` code as a zip (the exact version of the worker), ship the
program and every file it names (certificates, keys, the manifest, the uploads) over SFTP with mode
0600, start ``python -m airflow_skyplane.gateway`` detached, wait for its ready file, forward its
control port. Teardown stops every gateway and deletes its folder on the relay (keys, credentials).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_skyplane.compute.launcher import StartedGateway
from airflow_skyplane.compute.relays import GATEWAY_PORT, GATEWAY_PORT_LAST
from airflow_skyplane.exceptions import InvalidInputError, TransferError
from airflow_skyplane.gateway.program import Program

if TYPE_CHECKING:
    from airflow_skyplane.compute.ssh import RelaySSH

log = logging.getLogger(__name__)

#: what the gateway imports beyond the standard library on every relay (the store SDKs load lazily)
_GATEWAY_IMPORTS = "import lz4.frame, cryptography, tenacity"


@dataclass
class RelayHost:
    """One relay machine: how the worker reaches it over SSH and how gateways reach each other."""

    region: str
    ssh_host: str
    data_address: str  # what other gateways dial
    listen_address: str = "0.0.0.0"  # what its gateways bind (a VM's own private address)
    ssh_port: int = 22
    username: str = "ubuntu"
    host_keys: list[str] = field(default_factory=list)  # pinned before the first connection, if known
    instance_id: str = ""


@dataclass(kw_only=True)
class SSHGateway(StartedGateway):
    """A gateway started over SSH on a relay machine."""

    session: RelaySSH
    pid: int
    #: its log on the relay
    log_path: str
    #: the files its program named (controller's path -> the relay's copy)
    shipped: dict[str, str] = field(default_factory=dict)
    stopped: bool = False

    def resend(self, path: str) -> None:
        """Replace the relay's copy of ``path`` (whole, 0600): renewed credentials reach the gateway
        over the fleet's SSH session, and it reads them at its next refresh."""
        remote = self.shipped.get(path)
        if remote is not None and not self.stopped:
            self.session.put(remote, Path(path).read_bytes(), mode=0o600)

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


def ship_program(session: RelaySSH, remote: str, program: Program) -> tuple[str, dict[str, str]]:
    """Hand ``program`` and every file it names (certificates, keys, manifest, uploads, the stores'
    credential files) to a relay over SFTP, each 0600 before a byte is written, the program naming
    the relay's copies; return the program's path on the relay, and where each file went."""
    shipped: dict[str, str] = {}

    def ship(path: str) -> str:
        if path not in shipped:
            shipped[path] = f"{remote}/{len(shipped):02d}-{Path(path).name}"
            session.put(shipped[path], Path(path).read_bytes(), mode=0o600)
        return shipped[path]

    def store(part: Mapping[str, Any]) -> dict[str, Any]:
        spec = dict(part["store"])
        if spec.get("credentials_file"):
            spec["credentials_file"] = ship(spec["credentials_file"])
        return {**part, "store": spec}

    source, destination = program.source, program.destination
    on_relay = replace(
        program,
        tls={role: ship(path) for role, path in program.tls.items()},
        cipher_key_file=ship(program.cipher_key_file) if program.cipher_key_file else None,
        source={**store(source), "manifest": ship(source["manifest"])} if source else None,
        destination=(
            {**store(destination), "uploads_file": ship(destination["uploads_file"])}
            if destination and destination.get("uploads_file")
            else store(destination)
            if destination
            else None
        ),
    )
    session.put(f"{remote}/program.json", on_relay.dumps().encode(), mode=0o600)
    return f"{remote}/program.json", shipped


def launch_over_ssh(
    session: RelaySSH,
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
    program_path, shipped = ship_program(session, remote, program)
    pid = session.start_daemon(
        [python, "-m", "airflow_skyplane.gateway", "--program", program_path,
         "--ready-file", f"{remote}/ready.json"],
        workdir=remote,
        log_path=f"{remote}/gateway.log",
        env={"PYTHONPATH": package},
    )  # fmt: skip
    gateway = SSHGateway(
        gateway_id=program.gateway_id,
        region=region,
        session=session,
        pid=pid,
        log_path=f"{remote}/gateway.log",
        shipped=shipped,
    )
    gateway.control_host = "127.0.0.1" if forward_control else program.control.host
    gateways[program.gateway_id] = gateway
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = session.run(f"cat {shlex.quote(remote)}/ready.json 2>/dev/null", check=False)
        if probe.exit_status == 0 and probe.stdout.strip():
            ready = json.loads(probe.stdout)
            gateway.info, gateway.listen_port = ready, ready.get("listen_port")
            port = int(ready["control_port"])
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


def gateway_requirements() -> list[str]:
    """The ``gateway`` extra of this package's installed metadata, for ``pip install`` on a relay."""
    from importlib import metadata

    try:
        requires = metadata.requires("airflow-skyplane") or []
    except metadata.PackageNotFoundError:
        return []
    out = []
    for line in requires:
        spec, _, marker = line.partition(";")
        if "extra" in marker and "gateway" in marker:
            out.append(spec.strip())
    return out


class RelayHosts:
    """The machines of one fleet, their SSH sessions and the gateway ports given out on each."""

    def __init__(
        self,
        fleet_id: str,
        hosts: Mapping[str, RelayHost],
        *,
        python: str = "python3",
        remote_root: str = "/tmp/airflow-skyplane",  # noqa: S108 - a folder on the relay, 0700
        connect_deadline_s: float = 300.0,
        key: Any = None,
        trust_on_first_use: bool = False,
    ) -> None:
        from airflow_skyplane.compute.ssh import HostKeyPins, SSHKeyPair

        self.fleet_id = fleet_id
        self.hosts = dict(hosts)
        self.python = python
        self.remote_root = f"{remote_root.rstrip('/')}/{fleet_id}"
        self.connect_deadline_s = connect_deadline_s
        self.key = key or SSHKeyPair.generate(f"skyplane-fleet-{fleet_id}")
        preset = {f"{h.ssh_host}:{h.ssh_port}": h.host_keys[0] for h in self.hosts.values() if h.host_keys}
        # a relay without a key read from its console is refused, unless trust on first use is asked
        self.pins = HostKeyPins(preset, pin_on_first_use=trust_on_first_use)
        self._sessions: dict[str, Any] = {}
        self._prepared: dict[str, str] = {}  # region -> the package zip on that relay
        self._ports: dict[str, int] = {}
        self._lock = threading.Lock()

    def remote_dir(self, region: str) -> str:
        """The fleet's folder on a relay (named by region too: machines that share a disk, as the
        emulated VMs of the tests do, must not write the same files)."""
        return f"{self.remote_root}/{''.join(c if c.isalnum() else '-' for c in region)}"

    def host(self, region: str | None) -> RelayHost:
        if region is None or region not in self.hosts:
            raise InvalidInputError(
                f"no relay was provisioned in region {region!r}; the fleet has {sorted(self.hosts)}"
            )
        return self.hosts[region]

    def session(self, region: str) -> Any:
        from airflow_skyplane.compute.ssh import RelaySSH

        with self._lock:
            if region not in self._sessions:
                host = self.host(region)
                session = RelaySSH(
                    host.ssh_host,
                    port=host.ssh_port,
                    username=host.username,
                    key=self.key,
                    pins=self.pins,
                    connect_deadline_s=self.connect_deadline_s,
                )
                session.connect()
                self._sessions[region] = session
            return self._sessions[region]

    def next_port(self, region: str) -> int:
        with self._lock:
            port = self._ports.get(region, GATEWAY_PORT)
            if port > GATEWAY_PORT_LAST:
                raise TransferError(
                    f"relay {region} runs {GATEWAY_PORT_LAST - GATEWAY_PORT + 1} gateways already, all the "
                    "ports its firewall admits: split the transfer into fewer destinations per task"
                )
            self._ports[region] = port + 1
            return port

    def prepare(self, region: str) -> str:
        """Make sure the relay can run the gateway; ship the package once; return its remote path."""
        with self._lock:
            if region in self._prepared:
                return self._prepared[region]
        session = self.session(region)
        session.run(f"mkdir -p -m 700 {shlex.quote(self.remote_dir(region))}")
        python = shlex.quote(self.python)
        probe = session.run(f"{python} -c {shlex.quote(_GATEWAY_IMPORTS)}", check=False)
        if probe.exit_status != 0:
            requirements = gateway_requirements()
            log.info("relay %s: installing the gateway's dependencies (%s)", region, ", ".join(requirements))
            install = session.run(
                f"{python} -m pip install --quiet --user {' '.join(shlex.quote(r) for r in requirements)}",
                check=False,
                timeout=900,
            )
            if install.exit_status != 0 or not requirements:
                raise TransferError(
                    f"relay {region} ({session.host_id}): {self.python} cannot import the gateway's "
                    f"dependencies and installing them failed: {(install.stderr or probe.stderr)[-800:]}; "
                    "use a relay image with `pip install 'airflow-skyplane[gateway]'` done (relay_image), "
                    "or point relay_python at an interpreter that has them"
                )
        package = session.ship_package(self.remote_dir(region))
        with self._lock:
            self._prepared[region] = package
        return package

    def prepare_all(self, *, parallel: bool = True) -> None:
        """Bootstrap every relay (SSH reachable, gateway dependencies, package) at once: the waits
        for booting VMs and the installs overlap instead of adding up. The first error is raised
        once every relay has finished."""
        regions = sorted(self.hosts)
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(regions))) if parallel else 1) as pool:
            futures = [pool.submit(self.prepare, region) for region in regions]
        for future in futures:
            future.result()

    def backend(self, tag: str) -> SSHRelayBackend:
        """The gateway backend of one transfer of the fleet (``tag`` keeps its folders apart)."""
        return SSHRelayBackend(self, tag)

    def close(self) -> None:
        """Delete the fleet's folder on every relay reached and close the sessions. Idempotent."""
        with self._lock:
            sessions, self._sessions = dict(self._sessions), {}
            self._prepared.clear()
        for session in sessions.values():
            with contextlib.suppress(Exception):
                session.run(f"rm -rf -- {shlex.quote(self.remote_root)}", check=False)  # fleet's only
            session.close()


class SSHRelayBackend:
    """Start, watch and stop one transfer's gateways on the fleet's relays, over SSH."""

    def __init__(self, relays: RelayHosts, tag: str) -> None:
        self.relays = relays
        self.tag = "".join(c if c.isalnum() else "-" for c in tag)
        self.gateways: dict[str, SSHGateway] = {}

    # -- where gateways listen and how they reach each other (GatewayLauncher) ---------------------
    @property
    def same_machine(self) -> bool:
        return False  # the relays cannot watch the worker's processes; they stop at the fleet's expiry

    @property
    def shared_cpus(self) -> int | None:
        return None  # one relay VM per region: its gateway has the machine's CPUs to itself

    @property
    def gateway_workers(self) -> int | None:
        return None  # the gateway sizes its workers to its VM

    def listen_endpoint(self, region: str | None) -> tuple[str, int]:
        host = self.relays.host(region)
        return host.listen_address, self.relays.next_port(host.region)

    def control_host(self, region: str | None) -> str:
        return "127.0.0.1"  # the relay's loopback; the worker comes through an SSH port forward

    def hop_address(self, src_region: str | None, dst_region: str | None) -> str:
        return self.relays.host(dst_region).data_address

    def cert_addresses(self, region: str | None, peers: Sequence[str | None] = ()) -> list[str]:
        host = self.relays.host(region)
        return sorted({host.data_address, host.listen_address} - {"0.0.0.0"})

    # -- gateways ---------------------------------------------------------------------------------
    def start(self, program: Program, region: str | None = None, timeout: float = 60.0) -> SSHGateway:
        host = self.relays.host(region)
        package = self.relays.prepare(host.region)
        session = self.relays.session(host.region)
        safe = "".join(c if c.isalnum() else "-" for c in program.gateway_id)
        remote = f"{self.relays.remote_dir(host.region)}/{self.tag}-{safe}"
        session.run(f"mkdir -p -m 700 {shlex.quote(remote)}")
        return launch_over_ssh(
            session, remote, program, host.region, python=self.relays.python, package=package,
            timeout=timeout, gateways=self.gateways, forward_control=True,
        )  # fmt: skip

    def stop(self, gateway_id: str, timeout: float = 10.0) -> None:
        gateway = self.gateways.get(gateway_id)
        if gateway is not None and not gateway.stopped:
            with contextlib.suppress(Exception):
                gateway.session.stop(gateway.pid, grace_s=timeout)
            gateway.stopped = True

    def teardown(self) -> None:
        for gateway_id in list(self.gateways):
            self.stop(gateway_id)
        for gateway in self.gateways.values():
            folder = str(Path(gateway.log_path).parent)
            with contextlib.suppress(Exception):
                gateway.session.run(f"rm -rf -- {shlex.quote(folder)}", check=False)

    def detach(self) -> None:
        raise InvalidInputError(
            "a transfer on cloud relays is conducted over the worker's SSH sessions and cannot be "
            "detached from its task yet: use wait_for_completion=True (and deferrable=False)"
        )

    def running(self) -> list[str]:
        return [g for g, gw in self.gateways.items() if gw.alive()]
