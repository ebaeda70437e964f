"""What every cloud relay backend shares: the VM record, the errors, the self-destruct script."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from airflow_skyplane.exceptions import InvalidInputError, SkyplaneError

#: The ports gateways listen on, on relay VMs (admitted only from the fleet's own addresses): one
#: per gateway on the VM, since the transfers of a fleet to several destinations share its relays.
GATEWAY_PORT = 7443
GATEWAY_PORT_LAST = GATEWAY_PORT + 63
GATEWAY_PORTS = f"{GATEWAY_PORT}-{GATEWAY_PORT_LAST}"
#: the user the GCP and Azure backends create on their relays, holding the fleet's SSH key
RELAY_USER = "skyplane"


class RelayCapacityError(SkyplaneError):
    """A cloud refused relay VMs for quota or capacity; the message names region, quota and fix.

    ``region`` (the planner's name) lets the operator plan again without that region.
    """

    def __init__(self, message: str, *, region: str | None = None) -> None:
        super().__init__(message)
        self.region = region


class RelayProvisionError(SkyplaneError):
    """A relay VM or its network could not be created; everything already made was removed."""


@dataclass
class RelayVM:
    cloud: str
    region: str  # the planner's name, e.g. "aws:us-east-1"
    instance_id: str
    public_ip: str | None = None
    private_ip: str | None = None
    spot: bool = False


def self_destruct_script(expires_at: float, now: float | None = None) -> str:
    """A boot script that powers the VM off at the fleet's expiry (the VM is set to be deleted or
    terminated on shutdown). It holds no secret: boot scripts are readable on the VM and the console."""
    minutes = max(1, int((expires_at - (time.time() if now is None else now)) // 60))
    return f"#!/bin/sh\n# airflow-skyplane relay: power off at the fleet's expiry\nshutdown -h +{minutes}\n"


def check_worker_cidr(cidr: str) -> None:
    if not cidr or "/" not in cidr:
        raise InvalidInputError(
            f"worker_cidr={cidr!r}: give the worker's public address as a CIDR, e.g. '203.0.113.7/32' "
            "(SSH to the relays is admitted from there only)"
        )


def per_region(
    regions: Mapping[str, int], provision: Callable[[str, int], list[RelayVM]], *, parallel: bool = True
) -> list[RelayVM]:
    """``provision(region, count)`` for every region in parallel (one after the other when not
    ``parallel``); the VMs of all, or the first error once every region has finished (so a teardown
    after it sees everything that was made)."""
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(regions))) if parallel else 1) as pool:
        futures = [pool.submit(provision, region, count) for region, count in regions.items()]
    return [vm for future in futures for vm in future.result()]


def check_nothing_left(fleet_id: str, left: list[str]) -> None:
    if left:
        raise RelayProvisionError(
            f"teardown of fleet {fleet_id} left {', '.join(left)} behind; the sweeper retries at its next run"
        )


class RelayBackend(Protocol):
    def provision(self, spec: Any) -> list[RelayVM]: ...

    def teardown(self, fleet_id: str, regions: Iterable[str] = ()) -> Any: ...


@contextlib.contextmanager
def relay_fleet(backend: RelayBackend, spec: Any) -> Iterator[list[RelayVM]]:
    """Provision the fleet, hand its VMs to the block (bootstrap, transfer), and tear it down after
    the block whatever happens in it: an exception, a KeyboardInterrupt or a SIGTERM turned into one."""
    vms = backend.provision(spec)
    try:
        yield vms
    finally:
        backend.teardown(spec.fleet_id, spec.regions)


def host_keys_from_console(text: str) -> list[str]:
    """SSH host keys (``"<type> <base64>"``) that cloud-init printed to the console at first boot
    (EC2 console output, GCE serial port 1, Azure boot diagnostics' serial log).

    The console comes from the cloud's API, not from the VM's network, so a key read there pins the
    relay's identity before the first SSH connection.
    """
    keys = []
    inside = False
    for line in (text or "").splitlines():
        line = line.strip()
        if line == "-----BEGIN SSH HOST KEY KEYS-----":
            inside = True
        elif line == "-----END SSH HOST KEY KEYS-----":
            inside = False
        elif inside:
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith(("ssh-", "ecdsa-")):
                keys.append(f"{parts[0]} {parts[1]}")
    return sorted(keys, key=lambda k: not k.startswith("ssh-ed25519"))  # the ed25519 key first
