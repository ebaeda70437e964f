"""The fault proxy's own behaviour, in front of a plain HTTP server on loopback."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from airflow_skyplane.testing.faultproxy import FaultProxy


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the base class's naming
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with FaultProxy(f"http://127.0.0.1:{server.server_address[1]}") as p:
            yield p
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _get(proxy: FaultProxy, path: str) -> tuple[int, bytes, float]:
    t0 = time.monotonic()
    with urllib.request.urlopen(proxy.url + path, timeout=10) as r:  # noqa: S310 - loopback
        return r.status, r.read(), time.monotonic() - t0


def test_delay_holds_the_next_requests_then_ends(proxy: FaultProxy) -> None:
    proxy.delay(0.3, requests=2, path_contains="/slow")
    assert proxy.armed()
    assert _get(proxy, "/fast")[:2] == (200, b"/fast")  # not matched: not held, not counted
    first, second = _get(proxy, "/slow/1"), _get(proxy, "/slow/2")
    assert (first[:2], second[:2]) == ((200, b"/slow/1"), (200, b"/slow/2"))
    assert first[2] >= 0.3 and second[2] >= 0.3  # each one held, then forwarded unchanged
    assert not proxy.armed() and proxy.counters.delayed == 2
    _get(proxy, "/slow/3")
    assert proxy.counters.delayed == 2 and proxy.counters.forwarded == 4


def test_a_delay_adds_to_an_injected_error_and_needs_an_end(proxy: FaultProxy) -> None:
    proxy.delay(0.2, requests=1)
    proxy.fail(requests=1, methods=None)
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(proxy, "/x")
    assert err.value.code == 500 and proxy.counters.delayed == 1 and proxy.counters.injected == 1
    with pytest.raises(ValueError, match="needs an end"):
        proxy.delay(0.1)
    with pytest.raises(ValueError, match="latency_s=-1"):
        proxy.delay(-1, requests=1)
