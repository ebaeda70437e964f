"""A small stateful fake of the Azure Resource Manager resources relays use, served over HTTPS on
loopback.

No emulator of Azure compute exists, so the Azure relay backend is tested against this: the real
management SDKs (``azure-mgmt-compute``, ``azure-mgmt-network``, ``azure-mgmt-resource``) pointed at
it through their ``base_url`` option. It serves HTTPS (the SDKs refuse to send a bearer token over
plain HTTP) with a certificate of a throw-away CA, whose file :attr:`FakeARM.ca_file` the clients
trust through ``connection_verify``.

Any resource under a resource group can be created, read, listed and deleted, as long-running
operations the way Resource Manager runs them: a PUT answers ``201 Created`` with the resource in
``provisioningState`` ``Creating`` (``Updating`` for one that exists, ``200``) and an
``Azure-AsyncOperation`` header; a DELETE answers ``202 Accepted`` with ``Azure-AsyncOperation`` and
``Location`` and leaves the resource ``Deleting``. Each operation's status is ``InProgress`` when
first asked, then ``Succeeded`` (the resource ``Succeeded``, or gone), so the SDK's poller polls.
:attr:`FakeARM.seen_statuses` records the statuses each operation was answered with. References are
enforced as Azure does: a NIC, public IP, security group or virtual network in use cannot be deleted,
and a VM's deletion takes its NICs and their public IPs whose ``deleteOption`` is ``Delete``.
Public IPs get an address, NICs a private one. A VM's ``retrieveBootDiagnosticsData`` answers the URL
of its serial log, which serves :attr:`FakeARM.serial_output` (what the VM printed). :meth:`FakeARM.fail_next`
makes the next PUT of a resource type fail with an ARM error (a quota, say).

A VM created from an image gets its OS disk (``Microsoft.Compute/disks``), deleted with it when its
``deleteOption`` is ``Delete``, as Azure does. With ``loopback_addresses`` public IPs get addresses
on loopback (``127.121.0.n``), a NIC the address of its public IP, where
:meth:`~airflow_skyplane.testing.vms.EmulatedVMs.on_fake_arm` brings the VMs to life. The same server
is the token service of a fake Entra ID tenant (:attr:`FakeARM.entra`, see
:mod:`~airflow_skyplane.testing.fake_entra`): once a service principal is registered there, every
management request needs a bearer token it issued (``401`` otherwise, as Resource Manager answers).
A VM created with a system-assigned identity gets a principal, tokens from its metadata service, and
is held to the roles assigned to it (:attr:`FakeARM.rbac`, see :mod:`~airflow_skyplane.testing.fake_rbac`).
"""

from __future__ import annotations

import json
import math
import re
import ssl
import tempfile
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from airflow_skyplane.testing.fake_entra import EntraTokens
from airflow_skyplane.testing.fake_rbac import RoleBasedAccess, action_of
from airflow_skyplane.testing.loopback_http import serve, shut

_RG = re.compile(
    r"^/subscriptions/([^/]+)/resourcegroups/([^/]+)(?:/providers/([^/]+)/([^/]+)(?:/([^/]+))?)?$", re.I
)


