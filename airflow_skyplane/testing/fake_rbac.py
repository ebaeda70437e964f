"""Managed identities and role-based access for the Resource Manager fake
(:class:`~airflow_skyplane.testing.fake_arm.FakeARM`).

A VM created with a system-assigned identity gets a principal id. The VM's instance metadata service
is served at ``<fake>/imds/<vm name>`` (a real VM asks ``http://169.254.169.254``, which knows the
caller by its address; the fake has one address for all, so the VM's name is in the path): its
``/metadata/identity/oauth2/token`` answers a token of that identity, as IMDS does (``Metadata: true``
required). Role definitions and role assignments (``Microsoft.Authorization``) are kept as Resource
Manager keeps them, and a request bearing an identity's token is held to them: it may do an action
only where an assignment of a role holding that action covers the resource (the resource itself or a
scope above it). A deletion must be allowed on every resource it takes with it (a VM's NIC, public IP
and disk): the stricter reading of what Resource Manager asks. Assignments go with their scope's
resource. A service principal's tokens (the worker's) are held to roles once a test gives it some
(:meth:`RoleBasedAccess.enforce`, e.g. the custom role docs/connections.md documents, read by
:func:`documented_actions`); a reference to another resource (``join/action``) is not checked.
"""

from __future__ import annotations

import fnmatch
import re
import secrets
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlparse

AUTHORIZATION = re.compile(
    r"^(?P<scope>/subscriptions/.+?)/providers/Microsoft\.Authorization/"
    r"(?P<kind>roleDefinitions|roleAssignments)/(?P<name>[^/]+)$",
    re.I,
)
IMDS = re.compile(r"^/imds/(?P<vm>[^/]+)/metadata/identity/oauth2/token$")


def _error(status: int, code: str, message: str) -> tuple[int, Any]:
    return status, {"error": {"code": code, "message": message}}


