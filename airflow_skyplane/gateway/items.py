"""What a gateway worker holds in flight: a reading gateway's chunk requests (:class:`ReadItem`) and
the frames a relay passes on as their payloads arrive (:class:`RelayFrame`), and how a gateway's
connections are shared among its worker processes (:func:`share`). Kept apart from the worker's
threads (:mod:`.worker`) so each module has one job."""

from __future__ import annotations

import threading
from typing import Any

from airflow_skyplane.exceptions import TransferError
from airflow_skyplane.gateway import protocol as proto


def share(total: int, workers: int, index: int) -> int:
    """Worker ``index``'s share of ``total`` connections, the shares differing by at most one."""
    return total // workers + (1 if index < total % workers else 0)


class ReadItem:
    """A chunk request of a reading gateway (one chunk, or a batch of small objects)."""

    __slots__ = ("request", "size", "attempt", "chunks", "ack_id", "wire")

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request
        batch = request.get("chunks")
        self.size = sum(c["length"] for c in batch) if batch else int(request["length"])
        self.chunks = len(batch) if batch else 1
        self.ack_id = int(batch[0]["chunk_id"] if batch else request["chunk_id"])
        self.attempt = 0
        self.wire = 0


class RelayFrame:
    """A frame a relay passes on: its payload fills in as it arrives, and is held until the next hop
    acknowledges it."""

    __slots__ = (
        "type",
        "header",
        "payload",
        "size",
        "attempt",
        "filled",
        "failed",
        "sends",
        "ack_id",
        "waiting",
        "raw",
        "chunks",
        "_cond",
    )

    def __init__(
        self, frame_type: proto.FrameType, header: bytes, size: int, payload: bytes | bytearray | None = None
    ) -> None:
        self.type, self.header, self.size = frame_type, header, size
        self.payload = bytearray(size) if payload is None else payload
        self.filled = 0
        self.failed = False
        self.attempt = 0
        self.sends = 0
        self.ack_id: int | None = (
            proto.ChunkHeader.unpack(header).chunk_id if frame_type is proto.FrameType.CHUNK else None
        )
        self.waiting: set[str] = set()  # the branches of a fork still to send it
        self.raw, self.chunks = size, 1  # a frame read at a forking source: its plaintext and chunks
        self._cond = threading.Condition()

    def advance(self, filled: int, *, failed: bool = False) -> None:
        with self._cond:
            self.filled = filled
            self.failed = failed
            if self.ack_id is None and filled == self.size:
                self.ack_id = proto.first_chunk_id(self.type, self.header, self.payload)
            self._cond.notify_all()

    def wait_past(self, sent: int, stop: threading.Event) -> int:
        """Bytes received once more than ``sent`` are (or the frame is whole, or failed)."""
        with self._cond:
            while self.filled <= sent and self.filled < self.size and not self.failed:
                if stop.is_set():
                    raise TransferError("the relay is stopping")
                self._cond.wait(0.5)
            if self.failed:
                raise TransferError("the upstream connection failed while this frame was being passed on")
            return self.filled
