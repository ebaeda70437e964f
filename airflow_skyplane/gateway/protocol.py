"""The gateway wire protocol: frames, chunks, batches, acknowledgements.

Gateways move *chunks*, byte ranges of one object, over long-lived streams (TCP wrapped in mutual TLS,
see :mod:`airflow_skyplane.gateway.tls`). Every message on a stream is a *frame*::

    magic "SKY1" | type u8 | header length u16 | payload length u32 | header | payload

A chunk's payload is its bytes, lz4-compressed when that pays and sealed with AES-256-GCM under the
transfer's key when encryption is on; the chunk header is the AES-GCM associated data, so a relay, which
forwards frames without the key, can read a chunk's routing fields but can neither read its bytes nor
change any field without the destination noticing. ``docs/wire-protocol.md`` has the byte layout and the
reasoning (nonce scheme, compression decision, limits, what a relay sees).

Why each dependency is here:

* ``lz4`` (``lz4.frame``): the fastest widely available compressor; at several hundred MB/s per core it
  does not slow a multi-Gbit/s transfer down, and the frame format carries the content size, so
  decompression can be bounded to the announced length.
* ``cryptography`` (``AESGCM``): authenticated encryption from a vetted library (OpenSSL underneath,
  AES-NI accelerated); nothing here implements cryptography by hand.
* the standard library: ``struct`` for the fixed layouts and ``zlib.crc32`` for chunk checksums. CRC-32
  is in the standard library and runs at several GB/s, which is what an end-to-end corruption check on
  every chunk needs; it is not meant to resist an attacker, which is AES-GCM's job when encryption is on.

Every length read from the wire is checked against a constant limit (:data:`MAX_HEADER`,
:data:`MAX_PAYLOAD`, :data:`MAX_KEY_BYTES`, ...) *before* anything of that size is allocated, and every
malformed input raises :class:`~airflow_skyplane.exceptions.ProtocolError` with a message that says what
was wrong. Nothing here imports Airflow.
"""

from __future__ import annotations

import enum
import hashlib
import os
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol, Union, runtime_checkable

import lz4.frame
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from airflow_skyplane.exceptions import InvalidInputError, ProtocolError

__all__ = [
    "ACK",
    "BATCH",
    "CHUNK",
    "CLOSE",
    "ERROR",
    "MAGIC",
    "MAX_ACK_IDS",
    "MAX_BATCH_CHUNKS",
    "MAX_HEADER",
    "MAX_KEY_BYTES",
    "MAX_PAYLOAD",
    "MAX_REASON_BYTES",
    "MAX_SEALS_PER_KEY",
    "NACK",
    "Ack",
    "ChunkCipher",
    "ChunkFlags",
    "ChunkHeader",
    "Close",
    "Control",
    "ErrorReport",
    "Frame",
    "FrameType",
    "FramedStream",
    "Nack",
    "ReplayGuard",
    "decode_batch",
    "decode_chunk",
    "decode_chunk_checked",
    "encode_batch",
    "encode_chunk",
    "first_chunk_id",
    "frame_head",
    "read_frame",
    "read_frame_head",
    "read_payload_into",
    "write_frame",
]

BytesLike = Union[bytes, bytearray, memoryview]
Compress = Union[bool, Literal["auto", "always", "never"]]

# -- constants ----------------------------------------------------------------------------------------
MAGIC = b"SKY1"
"""First four bytes of every frame; the last byte is the protocol version."""

MAX_KEY_BYTES = 1024
"""Longest object key, in UTF-8 bytes (S3 and GCS allow 1024, Azure Blob a little more)."""

MAX_PAYLOAD = 256 * 1024 * 1024
"""Largest frame payload, and largest plaintext of one chunk."""

MAX_HEADER = 4096
"""Largest frame header."""

MAX_BATCH_CHUNKS = 65536
"""Most chunks one BATCH frame may hold."""

MAX_ACK_IDS = 500
"""Most chunk ids one ACK frame may acknowledge (16 + 2 + 500 * 8 bytes fits in :data:`MAX_HEADER`)."""

MAX_REASON_BYTES = 1024
"""Longest NACK reason, in UTF-8 bytes; longer reasons are cut at a character boundary."""

MAX_SEALS_PER_KEY = 2**32
"""Most chunks one :class:`ChunkCipher` encrypts. With random 96-bit nonces the chance that two of 2**32
encryptions under one key share a nonce stays below 2**-32 (NIST SP 800-38D, section 8.3)."""

TRANSFER_ID_BYTES = 16
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
CHECKSUM_BYTES = 4

COMPRESS_SAMPLE_BYTES = 64 * 1024
"""Bytes of a chunk that ``compress="auto"`` compresses first to decide whether the whole chunk pays."""
COMPRESS_SAMPLE_SLICES = 4
COMPRESS_MIN_SAVING = 0.10
"""``compress="auto"`` compresses a chunk only when its sample shrinks by at least this fraction, and
keeps the result only when the whole chunk does too."""
COMPRESS_MIN_BYTES = 256
"""``compress="auto"`` leaves chunks shorter than this alone: the lz4 frame overhead eats the saving."""

_COALESCE_BYTES = 64 * 1024
_ZERO_CHECKSUM = bytes(CHECKSUM_BYTES)
_ZERO_NONCE = bytes(NONCE_BYTES)
_NOT_A_GATEWAY = "the peer is not a skyplane gateway or speaks another version"

# magic, frame type, header length, payload length
_PREFIX = struct.Struct("!4sBHI")
# transfer_id, chunk_id, route_id, attempt, offset, raw_length, wire_length, object_size, part_number,
# flags, checksum, nonce, key length; the UTF-8 key follows.
_CHUNK_FIXED = struct.Struct("!16sQHHQIIQIH4s12sH")
_BATCH_FIXED = struct.Struct("!16sI")  # transfer_id, chunk count
_BATCH_ENTRY = struct.Struct("!H")  # inner header length; the inner header and its payload follow
_ACK_FIXED = struct.Struct("!16sH")  # transfer_id, count; count u64 chunk ids follow
_ACK_ID = struct.Struct("!Q")
_NACK_FIXED = struct.Struct("!16sQHH")  # transfer_id, chunk_id, attempt, reason length; reason follows


