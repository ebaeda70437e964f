"""A fault-injecting HTTP proxy on loopback, to put in front of an emulated store.

The fault suite points a store's endpoint at the proxy instead of the emulator (moto S3, the GCS
emulator, Azurite); every request is forwarded unchanged, except while a fault is armed:

* :meth:`FaultProxy.fail` answers the next ``requests`` matching requests (or all of them for
  ``seconds``) with an HTTP error (500 or 503 by default, alternating), in the S3 error format, after
  reading the request body as a real store does;
* :meth:`FaultProxy.throttle` paces the bodies of matching requests and responses to a byte rate
  for a while, as a store that slows a client down does;
* :meth:`FaultProxy.delay` holds every matching request for a fixed time before forwarding it, as
  the round trip to a distant region's API endpoint does.

Beyond faults, :meth:`FaultProxy.intercept` lets a test answer some requests itself (what an
emulator does not serve as the cloud does), and :meth:`FaultProxy.rewrite` change the answers it
forwards; the AWS front of the tests (:mod:`airflow_skyplane.testing.aws_front`) is built that way.

Counters say what happened (``forwarded``, ``injected``, ``throttled``), so a test can assert its
fault was really exercised; ``FaultProxy(upstream, record=True)`` also keeps every request it
received (:attr:`FaultProxy.requests`), so a test can count what a transfer asked of a store. The
proxy listens on ``127.0.0.1`` only, forwards only to the one upstream it was given, and runs in
threads of the test process (:meth:`start`, :meth:`stop`). It logs
nothing: request headers carry signatures and keys.

Imports no Airflow and no SDK: the standard library only.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
    | {"expect"}  # the proxy read the body already
)
_S3_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


@dataclass
class _Rule:
    methods: frozenset[str] | None
    path_contains: str
    remaining: int | None = None
    until: float | None = None
    statuses: tuple[int, ...] = (500, 503)
    rate_bps: float | None = None
    latency_s: float | None = None
    _turn: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.path_contains in path

    def active(self) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        return not (self.until is not None and time.monotonic() >= self.until)


@dataclass(frozen=True)
class ProxyRequest:
    """A request as the proxy read it (the body whole)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str:
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), "")


