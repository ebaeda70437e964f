"""The gateway daemon: ``python -m airflow_skyplane.gateway --program FILE``.

One process per relay. Its program (:mod:`.program`) says whether it reads, forwards or writes.

Threads, and the bounds that keep memory flat whatever the transfer size:

* **senders**: ``connections`` threads per next hop, each with its own mutual-TLS connection and one
  frame in flight. A reading gateway's senders take chunk requests from their hop's queue, read the
  range from the store, compress and encrypt it, send it and wait for the hop's ACK; a forwarding
  gateway's senders take received frames and pass them on unopened.
* **dispatch**: chunks go to next hops in proportion to the hops' weights (the plan's edge flows),
  through bounded per-hop queues.
* **receivers**: one thread per accepted connection. The TLS handshake must succeed (a certificate
  of this fleet's CA) before a single byte of a frame is read. A writing gateway decrypts, checks and
  writes each chunk and only then ACKs it; a forwarding gateway ACKs upstream only when its own next
  hop has ACKed, so an ACK at the source means the chunk is written at the destination.
* **store requests**: a batch of small objects is one frame, but its objects are read from the store
  (reading gateway) and written to it (writing gateway) through a pool of :data:`STORE_THREADS`
  threads shared by all connections, so a batch costs about one request's latency per
  ``STORE_THREADS`` objects rather than one per object, and a gateway never has more than that
  many small-object requests open at the store.
* **budget**: a byte semaphore (``max_inflight_mb``) bounds the chunks a gateway holds at once. Each
  chunk takes a slot of twice the chunk size (the bytes read or received, and their decoded or
  sealed copy): a reading gateway takes one before reading a chunk from the store; a receiving
  gateway takes one when a connection has a frame to read (idle connections hold none) and gives it
  back once the frame is answered. So a gateway holds at most ``max_inflight_mb`` of chunks,
  whatever the number of connections. When the budget is spent, senders stop reading and receivers
  stop reading their sockets, and TCP pushes back to the upstream sender. Forwarding senders take
  none: the frame they carry is counted by the receiver that holds it.

A chunk that fails its checksum or authentication is answered with a NACK and sent again (a
forwarding gateway resends its own intact copy), up to :data:`MAX_ATTEMPTS` times.

The daemon imports no Airflow: the standard library, ``lz4``, ``cryptography`` and the SDK of the store
it touches.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import hashlib
import itertools
import json
import logging
import os
import queue
import select
import signal
import socket
import ssl
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from airflow_skyplane.exceptions import ProtocolError, SkyplaneError, TransferError
from airflow_skyplane.gateway import protocol as proto
from airflow_skyplane.gateway import tls
from airflow_skyplane.gateway.program import NextHop, Program
from airflow_skyplane.gateway.status import Counters, serve
from airflow_skyplane.gateway.stores import open_spec
from airflow_skyplane.processes import alive
from airflow_skyplane.storage.base import MultipartUpload, ObjectStore

MAX_ATTEMPTS = 5
# requests a gateway has open at once at its store for the objects of small-object batches: object
# stores serve each request in tens of milliseconds and many at once, so a batch of 256 objects read or
# written one after the other would leave a connection idle for seconds
STORE_THREADS = 32
HANDSHAKE_TIMEOUT = 10.0
_STOP = object()
_COMPRESS: dict[str, proto.Compress] = {"auto": "auto", "always": True, "never": False}


class ByteBudget:
    """A counting semaphore in bytes: ``acquire(n)`` blocks while more than the budget is held."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._cond = threading.Condition()

    def acquire(self, n: int) -> None:
        n = min(n, self.limit)  # a chunk larger than the budget still passes, alone
        with self._cond:
            while self.held and self.held + n > self.limit:
                self._cond.wait()
            self.held += n

    def release(self, n: int) -> None:
        n = min(n, self.limit)
        with self._cond:
            self.held -= n
            self._cond.notify_all()


class _Item:
    """Something a sender sends: a chunk request to read (reading gateway) or a received frame."""

    __slots__ = ("request", "frame", "reply", "size")

    def __init__(
        self, request: dict[str, Any] | None, frame: proto.Frame | None, reply: Any, size: int
    ) -> None:
        self.request, self.frame, self.reply, self.size = request, frame, reply, size


