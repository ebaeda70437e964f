"""A small stateful fake of the Compute Engine REST resources relays use, served on loopback.

No Compute Engine emulator exists, so the GCP relay backend is tested against this: the real client
library (``googleapiclient``, built by ``ComputeEngineHook``'s credentials) pointed at it through its
``api_endpoint`` client option. It keeps networks, firewalls and instances per project in memory,
and supports the ``labels.KEY=VALUE`` / ``labels.KEY:*`` filters of ``aggregatedList``.

Inserts and deletes answer an operation that is ``PENDING``, then ``RUNNING`` when next asked,
then ``DONE``, as Compute Engine's go: an instance is ``PROVISIONING`` until its insert is done, then
``RUNNING``; a deleted instance is ``STOPPING`` until its delete is done, a deleted network or
firewall rule is there until then; an operation's error shows once it is ``DONE``. The operations'
``wait`` holds the request ``wait_hold_s`` and answers the next status (Compute Engine's holds it up
to two minutes and may answer before the operation is done), so a client must poll until ``DONE``.
:attr:`FakeGCE.seen_statuses` records the statuses each operation was answered with.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from airflow_skyplane.testing.loopback_http import answer_json, serve, shut


class FakeGCE:
    """``loopback_addresses``: give instances internal and external addresses on loopback
    (``127.120.0.N``), so :class:`~airflow_skyplane.testing.vms.EmulatedVMs` can bring them up."""

    def __init__(self, *, loopback_addresses: bool = False, wait_hold_s: float = 0.05) -> None:
        self.loopback_addresses = loopback_addresses
        self.wait_hold_s = wait_hold_s
        self.operations: dict[str, _Operation] = {}
        #: operation name -> the statuses it was answered with, in order (its insert or delete first)
        self.seen_statuses: dict[str, list[str]] = {}
        self.networks: dict[str, dict[str, Any]] = {}
        self.firewalls: dict[str, dict[str, Any]] = {}
        self.instances: dict[tuple[str, str], dict[str, Any]] = {}  # (zone, name) -> instance
        self.requests: list[tuple[str, str]] = []
        #: (zone, name) -> what the instance printed to its serial port 1 (its console)
        self.serial_output: dict[tuple[str, str], str] = {}
        self._faults: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self._lock = threading.Lock()
        self.lock = self._lock  # held while the tables change
        self._next_ip = 10
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                answer_json(self, *fake.handle(method, self.path, body))

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._answer("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._answer("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._answer("DELETE")

        self._server = serve(Handler, "fake-gce")
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def stop(self) -> None:
        shut(self._server)
        self._server = None

    def __enter__(self) -> FakeGCE:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, kind: str, how: str = "quota", message: str = "") -> None:
        """Make the next insert of ``kind`` (``instance``, ``firewall``, ``network``) fail: ``quota``
        (HTTP 403 quotaExceeded) or ``capacity`` (the operation ends with ZONE_RESOURCE_POOL_EXHAUSTED)."""
        self._faults.setdefault(kind, []).append((how, {"message": message}))

    def live_instances(self, label: str, value: str) -> list[str]:
        return [
            name
            for (_, name), inst in self.instances.items()
            if inst["labels"].get(label) == value
            and inst["status"] in ("PROVISIONING", "STAGING", "RUNNING", "STOPPING")
        ]

    # -- the API -------------------------------------------------------------------------------------
    @staticmethod
    def _error(code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
        return code, {
            "error": {"code": code, "message": message, "errors": [{"reason": reason, "message": message}]}
        }

    def _operation(
        self,
        project: str,
        zone: str | None,
        target: str,
        error: dict[str, Any] | None = None,
        then: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """A new operation on ``target`` (``PENDING``); ``then`` runs, and ``error`` shows, once it is
        done. Called with the lock held."""
        body: dict[str, Any] = {
            "kind": "compute#operation",
            "name": f"operation-{uuid.uuid4().hex[:12]}",
            "status": "PENDING",
            "targetLink": target,
            "progress": 0,
        }
        if zone:
            body["zone"] = f"projects/{project}/zones/{zone}"
        op = _Operation(body, error, then)
        self.operations[body["name"]] = op
        return self._answer_operation(op, advance=False)

    def _answer_operation(self, op: _Operation, advance: bool = True) -> dict[str, Any]:
        """The operation one step further (with the lock held): done, it ran ``then`` once."""
        order = ("PENDING", "RUNNING", "DONE")
        status = order[min(order.index(op.body["status"]) + (1 if advance else 0), 2)]
        if status == "DONE" and op.body["status"] != "DONE":
            if op.then is not None:
                op.then()
            if op.error:
                op.body["error"] = {"errors": [op.error]}
        op.body.update(status=status, progress={"PENDING": 0, "RUNNING": 50, "DONE": 100}[status])
        self.seen_statuses.setdefault(op.body["name"], []).append(status)
        return dict(op.body)

    def _wait_operation(self, name: str) -> tuple[int, Any]:
        """``operations/NAME/wait``: the operation's next status, after holding the request a while."""
        time.sleep(self.wait_hold_s)
        with self._lock:
            op = self.operations.get(name)
            if op is None:
                return self._error(404, "notFound", f"The resource 'operations/{name}' was not found")
            return 200, self._answer_operation(op)

    def _fault(self, kind: str) -> tuple[str, dict[str, Any]] | None:
        queue = self._faults.get(kind)
        return queue.pop(0) if queue else None

    @staticmethod
    def _matches(resource: dict[str, Any], flt: str | None) -> bool:
        if not flt:
            return True
        for clause in re.split(r"\s+AND\s+", flt.strip()):
            clause = clause.strip("() ")
            m = re.fullmatch(r"labels\.([\w-]+)\s*(=|:)\s*(\S+)", clause)
            if not m:
                raise ValueError(f"unsupported filter {clause!r}")
            key, op, value = m.groups()
            labels = resource.get("labels", {})
            if op == ":" and value == "*":
                if key not in labels:
                    return False
            elif labels.get(key) != value.strip('"'):
                return False
        return True

    def handle(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        url = urlparse(path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        with self._lock:
            self.requests.append((method, url.path))
        if len(parts) < 3 or parts[0] != "projects":
            return self._error(404, "notFound", f"unknown path {url.path}")
        project, rest = parts[1], parts[2:]
        # global/operations/NAME[/wait], zones/ZONE/operations/NAME[/wait]
        operation = rest[2:] if rest[0] == "global" else rest[3:] if rest[0] == "zones" else []
        if "operations" in rest[:3] and operation:
            if operation[1:] == ["wait"] and method == "POST":
                return self._wait_operation(operation[0])
            with self._lock:
                op = self.operations.get(operation[0])
                if op is None or method != "GET" or len(operation) != 1:
                    return self._error(404, "notFound", f"unknown path {url.path}")
                return 200, self._answer_operation(op)
        with self._lock:
            if rest[0] == "global" and rest[1] in ("networks", "firewalls"):
                return self._global(method, project, rest[1], rest[2:], body, query)
            if rest[0] == "zones" and len(rest) >= 3 and rest[2] == "instances":
                return self._instances(method, project, rest[1], rest[3:], body)
            if rest[0] == "aggregated" and rest[1] == "instances":
                items: dict[str, Any] = {}
                for (zone, _), inst in self.instances.items():
                    if inst["status"] != "TERMINATED" and self._matches(inst, query.get("filter")):
                        items.setdefault(f"zones/{zone}", {"instances": []})["instances"].append(inst)
                return 200, {"kind": "compute#instanceAggregatedList", "items": items}
        return self._error(404, "notFound", f"unknown path {url.path}")

    def _global(
        self,
        method: str,
        project: str,
        kind: str,
        rest: list[str],
        body: dict[str, Any],
        query: dict[str, str],
    ) -> tuple[int, Any]:
        table = self.networks if kind == "networks" else self.firewalls
        singular = kind[:-1]
        link = f"projects/{project}/global/{kind}"
        if method == "POST" and not rest:
            fault = self._fault(singular)
            if fault:
                return self._error(
                    403, "quotaExceeded", f"Quota '{kind.upper()}' exceeded. Limit: 100.0 globally."
                )
            name = body["name"]
            if name in table:
                return self._error(409, "alreadyExists", f"The resource '{link}/{name}' already exists")
            table[name] = {**body, "selfLink": f"{link}/{name}", "id": uuid.uuid4().int % 10**12}
            return 200, self._operation(project, None, f"{link}/{name}")
        if method == "GET" and not rest:
            return 200, {"items": list(table.values())}
        name = rest[0]
        if name not in table:
            return self._error(404, "notFound", f"The resource '{link}/{name}' was not found")
        if method == "GET":
            return 200, table[name]
        if method == "DELETE":
            if kind == "networks" and any(
                f.get("network", "").endswith(f"/{name}") for f in self.firewalls.values()
            ):
                return self._error(400, "resourceInUseByAnotherResource", f"network {name} is in use")

            def gone() -> None:
                table.pop(name, None)

            return 200, self._operation(project, None, f"{link}/{name}", then=gone)
        return self._error(405, "badRequest", f"{method} not supported")

    def _instances(
        self, method: str, project: str, zone: str, rest: list[str], body: dict[str, Any]
    ) -> tuple[int, Any]:
        link = f"projects/{project}/zones/{zone}/instances"
        if method == "POST" and not rest:
            name = body["name"]
            fault = self._fault("instance")
            if fault and fault[0] == "quota":
                region = zone.rsplit("-", 1)[0]
                return self._error(
                    403, "quotaExceeded", f"Quota 'CPUS' exceeded. Limit: 24.0 in region {region}."
                )
            if fault:
                return 200, self._operation(
                    project, zone, f"{link}/{name}",
                    {"code": "ZONE_RESOURCE_POOL_EXHAUSTED",
                     "message": f"The zone '{zone}' does not have enough resources available."},
                )  # fmt: skip
            if (zone, name) in self.instances and self.instances[(zone, name)]["status"] != "TERMINATED":
                return self._error(409, "alreadyExists", f"The resource '{link}/{name}' already exists")
            self._next_ip += 1
            interfaces = [dict(i) for i in body.get("networkInterfaces", [])] or [{}]
            internal, external = (
                ("127.120.0.", "127.120.0.") if self.loopback_addresses else ("10.128.0.", "34.1.0.")
            )
            interfaces[0]["networkIP"] = f"{internal}{self._next_ip}"
            for access in interfaces[0].get("accessConfigs", []):
                access["natIP"] = f"{external}{self._next_ip}"
            self.instances[(zone, name)] = {
                **body,
                "networkInterfaces": interfaces,
                "labels": dict(body.get("labels", {})),
                "status": "PROVISIONING",
                "zone": f"projects/{project}/zones/{zone}",
                "selfLink": f"{link}/{name}",
                "id": str(uuid.uuid4().int % 10**12),
            }
            created = self.instances[(zone, name)]

            def running() -> None:
                if created["status"] == "PROVISIONING":
                    created["status"] = "RUNNING"

            return 200, self._operation(project, zone, f"{link}/{name}", then=running)
        if not rest:
            return self._error(405, "badRequest", f"{method} not supported")
        name = rest[0]
        instance = self.instances.get((zone, name))
        if instance is None or instance["status"] == "TERMINATED":
            return self._error(404, "notFound", f"The resource '{link}/{name}' was not found")
        if method == "GET" and len(rest) == 2 and rest[1] == "serialPort":
            contents = self.serial_output.get((zone, name), "")
            return 200, {"kind": "compute#serialPortOutput", "contents": contents, "start": "0",
                         "next": str(len(contents))}  # fmt: skip
        if method == "GET":
            return 200, instance
        if method == "DELETE":
            if instance["status"] == "STOPPING":
                return self._error(400, "resourceNotReady", f"The resource '{link}/{name}' is being deleted")
            instance["status"] = "STOPPING"
            return 200, self._operation(
                project, zone, f"{link}/{name}", then=lambda: instance.update(status="TERMINATED")
            )
        return self._error(405, "badRequest", f"{method} not supported")


class _Operation:
    """An operation of the fake: its body as the API answers it, and what its end does."""

    def __init__(
        self, body: dict[str, Any], error: dict[str, Any] | None, then: Callable[[], None] | None
    ) -> None:
        self.body, self.error, self.then = body, error, then
