"""A data connection between two gateways: mutual TLS for the handshake, sealed frame heads after it.

Every chunk payload a gateway forwards is already sealed end to end (AES-256-GCM under the transfer
key, the chunk header as associated data: see :mod:`~airflow_skyplane.gateway.protocol`). Running the
hop over TLS as well made a relay decrypt and re-encrypt every byte a second time, three times the
CPU a relay may spend per GB. So a data connection uses TLS only to meet its peer:

1. **Handshake.** Mutual TLS 1.3 under the fleet's CA, as before (:mod:`~airflow_skyplane.gateway.tls`):
   a stranger is dropped before a byte of a frame is read.
2. **Hop keys.** Over that TLS channel each side sends 32 random bytes; HKDF-SHA256 of both makes one
   AES-256-GCM key per direction. Only the two authenticated endpoints know them. Then both sides
   close TLS (``SSLSocket.unwrap``: close_notify both ways) and keep the bare TCP socket.
3. **Frames.** Each frame is::

       magic "SKH1" | flags u8 | sealed head length u16 | payload length u32 | sealed head | payload

   The *sealed head* is the frame's type and header (a chunk header names the object, its offset and
   size) under the hop key, the 11-byte prefix as associated data and the frame's sequence number on
   the connection as nonce. So a frame of a stranger, or one altered, dropped, replayed or
   reordered on the path, fails authentication and ends the connection; control frames (ACK, NACK,
   CLOSE, ERROR), which are all head, are sealed whole. The *payload* of a chunk sealed end to end
   travels as it is: its own AEAD, whose associated data is the chunk header inside the sealed head,
   makes the destination refuse it if a byte changed on any hop, and the chunk is resent. Any other
   payload (an unencrypted transfer's chunk, a batch, whose payload holds its chunks' headers) is
   sealed with the hop key too (flag bit 0), so nothing goes out readable that TLS used to hide.

A relay therefore opens no payload byte it forwards: it reads payloads straight into its buffer with
large ``recv_into`` calls and sends them on with ``sendall`` of memoryviews, and spends its crypto on
a few hundred bytes of head per frame. ``docs/security.md`` says what a hop protects and how.

Concurrency: one thread may read frames while another writes them (a plain socket is full duplex;
each direction has its own key and sequence number); writers are serialised by a lock, so a frame's
bytes are never interleaved with another's. The TLS object is used by one thread only, during the
handshake and the key exchange, and is gone before any frame moves.

Why each dependency is here: ``cryptography`` (``AESGCM``, ``HKDF``) for the hop cipher and the key
derivation, the same vetted library the payload cipher uses; nothing here implements cryptography.
Nothing here imports Airflow.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from airflow_skyplane.exceptions import AuthenticationError, InvalidInputError, ProtocolError
from airflow_skyplane.gateway import protocol as proto
from airflow_skyplane.gateway import tls

__all__ = ["HOP_MAGIC", "HopStream", "accept_hop", "open_hop"]

HOP_MAGIC = b"SKH1"
RANDOM_BYTES = 32
TAG_BYTES = 16
#: flag bit 0: the payload is sealed with the hop key (it is not a chunk sealed end to end)
PAYLOAD_SEALED = 1
_PREFIX = struct.Struct("!4sBHI")  # magic, flags, sealed head length, payload length
_HEAD = struct.Struct("!B")  # frame type; the frame header follows
_NONCE = struct.Struct("!I8x")  # a 12-byte nonce: the part (head 0, payload 1) and the sequence number
_INFO = b"airflow-skyplane hop keys v1"
_MAX_SEALED_HEAD = _HEAD.size + proto.MAX_HEADER + TAG_BYTES


def _nonce(part: int, seq: int) -> bytes:
    nonce = bytearray(_NONCE.pack(part))
    nonce[4:] = seq.to_bytes(8, "big")
    return bytes(nonce)


def _payload_is_end_to_end(frame_type: proto.FrameType, header: bytes) -> bool:
    """A CHUNK whose header says it is sealed under the transfer key: it needs no hop seal."""
    if frame_type is not proto.FrameType.CHUNK:
        return False
    return proto.ChunkHeader.unpack(header).encrypted


class HopStream(proto.FramedStream):
    """A connected, keyed data connection: frames out and in, as :mod:`.protocol` reads and writes them.

    :func:`~airflow_skyplane.gateway.protocol.write_frame`, ``read_frame``, ``read_frame_head`` and
    ``read_payload_into`` hand a ``HopStream`` to its own methods, so the gateway's code reads and
    writes frames the same way on it as on any stream.
    """

    def __init__(self, sock: socket.socket, send_key: bytes, receive_key: bytes, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self._send = AESGCM(send_key)
        self._receive = AESGCM(receive_key)
        self._send_seq = 0
        self._receive_seq = 0
        self._write_lock = threading.Lock()
        # the rest of the payload being read: bare bytes still on the socket, or an opened payload
        self._bare_left = 0
        self._opened: memoryview | None = None

    # -- the socket ------------------------------------------------------------------------------
    def fileno(self) -> int:
        return self.sock.fileno()

    def pending(self) -> int:
        """Bytes of a frame already read and not yet taken (an opened payload), as ``SSLSocket``."""
        return len(self._opened) if self._opened is not None else 0

    def close(self) -> None:
        self.sock.close()

    def shutdown(self, how: int) -> None:
        """Shut the bare socket down (``socket.SHUT_RDWR``...): a send or read blocked on it returns,
        as when a multicast branch is given up."""
        self.sock.shutdown(how)

    def __enter__(self) -> HopStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------------
    def _seal_head(
        self, frame_type: proto.FrameType, header: bytes, payload_length: int, flags: int
    ) -> bytes:
        sealed_length = _HEAD.size + len(header) + TAG_BYTES
        prefix = _PREFIX.pack(HOP_MAGIC, flags, sealed_length, payload_length)
        seq = self._send_seq
        self._send_seq += 1
        head = self._send.encrypt(_nonce(0, seq), _HEAD.pack(frame_type) + header, prefix)
        return prefix + head

    def write_frame(self, frame_type: proto.FrameType, header: bytes, payload: proto.BytesLike = b"") -> None:
        """One whole frame: its head sealed, its payload as it is (a chunk sealed end to end) or sealed."""
        view = memoryview(payload).cast("B")
        with self._write_lock:
            if not len(view) or _payload_is_end_to_end(frame_type, header):
                data = self._seal_head(frame_type, header, len(view), 0)
                self._sendmsg(data, view)
                return
            seq = self._send_seq
            data = self._seal_head(frame_type, header, len(view) + TAG_BYTES, PAYLOAD_SEALED)
            sealed = self._send.encrypt(_nonce(1, seq), view, data[: _PREFIX.size])
            self._sendmsg(data, memoryview(sealed))

    def _sendmsg(self, head: bytes, payload: memoryview) -> None:
        """Head and payload in one system call when the socket takes them (no copy of the payload)."""
        if not len(payload):
            self.sock.sendall(head)
            return
        sent = self.sock.sendmsg([head, payload])
        if sent < len(head):
            self.sock.sendall(head[sent:])
            sent = len(head)
        if sent - len(head) < len(payload):
            self.sock.sendall(payload[sent - len(head) :])

    def streams_payload(self, frame_type: proto.FrameType, header: bytes) -> bool:
        """Whether a frame's payload may be sent in pieces as it arrives (:meth:`write_head`): only a
        chunk sealed end to end; any other payload is sealed whole with :meth:`write_frame`."""
        return _payload_is_end_to_end(frame_type, header)

    def write_head(self, frame_type: proto.FrameType, header: bytes, payload_length: int) -> None:
        """The head of a frame whose end-to-end sealed payload follows in :meth:`write_payload` calls
        (a relay passing a chunk on as it arrives). The caller is the connection's one sending thread
        and sends exactly ``payload_length`` bytes next."""
        if payload_length and not _payload_is_end_to_end(frame_type, header):
            raise InvalidInputError(
                f"a {frame_type.name} frame whose payload is not sealed end to end is sent whole "
                "(write_frame), so that the hop can seal it"
            )
        with self._write_lock:
            self.sock.sendall(self._seal_head(frame_type, header, payload_length, 0))

    def write_payload(self, piece: proto.BytesLike) -> None:
        """The next bytes of the payload announced by :meth:`write_head`."""
        self.sock.sendall(piece)

    # -- reading ---------------------------------------------------------------------------------
    def _read_exact(self, size: int, what: str, *, first: bool = False) -> bytearray:
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        while got < size:
            count = self.sock.recv_into(view[got:])
            if not count:
                if first and got == 0:
                    raise ProtocolError(
                        f"{self.peer} closed the connection between frames without a CLOSE frame; "
                        "chunks not yet acknowledged must be resent"
                    )
                raise ProtocolError(
                    f"stream truncated: the {what} is {size} bytes, {self.peer} closed after {got}"
                )
            got += count
        return buffer

    def _open(self, part: int, seq: int, sealed: bytearray, prefix: bytes, what: str) -> bytes:
        try:
            return self._receive.decrypt(_nonce(part, seq), sealed, prefix)  # no copy of the bytearray
        except InvalidTag:
            raise ProtocolError(
                f"{what} from {self.peer} failed authentication: it was altered, replayed, reordered "
                "or injected on the path; dropping the connection"
            ) from None

    def read_frame_head(self) -> tuple[proto.FrameType, bytes, int]:
        """The next frame's type, header and payload length, its head authenticated; the payload is
        then read with :meth:`read_payload_into` (exactly its length)."""
        if self._bare_left or self._opened is not None:
            raise ProtocolError("the previous frame's payload was not read to its end")
        prefix = bytes(self._read_exact(_PREFIX.size, "frame prefix", first=True))
        magic, flags, sealed_length, payload_length = _PREFIX.unpack(prefix)
        if magic != HOP_MAGIC:
            raise ProtocolError(
                f"bad frame magic {magic!r} from {self.peer}, expected {HOP_MAGIC!r}: the peer is not a "
                "gateway of this version, or the stream was altered on the path"
            )
        if flags & ~PAYLOAD_SEALED or not _HEAD.size + TAG_BYTES <= sealed_length <= _MAX_SEALED_HEAD:
            raise ProtocolError(
                f"a frame prefix from {self.peer} is malformed (flags {flags}, head {sealed_length})"
            )
        if payload_length > proto.MAX_PAYLOAD + TAG_BYTES:
            raise ProtocolError(
                f"a frame payload of {payload_length} bytes from {self.peer} exceeds the "
                f"{proto.MAX_PAYLOAD}-byte limit"
            )
        sealed = self._read_exact(sealed_length, "sealed frame head")
        seq = self._receive_seq
        self._receive_seq += 1
        head = self._open(0, seq, sealed, prefix, f"frame {seq}")
        frame_type = proto.FrameType(head[0]) if head[0] in proto.FrameType._value2member_map_ else None
        if frame_type is None:
            raise ProtocolError(f"unknown frame type {head[0]} from {self.peer}")
        header = head[_HEAD.size :]
        if flags & PAYLOAD_SEALED:
            if payload_length < TAG_BYTES:
                raise ProtocolError(f"a sealed payload from {self.peer} is shorter than its tag")
            body = self._read_exact(payload_length, f"{frame_type.name} frame payload")
            opened = self._open(1, seq, body, prefix, f"the payload of frame {seq}")
            self._opened = memoryview(opened)
            return frame_type, header, len(opened)
        if payload_length and not _payload_is_end_to_end(frame_type, header):
            raise ProtocolError(
                f"a {frame_type.name} frame from {self.peer} carries a payload sealed neither end to end "
                "nor for the hop: refusing it"
            )
        if frame_type not in (proto.FrameType.CHUNK, proto.FrameType.BATCH) and payload_length:
            raise ProtocolError(f"{frame_type.name} frames carry no payload")
        self._bare_left = payload_length
        return frame_type, header, payload_length

    def read_payload_into(self, view: memoryview, what: str = "frame payload") -> int:
        """Up to ``len(view)`` bytes of the current frame's payload (at least 1)."""
        if self._opened is not None:
            count = min(len(view), len(self._opened))
            view[:count] = self._opened[:count]
            rest = self._opened[count:]
            self._opened = rest if len(rest) else None
            return count
        if not self._bare_left:
            raise ProtocolError(f"no {what} left to read")
        count = self.sock.recv_into(view, min(len(view), self._bare_left))
        if not count:
            raise ProtocolError(f"stream truncated: {self.peer} closed the connection inside a {what}")
        self._bare_left -= count
        return count

    def read_frame(self) -> proto.Frame:
        frame_type, header, length = self.read_frame_head()
        payload = bytearray(length)
        view, got = memoryview(payload), 0
        while got < length:
            got += self.read_payload_into(view[got:], f"{frame_type.name} frame payload")
        return proto.Frame(frame_type, header, payload)