class RoleBasedAccess:
    """The identities of the fake's VMs, their tokens, and the roles assigned to them (the caller
    holds the fake's lock)."""

    def __init__(self) -> None:
        self.definitions: dict[str, dict[str, Any]] = {}  # lower-cased id -> role definition
        self.assignments: dict[str, dict[str, Any]] = {}  # lower-cased id -> role assignment
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (principal id, expiry)
        #: service principals (client ids) held to their roles, as the VMs' identities always are
        self.enforced: set[str] = set()
        #: the scope of every role assignment made
        self.assigned: list[str] = []
        #: (principal id, action, resource id) of every request an identity was refused
        self.refused: list[tuple[str, str, str]] = []

    @staticmethod
    def give_identity(resource: dict[str, Any], previous: dict[str, Any] | None) -> None:
        """A system-assigned identity for a resource that asks for one (kept across updates)."""
        identity = resource.get("identity")
        if not isinstance(identity, dict) or "SystemAssigned" not in str(identity.get("type")):
            return
        kept = (previous or {}).get("identity") or {}
        identity["principalId"] = kept.get("principalId") or str(uuid.uuid4())
        identity["tenantId"] = kept.get("tenantId") or "fake-tenant"

    def principal(self, authorization: str | None) -> str | None:
        """The identity whose live token ``authorization`` carries, or None."""
        token = (authorization or "").removeprefix("Bearer ")
        found = self._tokens.get(token)
        return found[0] if found and found[1] > time.time() else None

    def imds(self, path: str, headers: Any, resources: dict[str, dict[str, Any]]) -> tuple[int, Any] | None:
        """The answer of a VM's metadata service, or None when ``path`` is not one."""
        url = urlparse(path)
        match = IMDS.match(url.path)
        if not match:
            return None
        if headers.get("Metadata") != "true":
            return 400, {
                "error": "bad_request",
                "error_description": "Required metadata header not specified",
            }
        vms = [
            r
            for r in resources.values()
            if r.get("type") == "Microsoft.Compute/virtualMachines" and r["name"] == match["vm"]
        ]
        principal = ((vms[0] if vms else {}).get("identity") or {}).get("principalId")
        if not principal:
            return 400, {"error": "invalid_request", "error_description": "Identity not found"}
        token = secrets.token_urlsafe(24)
        self._tokens[token] = (principal, time.time() + 3600)
        resource = parse_qs(url.query).get("resource", [""])[0]
        return 200, {
            "access_token": token,
            "expires_in": "3600",
            "resource": resource,
            "token_type": "Bearer",
        }

    def authorization(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any] | None:
        """The answer to a request of a role definition or assignment, or None when it is none."""
        match = AUTHORIZATION.match(urlparse(path).path)
        if not match:
            return None
        rid = urlparse(path).path
        store = self.definitions if match["kind"].lower() == "roledefinitions" else self.assignments
        if method == "PUT":
            store[rid.lower()] = {**body, "id": rid, "name": match["name"],
                                  "type": f"Microsoft.Authorization/{match['kind']}"}  # fmt: skip
            if store is self.assignments:
                store[rid.lower()]["properties"]["scope"] = match["scope"]
                self.assigned.append(match["scope"])
            return 201, store[rid.lower()]
        if method == "GET":
            found = store.get(rid.lower())
            return (200, found) if found else _error(404, "NotFound", f"no {match['kind']} {match['name']}")
        if method == "DELETE":
            return (200, store.pop(rid.lower())) if rid.lower() in store else (204, None)
        return _error(405, "MethodNotAllowed", method)

    def enforce(self, principal: str, actions: list[str], scope: str) -> None:
        """Hold ``principal`` (a service principal's client id) to a custom role of ``actions``
        assigned at ``scope``."""
        role = f"{scope}/providers/Microsoft.Authorization/roleDefinitions/{uuid.uuid4()}"
        self.definitions[role.lower()] = {"id": role, "properties": {"permissions": [{"actions": actions}]}}
        assignment = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{uuid.uuid4()}"
        self.assignments[assignment.lower()] = {"id": assignment, "properties": {
            "scope": scope, "principalId": principal, "roleDefinitionId": role}}  # fmt: skip
        self.enforced.add(principal)

    def allowed(self, principal: str, action: str, resource_id: str) -> bool:
        """Whether an assignment of ``principal`` covers ``resource_id`` with a role holding ``action``
        (noted in :attr:`refused` when not)."""
        target = resource_id.lower()
        for assignment in self.assignments.values():
            properties = assignment.get("properties") or {}
            scope = str(properties.get("scope", "")).lower()
            if properties.get("principalId") != principal or not (
                target == scope or target.startswith(scope + "/")
            ):
                continue
            role = self.definitions.get(str(properties.get("roleDefinitionId", "")).lower()) or {}
            for permission in (role.get("properties") or {}).get("permissions") or []:
                if any(fnmatch.fnmatch(action.lower(), a.lower()) for a in permission.get("actions") or []):
                    return True
        self.refused.append((principal, action, resource_id))
        return False

    def refusal(self, principal: str, action: str, resource_id: str) -> tuple[int, Any]:
        return _error(
            403, "AuthorizationFailed",
            f"The client with object id '{principal}' does not have authorization to perform action "
            f"'{action}' over scope '{resource_id}' or the scope is invalid.",
        )  # fmt: skip

    def drop_scope(self, resource_id: str) -> None:
        """The assignments at a deleted resource's scope go with it."""
        scope = resource_id.lower()
        for key in [k for k, a in self.assignments.items()
                    if str((a.get("properties") or {}).get("scope", "")).lower() == scope]:  # fmt: skip
            del self.assignments[key]


def documented_actions(text: str) -> list[str]:
    """The actions of the first code block under ``### Azure`` in ``text`` (docs/connections.md):
    ``Microsoft.X/y/read  .../write`` is ``Microsoft.X/y/read`` and ``Microsoft.X/y/write``."""
    section = text.split("### Azure", 1)[1]
    block = section.split("```", 2)[1]
    actions = []
    for line in block.splitlines():
        words = line.split()
        if not words:
            continue
        first = words[0]
        base = first.rsplit("/", 1)[0]
        actions.append(first)
        for word in words[1:]:
            actions.append(base + word[3:] if word.startswith(".../") else word)
    return actions


def action_of(method: str, provider: str, rtype: str) -> str:
    """The action a request of a resource does (``Microsoft.Compute/virtualMachines/delete``)."""
    verb = {"GET": "read", "PUT": "write", "DELETE": "delete"}.get(method, "action")
    return f"{provider}/{rtype}/{verb}"
