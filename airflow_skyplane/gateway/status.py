"""A gateway's counters and the small HTTP endpoint that serves them, bound to loopback.

``GET /status`` returns the counters as JSON (chunks and bytes done, wire bytes, resends, errors,
throughput); ``GET /receipts`` the parts a writing gateway wrote (what the controller needs to
complete multipart uploads and verify objects), or with ``?since=N`` those after the first N (the
controller polls them that way to checkpoint a resumable transfer); ``POST /stop`` asks the
gateway to finish. On a cloud relay the controller reaches it through an SSH port forward;
nothing listens to the world. Standard library only (``http.server``), as the gateway must run
without Airflow.
"""

from __future__ import annotations

import json
import resource
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Counters:
    """Thread-safe counters of one gateway."""

    def __init__(self, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.values: dict[str, int] = {
            "chunks_sent": 0,
            "chunks_received": 0,
            "chunks_written": 0,
            "raw_bytes": 0,
            "wire_bytes": 0,
            "resends": 0,
            "rejected_chunks": 0,
            "rejected_peers": 0,
        }
        self.errors: list[str] = []
        self.receipts: list[dict[str, Any]] = []
        self.done = False
        self.finished: float | None = None
        self.total_chunks: int | None = None

    def finish(self) -> None:
        with self._lock:
            self.done = True
            self.finished = time.monotonic()

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self.values[name] = self.values.get(name, 0) + delta

    def error(self, message: str) -> None:
        with self._lock:
            if len(self.errors) < 100:  # bounded: the first errors explain the rest
                self.errors.append(message)

    def receipt(self, receipt: dict[str, Any]) -> None:
        with self._lock:
            self.receipts.append(receipt)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            seconds = max((self.finished or time.monotonic()) - self._started, 1e-9)
            return {
                "gateway_id": self.gateway_id,
                **self.values,
                "seconds": round(seconds, 3),
                "raw_gbps": round(self.values["raw_bytes"] * 8 / seconds / 1e9, 4),
                "total_chunks": self.total_chunks,
                # peak resident memory of this gateway process (Linux reports KiB)
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "errors": list(self.errors),
                "done": self.done,
            }


def serve(counters: Counters, host: str, port: int, on_stop: Callable[[], None]) -> ThreadingHTTPServer:
    """Start the endpoint in a daemon thread; returns the server (``server_address`` has the port)."""

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body: Any, code: int = 200) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/status":
                self._reply(counters.snapshot())
            elif self.path == "/receipts" or self.path.startswith("/receipts?since="):
                since = self.path.partition("?since=")[2]
                if since and not since.isdigit():
                    self._reply({"error": f"since={since!r} must be a whole number of receipts"}, 400)
                    return
                with counters._lock:
                    self._reply(counters.receipts[int(since or 0) :])
            else:
                self._reply({"error": f"unknown path {self.path}: use /status or /receipts"}, 404)

        def do_POST(self) -> None:  # noqa: N802
            if self.path == "/stop":
                self._reply({"stopping": True})
                on_stop()
            else:
                self._reply({"error": f"unknown path {self.path}: use /stop"}, 404)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: no access log
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="status", daemon=True).start()
    return server
