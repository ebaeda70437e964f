"""Relay VMs on Google Compute Engine, through Airflow's ``ComputeEngineHook``.

Relays live on a dedicated VPC network (``skyplane-relays``, created on first use), so the
project's other firewall rules never apply to them. A fleet is:

* two firewall rules on that network, named ``skyplane-<fleet id>-ssh`` (SSH from the worker's
  address only) and ``skyplane-<fleet id>-gw`` (the gateway port from the fleet's own addresses
  only), both limited to instances carrying the fleet's network tag;
* N instances labelled ``skyplane-fleet=<fleet id>`` and ``skyplane-expires=<unix time>``, with the
  network tier the plan chose (premium or standard), and a scheduled deletion at the fleet's expiry
  (``scheduling.terminationTime`` with ``instanceTerminationAction=DELETE``): Compute Engine itself
  deletes a relay that nobody tore down.

Teardown and the sweeper find instances by label and firewall rules by name, never only by ids kept
in memory. Firewall rules carry no labels in Compute Engine; their expiry is in their description.

The client is the Compute Engine API client library (``googleapiclient``) built with the hook's
credentials; ``compute_endpoint`` (a fake of the API in tests) is passed as its ``api_endpoint``
client option.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

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

log = logging.getLogger(__name__)

NETWORK = "skyplane-relays"
LABEL_FLEET = "skyplane-fleet"
LABEL_EXPIRES = "skyplane-expires"
DEFAULT_IMAGE = "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64"
_EXPIRES_IN_DESCRIPTION = re.compile(r"expires (\d+)")
_CAPACITY = ("quotaExceeded", "ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS")


@dataclass
class GCPFleetSpec:
    """What to rent: ``regions`` maps a planner region (a zone, ``gcp:us-central1-a``) to a VM count."""

    fleet_id: str
    regions: Mapping[str, int]
    expires_at: float
    public_key: str
    worker_cidr: str
    machine_type: str = "n2-standard-16"
    image: Mapping[str, str] = field(default_factory=dict)
    network_tier: str = "PREMIUM"
    use_spot: bool = False
    owner: Mapping[str, Any] = field(default_factory=dict)
    login_user: str = RELAY_USER  # the user the fleet's key is given to (ssh-keys metadata)


def _zone(region: str) -> str:
    if not region.startswith("gcp:") or region.count("-") < 2:
        raise InvalidInputError(
            f"region {region!r} is not a GCP zone: GCP relays need 'gcp:<zone>', e.g. gcp:us-central1-a"
        )
    return region.split(":", 1)[1]


def _label(value: Any) -> str:
    """A label value: lowercase letters, digits, '-' and '_', at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", str(value).lower())[:63]


def _http_reason(err: BaseException) -> tuple[str, str]:
    """(reason, message) of an API error response."""
    import json

    try:
        error = json.loads(getattr(err, "content", b"") or b"{}").get("error", {})
    except ValueError:
        return "", str(err)
    reasons = [e.get("reason", "") for e in error.get("errors", [])]
    return (reasons[0] if reasons else ""), str(error.get("message", ""))


