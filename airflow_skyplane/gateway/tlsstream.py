"""A gateway's TLS connection, run over memory BIOs: large reads, few wake-ups, no read per packet.

``ssl.SSLSocket`` lets OpenSSL read the socket itself, one TLS record (at most 16 KiB) per call and
the record's 5-byte head apart from its body; a thread blocked in such a read is woken for every
packet that arrives. On a path whose flows are capped (every WAN path: that is why the overlay opens
many connections), packets arrive one by one, so a relay's CPU went to waking threads and switching
between them, not to moving bytes: measured on the emulated WAN, half of a relay's CPU was the
scheduler, a seventh the cipher.

:class:`TLSStream` keeps the same TLS 1.3 session (``ssl.SSLContext.wrap_bio``: the same contexts,
certificates and checks as :mod:`.tls`) but does the socket I/O itself:

* **reading**: one ``recv_into`` takes up to :data:`READ_BLOCK` bytes at once, and the socket's
  ``SO_RCVLOWAT`` makes that read wait until as much has arrived as the caller is sure to receive
  (what it asked for, at most :data:`LOW_WATER`); the records are then decrypted straight into the
  caller's buffer (a frame's payload), without a copy in between;
* **writing**: a frame's head and payload are sealed into TLS records in memory and handed to the
  kernel with one ``sendall`` per :data:`WRITE_BLOCK`.

The callers (the frame readers of :mod:`.protocol`) ask only for bytes a frame has announced: the
frame prefix, its header, the rest of its payload. Waiting until that much has arrived therefore
never waits for bytes that are not coming. One thread may read while another writes (a link reads
its ACKs while it sends); the TLS object itself is used under a lock. Standard library only; imports
no Airflow.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from collections.abc import Sequence
from typing import Union, cast

from airflow_skyplane.gateway.tls import peer_address, refused

BytesLike = Union[bytes, bytearray, memoryview]

#: the most a read takes from the socket at once
READ_BLOCK = 1024 * 1024
#: the most a read waits for (SO_RCVLOWAT): at most half of the smallest receive buffer TCP starts
#: with (128 KiB), so that the kernel never shrinks the window to honour it
LOW_WATER = 64 * 1024
#: plaintext sealed and sent per ``sendall``
WRITE_BLOCK = 256 * 1024
_HANDSHAKE_READ = 64 * 1024
#: the largest TLS 1.3 record on the wire: a 5-byte head, 16 KiB of plaintext, up to 256 bytes more
_MAX_RECORD = 5 + 16384 + 256


class TLSStream:
    """A TLS session over a connected TCP socket, read and written in large blocks.

    Offers the subset of ``ssl.SSLSocket`` the gateway's frame readers and writers use:
    ``recv_into``, ``sendall``, ``pending``, ``fileno``, ``settimeout``, ``getpeercert`` and
    ``close``; plus :meth:`sendall_parts` (a frame's head and payload without joining them) and
    :meth:`wait_readable`.
    """

    def __init__(
        self, raw: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ) -> None:
        self._raw, self._tls, self._in, self._out = raw, tls, incoming, outgoing
        self._lock = threading.Lock()  # the TLS object and its BIOs
        self._send_lock = threading.Lock()  # keeps the records of one write together on the wire
        self._block = bytearray(READ_BLOCK)
        self._block_view = memoryview(self._block)
        self._low_water = 1
        self._eof = False

    # -- handshake -------------------------------------------------------------------------------
    @classmethod
    def handshake(
        cls,
        context: ssl.SSLContext,
        raw: socket.socket,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> TLSStream:
        """Run the TLS handshake over ``raw``; a peer that fails it is closed and reported as
        :class:`~airflow_skyplane.exceptions.AuthenticationError` before any application byte is read."""
        peer = peer_address(raw)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        raw.settimeout(timeout)
        try:
            tls = context.wrap_bio(
                incoming, outgoing, server_side=server_side, server_hostname=server_hostname
            )
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pass
                if outgoing.pending:
                    raw.sendall(outgoing.read())
                data = raw.recv(_HANDSHAKE_READ)
                if not data:
                    raise ConnectionResetError("the peer closed the connection during the TLS handshake")
                incoming.write(data)
            if outgoing.pending:
                raw.sendall(outgoing.read())
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            with contextlib.suppress(OSError):
                if outgoing.pending:  # the alert that tells the peer why: it fails at once, not at EOF
                    raw.sendall(outgoing.read())
            with contextlib.suppress(OSError):
                raw.close()
            raise refused(exc, peer) from exc
        raw.settimeout(None)
        return cls(raw, tls, incoming, outgoing)

    # -- reading ---------------------------------------------------------------------------------
    def pending(self) -> int:
        """Bytes already here (decrypted, or still sealed in the buffer): a read of them will not wait."""
        with self._lock:
            return self._tls.pending() + self._in.pending

    def wait_readable(self, timeout: float) -> bool:
        """True when a read would not wait (something arrived, or the connection ended)."""
        if self.pending() or self._eof:
            return True
        self._set_low_water(1)
        return bool(select.select([self._raw], [], [], timeout)[0])

    def recv_into(self, buffer: BytesLike, nbytes: int = 0) -> int:
        """Decrypt up to ``nbytes`` (default: the buffer's length) into ``buffer``: the count, 0 at
        the end of the stream. Waits until at least one byte is there; from the socket, until as much
        has arrived as asked for (up to :data:`LOW_WATER`)."""
        view = memoryview(buffer).cast("B")
        want = nbytes or len(view)
        if want <= 0:
            return 0
        view = view[:want]
        while True:
            got = self._decrypt_into(view)
            if got or self._eof:
                return got
            self._fill(want)

    def _decrypt_into(self, view: memoryview) -> int:
        """Decrypt every whole record already received into ``view`` (as many as fit)."""
        got = 0
        with self._lock:
            while got < len(view):
                try:
                    # with a buffer, read() returns the count (typeshed knows only the bytes form)
                    n = cast(int, self._tls.read(len(view) - got, view[got:]))  # type: ignore[arg-type]
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:  # the peer closed the TLS session
                    self._eof = True
                    break
                if not n:
                    self._eof = True
                    break
                got += n
        return got

    def _fill(self, want: int) -> None:
        """Read what the socket has, after waiting until about ``want`` plaintext bytes can be there."""
        with self._lock:
            sealed = self._in.pending
        # OpenSSL may hold part of one record it has taken from the buffer already: up to that much
        # of what is wanted may be here without being counted
        self._set_low_water(max(1, min(LOW_WATER, want - sealed - _MAX_RECORD)))
        n = self._raw.recv_into(self._block_view, READ_BLOCK)
        if not n:
            self._eof = True
            return
        with self._lock:
            self._in.write(self._block_view[:n])

    def _set_low_water(self, size: int) -> None:
        if size != self._low_water:
            self._raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
            self._low_water = size

    # -- writing ---------------------------------------------------------------------------------
    def sendall(self, data: BytesLike) -> None:
        """Seal ``data`` into TLS records and send them all."""
        self.sendall_parts((data,))

    def sendall_parts(self, parts: Sequence[BytesLike]) -> None:
        """Send several buffers as one stream of bytes (a frame's head and its payload), without
        joining them first."""
        with self._send_lock:
            pending = 0
            for part in parts:
                view = memoryview(part).cast("B")
                for start in range(0, len(view), WRITE_BLOCK):
                    piece = view[start : start + WRITE_BLOCK]
                    with self._lock:
                        self._tls.write(piece)
                    pending += len(piece)
                    if pending >= WRITE_BLOCK:
                        self._flush()
                        pending = 0
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            sealed = self._out.read()
        if sealed:
            self._raw.sendall(sealed)

    # -- the rest of the socket ------------------------------------------------------------------
    def fileno(self) -> int:
        return self._raw.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self._raw.settimeout(timeout)

    def getpeercert(self, binary_form: bool = False) -> object:
        return self._tls.getpeercert(binary_form)

    def version(self) -> str | None:
        return self._tls.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._tls.cipher()

    def close(self) -> None:
        self._raw.close()