class FrameType(enum.IntEnum):
    """The u8 after the magic."""

    CHUNK = 1
    BATCH = 2
    ACK = 3
    NACK = 4
    CLOSE = 5
    ERROR = 6


CHUNK, BATCH, ACK, NACK, CLOSE, ERROR = (
    FrameType.CHUNK,
    FrameType.BATCH,
    FrameType.ACK,
    FrameType.NACK,
    FrameType.CLOSE,
    FrameType.ERROR,
)
_DATA_FRAMES = frozenset({FrameType.CHUNK, FrameType.BATCH})


class ChunkFlags(enum.IntFlag):
    """Bits of :attr:`ChunkHeader.flags`."""

    NONE = 0
    COMPRESSED = 1
    """The payload is one lz4 frame (inside the AES-GCM seal when also encrypted)."""
    ENCRYPTED = 2
    """The payload is AES-256-GCM ciphertext + tag under the transfer key; the header is the AAD."""
    LAST_OF_OBJECT = 4
    """The sender has no more chunks of this object (the receiver still counts bytes to be sure)."""
    BATCH = 8
    """The sender packed the chunk into a BATCH frame. Informational only: relays may split or merge
    batches without the key, so a receiver treats a chunk the same wherever it finds it."""
    CRC32C = 16
    """The checksum is CRC-32C (Castagnoli) instead of CRC-32: computed by the CPU's own instruction
    (``google-crc32c``), about six times cheaper, and the checksum S3 and GCS verify on a write, so a
    writing gateway hands the store the value it checked instead of computing another."""


_KNOWN_FLAGS = (
    ChunkFlags.COMPRESSED
    | ChunkFlags.ENCRYPTED
    | ChunkFlags.LAST_OF_OBJECT
    | ChunkFlags.BATCH
    | ChunkFlags.CRC32C
)


def _crc32c(data: BytesLike) -> int:
    import google_crc32c  # a dependency of the gateway extra; C-accelerated (SSE4.2)

    # its C function takes bytes only: other buffers are copied (only unencrypted chunks carry them)
    return int(google_crc32c.value(data if isinstance(data, bytes) else bytes(data)))


def crc32c_available() -> bool:
    """True when CRC-32C runs in C here (google-crc32c built with its extension), as the sender wants."""
    try:
        import google_crc32c
    except ImportError:
        return False
    return google_crc32c.implementation == "c"


def _checksum(data: BytesLike, flags: ChunkFlags) -> int:
    return _crc32c(data) if flags & ChunkFlags.CRC32C else zlib.crc32(data)


def _check_uint(name: str, value: int, bits: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise InvalidInputError(f"{name} must be an integer in [0, 2**{bits}), got {value!r}")


def _check_bytes(name: str, value: object, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise InvalidInputError(f"{name} must be {size} bytes, got {value!r}")


def _encode_key(key: object) -> bytes:
    if not isinstance(key, str):
        raise InvalidInputError(f"an object key must be a str, got {type(key).__name__}")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"object key {key!r} is not valid Unicode text: {exc}") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidInputError(
            f"object key {key[:64]!r}... is {len(encoded)} bytes in UTF-8, "
            f"over the {MAX_KEY_BYTES}-byte limit"
        )
    return encoded


# -- chunk header -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkHeader:
    """The routing and integrity fields of one chunk; serialized, it is the AES-GCM associated data.

    ``checksum`` is ``zlib.crc32`` of the raw plaintext, big-endian, for chunks sent in the clear. For
    encrypted chunks the field is zero and the CRC travels inside the sealed payload instead: a CRC of
    the plaintext in the clear would let a relay confirm a guess of a small object's contents.
    ``nonce`` is the AES-GCM nonce (zero when not encrypted); ``attempt`` counts resends of the chunk.
    """

    transfer_id: bytes
    chunk_id: int
    key: str
    offset: int
    raw_length: int
    wire_length: int
    object_size: int
    route_id: int = 0
    part_number: int = 0
    flags: ChunkFlags = ChunkFlags.NONE
    checksum: bytes = _ZERO_CHECKSUM
    nonce: bytes = _ZERO_NONCE
    attempt: int = 0

    def __post_init__(self) -> None:
        _check_bytes("transfer_id", self.transfer_id, TRANSFER_ID_BYTES)
        _check_uint("chunk_id", self.chunk_id, 64)
        _check_uint("route_id", self.route_id, 16)
        _check_uint("attempt", self.attempt, 16)
        _check_uint("offset", self.offset, 64)
        _check_uint("raw_length", self.raw_length, 32)
        _check_uint("wire_length", self.wire_length, 32)
        _check_uint("object_size", self.object_size, 64)
        _check_uint("part_number", self.part_number, 32)
        _check_uint("flags", int(self.flags), 16)
        _check_bytes("checksum", self.checksum, CHECKSUM_BYTES)
        _check_bytes("nonce", self.nonce, NONCE_BYTES)
        _encode_key(self.key)
        if int(self.flags) & ~int(_KNOWN_FLAGS):
            raise InvalidInputError(f"unknown chunk flag bits {int(self.flags) & ~int(_KNOWN_FLAGS):#06x}")
        object.__setattr__(self, "flags", ChunkFlags(int(self.flags)))
        for name in ("raw_length", "wire_length"):
            if getattr(self, name) > MAX_PAYLOAD:
                raise InvalidInputError(
                    f"{name} of {getattr(self, name)} bytes exceeds the {MAX_PAYLOAD}-byte chunk limit"
                )
        if self.offset + self.raw_length > self.object_size:
            raise InvalidInputError(
                f"chunk {self.chunk_id} covers bytes [{self.offset}, {self.offset + self.raw_length}) "
                f"of {self.key!r}, past the end of the {self.object_size}-byte object"
            )
        if self.encrypted:
            if self.wire_length < CHECKSUM_BYTES + TAG_BYTES:
                raise InvalidInputError(
                    f"an encrypted chunk carries at least {CHECKSUM_BYTES + TAG_BYTES} bytes, "
                    f"wire_length is {self.wire_length}"
                )
        elif not self.compressed and self.wire_length != self.raw_length:
            raise InvalidInputError(
                "a chunk sent as is has wire_length == raw_length, "
                f"got {self.wire_length} != {self.raw_length}"
            )

    @property
    def compressed(self) -> bool:
        return bool(self.flags & ChunkFlags.COMPRESSED)

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & ChunkFlags.ENCRYPTED)

    @property
    def last_of_object(self) -> bool:
        return bool(self.flags & ChunkFlags.LAST_OF_OBJECT)

    def describe(self) -> str:
        """``chunk 7 of 'logs/a.gz' (bytes 0..65536)``, for messages."""
        return f"chunk {self.chunk_id} of {self.key!r} (bytes {self.offset}..{self.offset + self.raw_length})"

    def pack(self) -> bytes:
        key = self.key.encode("utf-8")
        fixed = _CHUNK_FIXED.pack(
            self.transfer_id,
            self.chunk_id,
            self.route_id,
            self.attempt,
            self.offset,
            self.raw_length,
            self.wire_length,
            self.object_size,
            self.part_number,
            int(self.flags),
            self.checksum,
            self.nonce,
            len(key),
        )
        return fixed + key

    @classmethod
    def unpack(cls, data: BytesLike) -> ChunkHeader:
        """Parse a header from the wire; anything malformed raises :class:`ProtocolError`."""
        view = memoryview(data)
        if len(view) < _CHUNK_FIXED.size:
            raise ProtocolError(
                f"chunk header of {len(view)} bytes is shorter than the {_CHUNK_FIXED.size}-byte fixed part"
            )
        (tid, cid, route, attempt, offset, raw, wire, size, part, flags, crc, nonce, key_len) = (
            _CHUNK_FIXED.unpack_from(view)
        )
        if key_len > MAX_KEY_BYTES:
            raise ProtocolError(
                f"chunk header announces a {key_len}-byte key, over the {MAX_KEY_BYTES}-byte limit"
            )
        if len(view) != _CHUNK_FIXED.size + key_len:
            raise ProtocolError(
                f"chunk header is {len(view)} bytes but its fixed part and {key_len}-byte key make "
                f"{_CHUNK_FIXED.size + key_len}"
            )
        try:
            key = bytes(view[_CHUNK_FIXED.size :]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"chunk {cid} has an object key that is not UTF-8: {exc}") from None
        try:
            return cls(
                tid, cid, key, offset, raw, wire, size, route, part, ChunkFlags(flags), crc, nonce, attempt
            )
        except InvalidInputError as exc:
            raise ProtocolError(f"invalid chunk header: {exc}") from None


