"""A small stateful fake of the Compute Engine REST resources relays use, served on loopback.

No Compute Engine emulator exists, so the GCP relay backend is tested against this: the real client
library (``googleapiclient``, built by ``ComputeEngineHook``'s credentials) pointed at it through its
``api_endpoint`` client option. It keeps networks, firewalls and instances per project in memory,
answers inserts and deletes with operations that are already ``DONE``, and supports the
``labels.KEY=VALUE`` / ``labels.KEY:*`` filters of ``aggregatedList``.

Faults for tests: :meth:`FakeGCE.fail_next` makes the next insert of a kind fail, either at once
(an HTTP error, as for a quota) or in its operation (as for ``ZONE_RESOURCE_POOL_EXHAUSTED``).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


class FakeGCE:
    """``loopback_addresses``: give instances internal and external addresses on loopback
    (``127.120.0.N``), so :class:`~airflow_skyplane.testing.vms.EmulatedVMs` can bring them up."""

    def __init__(self, *, loopback_addresses: bool = False) -> None:
        self.loopback_addresses = loopback_addresses
        self.networks: dict[str, dict[str, Any]] = {}
        self.firewalls: dict[str, dict[str, Any]] = {}
        self.instances: dict[tuple[str, str], dict[str, Any]] = {}  # (zone, name) -> instance
        self.requests: list[tuple[str, str]] = []
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
                status, payload = fake.handle(method, self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._answer("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._answer("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._answer("DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-gce").start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
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
            if inst["labels"].get(label) == value and inst["status"] in ("PROVISIONING", "STAGING", "RUNNING")
        ]

    # -- the API -------------------------------------------------------------------------------------
    @staticmethod
    def _error(code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
        return code, {
            "error": {"code": code, "message": message, "errors": [{"reason": reason, "message": message}]}
        }

    def _operation(
        self, project: str, zone: str | None, target: str, error: dict[str, Any] | None = None
    ) -> dict:
        op: dict[str, Any] = {
            "kind": "compute#operation",
            "name": f"operation-{uuid.uuid4().hex[:12]}",
            "status": "DONE",
            "targetLink": target,
            "progress": 100,
        }
        if zone:
            op["zone"] = f"projects/{project}/zones/{zone}"
        if error:
            op["error"] = {"errors": [error]}
        return op

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
            if rest[0] == "global" and rest[1] in ("networks", "firewalls"):
                return self._global(method, project, rest[1], rest[2:], body, query)
            if rest[0] == "global" and rest[1] == "operations":
                return 200, self._operation(project, None, "")
            if rest[0] == "zones" and len(rest) >= 3 and rest[2] == "operations":
                return 200, self._operation(project, rest[1], "")
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
            del table[name]
            return 200, self._operation(project, None, f"{link}/{name}")
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
                "status": "RUNNING",
                "zone": f"projects/{project}/zones/{zone}",
                "selfLink": f"{link}/{name}",
                "id": str(uuid.uuid4().int % 10**12),
            }
            return 200, self._operation(project, zone, f"{link}/{name}")
        if not rest:
            return self._error(405, "badRequest", f"{method} not supported")
        name = rest[0]
        instance = self.instances.get((zone, name))
        if instance is None or instance["status"] == "TERMINATED":
            return self._error(404, "notFound", f"The resource '{link}/{name}' was not found")
        if method == "GET" and len(rest) == 2 and rest[1] == "serialPort":
            return 200, {"contents": f"booting {name}\n", "start": "0", "next": "1"}
        if method == "GET":
            return 200, instance
        if method == "DELETE":
            instance["status"] = "TERMINATED"
            return 200, self._operation(project, zone, f"{link}/{name}")
        return self._error(405, "badRequest", f"{method} not supported")