class GCPRelayBackend:
    """Rent, find and return relay VMs of fleets on Compute Engine.

    :param compute_factory: ``() -> (compute client, project id)``; by default built from
        ``ComputeEngineHook(gcp_conn_id=...)``'s credentials and project.
    """

    def __init__(
        self,
        *,
        gcp_conn_id: str = "google_cloud_default",
        project_id: str | None = None,
        compute_endpoint: str | None = None,
        compute_factory: Callable[[], tuple[Any, str]] | None = None,
    ) -> None:
        self.gcp_conn_id = gcp_conn_id
        self._project = project_id
        self.compute_endpoint = compute_endpoint
        self._factory = compute_factory
        self._local = threading.local()  # httplib2, under the API client, is not thread-safe

    def compute(self) -> tuple[Any, str]:
        """The API client of this thread, and the project."""
        if getattr(self._local, "compute", None) is None:
            if self._factory is not None:
                self._local.compute, project = self._factory()
            else:
                from airflow.providers.google.cloud.hooks.compute import ComputeEngineHook
                from googleapiclient.discovery import build

                hook = ComputeEngineHook(gcp_conn_id=self.gcp_conn_id)
                project = self._project or hook.project_id
                self._local.compute = build(
                    "compute", "v1", http=hook._authorize(), cache_discovery=False,
                    client_options=hook.get_client_options(api_endpoint_override=self.compute_endpoint),
                )  # fmt: skip
            self._project = self._project or project
            if not self._project:
                raise InvalidInputError(
                    f"connection {self.gcp_conn_id!r} names no project: set its project (extra 'project') "
                    "to create GCP relays in"
                )
        return self._local.compute, str(self._project)

    @staticmethod
    def _run(request: Any, what: str) -> Any:
        return request.execute(num_retries=3)

    def _wait(
        self, operation: dict[str, Any], zone: str | None, region: str, spec: GCPFleetSpec | None
    ) -> None:
        compute, project = self.compute()
        deadline = time.monotonic() + 600
        polls = 0
        while operation.get("status") != "DONE":  # PENDING, RUNNING
            if time.monotonic() > deadline:
                raise RelayProvisionError(f"{region}: operation {operation.get('name')} not done after 600 s")
            # wait holds the request until the operation is done (two minutes at most) but may return
            # sooner, still RUNNING: ask again, backing off a little each time
            time.sleep(min(2.0, 0.25 * polls))
            polls += 1
            if zone:
                operation = (
                    compute.zoneOperations()
                    .wait(project=project, zone=zone, operation=operation["name"])
                    .execute()
                )
            else:
                operation = (
                    compute.globalOperations().wait(project=project, operation=operation["name"]).execute()
                )
        errors = (operation.get("error") or {}).get("errors") or []
        if errors:
            code = errors[0].get("code", "")
            if code in _CAPACITY and spec is not None:
                raise self._capacity(region, spec, code, errors[0].get("message", ""))
            raise RelayProvisionError(f"{region}: {code}: {errors[0].get('message', '')}")

    @staticmethod
    def _capacity(region: str, spec: GCPFleetSpec, code: str, message: str) -> RelayCapacityError:
        where = region.split(":", 1)[1].rsplit("-", 1)[0] if ":" in region else "the project"
        if code == "quotaExceeded":
            fix = (
                f"request a quota increase for {where} (IAM & Admin > Quotas), or lower "
                "max_relays_per_region, or exclude the region with allowed_regions"
            )
        else:
            fix = (
                f"the zone has no {spec.machine_type} capacity now: choose another gcp_machine_type, "
                "retry later, or exclude the zone with allowed_regions"
            )
        return RelayCapacityError(
            f"{region}: Compute Engine refused a relay ({code}: {message}): {fix}", region=region
        )

    # -- provisioning ----------------------------------------------------------------------------------
    def provision(self, spec: GCPFleetSpec) -> list[RelayVM]:
        check_worker_cidr(spec.worker_cidr)
        if spec.network_tier not in ("PREMIUM", "STANDARD"):
            raise InvalidInputError(f"network_tier={spec.network_tier!r}: use PREMIUM or STANDARD")
        for region in spec.regions:
            _zone(region)
        try:
            self._network()
            self._firewall(spec, "ssh", [spec.worker_cidr], 22)
            vms = per_region(spec.regions, lambda region, count: self._provision_zone(spec, region, count))
            addresses = sorted({f"{a}/32" for vm in vms if (a := vm.public_ip or vm.private_ip)})
            if addresses:
                self._firewall(spec, "gw", addresses, GATEWAY_PORTS)
            return vms
        except BaseException:
            self.teardown(spec.fleet_id, spec.regions)
            raise

    def _network(self) -> None:
        from googleapiclient.errors import HttpError

        compute, project = self.compute()
        try:
            compute.networks().get(project=project, network=NETWORK).execute()
        except HttpError as err:
            if getattr(err.resp, "status", None) != 404:
                raise
            op = compute.networks().insert(
                project=project, body={"name": NETWORK, "autoCreateSubnetworks": True,
                                       "description": "airflow-skyplane relays"},
            ).execute()  # fmt: skip
            self._wait(op, None, "gcp", None)

    def _firewall(self, spec: GCPFleetSpec, role: str, sources: Sequence[str], port: int | str) -> None:
        compute, project = self.compute()
        body = {
            "name": f"skyplane-{_label(spec.fleet_id)}-{role}",
            "network": f"projects/{project}/global/networks/{NETWORK}",
            "direction": "INGRESS",
            "allowed": [{"IPProtocol": "tcp", "ports": [str(port)]}],
            "sourceRanges": list(sources),
            "targetTags": [f"skyplane-{_label(spec.fleet_id)}"],
            "description": f"airflow-skyplane fleet {spec.fleet_id} expires {int(spec.expires_at)}",
        }
        self._wait(
            self._insert(compute.firewalls().insert(project=project, body=body), "gcp", spec),
            None,
            "gcp",
            spec,
        )

    def _insert(self, request: Any, region: str, spec: GCPFleetSpec) -> dict[str, Any]:
        from googleapiclient.errors import HttpError

        try:
            result: dict[str, Any] = request.execute()
        except HttpError as err:
            reason, message = _http_reason(err)
            if reason in _CAPACITY:
                raise self._capacity(region, spec, reason, message) from None
            raise
        return result

    def _provision_zone(self, spec: GCPFleetSpec, region: str, count: int) -> list[RelayVM]:
        compute, project = self.compute()
        zone = _zone(region)
        image = spec.image.get(region) or spec.image.get("gcp") or DEFAULT_IMAGE
        labels = {LABEL_FLEET: _label(spec.fleet_id), LABEL_EXPIRES: str(int(spec.expires_at))}
        for key in ("dag_id", "task_id"):
            if spec.owner.get(key):
                labels[f"skyplane-{key.replace('_', '-')}"] = _label(spec.owner[key])
        expiry = datetime.fromtimestamp(spec.expires_at, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        vms = []
        for index in range(count):
            name = f"skyplane-{_label(spec.fleet_id)}-{zone}-{index}"
            scheduling: dict[str, Any] = {"terminationTime": expiry, "instanceTerminationAction": "DELETE"}
            if spec.use_spot:
                scheduling.update(provisioningModel="SPOT")
            body = {
                "name": name,
                "machineType": f"zones/{zone}/machineTypes/{spec.machine_type}",
                "labels": labels,
                "tags": {"items": [f"skyplane-{_label(spec.fleet_id)}"]},
                "scheduling": scheduling,
                "disks": [{"boot": True, "autoDelete": True, "initializeParams": {"sourceImage": image}}],
                "networkInterfaces": [
                    {
                        "network": f"projects/{project}/global/networks/{NETWORK}",
                        "accessConfigs": [
                            {"type": "ONE_TO_ONE_NAT", "name": "external", "networkTier": spec.network_tier}
                        ],
                    }
                ],  # fmt: skip
                "metadata": {"items": [{"key": "ssh-keys", "value": f"{spec.login_user}:{spec.public_key}"}]},
            }
            op = self._insert(compute.instances().insert(project=project, zone=zone, body=body), region, spec)
            self._wait(op, zone, region, spec)
            info = compute.instances().get(project=project, zone=zone, instance=name).execute()
            interface = info["networkInterfaces"][0]
            public = (interface.get("accessConfigs") or [{}])[0].get("natIP")
            vms.append(RelayVM("gcp", region, name, public, interface.get("networkIP"), spec.use_spot))
        return vms

    def console_host_keys(self, vm: RelayVM) -> list[str]:
        """The relay's host keys from its serial port 1 (empty until cloud-init has printed them)."""
        compute, project = self.compute()
        output = (
            compute.instances()
            .getSerialPortOutput(project=project, zone=_zone(vm.region), instance=vm.instance_id, port=1)
            .execute()
        )
        return host_keys_from_console(output.get("contents") or "")

    # -- finding and removing ----------------------------------------------------------------------
    def instances(self, fleet_id: str | None) -> list[tuple[str, str, dict[str, str]]]:
        """(zone, name, labels) of live instances of a fleet (of every fleet when ``fleet_id`` is None)."""
        compute, project = self.compute()
        flt = f"labels.{LABEL_FLEET}={_label(fleet_id)}" if fleet_id else f"labels.{LABEL_FLEET}:*"
        found = []
        request = compute.instances().aggregatedList(project=project, filter=flt)
        while request is not None:
            page = request.execute()
            for scope in (page.get("items") or {}).values():
                for inst in scope.get("instances", []):
                    zone = inst["zone"].rsplit("/", 1)[-1]
                    found.append((zone, inst["name"], dict(inst.get("labels", {}))))
            request = compute.instances().aggregatedList_next(request, page)
        return found

    def firewalls(self, fleet_id: str | None) -> list[tuple[str, str]]:
        """(name, description) of the fleet's firewall rules (every fleet's when ``fleet_id`` is None)."""
        compute, project = self.compute()
        prefix = f"skyplane-{_label(fleet_id)}-" if fleet_id else "skyplane-"
        rules = compute.firewalls().list(project=project).execute().get("items", [])
        return [
            (r["name"], r.get("description", ""))
            for r in rules
            if r["name"].startswith(prefix) and r.get("network", "").endswith(f"/{NETWORK}")
        ]

    def teardown(self, fleet_id: str, regions: Iterable[str] = ()) -> dict[str, list[str]]:
        """Delete every instance (by label) and firewall rule (by name) of the fleet; idempotent."""
        compute, project = self.compute()
        removed: dict[str, list[str]] = {"instance": [], "firewall": []}
        for zone, name, _ in self.instances(fleet_id):
            with contextlib.suppress(Exception):  # already gone: fine; anything else shows below
                self._wait(compute.instances().delete(project=project, zone=zone, instance=name).execute(),
                           zone, f"gcp:{zone}", None)  # fmt: skip
            removed["instance"].append(name)
        for name, _ in self.firewalls(fleet_id):
            with contextlib.suppress(Exception):
                self._wait(
                    compute.firewalls().delete(project=project, firewall=name).execute(), None, "gcp", None
                )
            removed["firewall"].append(name)
        left = [n for _, n, _ in self.instances(fleet_id)] + [n for n, _ in self.firewalls(fleet_id)]
        check_nothing_left(fleet_id, left)
        return removed


def sweep(backend: GCPRelayBackend, *, now: float | None = None) -> list[str]:
    """Tear down every fleet past its expiry in the project (instances by label, rules by name)."""
    now = time.time() if now is None else now
    expired: set[str] = set()
    for _, _, labels in backend.instances(None):
        try:
            expires = float(labels.get(LABEL_EXPIRES, "0"))
        except ValueError:
            expires = 0.0
        if now >= expires:
            expired.add(labels[LABEL_FLEET])
    for name, description in backend.firewalls(None):
        match = _EXPIRES_IN_DESCRIPTION.search(description)
        fleet = re.match(r"skyplane-(.+)-(ssh|gw)$", name)
        if fleet and (match is None or now >= float(match.group(1))):
            expired.add(fleet.group(1))
    for fleet_id in sorted(expired):
        backend.teardown(fleet_id)
    return sorted(expired)


gcp_fleet = relay_fleet  # provision, yield the VMs, always tear down
