"""An Azure relay deletes itself at its fleet's expiry, with its own managed identity.

A VM that powers itself off on Azure stays allocated and billed, and its disk, NIC and public IP stay
too. So each relay VM is created with a system-assigned managed identity and a boot script that, at
the fleet's expiry, runs a small program (Python's standard library only) on the VM: it asks the
instance metadata service (IMDS) for a token of that identity and deletes the VM through Resource
Manager; the NIC, the public IP and the OS disk go with it (their ``deleteOption`` is ``Delete``).
The VM then powers off whatever the answer; a refusal or a missing token is logged on the VM
(``skyplane-self-destruct`` in its journal) and the sweeper deletes what is left.

The identity may delete only its own machine: the worker defines, once per resource group, a custom
role holding nothing but the deletions (:data:`SELF_DELETE_ACTIONS`, assignable in that group only),
and assigns it to the VM's identity at the scope of each of the VM's own resources (the VM, its NIC,
its public IP, its OS disk), never at the group's. Assignments at a resource's scope go with the
resource. A worker whose connection may not write role definitions or assignments logs so and goes
on: its relays then power off at expiry and are deleted by teardown or the sweeper, as before.

Nothing here holds a secret: the boot script and the program are readable on the VM and in its
``customData``; the token exists only in the program's memory.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

AUTHORIZATION_API = "2022-04-01"
#: where a VM asks for its managed identity's tokens (link-local, answered by the host)
IMDS_ENDPOINT = "http://169.254.169.254"
#: what the relay's identity may do, and only at the scope of the relay's own resources
SELF_DELETE_ACTIONS = (
    "Microsoft.Compute/virtualMachines/read",
    "Microsoft.Compute/virtualMachines/delete",
    "Microsoft.Compute/disks/delete",
    "Microsoft.Network/networkInterfaces/delete",
    "Microsoft.Network/publicIPAddresses/delete",
)
#: how long a new identity may take to be known to Resource Manager's authorization
PRINCIPAL_WAIT_S = 120.0
PROGRAM_PATH = "/var/lib/skyplane/self_destruct.py"
_HEREDOC = "SKYPLANE_SELF_DESTRUCT_PROGRAM"

_PROGRAM = '''\
"""airflow-skyplane relay: delete this VM with its own managed identity (its NIC, public IP and OS
disk are deleted with it). Run by the boot script at the fleet's expiry; holds no secret."""
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

VM_ID = {vm_id!r}
MANAGEMENT = {management!r}
API_VERSION = {api_version!r}
IMDS = os.environ.get("SKYPLANE_IMDS_ENDPOINT", {imds!r})


def say(message):
    print("skyplane-self-destruct: " + message, file=sys.stderr, flush=True)


