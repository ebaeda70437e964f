"""A gateway worker process: the data plane of one share of a gateway's connections.

A gateway (:mod:`.daemon`) runs ``workers`` of these, each a fresh interpreter with its own store
clients and TLS contexts, so that a relay VM uses all its cores (threads of one Python process share
one interpreter lock). The gateway's main process hands each worker its share of every next hop's
connections, the connections accepted on the gateway's one listening port (round robin, as file
descriptors over a Unix socket), and, on a reading gateway, chunk requests on demand. A worker sends
its counter deltas, receipts and errors back; the main process serves them as one gateway.

What a worker does with a frame depends on the program:

* **read** (source): a connection with room in its window takes the next chunk request
  (:class:`~airflow_skyplane.gateway.flow.Dispatcher`), reads the range from the store, compresses
  and seals it, and sends it; the bytes are freed once sent (a NACK re-reads the range).
* **forward** (relay): a frame is handed to the next hop as soon as its header has arrived, and its
  payload passed on as it arrives (cut-through), so a chunk crosses two hops in about the time of
  one. The relay acknowledges the frame upstream once it holds all of it, and keeps it until the
  next hop acknowledges it, to send it again after a NACK.
* **write** (destination): each frame is decrypted, checked and written, then acknowledged; a bad
  tag or checksum or a failed write is answered with a NACK and the previous hop sends its copy
  again. A receipt of every chunk written goes to the main process: the controller completes and
  verifies objects from those receipts only.

So an ACK means *held by the next hop* between gateways and *written* at the writing gateway; the
source learns what is written from the writer's receipts, through the controller (see
``docs/wire-protocol.md``). Every byte a worker holds is counted once in its byte budget.

**Fork** (a gateway of a multicast tree whose next hops form several branches, :mod:`.fork`): a
frame is read (or received) once and sent down every branch; at the source, reader threads read and
seal the chunk requests and hand each sealed frame to the fork. What each next hop acknowledged is
counted per hop (``bytes_to:<gateway id>``), so the bytes every edge carried are known.

Test-only fault hooks (``test_faults`` in the program) act per worker process: ``corrupt_forwarded_frame``,
``tap_file``, ``replay_forwarded_frame`` (relays), ``exit_after_chunks``, ``delay_per_chunk_s`` (writers).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from airflow_skyplane.exceptions import ProtocolError, SkyplaneError, TransferError
from airflow_skyplane.gateway import protocol as proto
from airflow_skyplane.gateway import tls
from airflow_skyplane.gateway.flow import ByteBudget, Dispatcher, Link
from airflow_skyplane.gateway.fork import Fork
from airflow_skyplane.gateway.hop import HopStream, accept_hop, open_hop
from airflow_skyplane.gateway.items import ReadItem, RelayFrame, share
from airflow_skyplane.gateway.process import die_with_parent, reuse_chunk_buffers
from airflow_skyplane.gateway.program import NextHop, Program, branches_of
from airflow_skyplane.gateway.stores import open_spec
from airflow_skyplane.gateway.storeside import DestinationWriter, Report, SourceReader, StorePool
from airflow_skyplane.storage.base import MultipartUpload

HANDSHAKE_TIMEOUT = 10.0
#: a relay passes a frame's payload on as it arrives, in pieces of at least this much (or the rest),
CUT_THROUGH_BYTES = 64 * 1024
#: ... and of at most this much, or what arrived within CUT_THROUGH_S: a slow flow passes its bytes on
#: within a few hundredths of a second, a fast one in large pieces (each piece wakes the sending
#: thread, a system call and a switch of threads: on a fast link, most of a relay's own CPU)
CUT_THROUGH_MAX_BYTES = 1024 * 1024
CUT_THROUGH_S = 0.02
#: a batch of small objects holds at most this much plaintext (transfer/chunks.py batch_small)
BATCH_RAW_BYTES = 4 * 1024 * 1024


class Worker:
    """One worker process of a gateway."""

    def __init__(self, program: Program, index: int, workers: int, budget: int, report: Report) -> None:
        self.program, self.index, self.workers = program, index, workers
        self.report = report
        self.stop = threading.Event()
        self.budget = ByteBudget(budget)
        self.cipher = None
        if program.cipher_key_file and program.encrypt:
            self.cipher = proto.ChunkCipher(Path(program.cipher_key_file).read_bytes())
        self.transfer_id = bytes.fromhex(program.transfer_id)
        identity = tls.GatewayIdentity.read(program.tls["cert"], program.tls["key"])
        ca = Path(program.tls["ca"]).read_bytes()
        self.server_ctx = tls.server_context(identity, ca)
        self.client_ctx = tls.client_context(identity, ca)
        # the stores are opened in the background (an SDK client takes a second of CPU to build):
        # connections are made and accepted meanwhile
        self.reader: SourceReader | None = None
        self.writer: DestinationWriter | None = None
        self._stores_ready = threading.Event()
        self.links: list[Link] = []
        connections = sum(share(hop.connections, workers, index) for hop in program.next_hops)
        self._asked = False
        self._ask_lock = threading.Lock()
        self._want = max(8, 4 * connections)
        branches = branches_of(program.next_hops)
        self.fork: Fork | None = None
        # a forking source reads with threads of its own and hands sealed frames to the fork
        widest = max((share(h.connections, workers, index) for h in program.next_hops), default=1)
        self._readers = max(2, min(16, widest))
        self._read_hop = NextHop("read", "", 0, self._readers)
        if len(branches) > 1:
            self.fork = Fork(branches, self.stop, budget // 2, self._free)
        self.dispatcher = Dispatcher(
            [self._read_hop] if self.fork else program.next_hops,
            self.stop,
            low_water=max(4, 2 * connections) if program.reads else 0,
            refill=self._ask_for_work if program.reads else None,
        )
        self._pumps: list[threading.Thread] = []
        self._faults = dict(program.test_faults)
        self._fault_lock = threading.Lock()
        self._forwarded = itertools.count(1)
        self._replayed = itertools.count(1)

    # -- life cycle ------------------------------------------------------------------------------
    def fail(self, message: str) -> None:
        """A failure of the transfer: report it and stop working (the main process decides the rest)."""
        if not self.stop.is_set():
            self.report.error(message)
            print(f"gateway worker {os.getpid()}: {message}", file=sys.stderr, flush=True)
        self.stop.set()
        self.wake_all()

    def wake_all(self) -> None:
        self.dispatcher.wake_all()
        if self.fork is not None:
            self.fork.wake_all()

    def _open_stores(self) -> None:
        program, pool = self.program, StorePool()
        try:
            if program.source:
                self.reader = SourceReader(
                    open_spec(program.source["store"]), program.source.get("prefix", ""),
                    transfer_id=self.transfer_id, cipher=self.cipher, compress=program.compress, pool=pool,
                )  # fmt: skip
            if program.destination:
                prefix = program.destination.get("prefix", "")
                uploads = {}
                if program.destination.get("uploads_file"):
                    recorded = json.loads(Path(program.destination["uploads_file"]).read_text())
                    uploads = {key: MultipartUpload(prefix + key, upload) for key, upload in recorded.items()}
                self.writer = DestinationWriter(
                    open_spec(program.destination["store"]), prefix, uploads, cipher=self.cipher, pool=pool,
                    report=self.report, faults=program.test_faults,
                )  # fmt: skip
        except (SkyplaneError, OSError, ValueError, ImportError) as err:
            self.fail(f"cannot open the store: {type(err).__name__}: {err}")
        finally:
            self._stores_ready.set()

    def _await_stores(self) -> None:
        while not self._stores_ready.wait(0.5):
            if self.stop.is_set():
                raise TransferError("the gateway is stopping")
        if self.stop.is_set():
            raise TransferError("the gateway is stopping")

    def start(self) -> None:
        threading.Thread(target=self._open_stores, name="stores", daemon=True).start()
        fork = self.fork
        for hop in self.program.next_hops:
            for n in range(share(hop.connections, self.workers, self.index)):
                dispatcher = fork.dispatchers[hop.branch] if fork else self.dispatcher
                link = Link(self, hop, n, self.program.window, dispatcher)
                if fork:
                    fork.attach(link)
                self.links.append(link)
                link.start()
        if fork and self.program.reads:
            for n in range(self._readers):
                pump = threading.Thread(target=self._pump, name=f"read-{n}", daemon=True)
                self._pumps.append(pump)
                pump.start()
        if self.program.reads:
            threading.Thread(target=self._finish_reading, name="finish", daemon=True).start()
        threading.Thread(target=self._flush_reports, name="report", daemon=True).start()

    def _flush_reports(self) -> None:
        while True:
            time.sleep(0.1)
            try:
                self.report.flush()
            except OSError:
                return

    def close_frame(self) -> bytes:
        return proto.Close(self.transfer_id).pack()

    # -- work from the main process (reading gateway) --------------------------------------------
    def _ask_for_work(self) -> None:
        with self._ask_lock:
            if self._asked:
                return
            self._asked = True
        self.report.send({"t": "want", "n": self._want})

    def work(self, entries: list[dict[str, Any]], end: bool) -> None:
        with self._ask_lock:
            self._asked = False
        self.dispatcher.put(ReadItem(e) for e in entries)
        if end:
            self.dispatcher.close()

    def _finish_reading(self) -> None:
        """Tell the main process once every link has sent all it was given and closed."""
        if self.fork is not None:  # every chunk read and handed to the fork first
            for pump in self._pumps:
                while pump.is_alive() and not self.stop.is_set():
                    pump.join(0.2)
            self.fork.close()
        for link in self.links:
            while link.thread.is_alive() and not self.stop.is_set():
                link.thread.join(0.2)
        if not self.stop.is_set():
            self.report.flush()
            self.report.send({"t": "finished"})

    # -- sending ---------------------------------------------------------------------------------
    def connect(self, next_hop: NextHop) -> HopStream:
        """A keyed data connection to the next hop (mutual TLS to meet it, then sealed frame heads
        on the bare socket: :mod:`.hop`)."""
        last: Exception | None = None
        for attempt in range(40):
            if self.stop.is_set():
                raise TransferError("the gateway is stopping")
            try:
                raw = socket.create_connection((next_hop.host, next_hop.port), timeout=HANDSHAKE_TIMEOUT)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return open_hop(self.client_ctx, raw, timeout=HANDSHAKE_TIMEOUT)
            except OSError as err:
                last = err
                time.sleep(min(0.05 * (attempt + 1), 0.5))
        raise TransferError(
            f"cannot reach next hop {next_hop.gateway_id} at {next_hop.host}:{next_hop.port}: {last}"
        )

    def transmit(self, link: Link, item: Any) -> None:
        if isinstance(item, ReadItem):
            self._send_read(link, item)
        else:
            self._send_relayed(link, item)

    def acked(self, link: Link, item: Any) -> None:
        wire = item.wire if isinstance(item, ReadItem) else item.size + len(item.header)
        self.report.add(**{f"bytes_to:{link.hop.gateway_id}": wire})
        if self.fork is not None:  # counted once, when the last branch has it
            self.report.add(wire_bytes=wire)
            if self.fork.done(item, link.hop.branch):
                self.report.add(chunks_sent=item.chunks, raw_bytes=item.raw)
                self.budget.release(item.size)
        elif isinstance(item, ReadItem):
            self.report.add(chunks_sent=item.chunks, raw_bytes=item.size, wire_bytes=item.wire)
        else:
            self.report.add(chunks_sent=1, raw_bytes=item.size, wire_bytes=wire)
            self.budget.release(item.size)
        self.report.flush()  # what the next hop holds is counted at once, not 0.1 s later

    def link_failed(self, link: Link, message: str) -> None:
        """A connection gave up: its branch fails alone while another lives, else the gateway."""
        branch = link.hop.branch
        if self.fork is not None and self.fork.fail(branch, message):
            self.report.send({"t": "branch_failed", "b": branch, "m": message})
            print(f"gateway worker {os.getpid()}: branch {branch} dropped: {message}", file=sys.stderr)
            return
        self.fail(message)

    def dropped(self, link: Link, item: Any) -> None:
        """A frame a failed branch held: free it when no other branch waits for it."""
        if self.fork is not None and self.fork.done(item, link.hop.branch):
            self._free(item)

    def _free(self, item: Any) -> None:
        self.report.add(chunks_sent=item.chunks, raw_bytes=item.raw)
        self.budget.release(item.size)

    def _forward(self, frame: RelayFrame) -> None:
        """Pass a frame on: to the next hops, or down every branch of a fork."""
        if self.fork is None:
            self.dispatcher.put([frame])
        elif not self.fork.put(frame):
            raise TransferError("the gateway is stopping")

    def _pump(self) -> None:
        """A reader thread of a forking source: read and seal chunk requests, hand each frame to the
        fork (the chunk is read once, whatever the number of branches)."""
        try:
            while True:
                item = self.dispatcher.take(self._read_hop)
                if item is None:
                    return
                held = 2 * item.size  # what is read, and its sealed copy
                if not self.budget.acquire(held, self.stop):
                    return
                try:
                    self._await_stores()
                    self.report.read_started()
                    assert self.reader is not None
                    ftype, header, payload = self.reader.frame(item.request, 0)
                except BaseException:
                    self.budget.release(held)
                    raise
                self.budget.release(held - len(payload))  # the sealed frame stays until every branch has it
                frame = RelayFrame(ftype, header, len(payload), payload)
                frame.raw, frame.chunks = item.size, item.chunks
                frame.advance(len(payload))
                self.report.add(read_bytes=item.size)
                self._forward(frame)
        except TransferError:
            return  # stopping
        except Exception as err:  # noqa: BLE001 - a read that fails fails the gateway, as in a unicast
            self.fail(f"reading: {type(err).__name__}: {err}")

    def nacked(self, link: Link, item: Any, reason: str) -> None:
        self.report.add(resends=1)
        self.report.warn(f"chunk {item.ack_id} rejected by {link.hop.gateway_id}, sending it again: {reason}")

    def _send_read(self, link: Link, item: ReadItem) -> None:
        """Read, compress and seal a chunk request, and send it; its bytes are freed once sent."""
        held = 2 * item.size  # what is read, and its sealed copy
        if not self.budget.acquire(held, self.stop):
            link.abandon()
            return
        try:
            self._await_stores()
            self.report.read_started()
            assert self.reader is not None
            ftype, header, payload = self.reader.frame(item.request, item.attempt)
            self.report.add(read_bytes=item.size)  # what the store gave, re-reads after a NACK included
            item.wire = len(header) + len(payload)
            self.budget.release(held - len(payload))  # the plaintext is gone: keep what is sent
            held = len(payload)
            link.register(item.ack_id, item)
            with link.sending():
                proto.write_frame(link.sock, ftype, header, payload)
        finally:
            self.budget.release(held)

    def _send_relayed(self, link: Link, frame: RelayFrame) -> None:
        """Pass a frame on, its payload as it arrives (cut-through); a test fault may damage it or tap
        it, and then it is sent whole."""
        with link.sending():
            self._stream(link, frame)

    def _stream(self, link: Link, frame: RelayFrame) -> None:
        sock = link.sock
        frame.sends += 1
        if any(
            self._faults.get(f) for f in ("corrupt_forwarded_frame", "tap_file", "replay_forwarded_frame")
        ):
            if frame.size:
                frame.wait_past(frame.size - 1, self.stop)
            payload = self._maybe_corrupt(frame.payload, frame.sends - 1)
            self._tap(frame.header, payload)
            assert frame.ack_id is not None
            link.register(frame.ack_id, frame)
            proto.write_frame(sock, frame.type, frame.header, payload)
            if self._replay_now(frame.sends - 1):
                proto.write_frame(sock, frame.type, frame.header, payload)  # not registered: a copy
            return
        if not sock.streams_payload(frame.type, frame.header):
            # a payload the hop must seal (a batch, an unencrypted chunk) goes out whole
            if frame.size:
                frame.wait_past(frame.size - 1, self.stop)
            assert frame.ack_id is not None
            link.register(frame.ack_id, frame)
            proto.write_frame(sock, frame.type, frame.header, frame.payload)
            return
        sock.write_head(frame.type, frame.header, frame.size)
        view = memoryview(frame.payload)
        sent = 0
        registered = False
        if frame.ack_id is not None:
            link.register(frame.ack_id, frame)
            registered = True
        while sent < frame.size:
            filled = frame.wait_past(sent, self.stop)
            if not registered and filled == frame.size:
                assert frame.ack_id is not None
                link.register(frame.ack_id, frame)
                registered = True
            sock.write_payload(view[sent:filled])
            sent = filled
        if not registered:  # an empty payload
            assert frame.ack_id is not None
            link.register(frame.ack_id, frame)

    # -- receiving -------------------------------------------------------------------------------
    def accept(self, raw: socket.socket) -> None:
        thread = threading.Thread(target=self._receiver, args=(raw,), name="receiver", daemon=True)
        thread.start()

    def _receiver(self, raw: socket.socket) -> None:
        try:
            sock = accept_hop(self.server_ctx, raw, timeout=HANDSHAKE_TIMEOUT)
        except (OSError, ProtocolError) as err:
            # not an error of the transfer: count it and drop the peer, no byte of a frame was read
            self.report.add(rejected_peers=1)
            print(f"peer rejected in the TLS handshake: {type(err).__name__}: {err}", file=sys.stderr)
            with contextlib.suppress(OSError):
                raw.close()
            return
        try:
            while not self.stop.is_set():
                # wait for the next frame without holding any budget, so idle connections cost none
                if not sock.pending() and not select.select([sock], [], [], 0.5)[0]:
                    continue
                ftype, header, length = proto.read_frame_head(sock)
                if ftype == proto.CLOSE:
                    return
                if ftype not in (proto.CHUNK, proto.BATCH):
                    raise ProtocolError(f"unexpected frame type {ftype.name} from an upstream gateway")
                if not self.program.writes:
                    self._relay(sock, ftype, header, length)
                else:
                    self._receive_whole(sock, ftype, header, length)
        except (OSError, ProtocolError, TransferError) as err:
            if not self.stop.is_set():
                self.fail(f"upstream connection: {err}")
        except Exception as err:  # noqa: BLE001 - a bug must show on the status endpoint, not vanish
            self.fail(f"receiver: {type(err).__name__}: {err}")
            traceback.print_exc()
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _relay(self, sock: HopStream, ftype: proto.FrameType, header: bytes, length: int) -> None:
        """Hand the frame to a next hop at once, fill its payload as it arrives, and ACK it upstream
        once all of it is here (the budget is given back when the next hop ACKs it)."""
        if not self.budget.acquire(length, self.stop):
            raise TransferError("the relay is stopping")
        frame = RelayFrame(ftype, header, length)
        self._forward(frame)
        view = memoryview(frame.payload)
        got, told, told_at = 0, 0, time.monotonic()
        try:
            while got < length:
                got += proto.read_payload_into(sock, view[got:], f"{ftype.name} frame payload")
                piece = got - told
                if (
                    got == length
                    or piece >= CUT_THROUGH_MAX_BYTES
                    or (piece >= CUT_THROUGH_BYTES and time.monotonic() - told_at >= CUT_THROUGH_S)
                ):
                    frame.advance(got)
                    told, told_at = got, time.monotonic()
        except BaseException:
            frame.advance(got, failed=True)
            raise
        self.report.add(chunks_received=1)
        assert frame.ack_id is not None
        proto.write_frame(sock, proto.ACK, proto.Ack(self.transfer_id, (frame.ack_id,)).pack())

    def _receive_whole(self, sock: HopStream, ftype: proto.FrameType, header: bytes, length: int) -> None:
        """Read a whole frame, write its chunks (and pass it on, on a relay that also writes), answer it."""
        raw = proto.ChunkHeader.unpack(header).raw_length if ftype == proto.CHUNK else BATCH_RAW_BYTES
        held = length + raw
        if not self.budget.acquire(held, self.stop):
            raise TransferError("the gateway is stopping")
        try:
            payload = bytearray(length)
            view, got = memoryview(payload), 0
            while got < length:
                got += proto.read_payload_into(sock, view[got:], f"{ftype.name} frame payload")
            frame = proto.Frame(ftype, header, payload)
            self.report.add(chunks_received=1)
            first = proto.first_chunk_id(ftype, header, payload)
            self._await_stores()
            assert self.writer is not None
            ok, why = self.writer.write(frame)
            if ok is None:  # a replay: written before, answered before
                return
            if ok and self.program.forwards:
                if self.budget.acquire(length, self.stop):
                    relayed = RelayFrame(ftype, header, length, payload)
                    relayed.advance(length)
                    self._forward(relayed)
        finally:
            self.budget.release(held)
        if ok:
            proto.write_frame(sock, proto.ACK, proto.Ack(self.transfer_id, (first,)).pack())
        else:
            attempt = proto.ChunkHeader.unpack(header).attempt if ftype == proto.CHUNK else 0
            proto.write_frame(sock, proto.NACK, proto.Nack(self.transfer_id, first, attempt, why).pack())

    # -- test-only fault hooks -------------------------------------------------------------------
    def _tap(self, header: bytes, payload: bytes | bytearray) -> None:
        """Append every frame this relay forwards to ``test_faults["tap_file"]``, to show what a
        compromised relay could see."""
        path = self._faults.get("tap_file")
        if path:
            with self._fault_lock, open(path, "ab") as tap:
                tap.write(header)
                tap.write(payload)

    def _replay_now(self, attempt: int) -> bool:
        """``test_faults["replay_forwarded_frame"]``: send the N-th forwarded frame twice, as a relay
        replaying a frame it holds would (the copy is re-sealed for the hop, so only the writer's
        record of the chunks it wrote can tell)."""
        target = self._faults.get("replay_forwarded_frame")
        if not target or attempt:
            return False
        with self._fault_lock:
            return next(self._replayed) == target

    def _maybe_corrupt(self, payload: bytes | bytearray, attempt: int) -> bytes | bytearray:
        """``test_faults["corrupt_forwarded_frame"]``: flip one byte of the N-th forwarded frame on its
        first send, or of every forwarded frame on every send with -1."""
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


def main(ipc_fd: int, sockets_fd: int, parent: int) -> int:
    """Run one worker: its setup arrives over ``ipc_fd``, accepted connections over ``sockets_fd``."""
    die_with_parent()
    if os.getppid() != parent:  # the gateway died before this worker could ask to die with it
        return 1
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the main process stops its workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reuse_chunk_buffers()
    conn = Connection(ipc_fd)
    report = Report(conn)
    setup = conn.recv()
    try:
        program = Program.parse(setup["program"])
        worker = Worker(program, setup["index"], setup["workers"], setup["budget"], report)
    except (SkyplaneError, OSError, ValueError) as err:
        report.error(f"worker {setup['index']} could not start: {type(err).__name__}: {err}")
        print(f"gateway worker: {err}", file=sys.stderr, flush=True)
        return 0
    if program.listen is not None:
        threading.Thread(
            target=_receive_sockets, args=(sockets_fd, worker), name="sockets", daemon=True
        ).start()
    worker.start()
    report.send({"t": "ready", "pid": os.getpid()})
    try:
        while True:
            message = conn.recv()
            kind = message["t"]
            if kind == "work":
                worker.work(message["items"], message.get("end", False))
            elif kind == "halt":
                worker.stop.set()
                worker.wake_all()
            elif kind == "stop":
                break
    except (EOFError, OSError):
        return 0  # the main process is gone: nothing left to report to
    worker.stop.set()
    with contextlib.suppress(OSError):
        report.flush()
    os._exit(0)  # nothing left to wind down: threads blocked in reads need not be joined


def _receive_sockets(fd: int, worker: Worker) -> None:
    channel = socket.socket(fileno=fd)
    while not worker.stop.is_set():
        try:
            _, fds, _, _ = socket.recv_fds(channel, 1, 1)
        except OSError:
            return
        if not fds:
            return
        worker.accept(socket.socket(fileno=fds[0]))
