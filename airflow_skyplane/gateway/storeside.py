"""The store-facing halves of a gateway worker: reading chunks at the source, writing them at the
destination, and what a worker reports to its gateway's main process.

* :class:`SourceReader` reads a chunk request from the store and encodes it (lz4 when it pays,
  AES-GCM, CRC-32C). An object of a few chunks (up to :data:`WHOLE_READ_MAX`) is read with **one**
  request and cut into its chunks (:class:`WholeObjects`): a store charges per request, an SDK spends
  milliseconds of CPU on each, and an emulated store (moto) copies the whole object for every range
  it serves; larger objects are read range by range, as parallel readers of S3 do.
* :class:`DestinationWriter` decrypts, checks and writes the chunks of a frame, and returns their
  receipts; it hands the store the CRC-32C it has just verified, so that a store that checks writes
  by a checksum (S3) verifies the bytes it received against the sender's own.
* :class:`Report` sends counter deltas (every 0.1 s), receipts, errors and warnings to the main process.

Test-only fault hooks of a writer: ``exit_after_chunks``, ``delay_per_chunk_s`` (see the program's
``test_faults``). Imports no Airflow.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from airflow_skyplane.exceptions import ProtocolError, TransferError
from airflow_skyplane.gateway import protocol as proto
from airflow_skyplane.storage.base import Checksum, MultipartUpload, ObjectStore

# requests a worker has open at once at its store for the objects of small-object batches: object
# stores serve each request in tens of milliseconds and many at once, so a batch of 256 objects read or
# written one after the other would leave a connection idle for seconds
STORE_THREADS = 32
#: objects up to this size, cut in several chunks, are read whole, once
WHOLE_READ_MAX = 64 * 1024 * 1024
#: objects read whole and being cut that a worker holds at once, at most
WHOLE_READ_OBJECTS = 2
_COMPRESS: dict[str, proto.Compress] = {"auto": "auto", "always": True, "never": False}


class StorePool:
    """Store requests of one worker run through here when a frame holds several objects."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="store")

    def each(self, call: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``[call(item) for item in items]``, through the pool when there are several; every call has
        ended when it returns or raises (the first error, in the items' order), so nothing of a frame
        is still being read or written once it is answered."""
        if len(items) == 1:
            return [call(items[0])]
        futures = [self._pool.submit(call, item) for item in items]
        wait(futures)
        return [f.result() for f in futures]


class Report:
    """What a worker tells the gateway's main process: counter deltas (sent every 0.1 s), and at once
    its receipts, errors and warnings."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._deltas: dict[str, int] = {}
        self._last_write_at: float | None = None
        self.first_read_at: float | None = None

    def send(self, message: dict[str, Any]) -> None:
        with self._send_lock:
            self._conn.send(message)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self._deltas[name] = self._deltas.get(name, 0) + delta

    def wrote(self) -> None:
        with self._lock:
            self._last_write_at = time.time()

    def read_started(self) -> None:
        if self.first_read_at is None:
            self.first_read_at = time.time()
            self.send({"t": "times", "first_read_at": self.first_read_at})

    def error(self, message: str) -> None:
        self.send({"t": "error", "m": message})

    def warn(self, message: str) -> None:
        print(f"gateway worker {os.getpid()}: {message}", file=sys.stderr, flush=True)
        self.send({"t": "warn", "m": message})

    def receipts(self, receipts: list[tuple[dict[str, Any], int]]) -> None:
        self.flush()  # counters first: chunks_written never lags the receipts
        self.send({"t": "receipts", "r": receipts})

    def flush(self) -> None:
        with self._lock:
            deltas, self._deltas = self._deltas, {}
            last, self._last_write_at = self._last_write_at, None
        usage = resource.getrusage(resource.RUSAGE_SELF)
        message: dict[str, Any] = {
            "t": "add",
            "v": deltas,
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }
        if last is not None:
            message["last_write_at"] = last
        self.send(message)


# -- reading ---------------------------------------------------------------------------------------
@dataclass
class _Whole:
    size: int
    parts: int
    ready: threading.Event = field(default_factory=threading.Event)
    data: bytes = b""
    error: BaseException | None = None
    done: int = 0


class WholeObjects:
    """Objects of a few chunks, read with one request and cut into their chunks.

    The first chunk request of such an object reads it whole; the others wait for that read and take
    their range; the object is dropped once every chunk of it is cut. At most
    :data:`WHOLE_READ_OBJECTS` objects are held at once: beyond that, a request reads its range
    itself, so nothing ever waits for room here. (The main process hands out the chunks of an object
    one after the other, largest objects first, so they meet here together.)
    """

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self._store, self._prefix = store, prefix
        self._lock = threading.Lock()
        self._held: dict[str, _Whole] = {}

    def range(self, request: Mapping[str, Any], attempt: int = 0) -> bytes | None:
        """The bytes of a chunk request cut from its whole object, or None (read the range itself).

        Only the first part of an object, on its first send, reads it whole: the object is then held
        until each of its parts has come for its bytes once."""
        key, size, parts = request["key"], request["object_size"], request.get("parts", 1)
        if parts < 2 or size > WHOLE_READ_MAX:
            return None
        with self._lock:
            whole = self._held.get(key)
            fetch = whole is None
            if fetch:
                if request.get("part_number") != 1 or attempt or len(self._held) >= WHOLE_READ_OBJECTS:
                    return None
                whole = self._held[key] = _Whole(size, parts)
        assert whole is not None
        if fetch:
            try:
                whole.data = self._store.read(self._prefix + key)
            except BaseException as err:  # noqa: BLE001 - every waiting chunk raises it too
                whole.error = err
            whole.ready.set()
        else:
            whole.ready.wait()
        try:
            if whole.error is not None:
                raise whole.error
            if len(whole.data) != size:
                raise TransferError(
                    f"source object {key!r} has {len(whole.data)} bytes, it was listed with {size}: "
                    "it changed during the transfer"
                )
            offset, length = request["offset"], request["length"]
            return whole.data[offset : offset + length]
        finally:
            with self._lock:
                whole.done += 1
                if whole.done >= whole.parts or whole.error is not None:
                    self._held.pop(key, None)


class SourceReader:
    """Reads and encodes the chunk requests of a reading gateway."""

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        *,
        transfer_id: bytes,
        cipher: proto.ChunkCipher | None,
        compress: str,
        pool: StorePool,
    ) -> None:
        self.store, self.prefix = store, prefix
        self.transfer_id, self.cipher = transfer_id, cipher
        self.compress = _COMPRESS[compress]
        self.pool = pool
        self.whole = WholeObjects(store, prefix)
        self.checksum: Any = "crc32c" if proto.crc32c_available() else "crc32"

    def _read(self, request: Mapping[str, Any], attempt: int) -> bytes:
        data = self.whole.range(request, attempt)
        if data is None:
            # an object sent in one chunk is asked one byte more: one that grew since it was listed
            # (or since the inventory report that stood for the listing) shows, instead of a prefix
            # of it being written as the object
            whole = 0 < request["length"] == request["object_size"] and request["offset"] == 0
            asked = request["length"] + whole
            data = self.store.read_range(self.prefix + request["key"], request["offset"], asked)
            if whole and len(data) > request["length"]:
                raise TransferError(
                    f"source object {request['key']!r} has more than the {request['length']} bytes it was "
                    "listed with: it changed since it was listed"
                )
        if len(data) != request["length"]:
            raise TransferError(
                f"source object {request['key']!r} returned {len(data)} bytes at offset {request['offset']}, "
                f"expected {request['length']}: it changed during the transfer"
            )
        return data

    def chunk(self, request: Mapping[str, Any], attempt: int) -> tuple[proto.ChunkHeader, bytes]:
        data = self._read(request, attempt)
        return proto.encode_chunk(
            transfer_id=self.transfer_id,
            chunk_id=request["chunk_id"],
            key=request["key"],
            offset=request["offset"],
            object_size=request["object_size"],
            part_number=request.get("part_number", 0),
            last_of_object=request["offset"] + request["length"] == request["object_size"],
            data=data,
            cipher=self.cipher,
            compress=self.compress,
            attempt=attempt,
            checksum=self.checksum,
        )

    def frame(self, request: Mapping[str, Any], attempt: int) -> tuple[proto.FrameType, bytes, bytes]:
        """Read and encode a request: (frame type, header bytes, payload)."""
        if "chunks" in request:  # a batch of small objects, one frame, read concurrently
            encoded = self.pool.each(lambda c: self.chunk(c, attempt), request["chunks"])
            header, payload = proto.encode_batch(encoded)
            return proto.BATCH, header, payload
        head, payload = self.chunk(request, attempt)
        return proto.CHUNK, head.pack(), payload


# -- writing ---------------------------------------------------------------------------------------
def _crc32c(data: bytes | bytearray) -> int:
    import google_crc32c  # installed with google-cloud-storage, and with the gateway's extra

    return int(google_crc32c.value(bytes(data)))


def _etag_md5(token: str) -> str:
    value = token.strip('"').lower()
    return value if len(value) == 32 and all(c in "0123456789abcdef" for c in value) else ""


class DestinationWriter:
    """Checks, decrypts and writes the chunks of the frames a writing gateway receives."""

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        uploads: dict[str, MultipartUpload],
        *,
        cipher: proto.ChunkCipher | None,
        pool: StorePool,
        report: Report,
        faults: Mapping[str, Any],
    ) -> None:
        self.store, self.prefix, self.uploads = store, prefix, uploads
        self.cipher, self.pool, self.report = cipher, pool, report
        self._faults = dict(faults)
        self._fault_lock = threading.Lock()
        self._written = itertools.count(0)
        # chunks written, by (transfer, chunk, attempt): a frame a relay sends again is not written twice
        self._replays = proto.ReplayGuard()

    def write(self, frame: proto.Frame) -> tuple[bool | None, str]:
        """Check, decrypt and write every chunk of a frame; (False, reason) asks for a resend; (None,
        reason) is a replay of a frame already written: nothing is written, and it is not answered
        (its sender had its answer), only counted (``replayed_chunks``) and reported."""
        try:
            pairs = frame.batch() if frame.type == proto.BATCH else [frame.chunk()]
            decoded = [
                (header, *proto.decode_chunk_checked(header, payload, cipher=self.cipher))
                for header, payload in pairs
            ]
        except ProtocolError as err:
            self.report.add(rejected_chunks=1)
            self.report.warn(str(err))
            return False, str(err)
        # checked once authenticated (a forged header cannot pre-empt a real one), recorded once written
        if all(self._replays.seen(header) for header, _, _ in decoded):
            first = decoded[0][0]
            why = (
                f"replayed frame: {first.describe()} attempt {first.attempt} was already written; "
                "dropping the copy (a relay on the path sent it twice)"
            )
            self.report.add(replayed_chunks=len(decoded))
            self.report.warn(why)
            return None, why
        try:
            receipts = self.pool.each(lambda item: self._write_chunk(*item), decoded)
        except Exception as err:  # noqa: BLE001 - a failed write is NACKed and resent; after MAX_ATTEMPTS it fails the transfer
            self.report.warn(f"writing to the destination: {type(err).__name__}: {err}")
            return False, f"the destination store refused the write: {type(err).__name__}: {err}"
        for header, _, _ in decoded:
            self._replays.remember(header)
        self.report.wrote()
        self.report.receipts(receipts)
        return True, ""

    def _write_chunk(
        self, header: proto.ChunkHeader, data: bytes | bytearray, checked: int
    ) -> tuple[dict[str, Any], int]:
        """Write one chunk; its receipt (and its chunk id, to count it once)."""
        self._maybe_slow_down()
        key = self.prefix + header.key
        crc32c = checked if header.flags & proto.ChunkFlags.CRC32C else None
        md5, confirmed = "", ""
        if header.part_number == 0:
            info = self.store.put(key, data, crc32c=crc32c)
            token = info.checksum.value if info.checksum else ""
            # the checksum the store computed of what it stored, from the write's response, checked
            # here against ours: the controller then needs no HEAD to verify the object
            if info.checksum is not None:
                crc32c = self._confirm(key, data, info.checksum, crc32c)
                confirmed = info.checksum.algorithm
            # the MD5 the store computed of what it received (S3's ETag, Azure's Content-MD5, the
            # local file's), else ours: the controller checks it against the object's checksum
            if info.checksum is not None and info.checksum.algorithm == "md5":
                md5 = info.checksum.value
            elif self.store.scheme != "gs":
                md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        else:
            upload = self.uploads.get(header.key)
            if upload is None:
                raise ProtocolError(
                    f"chunk of {header.key!r} is a part but no multipart upload was begun for it"
                )
            token = self.store.write_part(upload, header.part_number, data, crc32c=crc32c).token
            if self.store.scheme == "s3":  # a part's ETag is the MD5 S3 computed of the part
                md5 = _etag_md5(token) or hashlib.md5(data, usedforsecurity=False).hexdigest()
        # GCS reports a CRC32C (of a composed object too): keep each part's, for the controller to combine
        part_crc32c = ""
        if self.store.scheme == "gs" or confirmed == "crc32c":
            if crc32c is None:
                crc32c = _crc32c(data)
            part_crc32c = f"{crc32c:08x}"
        self._maybe_die()
        self.report.add(chunks_written=1, raw_bytes=len(data))
        receipt = {
            "key": header.key,
            "part_number": header.part_number,
            "offset": header.offset,
            "length": len(data),
            "md5": md5,
            "crc32c": part_crc32c,
            "token": token,
        }
        if confirmed:
            receipt["confirmed"] = confirmed
        if header.part_number and header.offset + len(data) == header.object_size:
            receipt["last"] = True  # its part number is the object's number of parts
        return receipt, header.chunk_id

    def _confirm(self, key: str, data: bytes | bytearray, stored: Checksum, crc32c: int | None) -> int | None:
        """Check the checksum a store computed of a whole object it stored against ours of the bytes
        meant, where ours costs nothing: a CRC-32C (the chunk's, checked on arrival; returned for the
        receipt). On a mismatch the object is deleted (nothing that is not a copy stays) and the write
        fails, to be sent again.

        An MD5 is not computed again here (it would cost as much CPU as the decryption): a store that
        returns one verified the body as it received it against the checksum the adapter sent (S3 the
        CRC-32C, Azure the MD5 of the blob; the local adapter read the file back), and the controller
        compares it with the source's own MD5 where the source has one."""
        if stored.algorithm == "md5":
            return crc32c
        if stored.algorithm == "crc32c":
            crc32c = _crc32c(data) if crc32c is None else crc32c
            ours = f"{crc32c:08x}"
        else:
            raise TransferError(
                f"the store reported a {stored.algorithm} checksum for {self.store.describe(key)}, which "
                "a single write does not give"
            )
        if ours != stored.value:
            self.store.delete(key)
            raise TransferError(
                f"{self.store.describe(key)}: the store computed {stored} of what it received, the bytes "
                f"sent give {stored.algorithm}:{ours}; the object was deleted and is sent again"
            )
        return crc32c

    def _maybe_die(self) -> None:
        """``test_faults["exit_after_chunks"]``: the process vanishes, as a killed relay does, right
        after writing the N-th chunk (before acknowledging it); the gateway exits with it."""
        limit = self._faults.get("exit_after_chunks")
        if limit:
            with self._fault_lock:
                if next(self._written) + 1 >= limit:
                    os._exit(17)

    def _maybe_slow_down(self) -> None:
        """``test_faults["delay_per_chunk_s"]``: a slow writer, so that a fault suite can act while a
        transfer is surely in flight."""
        delay = self._faults.get("delay_per_chunk_s")
        if delay:
            time.sleep(float(delay))
