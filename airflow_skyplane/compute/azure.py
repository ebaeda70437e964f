"""Relay VMs on Azure, with the credentials of Airflow's ``AzureComputeHook``.

A fleet lives in the resource group of the connection. Per region (``azure:<location>``) it has a
network security group ``skyplane-<fleet>-<location>`` (SSH from the worker's address only, the
gateway port from the fleet's own addresses only) and a virtual network; per VM a public IP, a NIC
and the VM itself. Every resource is tagged ``skyplane-fleet=<fleet id>`` and
``skyplane-expires=<unix time>``; teardown and the sweeper find them by those tags, never only by
names kept in memory, and delete them in dependency order (VMs, then NICs, public IPs, security
groups, networks), so a fleet whose provisioning stopped half-way is removed completely.

Self-destruct: an Azure VM that powers itself off stays allocated and billed, so each relay deletes
itself at the fleet's expiry with its own managed identity, allowed to delete nothing but its own
resources (:mod:`.azure_identity`); its NIC, public IP and OS disk go with it. A fleet that expires
within a day also gets an auto-shutdown schedule (``Microsoft.DevTestLab/schedules``, daily at a
time of day, so only then does its first run fall on the expiry) that *deallocates* a relay whose
deletion failed; the sweeper deletes what is left.

The clients are Azure's management SDKs, built with the credential and subscription of the
``AzureComputeHook`` connection (its ``subscriptionId``, required), resolved as the hook resolves
them. The ``azure_management_endpoint``, ``azure_authority_host`` and ``azure_ca_bundle`` settings
reach them as the SDKs' own options (``base_url`` and ``credential_scopes``, the credential's
``authority``, ``connection_verify``): a sovereign cloud, an Azure Stack Hub, a TLS-inspecting proxy,
or the fakes of Resource Manager and Entra ID the tests run on loopback.
"""

from __future__ import annotations

import base64
import contextlib
import re
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from airflow_skyplane.compute.azure_identity import SelfDeleteGrants, boot_script
from airflow_skyplane.compute.relays import (
    GATEWAY_PORTS,
    RELAY_USER,
    RelayCapacityError,
    RelayProvisionError,
    RelayVM,
    check_nothing_left,
    check_worker_cidr,
    host_keys_from_console,
    per_region,
    relay_fleet,
)
from airflow_skyplane.exceptions import InvalidInputError

