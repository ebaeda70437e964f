"""What every cloud relay backend shares: the VM record, the errors, the self-destruct script."""

from __future__ import annotations

import time
from dataclasses import dataclass

from airflow_skyplane.exceptions import SkyplaneError

#: The port gateways listen on, on relay VMs (admitted only from the fleet's own addresses).
GATEWAY_PORT = 7443


class RelayCapacityError(SkyplaneError):
    """A cloud refused relay VMs for quota or capacity; the message names region, quota and fix."""


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