class FakeARM:
    """``retry_after_s``: how long the SDK is told to wait before it polls a long-running operation
    again, given as ARM gives it: ``Retry-After`` in whole seconds (at least 1) and, which the SDK
    reads first, ``x-ms-retry-after-ms`` in milliseconds (so tests can poll every tenth of a second;
    without either the SDK waits its own default, 30 s); the fake's operations end when next asked."""

    def _retry_after(self) -> dict[str, str]:
        return {
            "Retry-After": str(max(1, math.ceil(self.retry_after_s))),
            "x-ms-retry-after-ms": str(max(1, round(self.retry_after_s * 1000))),
        }

    def __init__(self, *, retry_after_s: float = 0.1, loopback_addresses: bool = False) -> None:
        self.retry_after_s = retry_after_s
        self.loopback_addresses = loopback_addresses
        #: the token service of the fake tenant (its principals, the tokens it issued)
        self.entra = EntraTokens()
        #: the VMs' managed identities, their tokens, role definitions and assignments
        self.rbac = RoleBasedAccess()
        self.resources: dict[str, dict[str, Any]] = {}  # lower-cased id -> resource
        self._faults: dict[str, list[tuple[int, str, str]]] = {}
        self.lock = threading.Lock()
        self._pending = threading.local()  # the operation the request being answered began
        self._next_ip = 10
        self._server: ThreadingHTTPServer | None = None
        self._url = ""
        #: operation id -> what finishing it does (run once, when it is first answered Succeeded)
        self._operations: dict[str, Callable[[], None] | None] = {}
        #: operation id -> the statuses it was answered with, in order
        self.seen_statuses: dict[str, list[str]] = {}
        #: names of resources deleted with another (a VM's NIC, a NIC's public IP)
        self.deleted_with: list[str] = []
        #: VM name -> its boot diagnostics' serial log (what it printed to its console)
        self.serial_output: dict[str, str] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-arm-")
        self.ca_file = str(Path(self._tmp.name) / "ca.pem")

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> str:
        from airflow_skyplane.gateway import tls

        ca = tls.FleetCA.create("fake-arm")
        Path(self.ca_file).write_bytes(ca.cert_pem)
        files = ca.issue("management.azure.test", addresses=["127.0.0.1"]).write(
            Path(self._tmp.name) / "server"
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(files["cert"]), str(files["key"]))
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers: dict[str, str] = {}
                token = fake.entra.answer(fake._url, self.command, self.path, raw)
                with fake.lock:
                    imds = fake.rbac.imds(self.path, self.headers, fake.resources)
                    principal = fake.rbac.principal(self.headers.get("Authorization"))
                    client = fake.entra.client_of(self.headers.get("Authorization"))
                    if principal is None and client in fake.rbac.enforced:
                        principal = client  # a service principal held to its roles
                if token is not None:
                    status, payload = token
                elif imds is not None:  # a VM's metadata service
                    status, payload = imds
                elif (
                    fake.entra.enforced
                    and principal is None
                    and client is None
                    and not self.path.startswith("/bootdiagnostics/")
                    and not fake.entra.check(self.headers.get("Authorization"))
                ):  # the serial log's URL carries its own SAS, as a storage account's blob does
                    status, payload = fake._error(401, "InvalidAuthenticationToken", "no valid token")
                else:
                    body = json.loads(raw or b"{}") if raw else {}
                    status, payload, headers = fake.answer(self.command, self.path, body, principal)
                if isinstance(payload, str):  # a blob's text (a serial log)
                    data = payload.encode()
                else:
                    data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_DELETE = do_POST = _answer  # noqa: N815 - http.server's naming

        self._server = serve(Handler, "fake-arm", context)
        self._url = f"https://127.0.0.1:{self._server.server_address[1]}"
        return self._url

    def stop(self) -> None:
        shut(self._server)
        self._server = None
        self._tmp.cleanup()

    def __enter__(self) -> FakeARM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(
        self, resource_type: str, status: int = 409, code: str = "OperationNotAllowed", message: str = ""
    ) -> None:
        """Fail the next PUT of ``resource_type`` (e.g. ``virtualMachines``) with an ARM error."""
        self._faults.setdefault(resource_type.lower(), []).append((status, code, message))

    def tagged(self, tag: str, value: str) -> list[str]:
        """Names of live resources whose tag ``tag`` is ``value``."""
        return sorted(r["name"] for r in self.resources.values() if (r.get("tags") or {}).get(tag) == value)

    # -- the API -------------------------------------------------------------------------------------
    @staticmethod
    def _error(status: int, code: str, message: str) -> tuple[int, Any]:
        return status, {"error": {"code": code, "message": message}}

    def _references(self, rid: str) -> list[str]:
        """Live resources whose body mentions ``rid`` (a NIC naming a public IP, a VM naming a NIC...)."""
        needle = rid.lower()
        return [
            r["id"]
            for k, r in self.resources.items()
            if k != needle
            and needle
            in json.dumps(
                {
                    **r,
                    "managedBy": None,
                    "properties": {**(r.get("properties") or {}), "targetResourceId": None},
                }
            ).lower()
        ]  # a disk's managedBy does not hold its VM back (the VM's deletion detaches or deletes it),
        # nor does an auto-shutdown schedule's target (the schedule stays, targeting nothing)

    def answer(
        self, method: str, path: str, body: dict[str, Any], principal: str | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        """Status, body and headers of a request (of a managed identity ``principal``, held to its
        roles): a long-running PUT or DELETE names its operation in ``Azure-AsyncOperation`` (and
        ``Location``, for a DELETE); the operation's URL answers its status."""
        url = urlparse(path)
        with self.lock:
            kind = url.path.rsplit("/", 2)[-2].lower() if url.path.count("/") > 2 else ""
            faults = self._faults.get(kind) if method == "PUT" else None
            if faults and "/providers/microsoft.authorization/" in url.path.lower():
                status, code, message = faults.pop(0)
                return (*self._error(status, code, message or f"{code} for {kind}"), {})
            if principal is not None and "/providers/microsoft.authorization/" in url.path.lower():
                collection = "roleDefinitions" if kind == "roledefinitions" else "roleAssignments"
                action, scope = f"Microsoft.Authorization/{collection}/write", url.path.rsplit("/", 4)[0]
                if not self.rbac.allowed(principal, action, scope):
                    return (*self.rbac.refusal(principal, action, url.path), {})
            role = self.rbac.authorization(method, path, body)
        if role is not None:
            return (*role, {})
        diagnostics = re.match(
            r"^(/subscriptions/.+/virtualMachines/([^/]+))/retrieveBootDiagnosticsData$", url.path
        )
        if diagnostics and method == "POST":
            action = "Microsoft.Compute/virtualMachines/retrieveBootDiagnosticsData/action"
            if principal is not None and not self.rbac.allowed(principal, action, diagnostics.group(1)):
                return (*self.rbac.refusal(principal, action, diagnostics.group(1)), {})
            with self.lock:
                if diagnostics.group(1).lower() not in self.resources:
                    return (*self._error(404, "ResourceNotFound", "no such virtual machine"), {})
            log = f"{self._url}/bootdiagnostics/{diagnostics.group(2)}.serialconsole.log?sv=fake&sig=fake"
            return 200, {"consoleScreenshotBlobUri": log, "serialConsoleLogBlobUri": log}, {}
        if url.path.startswith("/bootdiagnostics/"):
            name = url.path.rsplit("/", 1)[-1].removesuffix(".serialconsole.log")
            with self.lock:
                text = self.serial_output.get(name)
            if text is None:
                return 404, None, {}
            return 200, text, {}
        if url.path.startswith("/providers/skyplane.fake/operations/"):
            status, payload = self._operation_status(url.path.rsplit("/", 1)[-1])
            return status, payload, self._retry_after()
        status, payload = self.handle(method, path, body, principal)
        headers: dict[str, str] = {}
        operation = getattr(self._pending, "operation", None)
        if operation is not None:
            self._pending.operation = None
            link = f"{self._url}/providers/skyplane.fake/operations/{operation}?api-version=2024-01-01"
            headers["Azure-AsyncOperation"] = link
            headers.update(self._retry_after())
            if method == "DELETE":
                headers["Location"] = link
        return status, payload, headers

    def _begin(self, then: Callable[[], None] | None) -> None:
        """A long-running operation of the request being answered (with the lock held)."""
        operation = uuid.uuid4().hex
        self._operations[operation] = then
        self._pending.operation = operation

    def _operation_status(self, operation: str) -> tuple[int, Any]:
        with self.lock:
            if operation not in self._operations:
                return self._error(404, "NotFound", f"no operation {operation}")
            seen = self.seen_statuses.setdefault(operation, [])
            status = "InProgress" if not seen else "Succeeded"
            if status == "Succeeded" and "Succeeded" not in seen:
                then = self._operations[operation]
                if then is not None:
                    then()
            seen.append(status)
        return 200, {"id": operation, "name": operation, "status": status}

    def _private_address(self, config: dict[str, Any], fresh: str) -> str:
        """A NIC's private address (with the lock held): on loopback, its public IP's own address (the
        one machine of this host answers on both), else ``fresh``."""
        ref = str((config.get("publicIPAddress") or {}).get("id", "")).lower()
        found = self.resources.get(ref) if self.loopback_addresses else None
        return str((found or {}).get("properties", {}).get("ipAddress") or fresh)

    def _os_disk(self, vm_id: str, name: str, vm: dict[str, Any], properties: dict[str, Any]) -> None:
        """The managed OS disk Azure makes for a VM created from an image (with the lock held); the
        VM's ``storageProfile.osDisk.managedDisk`` names it."""
        os_disk = (properties.get("storageProfile") or {}).get("osDisk")
        if not os_disk or os_disk.get("createOption") != "FromImage":
            return
        disk_name = os_disk.setdefault("name", f"{name}_OsDisk_1_{uuid.uuid4().hex[:12]}")
        prefix = vm_id.rsplit("/providers/", 1)[0]
        disk_id = f"{prefix}/providers/Microsoft.Compute/disks/{disk_name}"
        os_disk["managedDisk"] = {"id": disk_id}
        self.resources[disk_id.lower()] = {
            "id": disk_id, "name": disk_name, "type": "Microsoft.Compute/disks",
            "location": vm.get("location"), "managedBy": vm_id,
            "properties": {"provisioningState": "Succeeded", "osType": "Linux", "diskState": "Attached"},
        }  # fmt: skip

    def _taken_with(self, deleted: dict[str, Any]) -> list[dict[str, Any]]:
        """Every live resource deleting ``deleted`` takes with it, recursively (with the lock held)."""
        taken = []
        for ref in self._linked(deleted):
            found = self.resources.get(str(ref.get("id", "")).lower())
            if found is not None:
                taken += [found, *self._taken_with(found)]
        return taken

    def _cascade(self, deleted: dict[str, Any]) -> None:
        """What Azure deletes with a resource (with the lock held): a VM's NICs and OS disk whose
        ``deleteOption`` is ``Delete``, and a NIC's public IPs whose ``deleteOption`` is ``Delete``
        (an OS disk kept is detached, and stays); the role assignments at each one's scope."""
        self.rbac.drop_scope(deleted["id"])
        for ref in self._linked(deleted):
            found = self.resources.pop(str(ref.get("id", "")).lower(), None)
            if found is not None:
                self.deleted_with.append(found["name"])
                self._cascade(found)

    def _linked(self, deleted: dict[str, Any]) -> list[dict[str, Any]]:
        """The references of ``deleted`` to resources deleted with it; an OS disk kept is detached
        (with the lock held)."""
        properties = deleted.get("properties") or {}
        linked = [
            ref
            for ref in ((properties.get("networkProfile") or {}).get("networkInterfaces") or [])
            if (ref.get("properties") or {}).get("deleteOption") == "Delete"
        ]
        os_disk = (properties.get("storageProfile") or {}).get("osDisk") or {}
        disk = os_disk.get("managedDisk") or {}
        if disk and os_disk.get("deleteOption") == "Delete":
            linked.append(disk)
        elif disk and disk.get("id", "").lower() in self.resources:
            disk_body = self.resources[disk["id"].lower()]
            disk_body.pop("managedBy", None)
            disk_body["properties"]["diskState"] = "Unattached"
        for config in properties.get("ipConfigurations") or []:
            ref = (config.get("properties") or {}).get("publicIPAddress") or {}
            if (ref.get("properties") or {}).get("deleteOption") == "Delete":
                linked.append(ref)
        return linked

    def handle(
        self, method: str, path: str, body: dict[str, Any], principal: str | None = None
    ) -> tuple[int, Any]:
        url = urlparse(path)
        match = _RG.match(url.path)
        if not match:
            return self._error(404, "NotFound", f"unknown path {url.path}")
        _, _, provider, rtype, name = match.groups()
        rid = url.path
        key = rid.lower()
        with self.lock:
            if provider is None:  # the resource group itself
                action = "Microsoft.Resources/subscriptions/resourceGroups/read"
                if principal is not None and not self.rbac.allowed(principal, action, rid):
                    return self.rbac.refusal(principal, action, rid)
                return 200, {"id": rid, "name": match.group(2), "location": "westeurope",
                             "properties": {"provisioningState": "Succeeded"}}  # fmt: skip
            if principal is not None:  # an identity held to its roles
                targets = [self.resources.get(key) or {"id": rid, "type": f"{provider}/{rtype}"}]
                if method == "DELETE" and key in self.resources:
                    targets += self._taken_with(self.resources[key])
                for target in targets:
                    action = action_of(method, *target["type"].split("/")[:2])
                    if not self.rbac.allowed(principal, action, target["id"]):
                        return self.rbac.refusal(principal, action, target["id"])
            if name is None:  # a collection
                if method != "GET":
                    return self._error(405, "MethodNotAllowed", method)
                prefix = key + "/"
                return 200, {
                    "value": [
                        r
                        for k, r in self.resources.items()
                        if k.startswith(prefix) and "/" not in k[len(prefix) :]
                    ]
                }
            if method == "PUT":
                faults = self._faults.get(rtype.lower())
                if faults:
                    status, code, message = faults.pop(0)
                    return self._error(status, code, message or f"{code} for {rtype} {name}")
                resource = {**body, "id": rid, "name": name, "type": f"{provider}/{rtype}"}
                properties = dict(resource.get("properties") or {})
                created = key not in self.resources
                properties["provisioningState"] = "Creating" if created else "Updating"
                public, private = ("127.121.0.", "127.121.0.") if self.loopback_addresses else (
                    "20.1.0.", "10.0.0.")  # fmt: skip
                if rtype.lower() == "publicipaddresses":
                    self._next_ip += 1
                    properties.setdefault("ipAddress", f"{public}{self._next_ip}")
                if rtype.lower() == "networkinterfaces":
                    for config in properties.get("ipConfigurations") or []:
                        self._next_ip += 1
                        config.setdefault("properties", {})["privateIPAddress"] = self._private_address(
                            config["properties"], f"{private}{self._next_ip}"
                        )
                if rtype.lower() == "virtualmachines" and created:
                    self._os_disk(rid, name, resource, properties)
                self.rbac.give_identity(resource, self.resources.get(key))
                resource["properties"] = properties
                self.resources[key] = resource

                def succeeded() -> None:
                    if self.resources.get(key) is resource:
                        properties["provisioningState"] = "Succeeded"

                self._begin(succeeded)
                return (201 if created else 200), json.loads(json.dumps(resource))
            found = self.resources.get(key)
            if method == "GET":
                if found is None:
                    return self._error(
                        404, "ResourceNotFound", f"The Resource '{rtype}/{name}' was not found."
                    )
                return 200, found
            if method == "DELETE":
                if found is None:
                    return 204, None
                users = self._references(rid)
                if users:
                    return self._error(400, "InUseCannotBeDeleted", f"{rtype} {name} is in use by {users[0]}")
                found.setdefault("properties", {})["provisioningState"] = "Deleting"

                def gone() -> None:
                    if self.resources.get(key) is found:
                        del self.resources[key]
                        self._cascade(found)

                self._begin(gone)
                return 202, None
        return self._error(405, "MethodNotAllowed", method)