@dataclass
class ProxyResponse:
    """An answer: from upstream, or made by an interceptor."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    reason: str = ""


def object_named(request: ProxyRequest, names: Iterable[str] | set[str]) -> str | None:
    """Which of ``names`` (the last segment of object keys) a recorded request is about: named in its
    path (S3, Azure Blob, a GCS download or metadata request), or in the metadata at the head of the
    body of a GCS upload; None for any other request (listings, buckets, the transfer's own files)."""
    wanted = names if isinstance(names, set) else set(names)
    path = urllib.parse.unquote(request.path)
    name = path.split("?", 1)[0].rsplit("/", 1)[-1]
    if name in wanted:
        return name
    if request.method == "POST" and "uploadType=multipart" in request.path:
        found = re.search(rb'\{[^{}]*"name"[^{}]*\}', request.body[:4096])
        if found:
            uploaded = str(json.loads(found.group(0))["name"]).rsplit("/", 1)[-1]
            return uploaded if uploaded in wanted else None
    return None


#: answers a request here instead of upstream (None: forward it)
Interceptor = Callable[[ProxyRequest], "ProxyResponse | None"]
#: changes an answer from upstream before the client gets it
Rewriter = Callable[[ProxyRequest, ProxyResponse], ProxyResponse]


@dataclass
class FaultCounters:
    forwarded: int = 0
    injected: int = 0
    throttled: int = 0
    delayed: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


class FaultProxy:
    """An HTTP reverse proxy from ``127.0.0.1:<port>`` to ``upstream`` (e.g. ``http://127.0.0.1:5000``)."""

    def __init__(self, upstream: str, *, record: bool = False) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the fault proxy forwards to a loopback emulator over http, not {upstream!r}")
        self.upstream_host = parsed.hostname
        self.upstream_port = parsed.port or 80
        self.counters = FaultCounters()
        #: every request received, in order, when recording (kept in memory only, never logged)
        self.requests: list[ProxyRequest] = []
        self._record = record
        self._rules: list[_Rule] = []
        self._interceptors: list[Interceptor] = []
        self._rewriters: list[Rewriter] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fault proxy is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- faults ----------------------------------------------------------------------------------
    def fail(
        self,
        *,
        requests: int | None = None,
        seconds: float | None = None,
        statuses: Iterable[int] = (500, 503),
        methods: Iterable[str] | None = ("PUT", "POST"),
        path_contains: str = "",
    ) -> None:
        """Answer matching requests with these statuses in turn: the next ``requests`` of them, or
        every one for ``seconds`` (at least one bound is needed, so a fault always ends)."""
        self._add_rule(requests, seconds, methods, path_contains, statuses=tuple(statuses))

    def throttle(
        self,
        rate_bps: float,
        *,
        requests: int | None = None,
        seconds: float | None = None,
        methods: Iterable[str] | None = None,
        path_contains: str = "",
    ) -> None:
        """Pace the request and response bodies of matching requests to ``rate_bps``: the next
        ``requests`` forwarded ones, or all for ``seconds``. A request answered with an injected error
        is not paced (and does not count)."""
        if rate_bps <= 0:
            raise ValueError(f"rate_bps={rate_bps} must be > 0")
        self._add_rule(requests, seconds, methods, path_contains, rate_bps=rate_bps)

    def delay(
        self,
        latency_s: float,
        *,
        requests: int | None = None,
        seconds: float | None = None,
        methods: Iterable[str] | None = None,
        path_contains: str = "",
    ) -> None:
        """Hold each matching request ``latency_s`` before forwarding it: the next ``requests`` of
        them, or all for ``seconds``. Delays of several rules add up."""
        if latency_s < 0:
            raise ValueError(f"latency_s={latency_s} must be >= 0")
        self._add_rule(requests, seconds, methods, path_contains, latency_s=latency_s)

    def _add_rule(
        self,
        requests: int | None,
        seconds: float | None,
        methods: Iterable[str] | None,
        path_contains: str,
        **effect: Any,
    ) -> None:
        if requests is None and seconds is None:
            raise ValueError("a fault needs an end: give requests or seconds")
        rule = _Rule(
            frozenset(methods) if methods is not None else None,
            path_contains,
            remaining=requests,
            until=time.monotonic() + seconds if seconds is not None else None,
            **effect,
        )
        with self._lock:
            self._rules.append(rule)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def intercept(self, interceptor: Interceptor) -> None:
        """Ask ``interceptor`` first about every request: what it answers goes back to the client,
        and upstream never sees the request; None forwards it (faults still apply)."""
        with self._lock:
            self._interceptors.append(interceptor)

    def rewrite(self, rewriter: Rewriter) -> None:
        """Pass every answer from upstream through ``rewriter`` before the client gets it."""
        with self._lock:
            self._rewriters.append(rewriter)

    def _intercepted(self, request: ProxyRequest) -> ProxyResponse | None:
        with self._lock:
            interceptors = list(self._interceptors)
        for interceptor in interceptors:
            answer = interceptor(request)
            if answer is not None:
                return answer
        return None

    def _rewritten(self, request: ProxyRequest, response: ProxyResponse) -> ProxyResponse:
        with self._lock:
            rewriters = list(self._rewriters)
        for rewriter in rewriters:
            response = rewriter(request, response)
        return response

    def armed(self) -> bool:
        """True while a fault is still to come."""
        with self._lock:
            return any(r.active() for r in self._rules)

    # -- used by the handler ---------------------------------------------------------------------
    def _decide(self, method: str, path: str) -> tuple[int | None, float | None, float]:
        """(status to inject or None, rate to pace at or None, seconds to wait first) for one request."""
        with self._lock:
            live = [r for r in self._rules if r.active() and r.matches(method, path)]
            wait = 0.0
            for rule in [r for r in live if r.latency_s is not None]:
                assert rule.latency_s is not None
                wait += rule.latency_s
                if rule.remaining is not None:
                    rule.remaining -= 1
            if wait:
                self.counters.delayed += 1
            live = [r for r in live if r.latency_s is None]
            for rule in live:
                if rule.rate_bps is None:
                    status = rule.statuses[rule._turn % len(rule.statuses)]
                    rule._turn += 1
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    self.counters.injected += 1
                    self.counters.by_status[status] = self.counters.by_status.get(status, 0) + 1
                    return status, None, wait
            self.counters.forwarded += 1
            rate: float | None = None
            for rule in live:  # throttles only: no error was injected
                assert rule.rate_bps is not None
                rate = rule.rate_bps if rate is None else min(rate, rule.rate_bps)
                if rule.remaining is not None:
                    rule.remaining -= 1
            if rate is not None:
                self.counters.throttled += 1
            return None, rate, wait


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"
    _conn: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # headers carry signatures: log nothing

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    @staticmethod
    def _pace(nbytes: int, rate: float | None) -> None:
        if rate is not None and nbytes:
            time.sleep(nbytes / rate)

    def _send(self, response: ProxyResponse) -> None:
        self.send_response(response.status, response.reason or None)
        for key, value in response.headers:
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        if self.command == "HEAD":
            given = dict((k.lower(), v) for k, v in response.headers)
            self.send_header("Content-Length", given.get("content-length", "0"))
        else:
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _handle(self) -> None:
        body = self._body()
        request = ProxyRequest(self.command, self.path, dict(self.headers.items()), body)
        if self.owner._record:
            with self.owner._lock:
                self.owner.requests.append(request)
        answer = self.owner._intercepted(request)
        if answer is not None:
            self._send(answer)
            return
        status, rate, wait = self.owner._decide(self.command, self.path)
        if wait:
            time.sleep(wait)
        if status is not None:
            code, message = _S3_ERRORS.get(status, ("ServiceUnavailable", "Injected fault."))
            payload = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{message}</Message></Error>"
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            return
        self._pace(len(body), rate)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        for attempt in range(2):  # a pooled upstream connection may have been closed meanwhile
            upstream = self._connection()
            try:
                upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in headers.items():
                    upstream.putheader(key, value)
                upstream.endheaders(body or None)
                response = upstream.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, OSError):
                upstream.close()
                self._conn = None
                if attempt:
                    raise
        self._pace(len(data), rate)
        answer = ProxyResponse(response.status, list(response.getheaders()), data, response.reason)
        self._send(self.owner._rewritten(request, answer))

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            assert self.owner.upstream_host is not None
            self._conn = http.client.HTTPConnection(
                self.owner.upstream_host, self.owner.upstream_port, timeout=120
            )
        return self._conn

    def finish(self) -> None:
        super().finish()
        if self._conn is not None:  # one upstream connection per client connection
            self._conn.close()
            self._conn = None

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle
