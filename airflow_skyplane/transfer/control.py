"""The controller's client of the gateways' control endpoints (HTTP on the control address).

Each gateway serves ``GET /status`` (its counters, errors and whether its work is done),
``GET /receipts?since=N`` (a writing gateway's receipts of the chunks it wrote, from the N-th on) and
``POST /stop`` (see :mod:`airflow_skyplane.gateway.status`). A gateway that stops answering is
reported with its cause: its exit code and the end of its log when it died, or the error when it
still runs. :class:`Watch` reads the statuses a running job looks at, and :func:`check` turns them
into the error that names the gateway that failed first.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Mapping
from typing import TypedDict, cast

from airflow_skyplane.compute.launcher import GatewayHandle
from airflow_skyplane.exceptions import TransferError
from airflow_skyplane.transfer.tracker import first_failure

#: seconds between two looks at every gateway (the reader and the writer are looked at each time)
SWEEP_S = 1.0
#: seconds a gateway that reports errors is given to show as dead (the cause, when one is vanishing)
GRACE_S = 1.0


class _ReceiptMarks(TypedDict, total=False):
    #: for an object written whole: the algorithm (``md5``, ``crc32c``) of the checksum the store
    #: computed of what it stored, returned by the write and checked by the writer; absent otherwise
    confirmed: str
    #: the last part of an object written in parts (its part number is the number of parts)
    last: bool


class Receipt(_ReceiptMarks):
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
    #: what a writing gateway stored, each chunk once: its bytes, and the objects all of whose chunks
    #: it stored
    bytes_stored: int
    objects_stored: int
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


def all_statuses(gateways: Mapping[str, GatewayHandle]) -> dict[str, GatewayStatus]:
    return {gid: status(gw) for gid, gw in gateways.items()}


class Watch:
    """The statuses a running job looks at: the reader's and the writer's each time; every gateway's
    once every :data:`SWEEP_S`, or as soon as the reader or the writer reports errors."""

    def __init__(self, reader: str, writer: str) -> None:
        self.ends = (reader, writer)
        self._next_sweep = 0.0

    def statuses(self, gateways: Mapping[str, GatewayHandle]) -> dict[str, GatewayStatus]:
        statuses = {gid: status(gateways[gid]) for gid in self.ends if gid in gateways}
        now = time.monotonic()
        if now >= self._next_sweep or any(s["errors"] for s in statuses.values()):
            self._next_sweep = now + SWEEP_S
            statuses.update(all_statuses({g: gw for g, gw in gateways.items() if g not in self.ends}))
        return statuses


def check(
    gateways: Mapping[str, GatewayHandle], statuses: Mapping[str, GatewayStatus], *, done: bool
) -> None:
    """Raise TransferError when a gateway failed, naming the cause: a gateway that died before the
    work was done (it makes the others report errors), else the one whose first error came first."""
    dead = _dead(gateways)
    grace = time.monotonic() + GRACE_S
    while first_failure(statuses) and not dead and time.monotonic() < grace:
        time.sleep(0.05)  # a peer that vanished shows as errors a moment before it shows as dead
        dead = _dead(gateways)
    if dead and not done:  # the cause first
        raise exit_error(gateways[dead[0]])
    failure = first_failure(statuses)
    if failure is not None:
        raise TransferError(f"gateway {failure[0]} failed: {failure[1][:3]}")


def _dead(gateways: Mapping[str, GatewayHandle]) -> list[str]:
    return [gid for gid, gw in gateways.items() if not gw.alive()]


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
