"""A gateway's counters and the small HTTP endpoint that serves them, bound to loopback.

``GET /status`` returns the counters as JSON (chunks, bytes and objects done, wire bytes, resends,
errors, throughput, memory); ``GET /receipts`` the parts a writing gateway wrote (what the controller needs to
complete multipart uploads and verify objects), or with ``?since=N`` those after the first N (the
controller polls them that way to checkpoint a resumable transfer); ``POST /stop`` asks the
gateway to finish. On a cloud relay the controller reaches it through an SSH port forward;
nothing listens to the world. Standard library only (``http.server``), as the gateway must run
without Airflow.

A gateway runs several worker processes (:mod:`.worker`); they send their counter deltas, receipts
and errors to the gateway's main process (:mod:`.daemon`), which holds the one :class:`Counters` the
endpoint serves: one set of figures and one ordered stream of receipts per gateway.

``errors`` are failures of the transfer (the controller fails it on the first); what a gateway
recovers from by itself (a chunk rejected and sent again, a store write that failed once) is counted
and shown under ``warnings`` instead. ``failed_branches`` are the branches of a multicast fork the
gateway gave up while the others went on: they fail only the destinations down those branches.
``bytes_to:<gateway id>`` counts the bytes each next hop acknowledged (what every edge carried).
"""

from __future__ import annotations

import json
import resource
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: bounded lists: the first errors and warnings explain the rest
MAX_MESSAGES = 100


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
            "replayed_chunks": 0,
            "rejected_peers": 0,
        }
        self.errors: list[str] = []
        self.warnings: list[str] = []
        #: the branches of a multicast fork given up (branch -> why), the others going on
        self.failed_branches: dict[str, str] = {}
        self.first_error_at: float | None = None
        self.receipts: list[dict[str, Any]] = []
        self._stored: set[int] = set()
        #: bytes and objects a writing gateway stored, each chunk counted once however often it was
        #: written; an object counts once all its chunks are stored (the parts of the ones still
        #: being written: part numbers stored, and the number of parts once the last is)
        self.bytes_stored = 0
        self.objects_stored = 0
        self._partial: dict[str, tuple[set[int], int | None]] = {}
        self.done = False
        self.finished: float | None = None
        self.total_chunks: int | None = None
        #: unix times: the first byte read from the source store, the last chunk written
        self.first_read_at: float | None = None
        self.last_write_at: float | None = None
        #: per worker process: pid, peak RSS (MB) and CPU seconds as it last reported them
        self.workers: dict[int, dict[str, float]] = {}

    def finish(self) -> None:
        with self._lock:
            self.done = True
            self.finished = time.monotonic()

    def add(self, **deltas: int) -> None:
        self.apply(deltas)

    def apply(self, deltas: Mapping[str, int]) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self.values[name] = self.values.get(name, 0) + delta

    def error(self, message: str) -> None:
        with self._lock:
            if self.first_error_at is None:
                self.first_error_at = time.time()
            if len(self.errors) < MAX_MESSAGES:
                self.errors.append(message)

    def warn(self, message: str) -> None:
        with self._lock:
            if len(self.warnings) < MAX_MESSAGES:
                self.warnings.append(message)

    def branch_failed(self, branch: str, message: str) -> None:
        with self._lock:
            self.failed_branches.setdefault(branch, message)

    def receipt(self, receipt: dict[str, Any], chunk_id: int | None = None) -> None:
        """Record a chunk written; ``chunk_id`` counts it once however often it was written."""
        with self._lock:
            self.receipts.append(receipt)
            if chunk_id is not None and chunk_id not in self._stored:
                self._stored.add(chunk_id)
                self.bytes_stored += int(receipt.get("length", 0))
                self._object_progress(receipt)

    def _object_progress(self, receipt: Mapping[str, Any]) -> None:
        number = int(receipt.get("part_number", 0))
        if number == 0:
            self.objects_stored += 1
            return
        key = str(receipt.get("key"))
        parts, total = self._partial.get(key, (set(), None))
        parts.add(number)
        if receipt.get("last"):
            total = number
        if total is not None and len(parts) >= total:
            self._partial.pop(key, None)
            self.objects_stored += 1
        else:
            self._partial[key] = (parts, total)

    def times(self, first_read_at: float | None = None, last_write_at: float | None = None) -> None:
        with self._lock:
            if first_read_at is not None and (
                self.first_read_at is None or first_read_at < self.first_read_at
            ):
                self.first_read_at = first_read_at
            if last_write_at is not None and (
                self.last_write_at is None or last_write_at > self.last_write_at
            ):
                self.last_write_at = last_write_at

    def worker(self, pid: int, **figures: float) -> None:
        with self._lock:
            self.workers.setdefault(pid, {}).update(figures)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            seconds = max((self.finished or time.monotonic()) - self._started, 1e-9)
            own = resource.getrusage(resource.RUSAGE_SELF)
            peak = own.ru_maxrss / 1024 + sum(w.get("peak_rss_mb", 0.0) for w in self.workers.values())
            cpu = own.ru_utime + own.ru_stime + sum(w.get("cpu_s", 0.0) for w in self.workers.values())
            return {
                "gateway_id": self.gateway_id,
                **self.values,
                "chunks_stored": len(self._stored),
                "bytes_stored": self.bytes_stored,
                "objects_stored": self.objects_stored,
                "seconds": round(seconds, 3),
                "raw_gbps": round(self.values["raw_bytes"] * 8 / seconds / 1e9, 4),
                "total_chunks": self.total_chunks,
                # every process of the gateway (main and workers), each at its own peak (Linux
                # reports KiB): an upper bound of what it held at once
                "peak_rss_mb": round(peak, 1),
                "cpu_s": round(cpu, 3),
                "workers": len(self.workers),
                "first_read_at": self.first_read_at,
                "last_write_at": self.last_write_at,
                "errors": list(self.errors),
                "first_error_at": self.first_error_at,
                "warnings": list(self.warnings),
                "failed_branches": dict(self.failed_branches),
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
                    chosen = counters.receipts[int(since or 0) :]
                self._reply(chosen)
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
