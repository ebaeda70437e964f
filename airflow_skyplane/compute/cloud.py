"""A transfer's relay VMs in the clouds: rent them through the Airflow hooks, reach them over SSH,
return them in every path.

:class:`CloudFleet` conducts the cloud backends (:mod:`.aws` through ``EC2Hook``, :mod:`.gcp` through
``ComputeEngineHook``, :mod:`.azure` through ``AzureComputeHook``) for one fleet:

1. ``cloud.json`` in the fleet's folder names the clouds, regions and connection ids **before**
   anything is created, so :func:`teardown_recorded` can remove the fleet by its id alone (the
   failure callback, the cleanup operator) even if this process dies in the middle of provisioning;
2. :meth:`CloudFleet.provision` rents one VM per region of the plans, every cloud in parallel (and,
   inside each backend, every region in parallel), each VM tagged with the fleet id and its expiry
   and set to go then (AWS and GCP delete it, an Azure relay deletes itself), and bootstraps them
   all at once (SSH reachable, the gateway's
   dependencies, this package); on any failure everything made so far is removed and the error
   (quota and capacity errors name the region, the quota and the fix) is raised;
3. the VMs become :class:`~airflow_skyplane.compute.remote.RelayHost` entries: reached over SSH on
   their public address (or private, ``relay_address="private"``), each with the host key read from
   the cloud's console of the VM (EC2 console output, GCE serial port 1, Azure boot diagnostics),
   polled until cloud-init has printed it (``host_key_wait_s`` at most; a VM that shows none by then
   fails the fleet). Only ``relay_host_keys="first_use"`` trusts the key a VM presents at the first
   connection instead, and each such pin is logged;
4. :meth:`CloudFleet.teardown` (idempotent) closes the SSH sessions and removes every resource of
   the fleet, found by tag.

The SSH key of a fleet lives in this process's memory only: it is never written to disk, and a VM
whose worker died cannot be reached again, only terminated (by the sweeper, or by itself at expiry).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_skyplane.compute.relays import RELAY_USER, RelayVM, check_worker_cidr
from airflow_skyplane.compute.remote import RelayHost, RelayHosts
from airflow_skyplane.exceptions import InvalidInputError

if TYPE_CHECKING:
    from airflow_skyplane.hooks.skyplane import SkyplaneSettings

log = logging.getLogger(__name__)

#: how long a new VM's console may take to show the host keys cloud-init prints at first boot
HOST_KEY_WAIT_S = 300.0

CLOUD_FILE = "cloud.json"
CLOUDS = ("aws", "gcp", "azure")
AZURE_ENDPOINT_OPTIONS = ("azure_management_endpoint", "azure_authority_host", "azure_ca_bundle")


@dataclass
class CloudOptions:
    """How relays are rented and reached; from the ``skyplane`` settings and the task's connections."""

    worker_cidr: str
    relay_address: str = "public"  # or "private": the worker shares a network with the relays
    ssh_port: int = 22
    #: the user SSH logs in as: by default "ubuntu" on AWS (the default image's), and on GCP and
    #: Azure "skyplane", the user their backends create with the fleet's key (set, it is the user
    #: those backends create, and the login user of a custom AWS image)
    ssh_username: str | None = None
    relay_python: str = "python3"
    use_spot: bool = False
    aws_conn_id: str | None = "aws_default"
    aws_instance_type: str = "m5.8xlarge"
    aws_subnets: Mapping[str, str] = field(default_factory=dict)
    gcp_conn_id: str = "google_cloud_default"
    gcp_machine_type: str = "n2-standard-16"
    azure_conn_id: str = "azure_default"
    azure_resource_group: str | None = None
    azure_vm_size: str = "Standard_D32_v5"
    #: Resource Manager's endpoint, the Entra ID authority and the CA bundle of both (see
    #: :class:`~airflow_skyplane.compute.azure.AzureRelayBackend`)
    azure_management_endpoint: str | None = None
    azure_authority_host: str | None = None
    azure_ca_bundle: str | None = None
    image: Mapping[str, str] = field(default_factory=dict)
    #: "console" (host keys read from the cloud's console of each VM) or "first_use"
    relay_host_keys: str = "console"
    #: how long a VM's console may take to show its host keys (cloud-init prints them at first boot)
    host_key_wait_s: float = HOST_KEY_WAIT_S

    @classmethod
    def from_settings(
        cls,
        settings: SkyplaneSettings,
        *,
        aws_conn_id: str | None,
        gcp_conn_id: str | None,
        azure_conn_id: str,
    ) -> CloudOptions:
        """The options of the ``skyplane`` settings, with the task's cloud connections."""
        return cls(
            worker_cidr=settings.worker_cidr or "",
            relay_address=settings.relay_address,
            ssh_port=settings.ssh_port,
            ssh_username=settings.ssh_username,
            relay_python=settings.relay_python,
            use_spot=settings.use_spot,
            aws_conn_id=aws_conn_id or "aws_default",
            aws_instance_type=settings.aws_instance_type,
            aws_subnets=dict(settings.aws_subnets),
            gcp_conn_id=gcp_conn_id or "google_cloud_default",
            gcp_machine_type=settings.gcp_machine_type,
            azure_conn_id=azure_conn_id,
            azure_resource_group=settings.azure_resource_group,
            azure_vm_size=settings.azure_vm_size,
            azure_management_endpoint=settings.azure_management_endpoint,
            azure_authority_host=settings.azure_authority_host,
            azure_ca_bundle=settings.azure_ca_bundle,
            image=dict(settings.relay_image),
            relay_host_keys=settings.relay_host_keys,
        )

    def __post_init__(self) -> None:
        check_worker_cidr(self.worker_cidr)
        if self.relay_address not in ("public", "private"):
            raise InvalidInputError(
                f"relay_address={self.relay_address!r}: use 'public' (the relays' public addresses) or "
                "'private' (the worker reaches the relays' private addresses: peered VPC, VPN)"
            )


