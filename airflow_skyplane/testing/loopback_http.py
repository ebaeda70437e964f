"""A threaded HTTP server on loopback for the fakes of cloud APIs (Compute Engine, Resource
Manager, Google's token service): started on a free port, served from a daemon thread, stopped
whole. Standard library only."""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve(
    handler: type[BaseHTTPRequestHandler], name: str, context: ssl.SSLContext | None = None
) -> ThreadingHTTPServer:
    """``handler`` served on ``127.0.0.1`` at a free port (over TLS with ``context``), in a thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True, name=name).start()
    return server


def shut(server: ThreadingHTTPServer | None) -> None:
    """Stop serving and close the socket (nothing for None)."""
    if server is not None:
        server.shutdown()
        server.server_close()


def answer_json(handler: BaseHTTPRequestHandler, status: int, payload: object) -> None:
    """Answer the request ``handler`` serves with ``payload`` as JSON."""
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