AZURE_MANAGEMENT_ENDPOINT = "https://management.azure.com"
TAG_FLEET = "skyplane-fleet"
TAG_EXPIRES = "skyplane-expires"
IMAGE = {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"}
_CAPACITY = {
    "OperationNotAllowed": "the regional vCPU quota (Subscriptions > Usage + quotas)",
    "QuotaExceeded": "the regional vCPU quota (Subscriptions > Usage + quotas)",
    "SkuNotAvailable": None,
    "AllocationFailed": None,
    "ZonalAllocationFailed": None,
}
_ORDER = (  # deletion order: what uses a resource goes before it
    "Microsoft.DevTestLab/schedules",
    "Microsoft.Compute/virtualMachines",
    "Microsoft.Network/networkInterfaces",
    "Microsoft.Network/publicIPAddresses",
    "Microsoft.Network/networkSecurityGroups",
    "Microsoft.Network/virtualNetworks",
)
_API = {  # API versions for the generic resource calls
    "Microsoft.DevTestLab/schedules": "2018-09-15",
    "Microsoft.Compute/virtualMachines": "2024-07-01",
    "Microsoft.Network/networkInterfaces": "2024-05-01",
    "Microsoft.Network/publicIPAddresses": "2024-05-01",
    "Microsoft.Network/networkSecurityGroups": "2024-05-01",
    "Microsoft.Network/virtualNetworks": "2024-05-01",
}


@dataclass
class AzureFleetSpec:
    """What to rent: ``regions`` maps a planner region (``azure:westeurope``) to a VM count."""

    fleet_id: str
    regions: Mapping[str, int]
    expires_at: float
    public_key: str
    worker_cidr: str
    vm_size: str = "Standard_D32_v5"
    image: Mapping[str, str] = field(default_factory=lambda: dict(IMAGE))
    use_spot: bool = False
    owner: Mapping[str, Any] = field(default_factory=dict)
    login_user: str = RELAY_USER  # the admin user created with the fleet's key


def _location(region: str) -> str:
    if not region.startswith("azure:"):
        raise InvalidInputError(
            f"region {region!r} is not an Azure region: Azure relays need 'azure:<location>'"
        )
    return region.split(":", 1)[1]


def _name(value: str) -> str:
    return re.sub(r"[^a-zA-Z0-9-]", "-", value)[:60]


def _resource_client_class() -> Any:
    """``ResourceManagementClient``: under ``azure.mgmt.resource.resources`` since azure-mgmt-resource 24."""
    try:
        from azure.mgmt.resource.resources import ResourceManagementClient
    except ImportError:  # older releases
        from azure.mgmt.resource import ResourceManagementClient  # type: ignore[no-redef,attr-defined]
    return ResourceManagementClient


def _connection_credential(
    conn_id: str, *, authority: str | None = None, connection_verify: str | bool = True
) -> tuple[Any, str]:
    """The credential and subscription of ``AzureComputeHook``'s connection ``conn_id``, resolved as
    the hook resolves them (its auth file or JSON, a service principal's login, password and
    ``tenantId``, else the default credential chain with its managed or workload identity), through
    the connection alone: the hook keeps its credential inside its client, where nothing public reads
    it. A service principal logs in at ``authority`` when given (trusted as named: no instance
    discovery at Microsoft), over TLS checked with ``connection_verify``. Raise
    :class:`InvalidInputError` when the connection names no subscription."""
    import json
    from pathlib import Path

    from airflow.providers.microsoft.azure.hooks.compute import AzureComputeHook
    from azure.identity import ClientSecretCredential

    conn = AzureComputeHook.get_connection(conn_id)
    extra = conn.extra_dejson
    auth: dict[str, Any] = {}
    if extra.get("key_path"):
        try:
            auth = json.loads(Path(extra["key_path"]).read_text())
        except (OSError, ValueError) as err:
            raise InvalidInputError(
                f"Azure connection {conn_id!r}: key_path {extra['key_path']!r} is not a readable JSON "
                f"auth file ({type(err).__name__}): give the path of the service principal's auth file"
            ) from None
    elif extra.get("key_json"):
        raw = extra["key_json"]
        auth = json.loads(raw) if isinstance(raw, str) else dict(raw)
    subscription = auth.get("subscriptionId") or extra.get("subscriptionId")
    if not subscription:
        raise InvalidInputError(
            f"Azure connection {conn_id!r} names no subscription: set subscriptionId in its extra "
            "(the subscription the relays' resource group is in)"
        )
    tenant = auth.get("tenantId") or extra.get("tenantId")
    login: dict[str, Any] = {"connection_verify": connection_verify}
    if authority:
        login.update(authority=authority, disable_instance_discovery=True)
    if auth:
        if not (tenant and auth.get("clientId") and auth.get("clientSecret")):
            raise InvalidInputError(
                f"Azure connection {conn_id!r}: its auth file or key_json lacks tenantId, clientId or "
                "clientSecret: give a service principal's auth file whole"
            )
        credential: Any = ClientSecretCredential(str(tenant), auth["clientId"], auth["clientSecret"], **login)
    elif conn.login and conn.password and tenant:
        credential = ClientSecretCredential(tenant, conn.login, conn.password, **login)
    else:
        from airflow.providers.microsoft.azure.utils import get_sync_default_azure_credential

        credential = get_sync_default_azure_credential(
            managed_identity_client_id=extra.get("managed_identity_client_id"),
            workload_identity_tenant_id=extra.get("workload_identity_tenant_id"),
        )
    return credential, str(subscription)


class AzureRelayBackend:
    """Rent, find and return relay VMs of fleets on Azure.

    :param clients_factory: ``() -> (compute, network, resources, subscription id)`` management
        clients; by default built with the credential and subscription of ``AzureComputeHook``'s
        connection ``azure_conn_id`` (``credential``, when given, instead of the connection's), at
        ``base_url`` (Resource Manager's endpoint, tokens asked for ``<base_url>/.default``), the
        service principal logging in at ``authority``, TLS checked with ``connection_verify`` (a CA
        bundle's path, or True for the system's CAs).
    """

    def __init__(
        self,
        *,
        resource_group: str,
        azure_conn_id: str = "azure_default",
        base_url: str | None = None,
        connection_verify: str | bool = True,
        authority: str | None = None,
        credential: Any = None,
        clients_factory: Callable[[], tuple[Any, Any, Any, str]] | None = None,
    ) -> None:
        if not resource_group:
            raise InvalidInputError(
                "Azure relays need a resource group: set resource_group (the connection's extra "
                "'resource_group') to one the connection may create VMs in"
            )
        self.resource_group = resource_group
        self.azure_conn_id = azure_conn_id
        self.base_url, self.connection_verify, self._credential = base_url, connection_verify, credential
        self.authority = authority
        self._factory = clients_factory
        self._clients: tuple[Any, Any, Any, str] | None = None
        self._grants: SelfDeleteGrants | None = None

    def grants(self) -> SelfDeleteGrants:
        """The relays' self-delete role and its assignments (:mod:`.azure_identity`)."""
        if self._grants is None:
            _, _, resources, subscription = self.clients()
            self._grants = SelfDeleteGrants(resources, subscription, self.resource_group)
        return self._grants

    def clients(self) -> tuple[Any, Any, Any, str]:
        if self._clients is None:
            if self._factory is not None:
                self._clients = self._factory()
            else:
                from azure.mgmt.compute import ComputeManagementClient
                from azure.mgmt.network import NetworkManagementClient

                resource_client = _resource_client_class()

                credential, subscription = _connection_credential(
                    self.azure_conn_id, authority=self.authority, connection_verify=self.connection_verify
                )
                credential = self._credential or credential
                options: dict[str, Any] = {"connection_verify": self.connection_verify}
                if self.base_url:
                    base = self.base_url.rstrip("/")
                    options.update(base_url=base, credential_scopes=[f"{base}/.default"])
                self._clients = (
                    ComputeManagementClient(credential, subscription, **options),
                    NetworkManagementClient(credential, subscription, **options),
                    resource_client(credential, subscription, **options),
                    str(subscription),
                )
        return self._clients

    def _id(self, kind: str, name: str) -> str:
        subscription = self.clients()[3]
        return f"/subscriptions/{subscription}/resourceGroups/{self.resource_group}/providers/{kind}/{name}"

    def _put(
        self, kind: str, name: str, body: dict[str, Any], region: str, spec: AzureFleetSpec
    ) -> dict[str, Any]:
        from azure.core.exceptions import HttpResponseError

        resources = self.clients()[2]
        try:
            poller = resources.resources.begin_create_or_update_by_id(
                self._id(kind, name), body, api_version=_API[kind]
            )
            result: Any = poller.result()
        except HttpResponseError as err:
            code = getattr(getattr(err, "error", None), "code", "") or ""
            if code in _CAPACITY:
                raise self._capacity(region, spec, code, str(getattr(err.error, "message", err))) from None
            raise RelayProvisionError(f"{region}: creating {kind} {name} failed: {err.message}") from None
        return result.as_dict() if hasattr(result, "as_dict") else dict(result)

    @staticmethod
    def _capacity(region: str, spec: AzureFleetSpec, code: str, message: str) -> RelayCapacityError:
        quota = _CAPACITY.get(code)
        if quota:
            fix = (f"request an increase of {quota} for {region}, or lower max_relays_per_region, or exclude "
                   "the region with allowed_regions")  # fmt: skip
        else:
            fix = (f"Azure has no {spec.vm_size} capacity there now: choose another azure_vm_size, retry "
                   "later, "
                   "or exclude the region with allowed_regions")  # fmt: skip
        return RelayCapacityError(
            f"{region}: Azure refused a relay VM ({code}: {message}): {fix}", region=region
        )

    # -- provisioning ----------------------------------------------------------------------------------
    def provision(self, spec: AzureFleetSpec) -> list[RelayVM]:
        check_worker_cidr(spec.worker_cidr)
        for region in spec.regions:
            _location(region)
        try:
            vms = per_region(spec.regions, lambda region, count: self._provision_region(spec, region, count))
            self._admit_fleet(spec, vms)
            return vms
        except BaseException:
            self.teardown(spec.fleet_id)
            raise

    def _tags(self, spec: AzureFleetSpec) -> dict[str, str]:
        tags = {TAG_FLEET: spec.fleet_id, TAG_EXPIRES: str(int(spec.expires_at))}
        for key in ("dag_id", "run_id", "task_id"):
            if spec.owner.get(key):
                tags[f"skyplane-{key.replace('_', '-')}"] = str(spec.owner[key])[:256]
        return tags

    def _nsg_body(self, spec: AzureFleetSpec, location: str, fleet_addresses: list[str]) -> dict[str, Any]:
        rules = [{
            "name": "ssh-from-worker",
            "properties": {"priority": 100, "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
                           "sourceAddressPrefix": spec.worker_cidr, "sourcePortRange": "*",
                           "destinationAddressPrefix": "*", "destinationPortRange": "22"},
        }]  # fmt: skip
        if fleet_addresses:
            rules.append({
                "name": "gateway-from-fleet",
                "properties": {"priority": 110, "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
                               "sourceAddressPrefixes": fleet_addresses, "sourcePortRange": "*",
                               "destinationAddressPrefix": "*", "destinationPortRange": GATEWAY_PORTS},
            })  # fmt: skip
        return {"location": location, "tags": self._tags(spec), "properties": {"securityRules": rules}}

    def _provision_region(self, spec: AzureFleetSpec, region: str, count: int) -> list[RelayVM]:
        location = _location(region)
        base = _name(f"skyplane-{spec.fleet_id}-{location}")
        tags = self._tags(spec)
        nsg = self._put(
            "Microsoft.Network/networkSecurityGroups", base, self._nsg_body(spec, location, []), region, spec
        )
        vnet = self._put("Microsoft.Network/virtualNetworks", base, {
            "location": location, "tags": tags,
            "properties": {"addressSpace": {"addressPrefixes": ["10.77.0.0/16"]},
                           "subnets": [{"name": "relays", "properties": {"addressPrefix": "10.77.0.0/24"}}]},
        }, region, spec)  # fmt: skip
        subnet = f"{vnet['id']}/subnets/relays"
        expiry = datetime.fromtimestamp(spec.expires_at, tz=timezone.utc)
        management = self.base_url or AZURE_MANAGEMENT_ENDPOINT
        vms = []
        for index in range(count):
            name = f"{base}-{index}"
            vm_id = self._id("Microsoft.Compute/virtualMachines", name)
            script = boot_script(
                vm_id, spec.expires_at, management, _API["Microsoft.Compute/virtualMachines"]
            )
            custom_data = base64.b64encode(script.encode()).decode()
            ip = self._put("Microsoft.Network/publicIPAddresses", name, {
                "location": location, "tags": tags, "sku": {"name": "Standard"},
                "properties": {"publicIPAllocationMethod": "Static"},
            }, region, spec)  # fmt: skip
            nic = self._put("Microsoft.Network/networkInterfaces", name, {
                "location": location, "tags": tags,
                "properties": {
                    "networkSecurityGroup": {"id": nsg["id"]},
                    "ipConfigurations": [{"name": "primary", "properties": {
                        "subnet": {"id": subnet},
                        # deleted with the NIC, which is deleted with the VM (as is its disk)
                        "publicIPAddress": {"id": ip["id"], "properties": {"deleteOption": "Delete"}}}}],
                },
            }, region, spec)  # fmt: skip
            vm_body: dict[str, Any] = {
                "location": location,
                "tags": tags,
                "identity": {"type": "SystemAssigned"},  # what the relay deletes itself with
                "properties": {
                    "hardwareProfile": {"vmSize": spec.vm_size},
                    "storageProfile": {"imageReference": dict(spec.image),
                                       "osDisk": {"name": f"{name}-osdisk", "createOption": "FromImage",
                                                  "deleteOption": "Delete"}},
                    "osProfile": {
                        "computerName": name[:15], "adminUsername": spec.login_user,
                        "customData": custom_data,
                        "linuxConfiguration": {"disablePasswordAuthentication": True, "ssh": {"publicKeys": [
                            {"path": f"/home/{spec.login_user}/.ssh/authorized_keys",
                             "keyData": spec.public_key}]}},
                    },
                    "networkProfile": {"networkInterfaces": [
                        {"id": nic["id"], "properties": {"deleteOption": "Delete"}}]},
                    # managed boot diagnostics: the serial log the worker reads the host keys from
                    "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
                },
            }  # fmt: skip
            if spec.use_spot:
                vm_body["properties"].update(priority="Spot", evictionPolicy="Delete")
            vm = self._put("Microsoft.Compute/virtualMachines", name, vm_body, region, spec)
            identity = vm.get("identity") or {}
            self.grants().grant(
                name,
                identity.get("principalId") or identity.get("principal_id"),
                (vm_id, nic["id"], ip["id"], self._id("Microsoft.Compute/disks", f"{name}-osdisk")),
            )
            if spec.expires_at - time.time() < 23.5 * 3600:  # its first run is the expiry
                self._put("Microsoft.DevTestLab/schedules", f"shutdown-computevm-{name}", {
                    "location": location, "tags": tags,
                    "properties": {"status": "Enabled", "taskType": "ComputeVmShutdownTask",
                                   "dailyRecurrence": {"time": expiry.strftime("%H%M")},
                                   "timeZoneId": "UTC", "targetResourceId": vm["id"]},
                }, region, spec)  # fmt: skip
            public = ip.get("properties", {}).get("ipAddress") or ip.get("ip_address")
            private = (
                (nic.get("properties", {}).get("ipConfigurations") or [{}])[0]
                .get("properties", {})
                .get("privateIPAddress")
            )
            vms.append(RelayVM("azure", region, name, public, private, spec.use_spot))
        return vms

    def _admit_fleet(self, spec: AzureFleetSpec, vms: list[RelayVM]) -> None:
        addresses = sorted({f"{a}/32" for vm in vms if (a := vm.public_ip or vm.private_ip)})
        for region in spec.regions:
            location = _location(region)
            base = _name(f"skyplane-{spec.fleet_id}-{location}")
            self._put(
                "Microsoft.Network/networkSecurityGroups",
                base,
                self._nsg_body(spec, location, addresses),
                region,
                spec,
            )

    def console_host_keys(self, vm: RelayVM) -> list[str]:
        """The relay's host keys from its boot diagnostics' serial log (empty until cloud-init has
        printed them): ``retrieveBootDiagnosticsData`` gives a short-lived SAS URL of the log."""
        import requests
        from azure.core.rest import HttpRequest

        resources = self.clients()[2]
        vm_id = self._id("Microsoft.Compute/virtualMachines", vm.instance_id)
        api = _API["Microsoft.Compute/virtualMachines"]
        request = HttpRequest(
            "POST", f"{vm_id}/retrieveBootDiagnosticsData?sasUriExpirationTimeInMinutes=5&api-version={api}"
        )
        response = resources.send_request(request)
        if response.status_code == 404:
            return []  # no boot diagnostics yet
        response.raise_for_status()
        log_url = (response.json() or {}).get("serialConsoleLogBlobUri")
        if not log_url:
            return []
        # the SAS in the URL is the authorization: no bearer token goes to the storage account
        got = requests.get(log_url, timeout=30, verify=self.connection_verify)
        if got.status_code == 404:
            return []
        got.raise_for_status()
        return host_keys_from_console(got.text)

    # -- finding and removing ----------------------------------------------------------------------
    def tagged(self, fleet_id: str | None) -> list[dict[str, Any]]:
        """Live resources of the fleet (of every fleet when ``fleet_id`` is None) in the group."""
        found = []
        for kind in _ORDER:
            provider, rtype = kind.split("/")
            for item in self._list(provider, rtype):
                tags = item.get("tags") or {}
                if TAG_FLEET in tags and (fleet_id is None or tags[TAG_FLEET] == fleet_id):
                    found.append({"id": item["id"], "kind": kind, "tags": tags})
        return found

    def _list(self, provider: str, rtype: str) -> list[dict[str, Any]]:
        resources = self.clients()[2]
        kind = f"{provider}/{rtype}"
        collection = (
            f"/subscriptions/{self.clients()[3]}/resourceGroups/{self.resource_group}/providers/{kind}"
        )
        from azure.core.rest import HttpRequest

        request = HttpRequest("GET", f"{collection}?api-version={_API[kind]}")
        response = resources.send_request(request)
        response.raise_for_status()
        return list(response.json().get("value", []))

    def teardown(self, fleet_id: str, regions: Iterable[str] = ()) -> dict[str, list[str]]:
        """Delete every resource tagged with the fleet, in dependency order; idempotent."""
        resources = self.clients()[2]
        removed: dict[str, list[str]] = {}

        def delete(item: dict[str, Any]) -> None:
            with contextlib.suppress(Exception):  # what remains is reported below
                resources.resources.begin_delete_by_id(item["id"], api_version=_API[item["kind"]]).result()

        for kind in _ORDER:  # one kind at a time (what uses a resource goes first), its items at once
            items = [r for r in self.tagged(fleet_id) if r["kind"] == kind]
            if items:
                with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
                    list(pool.map(delete, items))
            for item in items:
                removed.setdefault(kind.split("/")[1], []).append(item["id"].rsplit("/", 1)[-1])
        left = [r["id"].rsplit("/", 1)[-1] for r in self.tagged(fleet_id)]
        check_nothing_left(fleet_id, left)
        return removed


def sweep(backend: AzureRelayBackend, *, now: float | None = None) -> list[str]:
    """Tear down every fleet of the resource group past its expiry; returns their ids."""
    now = time.time() if now is None else now
    expired = set()
    for item in backend.tagged(None):
        try:
            expires = float(item["tags"].get(TAG_EXPIRES, "0"))
        except ValueError:
            expires = 0.0
        if now >= expires:
            expired.add(item["tags"][TAG_FLEET])
    for fleet_id in sorted(expired):
        backend.teardown(fleet_id)
    return sorted(expired)


azure_fleet = relay_fleet  # provision, yield the VMs, always tear down