def cloud_of(region: str) -> str:
    cloud = region.split(":", 1)[0]
    if cloud not in CLOUDS:
        raise InvalidInputError(
            f"region {region!r} is in no cloud relays can be rented in ({', '.join(CLOUDS)})"
        )
    return cloud


def make_backend(cloud: str, options: CloudOptions) -> Any:
    """The cloud's relay backend, through the Airflow hook of its connection."""
    if cloud == "aws":
        from airflow_skyplane.compute.aws import AWSRelayBackend

        return AWSRelayBackend(aws_conn_id=options.aws_conn_id)
    if cloud == "gcp":
        from airflow_skyplane.compute.gcp import GCPRelayBackend

        return GCPRelayBackend(gcp_conn_id=options.gcp_conn_id)
    from airflow_skyplane.compute.azure import AzureRelayBackend

    if not options.azure_resource_group:
        raise InvalidInputError(
            "Azure relays need a resource group: set azure_resource_group in the skyplane connection"
        )
    return AzureRelayBackend(
        resource_group=options.azure_resource_group, azure_conn_id=options.azure_conn_id,
        base_url=options.azure_management_endpoint, authority=options.azure_authority_host,
        connection_verify=options.azure_ca_bundle or True,
    )  # fmt: skip


def _spec(cloud: str, options: CloudOptions, fleet_id: str, regions: dict[str, int], **common: Any) -> Any:
    if cloud == "aws":
        from airflow_skyplane.compute.aws import AWSFleetSpec

        return AWSFleetSpec(
            fleet_id, regions, instance_type=options.aws_instance_type, subnets=dict(options.aws_subnets),
            **common,
        )  # fmt: skip
    if cloud == "gcp":
        from airflow_skyplane.compute.gcp import GCPFleetSpec

        return GCPFleetSpec(
            fleet_id, regions, machine_type=options.gcp_machine_type,
            login_user=options.ssh_username or RELAY_USER, **common,
        )  # fmt: skip
    from airflow_skyplane.compute.azure import AzureFleetSpec

    return AzureFleetSpec(
        fleet_id, regions, vm_size=options.azure_vm_size, login_user=options.ssh_username or RELAY_USER,
        **common,
    )  # fmt: skip


