"""Emulated relay VMs: the instances of moto's EC2 (or of the Compute Engine fake) brought to life as
SSH servers on loopback.

moto (in server mode, in the emulated sky) serves the EC2 API the AWS relay backend calls through
``EC2Hook``: security groups, key pairs, tagged instances. Its instances are records, not machines;
:class:`EmulatedVMs` plays the machine's part, as cloud-init would on a real VM:

* :meth:`EmulatedVMs.subnets` makes, per region, a VPC and a subnet whose addresses lie on loopback
  (``127.<n>.1.0/24``), so that moto gives each instance a private address this machine owns; the
  operator is told to launch relays there and to reach them on their private addresses
  (``aws_subnets`` and ``relay_address="private"``, as with a peered VPC);
* a watcher thread starts, for every running instance of a fleet, an ``sshd`` bound to that
  instance's address that admits the key pair the instance was launched with (read back from the
  EC2 API, as cloud-init installs it), and marks every process started through it with
  ``SKYPLANE_EMULATED_VM=<instance id>``;
* at boot it prints the sshd's host key to the instance's console as cloud-init does (``-----BEGIN
  SSH HOST KEY KEYS-----``): moto's ``GetConsoleOutput`` answers it (``console_dir``, see
  :mod:`airflow_skyplane.testing._moto_server`), the Compute Engine fake's serial port too, so the
  worker pins the key the machine really has; :attr:`EmulatedVMs.forge_console` prints another key
  instead, as a machine-in-the-middle would present, for the test of a refused key;
* when the instance is terminated, its sshd stops and every process it started is killed, as a VM's
  would be.

The Compute Engine fake (:class:`~airflow_skyplane.testing.fake_gce.FakeGCE`, with
``loopback_addresses=True``) gives its instances loopback addresses itself; the authorized key comes
from their ``ssh-keys`` metadata, as the guest agent installs it. The Resource Manager fake
(:class:`~airflow_skyplane.testing.fake_arm.FakeARM`, with ``loopback_addresses=True``) gives its
public IPs loopback addresses; the key comes from the VM's ``osProfile``, the console is its boot
diagnostics' serial log.

So the relay bootstrap (paramiko, SFTP hand-over, detached gateway, port-forwarded control endpoint)
and the data plane between relays run for real; only the VM's kernel is this machine's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

MARKER = "SKYPLANE_EMULATED_VM"


class EmulatedVMs:
    """Start one sshd per running relay instance of a cloud emulator; stop it when the instance goes.

    :param running: ``() -> {instance id: address}`` of the running relay instances.
    :param describe: ``instance id -> (authorized public key, metadata text)``, read once at boot;
        the metadata (tags, labels, user-data, startup script) is kept for tests to search.
    :param ssh_port: the port every emulated VM's sshd listens on (each on its own address).
    :param console: ``(instance id, text)``: print ``text`` to the instance's console, as the cloud
        shows it.
    """

    def __init__(
        self,
        running: Callable[[], dict[str, str]],
        describe: Callable[[str], tuple[str, str]],
        *,
        ssh_port: int = 2222,
        console: Callable[[str, str], None] | None = None,
    ) -> None:
        self._running, self._describe = running, describe
        self.ssh_port = ssh_port
        self._console = console
        #: print a key other than the sshd's to the console (the cloud shows one key, the address
        #: presents another: the worker must refuse it)
        self.forge_console = False
        self.sshd: dict[str, Any] = {}  # instance id -> LocalSSHD
        self.started: list[str] = []  # every instance that was brought up
        self.metadata: dict[str, str] = {}  # instance id -> its tags and user-data, as the cloud shows them
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self.regions: list[str] = []

    @classmethod
    def on_moto(
        cls, client: Any, regions: Iterable[str], *, ssh_port: int = 2222, console_dir: Path | None = None
    ) -> EmulatedVMs:
        """For moto's EC2: ``client`` is ``aws region -> boto3 EC2 client``; ``regions`` the planner
        regions to watch (``aws:us-east-1``...); ``console_dir`` the emulated sky's
        ``ec2_console_dir``, where moto reads the consoles. Use :meth:`subnets` for the relays' subnets."""
        regions = list(regions)

        def running() -> dict[str, str]:
            out = {}
            for region in regions:
                pages = client(region.split(":", 1)[1]).describe_instances(
                    Filters=[{"Name": "tag-key", "Values": ["skyplane:fleet"]},
                             {"Name": "instance-state-name", "Values": ["running"]}]
                )  # fmt: skip
                for reservation in pages["Reservations"]:
                    for instance in reservation["Instances"]:
                        address = instance.get("PrivateIpAddress", "")
                        if address.startswith("127."):
                            out[instance["InstanceId"]] = f"{region}|{address}"
            return out

        def describe(instance_id: str) -> tuple[str, str]:
            region = where[instance_id]
            ec2 = client(region.split(":", 1)[1])
            instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
            keys = ec2.describe_key_pairs(KeyNames=[instance["KeyName"]], IncludePublicKey=True)["KeyPairs"]
            user_data = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
            return keys[0]["PublicKey"], repr(instance.get("Tags")) + repr(user_data.get("UserData"))

        where: dict[str, str] = {}

        def running_addresses() -> dict[str, str]:
            found = running()
            for instance_id, value in found.items():
                where[instance_id] = value.split("|", 1)[0]
            return {instance_id: value.split("|", 1)[1] for instance_id, value in found.items()}

        def console(instance_id: str, text: str) -> None:
            if console_dir is not None:
                (Path(console_dir) / instance_id).write_text(text)

        vms = cls(running_addresses, describe, ssh_port=ssh_port, console=console)
        vms._client, vms.regions = client, regions
        return vms

    @classmethod
    def on_fake_gce(cls, gce: Any, *, ssh_port: int = 2222) -> EmulatedVMs:
        """For :class:`~airflow_skyplane.testing.fake_gce.FakeGCE` started with loopback addresses."""

        def running() -> dict[str, str]:
            with gce.lock:
                instances = list(gce.instances.items())
            return {
                f"{zone}/{name}": body["networkInterfaces"][0]["networkIP"]
                for (zone, name), body in instances
                if body["status"] == "RUNNING" and "skyplane-fleet" in body.get("labels", {})
            }

        def describe(instance_id: str) -> tuple[str, str]:
            zone, name = instance_id.split("/", 1)
            body = gce.instances[(zone, name)]
            items = {i["key"]: i["value"] for i in body.get("metadata", {}).get("items", [])}
            key = items["ssh-keys"].split(":", 1)[1]  # "user:ssh-ed25519 AAAA... comment"
            return key, repr(body.get("labels")) + repr(body.get("metadata"))

        def console(instance_id: str, text: str) -> None:
            zone, name = instance_id.split("/", 1)
            with gce.lock:
                gce.serial_output[(zone, name)] = text

        return cls(running, describe, ssh_port=ssh_port, console=console)

    @classmethod
    def on_fake_arm(cls, arm: Any, *, ssh_port: int = 2222) -> EmulatedVMs:
        """For :class:`~airflow_skyplane.testing.fake_arm.FakeARM` started with loopback addresses:
        a VM is up once its creation succeeded, at its NIC's public address (its private one when it
        has none); the authorized key is the ``osProfile``'s, as the Linux agent installs it, and
        the console is the boot diagnostics' serial log."""

        def running() -> dict[str, str]:
            with arm.lock:
                found = {r["id"].lower(): r for r in arm.resources.values()}
            out = {}
            for vm in found.values():
                properties = vm.get("properties") or {}
                if (
                    vm["type"] != "Microsoft.Compute/virtualMachines"
                    or "skyplane-fleet" not in (vm.get("tags") or {})
                    or properties.get("provisioningState") != "Succeeded"
                ):
                    continue
                [nic_ref] = properties["networkProfile"]["networkInterfaces"][:1]
                nic = found.get(nic_ref["id"].lower()) or {}
                config = (nic.get("properties", {}).get("ipConfigurations") or [{}])[0].get("properties", {})
                ip = found.get(str((config.get("publicIPAddress") or {}).get("id", "")).lower()) or {}
                address = ip.get("properties", {}).get("ipAddress") or config.get("privateIPAddress", "")
                if address.startswith("127."):
                    out[vm["name"]] = address
            return out

        def describe(instance_id: str) -> tuple[str, str]:
            with arm.lock:
                [vm] = [
                    r
                    for r in arm.resources.values()
                    if r["type"] == "Microsoft.Compute/virtualMachines" and r["name"] == instance_id
                ]
            os_profile = vm["properties"]["osProfile"]
            key = os_profile["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"]
            return key, repr(vm.get("tags")) + repr(os_profile.get("customData"))

        def console(instance_id: str, text: str) -> None:
            with arm.lock:
                arm.serial_output[instance_id] = text

        return cls(running, describe, ssh_port=ssh_port, console=console)

    def subnets(self) -> dict[str, str]:
        """Per region, a moto subnet on loopback addresses for the relays (``aws_subnets``)."""
        out = {}
        for n, region in enumerate(self.regions):
            ec2 = self._client(region.split(":", 1)[1])
            vpc = ec2.create_vpc(CidrBlock=f"127.{100 + n}.0.0/16")["Vpc"]["VpcId"]
            subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"127.{100 + n}.1.0/24")["Subnet"]["SubnetId"]
            out[region] = subnet
        return out

    def __enter__(self) -> EmulatedVMs:
        self._thread = threading.Thread(target=self._watch, name="emulated-vms", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for instance_id in list(self.sshd):
            self._power_off(instance_id)

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self._sync()
            except Exception as err:  # noqa: BLE001 - keep watching; the test reads the errors
                self.errors.append(f"{type(err).__name__}: {err}")

    def _sync(self) -> None:
        running = self._running()
        for instance_id in list(self.sshd):
            if instance_id not in running:
                self._power_off(instance_id)
        for instance_id, address in running.items():
            if instance_id not in self.sshd:
                self._boot(instance_id, address)

    def _boot(self, instance_id: str, address: str) -> None:
        from airflow_skyplane.testing.sshd import LocalSSHD

        public_key, metadata = self._describe(instance_id)
        sshd = LocalSSHD(
            public_key,
            address=address,
            port=self.ssh_port,
            extra_config=[f"SetEnv {_marker(instance_id)}"],
        )
        sshd.start()
        self.sshd[instance_id] = sshd
        self.started.append(instance_id)
        self.metadata[instance_id] = metadata
        if self._console is not None:
            key = _other_host_key() if self.forge_console else sshd.host_public_key
            self._console(instance_id, cloud_init_console(key))

    def _power_off(self, instance_id: str) -> None:
        sshd = self.sshd.pop(instance_id, None)
        if sshd is not None:
            sshd.stop()
        for pid in processes_of(instance_id):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def live_processes(self) -> list[int]:
        """Processes still running that one of these emulated VMs started (there must be none after
        teardown). Only these VMs': other test runs on the machine bring up VMs of their own."""
        return sorted({pid for instance in self.started for pid in processes_of(instance)})


def cloud_init_console(*host_keys: str) -> str:
    """A first boot's console as cloud-init prints it: the SSH host keys between its markers."""
    lines = ["cloud-init: modules:final running", "-----BEGIN SSH HOST KEY KEYS-----"]
    lines += [" ".join(key.split()[:2]) + " root@relay" for key in host_keys]
    lines += ["-----END SSH HOST KEY KEYS-----", "cloud-init: finished"]
    return "\n".join(lines) + "\n"


def _other_host_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _marker(instance_id: str) -> str:
    """The variable set in every process an emulated VM's sshd starts (``/`` of a GCE zone/name id
    made ``.``, as sshd_config's ``SetEnv`` takes it)."""
    return f"{MARKER}={instance_id.replace('/', '.')}"


def processes_of(instance_id: str | None) -> list[int]:
    """Pids of processes started through an emulated VM's sshd (any VM's when ``instance_id`` is None)."""
    wanted = _marker(instance_id).encode() if instance_id else f"{MARKER}=".encode()
    exact = instance_id is not None
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(var == wanted if exact else var.startswith(wanted) for var in environ.split(b"\0")):
            pids.append(int(entry.name))
    return pids