def main():
    query = urllib.parse.urlencode({{"api-version": "2018-02-01", "resource": MANAGEMENT + "/"}})
    ask = urllib.request.Request(
        IMDS + "/metadata/identity/oauth2/token?" + query, headers={{"Metadata": "true"}}
    )
    try:
        with urllib.request.urlopen(ask, timeout=30) as answer:
            token = json.loads(answer.read())["access_token"]
    except (OSError, ValueError, KeyError) as err:
        say("no token of the VM's managed identity from %s (%s: %s); the sweeper deletes the VM"
            % (IMDS, type(err).__name__, str(err)[:300]))
        return 1
    auth = {{"Authorization": "Bearer " + token}}
    delete = urllib.request.Request(
        MANAGEMENT + VM_ID + "?api-version=" + API_VERSION, method="DELETE", headers=auth
    )
    try:
        with urllib.request.urlopen(delete, timeout=60) as answer:
            status, headers = answer.status, answer.headers
    except urllib.error.HTTPError as err:
        detail = err.read()[:500].decode("utf-8", "replace")
        say("Resource Manager refused to delete %s (HTTP %d: %s): the VM's identity needs the relay "
            "self-delete role on the VM; the sweeper deletes it" % (VM_ID, err.code, detail))
        return 1
    except OSError as err:
        say("could not reach Resource Manager at %s (%s: %s); the sweeper deletes the VM"
            % (MANAGEMENT, type(err).__name__, str(err)[:300]))
        return 1
    say("deletion of %s accepted (HTTP %d)" % (VM_ID, status))
    operation = headers.get("Azure-AsyncOperation") or headers.get("Location")
    deadline = time.monotonic() + 600
    while operation and time.monotonic() < deadline:  # the VM usually goes before this ends
        pause = headers.get("x-ms-retry-after-ms")
        time.sleep(min(30.0, float(pause) / 1000 if pause else float(headers.get("Retry-After") or 5)))
        try:
            poll = urllib.request.Request(operation, headers=auth)
            with urllib.request.urlopen(poll, timeout=60) as answer:
                headers, state = answer.headers, json.loads(answer.read()).get("status")
        except (OSError, ValueError):
            continue
        if state in ("Succeeded", "Failed", "Canceled"):
            say("deletion of %s: %s" % (VM_ID, state))
            return 0 if state == "Succeeded" else 1
    return 0