# -- encryption -----------------------------------------------------------------------------------------
class ChunkCipher:
    """AES-256-GCM under one transfer's key.

    Each encryption draws a fresh random 96-bit nonce from the OS (``os.urandom``) and the nonce travels
    in the chunk header. Random nonces need no state shared between the several source gateways that
    encrypt under one transfer key, and survive gateway restarts and resends, which counters would not
    without coordination; the price is a bound on the number of encryptions per key
    (:data:`MAX_SEALS_PER_KEY`), which this object enforces for what it encrypts itself.

    The key never appears in ``repr``/``str``; :attr:`key_id` (a hash prefix) identifies it in logs. A
    cipher cannot be pickled, so it cannot leak through a task's return value: ship :attr:`key` over
    a secret channel instead.
    """

    __slots__ = ("_aead", "_key", "_lock", "_seals")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            size = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
            raise InvalidInputError(
                f"a transfer key is {KEY_BYTES} random bytes (AES-256), got {size}: "
                "make one with ChunkCipher.generate()"
            )
        self._key = bytes(key)
        self._aead = AESGCM(self._key)
        self._seals = 0
        self._lock = threading.Lock()

    @classmethod
    def generate(cls) -> ChunkCipher:
        """A cipher with a fresh random 256-bit key."""
        return cls(AESGCM.generate_key(bit_length=256))

    @property
    def key(self) -> bytes:
        """The raw key, to hand to the other gateways of the transfer over a secret channel."""
        return self._key

    @property
    def key_id(self) -> str:
        """A short, non-secret identifier of the key (a domain-separated SHA-256 prefix)."""
        return hashlib.sha256(b"airflow-skyplane transfer key id\x00" + self._key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"ChunkCipher(key_id={self.key_id})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a ChunkCipher is not picklable; send ChunkCipher.key over a secret channel")

    def _next_nonce(self) -> bytes:
        with self._lock:
            if self._seals >= MAX_SEALS_PER_KEY:
                raise InvalidInputError(
                    f"this transfer key has encrypted {MAX_SEALS_PER_KEY} chunks, the safe limit for "
                    "random nonces: split the transfer so that each part gets its own key"
                )
            self._seals += 1
        return os.urandom(NONCE_BYTES)

    def _encrypt(self, nonce: bytes, plaintext: BytesLike, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad)

    def _decrypt(self, nonce: bytes, ciphertext: BytesLike, aad: bytes) -> bytes:
        return self._aead.decrypt(nonce, ciphertext, aad)


# -- chunks -------------------------------------------------------------------------------------------
def _lz4(data: BytesLike) -> bytes:
    return lz4.frame.compress(data, compression_level=0, store_size=True, content_checksum=False)


