"""The controller's client of the gateways' control endpoints (HTTP on the control address).

Each gateway serves ``GET /status`` (its counters, errors and whether its work is done),
``GET /receipts?since=N`` (a writing gateway's receipts of the chunks it wrote, from the N-th on) and
``POST /stop`` (see :mod:`airflow_skyplane.gateway.status`). A gateway that stops answering is
reported with its cause: its exit code and the end of its log when it died, or the error when it
still runs.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import TypedDict, cast

from airflow_skyplane.compute.launcher import GatewayHandle
from airflow_skyplane.exceptions import TransferError


class Receipt(TypedDict):
    """What a writing gateway returns for one chunk it wrote (and a resumable transfer records)."""

    key: str
    part_number: int
    offset: int
    length: int
    md5: str
    crc32c: str
    #: the store's proof of the write: an S3 ETag, a GCS part object, an Azure block id, a part file
    token: str


class GatewayStatus(TypedDict, total=False):
    """A gateway's ``/status`` answer (the fields the controller reads).

    ``done``: a reading gateway has sent everything and its next hops hold it; ``chunks_stored``: the
    chunks a writing gateway wrote, each counted once. ``errors`` are failures (the first one's unix
    time is ``first_error_at``); ``warnings`` what the gateway recovered from by itself."""

    gateway_id: str
    done: bool
    errors: list[str]
    first_error_at: float | None
    warnings: list[str]
    chunks_sent: int
    chunks_written: int
    chunks_stored: int
    total_chunks: int | None
    raw_bytes: int
    wire_bytes: int
    seconds: float
    resends: int
    rejected_chunks: int
    rejected_peers: int
    workers: int
    cpu_s: float
    peak_rss_mb: float
    #: unix times: the first byte read from the source store, the last chunk written
    first_read_at: float | None
    last_write_at: float | None


def status(gateway: GatewayHandle) -> GatewayStatus:
    return cast(GatewayStatus, _get(gateway, "/status"))


def receipts(gateway: GatewayHandle, since: int) -> list[Receipt]:
    """The receipts ``gateway`` returned from the ``since``-th on, in the order it wrote."""
    return cast(list[Receipt], _get(gateway, f"/receipts?since={since}"))


def stop(gateway: GatewayHandle) -> None:
    """Ask a running gateway to stop (it is stopped by its launcher anyway)."""
    if not gateway.control_port or not gateway.alive():
        return
    request = urllib.request.Request(_url(gateway, "/stop"), method="POST", data=b"")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - a gateway's control endpoint
            pass
    except OSError:
        pass


def settled_dead(gateway: GatewayHandle, grace_s: float = 1.0) -> bool:
    """True when ``gateway`` has exited, waiting ``grace_s`` for a peer that is vanishing: its sockets
    close a moment before its process can be reaped, so a refused connection comes first."""
    deadline = time.monotonic() + grace_s
    while gateway.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not gateway.alive()


def exit_error(gateway: GatewayHandle) -> TransferError:
    """The error for a gateway that died mid-transfer: the cause, with the end of its log."""
    return TransferError(
        f"gateway {gateway.gateway_id} exited with code {gateway.exit_code} before the transfer finished; "
        f"its log ends with:\n{gateway.log_tail()}"
    )


def _url(gateway: GatewayHandle, path: str) -> str:
    return f"http://{gateway.control_host}:{gateway.control_port}{path}"


def _get(gateway: GatewayHandle, path: str) -> object:
    try:
        with urllib.request.urlopen(_url(gateway, path), timeout=10) as r:  # noqa: S310 - a gateway's
            return json.loads(r.read())
    except OSError as err:
        if settled_dead(gateway):
            raise exit_error(gateway) from None
        raise TransferError(
            f"lost the status endpoint of gateway {gateway.gateway_id} ({err}); it is running; its log "
            f"ends with:\n{gateway.log_tail()}"
        ) from None