sys.exit(main())
'''


def self_destruct_program(vm_id: str, management_endpoint: str, api_version: str) -> str:
    """The program a relay runs at expiry to delete itself (``vm_id``: its Resource Manager id)."""
    return _PROGRAM.format(
        vm_id=vm_id, management=management_endpoint.rstrip("/"), api_version=api_version, imds=IMDS_ENDPOINT
    )


def boot_script(vm_id: str, expires_at: float, management_endpoint: str, api_version: str) -> str:
    """The VM's ``customData``: write the self-destruct program and run it at ``expires_at`` (unix
    time, counted from the VM's clock at boot), then power off; a power-off 15 minutes later should
    the timer not run. cloud-init runs it once, at first boot."""
    program = self_destruct_program(vm_id, management_endpoint, api_version)
    return (
        "#!/bin/sh\n"
        "# airflow-skyplane relay: at the fleet's expiry this VM deletes itself with its own managed\n"
        "# identity (its NIC, public IP and OS disk go with it), then powers off. Holds no secret.\n"
        f"mkdir -p {PROGRAM_PATH.rsplit('/', 1)[0]}\n"
        f"cat > {PROGRAM_PATH} <<'{_HEREDOC}'\n{program}{_HEREDOC}\n"
        f"delay=$(( {int(expires_at)} - $(date +%s) ))\n"
        '[ "$delay" -lt 60 ] && delay=60\n'
        'systemd-run --unit=skyplane-self-destruct --on-active="${delay}s" /bin/sh -c '
        f"'python3 {PROGRAM_PATH} 2>&1 | logger -t skyplane-self-destruct; shutdown -h now'\n"
        "shutdown -h +$(( delay / 60 + 15 ))\n"
    )


def program_of(script: str) -> str:
    """The self-destruct program inside a boot script (what the VM writes to :data:`PROGRAM_PATH`)."""
    start = script.index(f"<<'{_HEREDOC}'\n") + len(_HEREDOC) + 5
    return script[start : script.index(f"\n{_HEREDOC}\n", start) + 1]


def role_definition_id(subscription: str, resource_group: str) -> str:
    """The id of the group's relay self-delete role (the same name every time: defined once)."""
    scope = f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
    name = uuid.uuid5(uuid.NAMESPACE_URL, f"airflow-skyplane:relay-self-delete:{scope.lower()}")
    return f"{scope}/providers/Microsoft.Authorization/roleDefinitions/{name}"


class SelfDeleteGrants:
    """The worker's side: define the role (once per backend) and assign it to each relay's identity
    at the scope of that relay's own resources, through ``resources``, a management client's
    ``send_request``."""

    def __init__(self, resources: Any, subscription: str, resource_group: str) -> None:
        self.resources, self.subscription, self.resource_group = resources, subscription, resource_group
        self.role_id = role_definition_id(subscription, resource_group)
        self._defined: bool | None = None

    def _put(self, path: str, body: dict[str, Any]) -> Any:
        from azure.core.rest import HttpRequest

        return self.resources.send_request(
            HttpRequest("PUT", f"{path}?api-version={AUTHORIZATION_API}", json=body)
        )

    @staticmethod
    def _error(response: Any) -> tuple[str, str]:
        try:
            error = (response.json() or {}).get("error") or {}
        except ValueError:
            error = {}
        return str(error.get("code") or response.status_code), str(error.get("message") or "")[:300]

    def define(self) -> bool:
        """The role, defined once; False (logged) when the connection may not define roles."""
        if self._defined is None:
            scope = f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            response = self._put(self.role_id, {"properties": {
                "roleName": f"airflow-skyplane relay self-delete "
                            f"({self.subscription[:8]}/{self.resource_group})",
                "description": "Lets an airflow-skyplane relay VM delete itself at its fleet's expiry",
                "type": "CustomRole",
                "permissions": [{"actions": list(SELF_DELETE_ACTIONS), "notActions": []}],
                "assignableScopes": [scope],
            }})  # fmt: skip
            self._defined = response.status_code in (200, 201)
            if not self._defined:
                code, message = self._error(response)
                log.warning(
                    "Azure relays of group %s cannot delete themselves at expiry: defining the role %s "
                    "was refused (%s: %s); give the connection Microsoft.Authorization/roleDefinitions/"
                    "write on the group (docs/connections.md). They power off at expiry, and teardown "
                    "or the sweeper deletes them",
                    self.resource_group, self.role_id.rsplit("/", 1)[-1], code, message,
                )  # fmt: skip
        return self._defined

    def grant(self, vm_name: str, principal_id: str | None, scopes: Iterable[str]) -> bool:
        """Assign the role to the VM's identity at each of ``scopes`` (its own resources), all at
        once. False (logged) when refused."""
        if not self.define():
            return False
        if not principal_id:
            log.warning("relay %s has no managed identity: it cannot delete itself at expiry", vm_name)
            return False
        targets = list(scopes)
        with ThreadPoolExecutor(max_workers=len(targets) or 1) as pool:
            refusals = [r for r in pool.map(lambda scope: self._assign(principal_id, scope), targets) if r]
        if refusals:
            log.warning(
                "relay %s cannot delete itself at expiry: assigning it the self-delete role was refused "
                "(%s); give the connection Microsoft.Authorization/roleAssignments/write on the group "
                "(docs/connections.md). It powers off at expiry, and teardown or the sweeper deletes it",
                vm_name, "; ".join(refusals),
            )  # fmt: skip
        return not refusals

    def _assign(self, principal_id: str, scope: str) -> str:
        """Assign the role at ``scope``; the refusal, or "" once done. A new identity may be unknown
        to authorization for a while (``PrincipalNotFound``): asked again, for
        :data:`PRINCIPAL_WAIT_S` at most."""
        name = uuid.uuid5(uuid.NAMESPACE_URL, f"{scope.lower()}|{principal_id}")
        path = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"
        body = {"properties": {"roleDefinitionId": self.role_id, "principalId": principal_id,
                               "principalType": "ServicePrincipal"}}  # fmt: skip
        deadline, pause = time.monotonic() + PRINCIPAL_WAIT_S, 1.0
        while True:
            response = self._put(path, body)
            if response.status_code in (200, 201):
                return ""
            code, message = self._error(response)
            if code == "RoleAssignmentExists":
                return ""
            if code != "PrincipalNotFound" or time.monotonic() >= deadline:
                return f"on {scope.rsplit('/', 1)[-1]}: {code}: {message}"
            time.sleep(pause)
            pause = min(pause * 2, 10.0)