# -- setting up ------------------------------------------------------------------------------------------
def _keys(client_random: bytes, server_random: bytes) -> tuple[bytes, bytes]:
    """(client-to-server key, server-to-client key)."""
    both = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=_INFO).derive(
        client_random + server_random
    )
    return both[:32], both[32:]


def _recv_exact(sock: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise ProtocolError("the peer closed the connection during the hop key exchange")
        data += more
    return data


def _finish(sock: ssl.SSLSocket, mine: bytes, client: bool, timeout: float | None, peer: str) -> HopStream:
    try:
        if client:
            sock.sendall(mine)
            theirs = _recv_exact(sock, RANDOM_BYTES)
        else:
            theirs = _recv_exact(sock, RANDOM_BYTES)
            sock.sendall(mine)
        done = sock.unwrap()  # the same SSLSocket object, with TLS gone from it
        family, kind, number = done.family, done.type, done.proto
        raw = socket.socket(family, kind, number, fileno=done.detach())  # sendmsg works on it
    except (ssl.SSLError, OSError, ProtocolError) as exc:
        sock.close()
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise AuthenticationError(
            f"the hop key exchange with {peer} failed ({reason}: {exc}): the peer is not a gateway of "
            "this fleet, its certificate expired, or it runs another version"
        ) from exc
    raw.settimeout(timeout)
    to_server, to_client = _keys(mine, theirs) if client else _keys(theirs, mine)
    return (
        HopStream(raw, to_server, to_client, peer) if client else HopStream(raw, to_client, to_server, peer)
    )


def open_hop(
    context: ssl.SSLContext, raw: socket.socket, *, timeout: float | None = tls.HANDSHAKE_TIMEOUT
) -> HopStream:
    """The client side: mutual TLS on a connected socket, the hop keys, then the bare socket (blocking)."""
    sock = tls.client_handshake(context, raw, timeout=timeout)
    peer = tls.peer_name(sock)
    stream = _finish(sock, os.urandom(RANDOM_BYTES), True, timeout, peer)
    stream.sock.settimeout(None)
    return stream


def accept_hop(
    context: ssl.SSLContext, raw: socket.socket, *, timeout: float | None = tls.HANDSHAKE_TIMEOUT
) -> HopStream:
    """The server side of :func:`open_hop`, on an accepted socket."""
    sock = tls.server_handshake(context, raw, timeout=timeout)
    sock.settimeout(timeout)
    peer = tls.peer_name(sock)
    stream = _finish(sock, os.urandom(RANDOM_BYTES), False, timeout, peer)
    stream.sock.settimeout(None)
    return stream