class Gateway:
    def __init__(self, program: Program, ready_file: str | None = None) -> None:
        self.program = program
        self.ready_file = ready_file
        self.counters = Counters(program.gateway_id)
        # stop_event: stop working (a failure, or a stop request); stop_requested: the controller (or
        # SIGTERM) asked the process to exit. Until then a failed gateway keeps serving its status,
        # so the controller reads why it failed rather than a closed connection.
        self.stop_event = threading.Event()
        self.stop_requested = threading.Event()
        self.budget = ByteBudget(program.max_inflight_mb * 1024 * 1024)
        self.slot = min(2 * program.chunk_size_mb * 1024 * 1024, self.budget.limit)
        self.cipher = None
        if program.cipher_key_file and program.encrypt:
            self.cipher = proto.ChunkCipher(Path(program.cipher_key_file).read_bytes())
        self.transfer_id = bytes.fromhex(program.transfer_id)
        identity = tls.GatewayIdentity.read(program.tls["cert"], program.tls["key"])
        ca = Path(program.tls["ca"]).read_bytes()
        self.server_ctx = tls.server_context(identity, ca)
        self.client_ctx = tls.client_context(identity, ca)
        self.source: ObjectStore | None = open_spec(program.source["store"]) if program.source else None
        self.dest: ObjectStore | None = None
        self.uploads: dict[str, MultipartUpload] = {}
        self.dest_prefix = ""
        if program.destination:
            self.dest = open_spec(program.destination["store"])
            self.dest_prefix = program.destination.get("prefix", "")
            uploads_file = program.destination.get("uploads_file")
            if uploads_file:
                for key, upload_id in json.loads(Path(uploads_file).read_text()).items():
                    self.uploads[key] = MultipartUpload(self.dest_prefix + key, upload_id)
        self.source_prefix = program.source.get("prefix", "") if program.source else ""
        self.store_pool = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="store")
        self.hop_queues: dict[NextHop, queue.Queue[Any]] = {
            hop: queue.Queue(maxsize=2 * hop.connections) for hop in program.next_hops
        }
        self._assigned: dict[NextHop, float] = dict.fromkeys(program.next_hops, 0.0)
        self._dispatch_lock = threading.Lock()
        self._faults = dict(program.test_faults)
        self._fault_lock = threading.Lock()
        self._forwarded = itertools.count(1)
        self._written = itertools.count(0)
        self.threads: list[threading.Thread] = []

    # -- dispatch --------------------------------------------------------------------------------
    def _pick_hop(self, size: int) -> NextHop:
        """The hop furthest below its share of the bytes (weighted deficit round robin)."""
        with self._dispatch_lock:
            hop = min(self._assigned, key=lambda h: (self._assigned[h] + size) / h.weight)
            self._assigned[hop] += size
            return hop

    def _put(self, item: Any, hop: NextHop) -> None:
        while not self.stop_event.is_set():
            try:
                self.hop_queues[hop].put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # -- reading gateway -------------------------------------------------------------------------
    def _manifest(self) -> Iterator[dict[str, Any]]:
        assert self.program.source is not None
        with open(self.program.source["manifest"], encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

    def _feed(self) -> None:
        total = 0
        for entry in self._manifest():
            if self.stop_event.is_set():
                return
            total += len(entry["chunks"]) if "chunks" in entry else 1
            size = sum(c["length"] for c in entry["chunks"]) if "chunks" in entry else entry["length"]
            self._put(_Item(entry, None, None, size), self._pick_hop(size))
        self.counters.total_chunks = total
        for hop, q in self.hop_queues.items():
            for _ in range(hop.connections):
                q.put(_STOP)

    def _read_chunk(self, request: dict[str, Any], attempt: int) -> tuple[proto.ChunkHeader, bytes]:
        assert self.source is not None
        data = self.source.read_range(
            self.source_prefix + request["key"], request["offset"], request["length"]
        )
        if len(data) != request["length"]:
            raise TransferError(
                f"source object {request['key']!r} returned {len(data)} bytes at offset {request['offset']}, "
                f"expected {request['length']}: it changed during the transfer"
            )
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
            compress=_COMPRESS[self.program.compress],
            attempt=attempt,
        )

    def _frame_for(self, request: dict[str, Any], attempt: int) -> tuple[int, bytes, bytes, int]:
        """Read and encode a request: (frame type, header bytes, payload, raw bytes)."""
        if "chunks" in request:  # a batch of small objects, one frame, read concurrently
            encoded = self._each(lambda c: self._read_chunk(c, attempt), request["chunks"])
            header, payload = proto.encode_batch(encoded)
            return proto.BATCH, header, payload, sum(c["length"] for c in request["chunks"])
        header_obj, payload = self._read_chunk(request, attempt)
        return proto.CHUNK, header_obj.pack(), payload, request["length"]

    # -- senders ---------------------------------------------------------------------------------
    def _connect(self, hop: NextHop) -> ssl.SSLSocket:
        last: Exception | None = None
        for attempt in range(40):
            try:
                raw = socket.create_connection((hop.host, hop.port), timeout=HANDSHAKE_TIMEOUT)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock = tls.client_handshake(self.client_ctx, raw, timeout=HANDSHAKE_TIMEOUT)
                sock.settimeout(None)
                return sock
            except OSError as err:
                last = err
                time.sleep(min(0.05 * (attempt + 1), 0.5))
        raise TransferError(f"cannot reach next hop {hop.gateway_id} at {hop.host}:{hop.port}: {last}")

    def _sender(self, hop: NextHop) -> None:
        sock: ssl.SSLSocket | None = None
        try:
            sock = self._connect(hop)
            q = self.hop_queues[hop]
            while True:
                item = q.get()
                if item is _STOP:
                    proto.write_frame(sock, proto.CLOSE, proto.Close(self.transfer_id).pack())
                    return
                self._send_item(sock, item)
        except Exception as err:  # noqa: BLE001 - reported on the status endpoint, then the gateway stops
            self.counters.error(f"sender to {hop.gateway_id}: {err}")
            traceback.print_exc()
            self.stop_event.set()
        finally:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def _send_item(self, sock: ssl.SSLSocket, item: _Item) -> None:
        slot = self.slot if item.request is not None else 0
        self.budget.acquire(slot)
        payload: bytes | bytearray
        try:
            if item.request is not None:
                ftype, header, payload, raw = self._frame_for(item.request, 0)
            else:
                assert item.frame is not None
                ftype, header, raw = item.frame.type, item.frame.header, item.size
                payload = item.frame.payload  # forwarded as received, no copy
            reason = ""
            for attempt in range(MAX_ATTEMPTS):
                sent = self._maybe_corrupt(payload, attempt) if item.frame is not None else payload
                if item.frame is not None:
                    self._tap(header, sent)
                proto.write_frame(sock, ftype, header, sent)
                answer = proto.read_frame(sock).control()
                if isinstance(answer, proto.Ack):
                    self.counters.add(chunks_sent=1, raw_bytes=raw, wire_bytes=len(payload) + len(header))
                    if item.reply is not None:
                        item.reply(True, "")
                    return
                if not isinstance(answer, proto.Nack):
                    raise ProtocolError(f"next hop answered {type(answer).__name__} instead of ACK or NACK")
                reason = answer.reason
                self.counters.add(resends=1)
                if item.request is not None and attempt + 1 < MAX_ATTEMPTS:
                    ftype, header, payload, raw = self._frame_for(item.request, attempt + 1)  # fresh nonce
            if item.reply is not None:
                item.reply(False, f"rejected {MAX_ATTEMPTS} times downstream: {reason}")
                return
            raise TransferError(f"a chunk was rejected {MAX_ATTEMPTS} times downstream: {reason}")
        finally:
            self.budget.release(slot)

    def _tap(self, header: bytes | bytearray, payload: bytes | bytearray) -> None:
        """Test-only tap: append every frame this relay forwards to ``test_faults["tap_file"]``, to show
        what a compromised relay could see."""
        path = self._faults.get("tap_file")
        if path:
            with self._fault_lock, open(path, "ab") as tap:
                tap.write(header)
                tap.write(payload)

    def _maybe_corrupt(self, payload: bytes | bytearray, attempt: int) -> bytes | bytearray:
        """Test-only fault hook (``test_faults["corrupt_forwarded_frame"]``): flip one byte of the N-th
        forwarded frame on its first attempt, or of every forwarded frame on every attempt with -1."""
        target = self._faults.get("corrupt_forwarded_frame")
        if not target or not payload:
            return payload
        if target != -1:
            if attempt:
                return payload
            with self._fault_lock:
                if next(self._forwarded) != target:
                    return payload
        damaged = bytearray(payload)
        damaged[len(damaged) // 2] ^= 0xFF
        return bytes(damaged)

    # -- receivers -------------------------------------------------------------------------------
    def _accept_loop(self, server: socket.socket) -> None:
        while not self.stop_event.is_set():
            try:
                raw, _ = server.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._receiver, args=(raw,), name="receiver", daemon=True)
            thread.start()

    def _receiver(self, raw: socket.socket) -> None:
        try:
            sock = tls.server_handshake(self.server_ctx, raw, timeout=HANDSHAKE_TIMEOUT)
            sock.settimeout(None)
        except (OSError, ProtocolError) as err:
            # not an error of the transfer: count it and drop the peer, no byte of a frame was read
            self.counters.add(rejected_peers=1)
            print(f"peer rejected in the TLS handshake: {type(err).__name__}: {err}", file=sys.stderr)
            with contextlib.suppress(OSError):
                raw.close()
            return

        def reply(ok: bool, head: proto.ChunkHeader, reason: str) -> None:
            if ok:
                proto.write_frame(sock, proto.ACK, proto.Ack(self.transfer_id, (head.chunk_id,)).pack())
            else:
                nack = proto.Nack(self.transfer_id, head.chunk_id, head.attempt, reason)
                proto.write_frame(sock, proto.NACK, nack.pack())

        try:
            while not self.stop_event.is_set():
                # wait for the next frame without holding any budget, so idle connections cost none
                if not sock.pending() and not select.select([sock], [], [], 0.5)[0]:
                    continue
                self.budget.acquire(self.slot)
                try:
                    if not self._receive_one(sock, reply):
                        return
                finally:
                    self.budget.release(self.slot)
        except (OSError, ProtocolError) as err:
            if not self.stop_event.is_set():
                self.counters.error(f"upstream connection: {err}")
        except Exception as err:  # noqa: BLE001 - a bug must show on the status endpoint, not vanish
            self.counters.error(f"receiver: {type(err).__name__}: {err}")
            traceback.print_exc()
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _receive_one(self, sock: ssl.SSLSocket, reply: Any) -> bool:
        """Read one frame, write and/or forward it, answer it; False at the end of the stream."""
        frame = proto.read_frame(sock)
        if frame.type == proto.CLOSE:
            return False
        if frame.type not in (proto.CHUNK, proto.BATCH):
            raise ProtocolError(f"unexpected frame type {frame.type} from an upstream gateway")
        self.counters.add(chunks_received=1)
        first = frame.batch()[0][0] if frame.type == proto.BATCH else proto.ChunkHeader.unpack(frame.header)
        ok, why = True, ""
        if self.dest is not None:
            ok, why = self._write_frame(frame)
        if ok and self.program.forwards:
            ok, why = self._forward(frame)
        reply(ok, first, why)
        return True

    def _forward(self, frame: proto.Frame) -> tuple[bool, str]:
        """Pass a frame on and wait for the next hop's answer: True on ACK.

        The receiving thread waits here, so each upstream connection has at most one frame held by
        this gateway; the bounded hop queues push back on the upstream senders through TCP.
        """
        done = threading.Event()
        outcome: list[tuple[bool, str]] = []

        def relay_reply(ok: bool, reason: str) -> None:
            outcome.append((ok, reason))
            done.set()

        size = len(frame.payload) + len(frame.header)
        self._put(_Item(None, frame, relay_reply, size), self._pick_hop(size))
        while not done.wait(0.5):
            if self.stop_event.is_set():
                return False, "the relay is stopping"
        return outcome[0]

    def _write_frame(self, frame: proto.Frame) -> tuple[bool, str]:
        """Check, decrypt and write every chunk of a frame; (False, reason) asks for a resend."""
        assert self.dest is not None
        try:
            pairs = frame.batch() if frame.type == proto.BATCH else [frame.chunk()]
            decoded = [
                (header, proto.decode_chunk(header, payload, cipher=self.cipher)) for header, payload in pairs
            ]
        except ProtocolError as err:
            self.counters.add(rejected_chunks=1)
            self.counters.error(str(err))
            return False, str(err)
        try:
            self._each(lambda pair: self._write_chunk(*pair), decoded)
        except Exception as err:  # noqa: BLE001 - a failed write is NACKed and resent; after MAX_ATTEMPTS it fails the transfer
            self.counters.error(f"writing to the destination: {type(err).__name__}: {err}")
            return False, f"the destination store refused the write: {type(err).__name__}: {err}"
        return True, ""

    def _each(self, call: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``[call(item) for item in items]``, through the store pool when there are several; every
        call has ended when it returns or raises (the first error, in the items' order), so nothing
        of a frame is still being written once it is answered."""
        if len(items) == 1:
            return [call(items[0])]
        futures = [self.store_pool.submit(call, item) for item in items]
        wait(futures)
        return [f.result() for f in futures]

    def _maybe_die(self) -> None:
        """Test-only fault hook (``test_faults["exit_after_chunks"]``): the process vanishes, as a
        killed relay does, right after writing the N-th chunk (before acknowledging it)."""
        limit = self._faults.get("exit_after_chunks")
        if limit:
            with self._fault_lock:
                if next(self._written) + 1 >= limit:
                    os._exit(17)

    def _maybe_slow_down(self) -> None:
        """Test-only fault hook (``test_faults["delay_per_chunk_s"]``): a slow writer, so that a fault
        suite can act while a transfer is surely in flight."""
        delay = self._faults.get("delay_per_chunk_s")
        if delay:
            time.sleep(float(delay))

    def _write_chunk(self, header: proto.ChunkHeader, data: bytes | bytearray) -> None:
        assert self.dest is not None
        self._maybe_slow_down()
        key = self.dest_prefix + header.key
        # The MD5 of what was written is what S3 (ETag of an object or of each part) and a single put
        # elsewhere report; other parts are checked by their CRC and AES-GCM tag, so skip the cost.
        md5 = (
            hashlib.md5(data, usedforsecurity=False).hexdigest()
            if header.part_number == 0 or self.dest.scheme == "s3"
            else ""
        )
        if header.part_number == 0:
            info = self.dest.put(key, data)
            token = info.checksum.value if info.checksum else ""
        else:
            upload = self.uploads.get(header.key)
            if upload is None:
                raise ProtocolError(
                    f"chunk of {header.key!r} is a part but no multipart upload was begun for it"
                )
            token = self.dest.write_part(upload, header.part_number, data).token
        # GCS reports a CRC32C (of a composed object too): keep each part's, for the controller to combine
        crc32c = ""
        if self.dest.scheme == "gs":
            import google_crc32c  # installed with google-cloud-storage, which a GCS gateway has

            crc32c = f"{google_crc32c.value(data):08x}"
        self._maybe_die()
        self.counters.add(chunks_written=1, raw_bytes=len(data))
        self.counters.receipt(
            {
                "key": header.key,
                "part_number": header.part_number,
                "offset": header.offset,
                "length": len(data),
                "md5": md5,
                "crc32c": crc32c,
                "token": token,
            }
        )

    # -- life cycle ------------------------------------------------------------------------------
    def request_stop(self) -> None:
        self.stop_event.set()
        self.stop_requested.set()

    def _expire(self) -> None:
        """The fleet's time is up: stop, as a relay VM powers itself off at its expiry."""
        self.counters.error("the fleet expired (expires_at in the program): the gateway stopped itself")
        print("gateway: the fleet expired; stopping", file=sys.stderr, flush=True)
        self.stop_event.set()
        self.stop_requested.set()

    def _watch_controller(self, pid: int) -> None:
        """Stop when the controller that waits for this transfer is gone (killed without teardown)."""
        while not self.stop_requested.wait(1.0):
            if not alive(pid):
                self.counters.error(f"the controller (pid {pid}) is gone: the gateway stopped itself")
                print(f"gateway: controller {pid} is gone; stopping", file=sys.stderr, flush=True)
                self.stop_event.set()
                self.stop_requested.set()
                return

    def run(self) -> int:
        if self.program.watch_pid is not None:
            threading.Thread(
                target=self._watch_controller, args=(self.program.watch_pid,), name="watchdog", daemon=True
            ).start()
        if self.program.expires_at is not None:
            timer = threading.Timer(max(0.0, self.program.expires_at - time.time()), self._expire)
            timer.daemon = True
            timer.start()
        status = serve(self.counters, self.program.control.host, self.program.control.port, self.request_stop)
        server = None
        if self.program.listen is not None:
            server = socket.create_server((self.program.listen.host, self.program.listen.port), backlog=256)
            threading.Thread(target=self._accept_loop, args=(server,), name="accept", daemon=True).start()
        for hop in self.program.next_hops:
            for n in range(hop.connections):
                t = threading.Thread(
                    target=self._sender, args=(hop,), name=f"sender-{hop.gateway_id}-{n}", daemon=True
                )
                t.start()
                self.threads.append(t)
        if self.ready_file:
            info = {
                "gateway_id": self.program.gateway_id,
                "pid": os.getpid(),
                "listen_port": server.getsockname()[1] if server else None,
                "control_port": status.server_address[1],
            }
            tmp = self.ready_file + ".tmp"
            Path(tmp).write_text(json.dumps(info))
            os.replace(tmp, self.ready_file)
        code = 0
        if self.program.reads:
            try:
                self._feed()
                for t in self.threads:
                    while t.is_alive() and not self.stop_event.is_set():
                        t.join(0.2)
                code = 1 if self.counters.errors else 0
            except (SkyplaneError, OSError) as err:
                self.counters.error(f"reading the source: {err}")
                code = 1
            self.counters.finish()
            self.stop_requested.wait(timeout=float(os.environ.get("SKYPLANE_GATEWAY_LINGER_S", "3600")))
        else:
            self.stop_requested.wait()
        if server is not None:
            server.close()
        status.shutdown()
        self.store_pool.shutdown(wait=False, cancel_futures=True)
        return code


def _keep_chunk_buffers_out_of_the_heap() -> None:
    """Ask glibc to serve every allocation of 1 MiB or more by mmap, and so return it on free.

    By default glibc raises that threshold after the first large buffers are freed; chunk-sized
    buffers then come from per-thread heaps that do not shrink, and the RSS of a busy gateway creeps
    up to (threads x chunk size). Not glibc (or no ctypes): nothing to do.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_skyplane.gateway", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--program", help="the gateway program (JSON); '-' or absent reads it from stdin")
    parser.add_argument("--ready-file", help="where to write the bound ports once listening")
    args = parser.parse_args(argv)
    try:
        program = (
            Program.load(args.program)
            if args.program and args.program != "-"
            else Program.loads(sys.stdin.read())
        )
        gateway = Gateway(program, args.ready_file)
    except (SkyplaneError, OSError) as err:
        print(f"gateway: {err}", file=sys.stderr)
        return 2
    _keep_chunk_buffers_out_of_the_heap()
    # the SDKs log every HTTP request at INFO; a gateway's log keeps warnings and its own events
    logging.basicConfig(level=logging.WARNING)
    signal.signal(signal.SIGTERM, lambda *_: gateway.request_stop())
    print(json.dumps({"event": "start", "program": program.redacted()}), flush=True)
    code = gateway.run()
    print(json.dumps({"event": "exit", "status": gateway.counters.snapshot()}), flush=True)
    return code
