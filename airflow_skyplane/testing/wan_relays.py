"""Gateways on the emulated wide-area network (:mod:`.netns`): the launchers of the tests' WAN runs.

* :class:`WANRelayBackend`: each gateway of a region runs as a local process inside that region's
  network namespace, so the bytes between regions cross the shaped veth links; the controller reaches
  its control endpoint over the region's control link.
* :class:`WANSSHRelayBackend`: each region also runs its own ``sshd`` inside its namespace (reached
  over the region's control link) and gateways are bootstrapped exactly as on a cloud VM
  (:func:`~airflow_skyplane.compute.remote.launch_over_ssh`): paramiko connects with the fleet's SSH
  key and a pinned host key, ships this package as a zip, the program and every file it names over
  SFTP (0600), starts the daemon detached, and reads its ready file back.

Both are :class:`~airflow_skyplane.compute.launcher.GatewayLauncher` s built on the local relay
backend; :func:`local_relays` picks one the way the local backend was once configured
(``wan=``, ``via_ssh=``). Needs root and iproute2 (and OpenSSH's ``sshd`` for the SSH one).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from airflow_skyplane.compute.local import LocalRelayBackend, safe_name
from airflow_skyplane.compute.remote import SSHGateway, launch_over_ssh
from airflow_skyplane.compute.ssh import HostKeyPins, RelaySSH, SSHKeyPair
from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.gateway.program import Program
from airflow_skyplane.testing.netns import EmulatedWAN
from airflow_skyplane.testing.sshd import LocalSSHD


class WANRelayBackend(LocalRelayBackend):
    """Gateway processes inside the emulated WAN's namespaces (plain loopback for a gateway without
    a region)."""

    def __init__(
        self, workdir: str | os.PathLike[str], wan: EmulatedWAN, fleet_id: str | None = None
    ) -> None:
        super().__init__(workdir, fleet_id)
        self.wan = wan

    def control_host(self, region: str | None) -> str:
        """The host-facing control address of the gateway's region."""
        return self.wan.control_address(region) if region else "127.0.0.1"

    def hop_address(self, src_region: str | None, dst_region: str | None) -> str:
        return self.wan.address(src_region, dst_region) if src_region and dst_region else "127.0.0.1"

    def cert_addresses(self, region: str | None, peers: Sequence[str | None]) -> list[str]:
        return [self.wan.address(peer or "", region) for peer in peers] if region else []

    def _command(self, argv: list[str], region: str | None) -> list[str]:
        return self.wan.command(region, argv) if region is not None else argv


class WANSSHRelayBackend(WANRelayBackend):
    """Gateways bootstrapped over SSH into each region's namespace, as on a cloud VM."""

    def __init__(
        self, workdir: str | os.PathLike[str], wan: EmulatedWAN, fleet_id: str | None = None
    ) -> None:
        super().__init__(workdir, wan, fleet_id)
        self._sshd: dict[str, LocalSSHD] = {}
        self._sessions: dict[str, RelaySSH] = {}
        self._ssh_key: SSHKeyPair | None = None

    @property
    def same_machine(self) -> bool:
        return False  # a gateway started over SSH outlives no process of ours

    def _record(self) -> None:
        """Nothing to record: relays reached over SSH stop with their session (see teardown)."""

    def detach(self) -> None:
        raise InvalidInputError(
            "a transfer whose relays are reached over SSH cannot be detached from its task: "
            "use wait_for_completion=True"
        )

    def _session(self, region: str) -> RelaySSH:
        if region in self._sessions:
            return self._sessions[region]
        if self._ssh_key is None:
            self._ssh_key = SSHKeyPair.generate(f"skyplane-fleet-{self.fleet_id}")
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

    def start(self, program: Program, region: str | None = None, timeout: float = 30.0) -> SSHGateway:
        if region is None:
            raise InvalidInputError(
                f"gateway {program.gateway_id}: a relay over SSH needs the gateway's region"
            )
        session = self._session(region)
        remote = f"{self.workdir}/remote-{safe_name(program.gateway_id)}"  # the relay's own folder
        session.run(f"mkdir -p -m 700 {remote}")
        package = session.ship_package(remote)
        return launch_over_ssh(
            session, remote, program, region, python=sys.executable, package=package, timeout=timeout,
            gateways=self.gateways, forward_control=False,  # the region's control link reaches it
        )  # fmt: skip

    def stop(self, gateway_id: str, timeout: float = 10.0) -> None:
        gateway = self.gateways.get(gateway_id)
        if isinstance(gateway, SSHGateway) and not gateway.stopped:
            with contextlib.suppress(Exception):
                gateway.session.stop(gateway.pid, grace_s=timeout)
            gateway.stopped = True

    def teardown(self) -> None:
        super().teardown()
        for region, session in list(self._sessions.items()):
            with contextlib.suppress(Exception):
                session.run(f"rm -rf {self.workdir}/remote-*", check=False)
            session.close()
            del self._sessions[region]
        for region in list(self._sshd):
            self._sshd.pop(region).stop()


def local_relays(
    workdir: str | os.PathLike[str],
    wan: EmulatedWAN | None = None,
    fleet_id: str | None = None,
    *,
    via_ssh: bool = False,
) -> LocalRelayBackend:
    """The launcher of gateways on this machine: on loopback, inside the emulated WAN's namespaces,
    or bootstrapped over SSH into them (``via_ssh``)."""
    if wan is None:
        if via_ssh:
            raise InvalidInputError("via_ssh needs an emulated WAN: each region's sshd runs in its namespace")
        return LocalRelayBackend(workdir, fleet_id)
    if via_ssh:
        return WANSSHRelayBackend(workdir, wan, fleet_id)
    return WANRelayBackend(workdir, wan, fleet_id)