class CloudFleet:
    """The relay VMs of one fleet, across clouds. ``backends`` (cloud -> backend) is for tests that
    point a backend at an emulator; by default each is made from its Airflow connection."""

    def __init__(
        self,
        fleet_id: str,
        folder: str | os.PathLike[str],
        options: CloudOptions,
        *,
        backends: Mapping[str, Any] | None = None,
    ) -> None:
        self.fleet_id, self.folder, self.options = fleet_id, Path(folder), options
        self._backends = dict(backends or {})
        #: provision the clouds and bootstrap the relays at once (False: one after the other, to
        #: measure what that saves: ``benchmarks/provision.py``)
        self.parallel = True
        self.vms: list[RelayVM] = []
        self.relays: RelayHosts | None = None
        self.regions: dict[str, list[str]] = {}

    def backend(self, cloud: str) -> Any:
        if cloud not in self._backends:
            self._backends[cloud] = make_backend(cloud, self.options)
        return self._backends[cloud]

    def provision(
        self, regions: Mapping[str, int], *, expires_at: float, owner: Mapping[str, Any]
    ) -> RelayHosts:
        """Rent the VMs (one per region here: a region's gateway serves all its planned connections),
        bootstrap nothing yet; return the fleet's relay hosts. On failure, remove everything."""
        by_cloud: dict[str, dict[str, int]] = {}
        for region in regions:
            by_cloud.setdefault(cloud_of(region), {})[region] = 1
        self.regions = {cloud: sorted(r) for cloud, r in by_cloud.items()}
        backends = {cloud: self.backend(cloud) for cloud in by_cloud}  # bad settings fail before a VM
        self._record()
        from airflow_skyplane.compute.ssh import SSHKeyPair

        relays_key = SSHKeyPair.generate(f"skyplane-fleet-{self.fleet_id}")
        common = {
            "expires_at": expires_at,
            "public_key": relays_key.public_openssh,
            "worker_cidr": self.options.worker_cidr,
            "use_spot": self.options.use_spot,
            "owner": dict(owner),
        }
        try:
            with ThreadPoolExecutor(max_workers=len(by_cloud) if self.parallel else 1) as pool:
                futures = {
                    cloud: pool.submit(
                        backends[cloud].provision,
                        _spec(
                            cloud, self.options, self.fleet_id, counts, image=self._images(cloud), **common
                        ),
                    )
                    for cloud, counts in by_cloud.items()
                }
            errors = []
            for future in futures.values():
                try:
                    self.vms += future.result()
                except BaseException as err:  # noqa: BLE001 - every cloud finishes, then the first error
                    errors.append(err)
            if errors:
                raise errors[0]
            self.relays = RelayHosts(
                self.fleet_id,
                {vm.region: self._host(vm) for vm in self.vms},
                python=self.options.relay_python,
                key=relays_key,  # the key the VMs were given
                trust_on_first_use=self.options.relay_host_keys == "first_use",
            )
            self.relays.prepare_all(parallel=self.parallel)
        except BaseException:
            self.teardown()
            raise
        log.info(
            "fleet %s: %d relay VMs running in %s",
            self.fleet_id, len(self.vms), ", ".join(sorted(vm.region for vm in self.vms)),
        )  # fmt: skip
        return self.relays

    def _images(self, cloud: str) -> dict[str, str]:
        return {k: v for k, v in self.options.image.items() if k == cloud or k.startswith(f"{cloud}:")}

    def _host(self, vm: RelayVM) -> RelayHost:
        private = self.options.relay_address == "private"
        address = (vm.private_ip if private else vm.public_ip) or vm.public_ip or vm.private_ip
        if not address:
            raise InvalidInputError(
                f"relay {vm.instance_id} in {vm.region} has no {self.options.relay_address} address: "
                "give the relays public addresses, or set relay_address='private' if the worker reaches "
                "their network"
            )
        keys: list[str] = []
        if self.options.relay_host_keys == "first_use":
            log.warning(
                "relay %s: its SSH host key will be trusted at the first connection "
                "(relay_host_keys=first_use), not read from the cloud's console",
                vm.instance_id,
            )
        else:
            keys = self._console_keys(vm)
        return RelayHost(
            region=vm.region,
            ssh_host=address,
            data_address=address,
            listen_address=vm.private_ip or "0.0.0.0",
            ssh_port=self.options.ssh_port,
            username=self.options.ssh_username or ("ubuntu" if vm.cloud == "aws" else RELAY_USER),
            host_keys=keys,
            instance_id=vm.instance_id,
        )

    def _console_keys(self, vm: RelayVM) -> list[str]:
        """The VM's host keys from its cloud's console, polled until they appear (bounded)."""
        from airflow_skyplane.compute.relays import RelayProvisionError

        console = getattr(self.backend(vm.cloud), "console_host_keys", None)
        if console is None:
            raise RelayProvisionError(
                f"relay {vm.instance_id}: the {vm.cloud} backend cannot read a VM's console, so its "
                "host key cannot be pinned; set relay_host_keys='first_use' to trust it at first use"
            )
        deadline = time.monotonic() + self.options.host_key_wait_s
        last = ""
        pause = 1.0
        while True:
            try:
                keys: list[str] = console(vm)
            except Exception as err:  # noqa: BLE001 - the console may not answer yet: ask again
                keys, last = [], f" (last answer: {type(err).__name__}: {str(err)[:200]})"
            if keys:
                log.info("relay %s: host key pinned from the %s console: %s", vm.instance_id, vm.cloud,
                         keys[0].split()[0])  # fmt: skip
                return keys
            if time.monotonic() >= deadline:
                raise RelayProvisionError(
                    f"relay {vm.instance_id} in {vm.region}: its console showed no SSH host key within "
                    f"{self.options.host_key_wait_s:.0f} s{last}; the image must run cloud-init, which "
                    "prints the keys at first boot (or set relay_host_keys='first_use' to trust the key "
                    "at the first connection)"
                )
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, 10.0)

    def _record(self) -> None:
        record = {
            "regions": self.regions,
            # what finds the resources again: connections, group, and Azure's endpoints (no secret)
            "options": {
                k: v
                for k, v in asdict(self.options).items()
                if k.endswith(("_conn_id", "_group")) or k.startswith(AZURE_ENDPOINT_OPTIONS)
            },
            "recorded_at": time.time(),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / (CLOUD_FILE + ".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.folder / CLOUD_FILE)

    def teardown(self) -> None:
        """Close the SSH sessions and remove every resource of the fleet in every cloud. Idempotent."""
        if self.relays is not None:
            self.relays.close()
        errors = []
        for cloud, regions in self.regions.items():
            try:
                self.backend(cloud).teardown(self.fleet_id, regions)
            except Exception as err:  # noqa: BLE001 - tear down every cloud, then report
                errors.append(f"{cloud}: {err}")
        if errors:
            from airflow_skyplane.compute.relays import RelayProvisionError

            raise RelayProvisionError(
                f"teardown of fleet {self.fleet_id} met errors ({'; '.join(errors)}); the sweeper "
                "(SkyplaneCleanupOperator, airflow-skyplane fleets sweep) removes what is left at expiry"
            )
        (self.folder / CLOUD_FILE).unlink(missing_ok=True)


def teardown_recorded(
    folder: str | os.PathLike[str], fleet_id: str, backends: Mapping[str, Any] | None = None
) -> bool:
    """Remove the cloud resources ``cloud.json`` in a fleet's folder names, by the fleet id alone
    (the failure callback, ``FleetTransfer`` teardown by id). False when the fleet rented none."""
    path = Path(folder) / CLOUD_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    options = CloudOptions(worker_cidr="0.0.0.0/32", **record.get("options", {}))
    fleet = CloudFleet(fleet_id, folder, options, backends=backends)
    fleet.regions = {c: list(r) for c, r in record.get("regions", {}).items()}
    fleet.teardown()
    return True