def _sample(data: memoryview) -> bytes:
    """Up to :data:`COMPRESS_SAMPLE_BYTES` taken from evenly spaced slices, so that a chunk whose start
    differs from the rest (an archive's index, a file header) is judged by more than its start."""
    size = COMPRESS_SAMPLE_BYTES // COMPRESS_SAMPLE_SLICES
    last = len(data) - size
    starts = [last * i // (COMPRESS_SAMPLE_SLICES - 1) for i in range(COMPRESS_SAMPLE_SLICES)]
    return b"".join(data[s : s + size] for s in starts)


def _maybe_compress(data: memoryview, compress: Compress) -> bytes | None:
    """The lz4 frame to send instead of ``data``, or None to send ``data`` as is."""
    if compress is True or compress == "always":
        return _lz4(data)
    if compress is False or compress == "never" or len(data) < COMPRESS_MIN_BYTES:
        return None
    if len(data) > COMPRESS_SAMPLE_BYTES:
        sample = _sample(data)
        if len(_lz4(sample)) > len(sample) * (1 - COMPRESS_MIN_SAVING):
            return None
    # The sample was promising (or the chunk is its own sample); keep the result only if it pays.
    packed = _lz4(data)
    return packed if len(packed) <= len(data) * (1 - COMPRESS_MIN_SAVING) else None


def encode_chunk(
    transfer_id: bytes,
    chunk_id: int,
    key: str,
    offset: int,
    data: BytesLike,
    *,
    object_size: int,
    cipher: ChunkCipher | None,
    compress: Compress = "auto",
    route_id: int = 0,
    part_number: int = 0,
    last_of_object: bool = False,
    attempt: int = 0,
    batch: bool = False,
    checksum: Literal["crc32", "crc32c"] = "crc32",
) -> tuple[ChunkHeader, bytes]:
    """Compress (when it pays, or as ``compress`` says) and encrypt (when ``cipher`` is given) one chunk.

    ``compress="auto"`` compresses a sample of the chunk first and the whole chunk only when the sample
    shrinks by :data:`COMPRESS_MIN_SAVING`, so incompressible data (media, archives, ciphertext) costs
    one small trial; ``True``/``"always"`` always compresses, ``False``/``"never"`` never. ``attempt``
    must grow on every resend of the same chunk (the :class:`ReplayGuard` drops exact repeats);
    ``batch`` sets :attr:`ChunkFlags.BATCH`; ``checksum="crc32c"`` sets :attr:`ChunkFlags.CRC32C`.
    Returns the header and the payload, ready for
    ``write_frame(stream, FrameType.CHUNK, header.pack(), payload)`` or :func:`encode_batch`.
    """
    if compress not in (True, False, "auto", "always", "never"):
        raise InvalidInputError(
            f'compress must be True, False, "auto", "always" or "never", got {compress!r}'
        )
    if cipher is not None and not isinstance(cipher, ChunkCipher):
        raise InvalidInputError(f"cipher must be a ChunkCipher or None, got {type(cipher).__name__}")
    view = memoryview(data).cast("B")
    if len(view) > MAX_PAYLOAD:
        raise InvalidInputError(
            f"chunk {chunk_id} of {key!r} is {len(view)} bytes, over the {MAX_PAYLOAD}-byte "
            "limit: split the object into smaller chunks"
        )
    if checksum not in ("crc32", "crc32c"):
        raise InvalidInputError(f'checksum must be "crc32" or "crc32c", got {checksum!r}')
    flags = ChunkFlags.CRC32C if checksum == "crc32c" else ChunkFlags.NONE
    crc = _checksum(data if isinstance(data, bytes) else view, flags).to_bytes(CHECKSUM_BYTES, "big")
    if last_of_object:
        flags |= ChunkFlags.LAST_OF_OBJECT
    if batch:
        flags |= ChunkFlags.BATCH
    packed = _maybe_compress(view, compress)
    body: BytesLike = view if packed is None else packed
    if packed is not None:
        flags |= ChunkFlags.COMPRESSED

    def header(wire_length: int, checksum: bytes, nonce: bytes, flags: ChunkFlags) -> ChunkHeader:
        return ChunkHeader(
            transfer_id=transfer_id,
            chunk_id=chunk_id,
            key=key,
            offset=offset,
            raw_length=len(view),
            wire_length=wire_length,
            object_size=object_size,
            route_id=route_id,
            part_number=part_number,
            flags=flags,
            checksum=checksum,
            nonce=nonce,
            attempt=attempt,
        )

    if cipher is None:
        head = header(len(body), crc, _ZERO_NONCE, flags)
        if packed is None and isinstance(data, bytes):
            return head, data  # the caller's bytes as they are: no copy of an uncompressed chunk
        return head, body if isinstance(body, bytes) else bytes(body)
    flags |= ChunkFlags.ENCRYPTED
    sealed_length = CHECKSUM_BYTES + len(body) + TAG_BYTES
    header(sealed_length, _ZERO_CHECKSUM, _ZERO_NONCE, flags)  # validate the fields before spending a nonce
    nonce = cipher._next_nonce()
    head = header(sealed_length, _ZERO_CHECKSUM, nonce, flags)
    return head, cipher._encrypt(nonce, b"".join((crc, body)), head.pack())


def _decompress(body: BytesLike, raw_length: int, what: str) -> bytes:
    decompressor = lz4.frame.LZ4FrameDecompressor()
    try:
        # max_length bounds the output buffer: a frame that inflates past raw_length is not expanded.
        data = decompressor.decompress(body, max_length=raw_length)
    except (RuntimeError, ValueError) as exc:
        raise ProtocolError(f"{what}: the lz4 data is corrupt ({exc})") from None
    if not decompressor.eof:
        if decompressor.needs_input:
            raise ProtocolError(f"{what}: the lz4 frame is truncated")
        raise ProtocolError(f"{what}: the lz4 frame inflates to more than the announced {raw_length} bytes")
    if decompressor.unused_data:
        raise ProtocolError(f"{what}: {len(decompressor.unused_data)} stray bytes follow the lz4 frame")
    return data


def decode_chunk(header: ChunkHeader, payload: BytesLike, *, cipher: ChunkCipher | None) -> bytes | bytearray:
    """The chunk's plaintext, verified; :class:`ProtocolError` if anything does not check out.

    See :func:`decode_chunk_checked`, which also returns the checksum it verified."""
    return decode_chunk_checked(header, payload, cipher=cipher)[0]


def decode_chunk_checked(
    header: ChunkHeader, payload: BytesLike, *, cipher: ChunkCipher | None
) -> tuple[bytes | bytearray, int]:
    """The chunk's plaintext and the checksum it was verified against (CRC-32C when the header has
    :attr:`ChunkFlags.CRC32C`, else CRC-32); :class:`ProtocolError` if anything does not check out.

    With a ``cipher`` the chunk must be encrypted (an unencrypted chunk is refused: otherwise anyone on
    the path could inject plaintext into an encrypted transfer). The result is always exactly
    ``header.raw_length`` bytes whose CRC-32 matches.
    """
    what = header.describe()
    size = memoryview(payload).nbytes
    if size != header.wire_length:
        raise ProtocolError(
            f"{what}: the payload is {size} bytes but the header announces {header.wire_length}"
        )
    body: BytesLike
    if header.encrypted:
        if cipher is None:
            raise ProtocolError(f"{what} is encrypted, but no transfer key was given to decode it")
        try:
            sealed = cipher._decrypt(header.nonce, payload, header.pack())
        except InvalidTag:
            raise ProtocolError(
                f"{what} failed authentication: it was altered in transit or encrypted with another "
                f"transfer's key (this key is {cipher.key_id})"
            ) from None
        checksum, body = sealed[:CHECKSUM_BYTES], memoryview(sealed)[CHECKSUM_BYTES:]
    else:
        if cipher is not None:
            raise ProtocolError(
                f"{what} arrived unencrypted, but this transfer is encrypted: refusing it (a misconfigured "
                "sender or someone on the path is injecting plaintext)"
            )
        checksum, body = header.checksum, payload
    # no copy of an uncompressed body received whole (a bytearray): the store SDKs take it as is
    if header.compressed:
        data: bytes | bytearray = _decompress(body, header.raw_length, what)
    else:
        data = body if isinstance(body, bytes | bytearray) else bytes(body)
    if len(data) != header.raw_length:
        raise ProtocolError(f"{what}: decoded to {len(data)} bytes, the header announces {header.raw_length}")
    expected, actual = int.from_bytes(checksum, "big"), _checksum(data, header.flags)
    if expected != actual:
        name = "crc32c" if header.flags & ChunkFlags.CRC32C else "crc32"
        raise ProtocolError(
            f"checksum mismatch on {what}: {name} {actual:08x}, the sender computed {expected:08x}; "
            "the chunk was corrupted in transit, NACK it and the sender will resend it"
        )
    return data, actual


# -- batches ------------------------------------------------------------------------------------------
def encode_batch(chunks: Sequence[tuple[ChunkHeader, BytesLike]]) -> tuple[bytes, bytes]:
    """Many encoded chunks of one transfer as one BATCH frame: returns ``(frame header, payload)``.

    Batching is framing only: each chunk was compressed, sealed and checksummed on its own by
    :func:`encode_chunk` and keeps its own header. So one corrupt chunk is NACKed and resent alone, a
    receiver handles a chunk the same whether it came alone or batched, and a relay can split or merge
    batches between routes without the key. The cost is a worse compression ratio for very small,
    similar objects than one lz4 stream over the whole batch would get.
    """
    if not chunks:
        raise InvalidInputError("a batch needs at least one chunk")
    if len(chunks) > MAX_BATCH_CHUNKS:
        raise InvalidInputError(f"a batch holds at most {MAX_BATCH_CHUNKS} chunks, got {len(chunks)}")
    transfer_id = chunks[0][0].transfer_id
    parts: list[BytesLike] = []
    total = 0
    for head, payload in chunks:
        if head.transfer_id != transfer_id:
            raise InvalidInputError(
                f"all chunks of a batch belong to one transfer; {head.describe()} belongs to "
                f"{head.transfer_id.hex()}, not {transfer_id.hex()}"
            )
        size = memoryview(payload).nbytes
        if size != head.wire_length:
            raise InvalidInputError(
                f"{head.describe()}: the payload is {size} bytes, its header says {head.wire_length}"
            )
        packed = head.pack()
        total += _BATCH_ENTRY.size + len(packed) + size
        if total > MAX_PAYLOAD:
            raise InvalidInputError(
                f"the batch grows past the {MAX_PAYLOAD}-byte frame limit at {head.describe()}: "
                "send fewer chunks per batch, and large chunks on their own"
            )
        parts += (_BATCH_ENTRY.pack(len(packed)), packed, payload)
    return _BATCH_FIXED.pack(transfer_id, len(chunks)), b"".join(parts)


def _need_batch_bytes(view: memoryview, pos: int, size: int, what: str) -> None:
    if pos + size > len(view):
        raise ProtocolError(f"batch truncated: {what} needs {size} bytes, {len(view) - pos} remain")


def decode_batch(header: BytesLike, payload: BytesLike) -> list[tuple[ChunkHeader, bytes]]:
    """The chunks of a BATCH frame, each still as :func:`encode_chunk` made it: pass each to
    :func:`decode_chunk` (a receiver) or forward them (a relay, which has no key)."""
    if memoryview(header).nbytes != _BATCH_FIXED.size:
        raise ProtocolError(f"a batch header is {_BATCH_FIXED.size} bytes, got {memoryview(header).nbytes}")
    transfer_id, count = _BATCH_FIXED.unpack(header)
    if not 0 < count <= MAX_BATCH_CHUNKS:
        raise ProtocolError(f"a batch holds 1 to {MAX_BATCH_CHUNKS} chunks, this one announces {count}")
    view = memoryview(payload).cast("B")
    pos, out = 0, []
    for index in range(count):
        _need_batch_bytes(view, pos, _BATCH_ENTRY.size, f"entry {index} of {count}: header length")
        (header_length,) = _BATCH_ENTRY.unpack_from(view, pos)
        pos += _BATCH_ENTRY.size
        if header_length > MAX_HEADER:
            raise ProtocolError(
                f"batch entry {index} announces a {header_length}-byte header, "
                f"over the {MAX_HEADER}-byte limit"
            )
        _need_batch_bytes(view, pos, header_length, f"entry {index} of {count}: header")
        chunk = ChunkHeader.unpack(view[pos : pos + header_length])
        pos += header_length
        if chunk.transfer_id != transfer_id:
            raise ProtocolError(
                f"batch of transfer {transfer_id.hex()} holds {chunk.describe()} of transfer "
                f"{chunk.transfer_id.hex()}"
            )
        _need_batch_bytes(view, pos, chunk.wire_length, f"entry {index} of {count}: payload")
        out.append((chunk, bytes(view[pos : pos + chunk.wire_length])))
        pos += chunk.wire_length
    if pos != len(view):
        raise ProtocolError(f"{len(view) - pos} stray bytes follow the {count} chunks of the batch")
    return out


# -- control messages -----------------------------------------------------------------------------------
def _clip_utf8(text: str, limit: int) -> bytes:
    return text.encode("utf-8", "replace")[:limit].decode("utf-8", "ignore").encode("utf-8")


@dataclass(frozen=True)
class Ack:
    """Chunks the receiver has verified and stored; the sender may forget them."""

    frame_type: ClassVar[FrameType] = FrameType.ACK
    transfer_id: bytes
    chunk_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_bytes("transfer_id", self.transfer_id, TRANSFER_ID_BYTES)
        object.__setattr__(self, "chunk_ids", tuple(self.chunk_ids))
        if not 0 < len(self.chunk_ids) <= MAX_ACK_IDS:
            raise InvalidInputError(f"an ACK names 1 to {MAX_ACK_IDS} chunks, got {len(self.chunk_ids)}")
        for chunk_id in self.chunk_ids:
            _check_uint("chunk_id", chunk_id, 64)

    def pack(self) -> bytes:
        return _ACK_FIXED.pack(self.transfer_id, len(self.chunk_ids)) + b"".join(
            _ACK_ID.pack(i) for i in self.chunk_ids
        )

    @classmethod
    def unpack(cls, data: BytesLike) -> Ack:
        view = memoryview(data)
        if len(view) < _ACK_FIXED.size:
            raise ProtocolError(f"an ACK header has at least {_ACK_FIXED.size} bytes, got {len(view)}")
        transfer_id, count = _ACK_FIXED.unpack_from(view)
        if len(view) != _ACK_FIXED.size + count * _ACK_ID.size:
            raise ProtocolError(
                f"an ACK of {count} chunks is {_ACK_FIXED.size + count * 8} bytes, got {len(view)}"
            )
        ids = tuple(_ACK_ID.unpack_from(view, _ACK_FIXED.size + i * _ACK_ID.size)[0] for i in range(count))
        try:
            return cls(transfer_id, ids)
        except InvalidInputError as exc:
            raise ProtocolError(f"invalid ACK: {exc}") from None


@dataclass(frozen=True)
class Nack:
    """A chunk the receiver rejected (``reason`` says why); the sender resends it with ``attempt + 1``."""

    frame_type: ClassVar[FrameType] = FrameType.NACK
    transfer_id: bytes
    chunk_id: int
    attempt: int
    reason: str

    def __post_init__(self) -> None:
        _check_bytes("transfer_id", self.transfer_id, TRANSFER_ID_BYTES)
        _check_uint("chunk_id", self.chunk_id, 64)
        _check_uint("attempt", self.attempt, 16)
        if not isinstance(self.reason, str):
            raise InvalidInputError(f"a NACK reason is a str, got {type(self.reason).__name__}")
        object.__setattr__(self, "reason", _clip_utf8(self.reason, MAX_REASON_BYTES).decode("utf-8"))

    def pack(self) -> bytes:
        reason = self.reason.encode("utf-8")
        return _NACK_FIXED.pack(self.transfer_id, self.chunk_id, self.attempt, len(reason)) + reason

    @classmethod
    def unpack(cls, data: BytesLike) -> Nack:
        view = memoryview(data)
        if len(view) < _NACK_FIXED.size:
            raise ProtocolError(f"a NACK header has at least {_NACK_FIXED.size} bytes, got {len(view)}")
        transfer_id, chunk_id, attempt, length = _NACK_FIXED.unpack_from(view)
        if length > MAX_REASON_BYTES or len(view) != _NACK_FIXED.size + length:
            raise ProtocolError(f"a NACK announces a {length}-byte reason in a {len(view)}-byte header")
        try:
            reason = bytes(view[_NACK_FIXED.size :]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"a NACK reason is not UTF-8: {exc}") from None
        return cls(transfer_id, chunk_id, attempt, reason)


@dataclass(frozen=True)
class Close:
    """The sender has sent every chunk of the transfer on this stream."""

    frame_type: ClassVar[FrameType] = FrameType.CLOSE
    transfer_id: bytes

    def __post_init__(self) -> None:
        _check_bytes("transfer_id", self.transfer_id, TRANSFER_ID_BYTES)

    def pack(self) -> bytes:
        return self.transfer_id

    @classmethod
    def unpack(cls, data: BytesLike) -> Close:
        if memoryview(data).nbytes != TRANSFER_ID_BYTES:
            raise ProtocolError(f"a CLOSE header is a {TRANSFER_ID_BYTES}-byte transfer id")
        return cls(bytes(data))


@dataclass(frozen=True)
class ErrorReport:
    """The peer gives up on the stream; ``message`` says why (cut to :data:`MAX_HEADER` bytes)."""

    frame_type: ClassVar[FrameType] = FrameType.ERROR
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", _clip_utf8(str(self.message), MAX_HEADER).decode("utf-8"))

    def pack(self) -> bytes:
        return self.message.encode("utf-8")

    @classmethod
    def unpack(cls, data: BytesLike) -> ErrorReport:
        return cls(bytes(data).decode("utf-8", "replace"))


Control = Union[Ack, Nack, Close, ErrorReport]
_CONTROL: dict[FrameType, Callable[[BytesLike], Control]] = {
    FrameType.ACK: Ack.unpack,
    FrameType.NACK: Nack.unpack,
    FrameType.CLOSE: Close.unpack,
    FrameType.ERROR: ErrorReport.unpack,
}


# -- frames on a stream ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """One frame as read from a stream."""

    type: FrameType
    header: bytes
    payload: bytes | bytearray = field(repr=False)

    def chunk(self) -> tuple[ChunkHeader, bytes | bytearray]:
        """The header and (still sealed) payload of a CHUNK frame."""
        self._expect(FrameType.CHUNK)
        head = ChunkHeader.unpack(self.header)
        if head.wire_length != len(self.payload):
            raise ProtocolError(
                f"{head.describe()}: the frame carries {len(self.payload)} payload bytes, "
                f"the chunk header announces {head.wire_length}"
            )
        return head, self.payload

    def batch(self) -> list[tuple[ChunkHeader, bytes]]:
        """The chunks of a BATCH frame, still sealed (see :func:`decode_batch`)."""
        self._expect(FrameType.BATCH)
        return decode_batch(self.header, self.payload)

    def control(self) -> Control:
        """The ACK, NACK, CLOSE or ERROR message of a control frame."""
        if self.type in _DATA_FRAMES:
            raise ProtocolError(f"expected a control frame, got {self.type.name}")
        return _CONTROL[self.type](self.header)

    def _expect(self, frame_type: FrameType) -> None:
        if self.type is not frame_type:
            raise ProtocolError(f"expected a {frame_type.name} frame, got {self.type.name}")


@runtime_checkable
class _SendAll(Protocol):
    def sendall(self, data: BytesLike, /) -> object: ...


@runtime_checkable
class _Write(Protocol):
    def write(self, data: BytesLike, /) -> int | None: ...


@runtime_checkable
class _RecvInto(Protocol):
    def recv_into(self, buffer: memoryview, nbytes: int = ..., /) -> int: ...


@runtime_checkable
class _ReadInto(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


@runtime_checkable
class _Read(Protocol):
    def read(self, size: int = ..., /) -> bytes | None: ...


class FramedStream:
    """A stream that puts frames on the wire in its own format (a keyed data connection between two
    gateways, :class:`airflow_skyplane.gateway.hop.HopStream`): :func:`write_frame`,
    :func:`read_frame`, :func:`read_frame_head` and :func:`read_payload_into` hand it the frame."""

    def write_frame(self, frame_type: FrameType, header: bytes, payload: BytesLike = b"") -> None:
        raise NotImplementedError

    def read_frame_head(self) -> tuple[FrameType, bytes, int]:
        raise NotImplementedError

    def read_payload_into(self, view: memoryview, what: str = "frame payload") -> int:
        raise NotImplementedError

    def read_frame(self) -> Frame:
        raise NotImplementedError


Writable = Union[_SendAll, _Write, FramedStream]
Readable = Union[_RecvInto, _ReadInto, _Read, FramedStream]


def _send(stream: _SendAll | _Write, data: BytesLike) -> None:
    if isinstance(stream, _SendAll):
        stream.sendall(data)
        return
    view = memoryview(data).cast("B")
    while view:
        written = stream.write(view)
        if not written:
            raise ProtocolError("the stream accepted no bytes (a non-blocking stream is not supported)")
        view = view[written:]


def write_frame(
    stream: Writable, frame_type: FrameType | int, header: BytesLike = b"", payload: BytesLike = b""
) -> None:
    """Write one frame to a socket (``sendall``) or a binary file-like object (``write``).

    Small frames go out in one write; a large payload is passed on as a memoryview, not copied.
    """
    try:
        kind = FrameType(frame_type)
    except ValueError:
        raise InvalidInputError(f"unknown frame type {frame_type!r}") from None
    header_length, payload_length = memoryview(header).nbytes, memoryview(payload).nbytes
    if header_length > MAX_HEADER:
        raise InvalidInputError(
            f"a frame header of {header_length} bytes exceeds the {MAX_HEADER}-byte limit"
        )
    if kind not in _DATA_FRAMES and payload_length:
        raise InvalidInputError(f"{kind.name} frames carry no payload, got {payload_length} bytes")
    if payload_length > MAX_PAYLOAD:
        raise InvalidInputError(
            f"a frame payload of {payload_length} bytes exceeds the {MAX_PAYLOAD}-byte limit"
        )
    if isinstance(stream, FramedStream):
        stream.write_frame(kind, bytes(header), payload)
        return
    prefix = _PREFIX.pack(MAGIC, kind, header_length, payload_length)
    if payload_length <= _COALESCE_BYTES:
        _send(stream, b"".join((prefix, header, payload)))
    else:
        _send(stream, b"".join((prefix, header)))
        _send(stream, memoryview(payload).cast("B"))


def _read_exact(stream: Readable, size: int, what: str) -> bytearray:
    """Exactly ``size`` bytes (already checked against a limit by the caller)."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    # choose the read method once: a TLS socket returns one record (16 KiB) per call, and a
    # runtime-checkable Protocol check per call costs more than the read itself
    recv_into = getattr(stream, "recv_into", None) or getattr(stream, "readinto", None)
    while got < size:
        if recv_into is not None:
            count: int | None = recv_into(view[got:])
        else:
            data = stream.read(size - got) or b""  # type: ignore[union-attr]
            count = min(len(data), size - got)
            view[got : got + count] = data[:count]
        if not count:
            if what == "frame prefix" and got == 0:
                raise ProtocolError(
                    "the peer closed the connection between frames without a CLOSE frame; "
                    "chunks not yet acknowledged must be resent"
                )
            raise ProtocolError(
                f"stream truncated: the {what} is {size} bytes, the connection closed after {got}"
            )
        got += count
    return buffer


def _bad_magic(magic: bytes) -> str:
    if magic[:3] == MAGIC[:3]:
        return (
            f"the peer speaks skyplane wire protocol version {magic[3:]!r}, this gateway speaks "
            f"{MAGIC[3:]!r}: run the same airflow-skyplane version on every gateway"
        )
    hint = ""
    if magic[:1] == b"\x16" or magic[:2] == b"\x15\x03":
        hint = " (it looks like TLS: the peer expects a TLS endpoint)"
    elif all(32 <= byte < 127 for byte in magic):
        hint = " (it looks like text, an HTTP request or a banner)"
    return f"bad frame magic {magic!r}, expected {MAGIC!r}{hint}: {_NOT_A_GATEWAY}"


def read_frame_head(stream: Readable) -> tuple[FrameType, bytes, int]:
    """Read a frame's prefix and header, not its payload: ``(type, header, payload length)``.

    A relay uses it to pass a frame on while its payload is still arriving (cut-through); the caller
    then reads exactly the payload length (:func:`read_payload_into`). The same checks as
    :func:`read_frame` apply, before anything is allocated.
    """
    if isinstance(stream, FramedStream):
        return stream.read_frame_head()
    prefix = _read_exact(stream, _PREFIX.size, "frame prefix")
    magic, type_code, header_length, payload_length = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(_bad_magic(magic))
    try:
        frame_type = FrameType(type_code)
    except ValueError:
        raise ProtocolError(f"unknown frame type {type_code}: {_NOT_A_GATEWAY}") from None
    if header_length > MAX_HEADER:
        raise ProtocolError(
            f"frame header of {header_length} bytes exceeds the {MAX_HEADER}-byte limit: {_NOT_A_GATEWAY}"
        )
    if frame_type not in _DATA_FRAMES and payload_length:
        raise ProtocolError(
            f"{frame_type.name} frames carry no payload, this one announces {payload_length} bytes: "
            f"{_NOT_A_GATEWAY}"
        )
    if payload_length > MAX_PAYLOAD:
        raise ProtocolError(
            f"frame payload of {payload_length} bytes exceeds the {MAX_PAYLOAD}-byte limit: {_NOT_A_GATEWAY}"
        )
    header = bytes(_read_exact(stream, header_length, f"{frame_type.name} frame header"))
    return frame_type, header, payload_length


def read_payload_into(stream: Readable, view: memoryview, what: str = "frame payload") -> int:
    """Read up to ``len(view)`` bytes of a payload into ``view``: the count read (at least 1).

    A stream that ends first raises :class:`ProtocolError`, as a truncated frame does."""
    if isinstance(stream, FramedStream):
        return stream.read_payload_into(view, what)
    recv_into = getattr(stream, "recv_into", None) or getattr(stream, "readinto", None)
    if recv_into is not None:
        count = recv_into(view)
    else:
        data = stream.read(len(view)) or b""  # type: ignore[union-attr]
        count = min(len(data), len(view))
        view[:count] = data[:count]
    if not count:
        raise ProtocolError(f"stream truncated: the connection closed inside a {what}")
    return int(count)


def frame_head(frame_type: FrameType | int, header: BytesLike, payload_length: int) -> bytes:
    """The prefix and header of a frame whose payload follows separately (a relay streaming it)."""
    kind = FrameType(frame_type)
    header_length = memoryview(header).nbytes
    if header_length > MAX_HEADER or payload_length > MAX_PAYLOAD:
        raise InvalidInputError(
            f"a {kind.name} frame of {header_length} + {payload_length} bytes is too large"
        )
    return _PREFIX.pack(MAGIC, kind, header_length, payload_length) + bytes(header)


def first_chunk_id(frame_type: FrameType, header: BytesLike, payload: BytesLike) -> int:
    """The id by which a data frame is acknowledged: its chunk's, or a batch's first chunk's.

    Reads only the first entry of a batch (no copy of its chunks)."""
    if frame_type is FrameType.CHUNK:
        return ChunkHeader.unpack(header).chunk_id
    if frame_type is not FrameType.BATCH:
        raise ProtocolError(f"a {frame_type.name} frame carries no chunk")
    view = memoryview(payload).cast("B")
    _need_batch_bytes(view, 0, _BATCH_ENTRY.size, "entry 0: header length")
    (length,) = _BATCH_ENTRY.unpack_from(view, 0)
    if length > MAX_HEADER:
        raise ProtocolError(
            f"batch entry 0 announces a {length}-byte header, over the {MAX_HEADER}-byte limit"
        )
    _need_batch_bytes(view, _BATCH_ENTRY.size, length, "entry 0: header")
    return ChunkHeader.unpack(view[_BATCH_ENTRY.size : _BATCH_ENTRY.size + length]).chunk_id


def read_frame(stream: Readable) -> Frame:
    """Read one frame from a socket (``recv_into``) or binary file-like object (``readinto``/``read``).

    Reads exactly the announced sizes, after checking them against :data:`MAX_HEADER` and
    :data:`MAX_PAYLOAD` (control frames carry no payload), so a hostile or confused peer cannot make
    the reader allocate more than the limits. End of stream before a frame, bad magic, unknown type,
    oversize lengths and truncation raise :class:`ProtocolError`.
    """
    if isinstance(stream, FramedStream):
        return stream.read_frame()
    frame_type, header, payload_length = read_frame_head(stream)
    payload = _read_exact(stream, payload_length, f"{frame_type.name} frame payload")
    return Frame(frame_type, header, payload)


# -- replay -----------------------------------------------------------------------------------------------
class ReplayGuard:
    """Remembers the last ``window`` (transfer_id, chunk_id, attempt) triples and rejects repeats.

    Memory is bounded by ``window``; a repeat older than the window passes here and is caught by the
    receiver's own record of stored chunks (writing a chunk again is idempotent). Check a chunk only
    *after* :func:`decode_chunk` authenticated it, or forged headers could evict or pre-empt real ones.
    Thread-safe.
    """

    def __init__(self, window: int = 16384) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise InvalidInputError(f"a replay window holds at least one entry, got {window!r}")
        self.window = window
        self._seen: OrderedDict[tuple[bytes, int, int], None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, transfer_id: bytes, chunk_id: int, attempt: int) -> None:
        """Record the triple; :class:`ProtocolError` if it was seen within the window."""
        entry = (bytes(transfer_id), chunk_id, attempt)
        with self._lock:
            if entry in self._seen:
                raise ProtocolError(
                    f"replayed frame: chunk {chunk_id} attempt {attempt} of transfer {entry[0].hex()} "
                    "was already received; dropping the copy"
                )
            self._seen[entry] = None
            if len(self._seen) > self.window:
                self._seen.popitem(last=False)

    def seen(self, header: ChunkHeader) -> bool:
        """Whether the chunk's triple is among those recorded (:meth:`remember`), without recording it:
        a writer asks before it writes and records only once the write succeeded, so that a resend
        of a chunk whose write failed (same triple, from a relay) is not taken for a replay."""
        with self._lock:
            return (header.transfer_id, header.chunk_id, header.attempt) in self._seen

    def remember(self, header: ChunkHeader) -> None:
        """Record the chunk's triple (see :meth:`seen`)."""
        entry = (header.transfer_id, header.chunk_id, header.attempt)
        with self._lock:
            self._seen[entry] = None
            self._seen.move_to_end(entry)
            if len(self._seen) > self.window:
                self._seen.popitem(last=False)

    def check_header(self, header: ChunkHeader) -> None:
        """:meth:`check` for a chunk header."""
        self.check(header.transfer_id, header.chunk_id, header.attempt)
