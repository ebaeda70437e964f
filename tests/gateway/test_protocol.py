"""The gateway wire protocol: chunk encoding, frames on a stream, batches, control messages, replay."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import random
import socket
import struct
import threading
import tracemalloc
import zlib
from pathlib import Path

import lz4.frame
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from airflow_skyplane.exceptions import InvalidInputError, ProtocolError
from airflow_skyplane.gateway import protocol as p

TID = bytes(range(16))
OTHER_TID = bytes(range(16, 32))
REPO = Path(__file__).resolve().parents[2]


def text_bytes(size: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    words = [b"transfer", b"gateway", b"region", b"object", b"chunk", b"bucket", b"relay", b"\n"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def chunk(data: bytes, *, cipher: p.ChunkCipher | None, compress: p.Compress = "auto", **fields: object):
    base: dict[str, object] = {"transfer_id": TID, "chunk_id": 7, "key": "logs/2024/a.json", "offset": 0}
    base.update(fields)
    base.setdefault("object_size", int(base["offset"]) + len(data))  # type: ignore[call-overload]
    return p.encode_chunk(data=data, cipher=cipher, compress=compress, **base)  # type: ignore[arg-type]


def frame_bytes(frame_type: p.FrameType, header: bytes = b"", payload: bytes = b"") -> bytes:
    out = io.BytesIO()
    p.write_frame(out, frame_type, header, payload)
    return out.getvalue()


# -- chunks --------------------------------------------------------------------------------------------------
def _payload_of_kind(kind: str, size: int, seed: int) -> bytes:
    if kind == "random":
        return random.Random(seed).randbytes(size)
    if kind == "zeros":
        return bytes(size)
    if kind == "text":
        return text_bytes(size, seed)
    half = size // 2  # compressible first half, random second half
    return text_bytes(half, seed) + random.Random(seed).randbytes(size - half)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.one_of(st.integers(0, 300), st.integers(0, 1 << 20)),
    kind=st.sampled_from(["random", "zeros", "text", "mixed"]),
    seed=st.integers(0, 2**32 - 1),
    encrypted=st.booleans(),
    compress=st.sampled_from(["auto", True, False]),
    offset=st.integers(0, 2**40),
)
@example(size=1 << 16, kind="text", seed=0, encrypted=False, compress="auto", offset=0)
@example(size=1 << 16, kind="random", seed=0, encrypted=True, compress="auto", offset=0)
def test_chunk_round_trip(
    size: int, kind: str, seed: int, encrypted: bool, compress: p.Compress, offset: int
):
    data = _payload_of_kind(kind, size, seed)
    cipher = p.ChunkCipher.generate() if encrypted else None
    header, payload = chunk(data, cipher=cipher, compress=compress, offset=offset, route_id=3, part_number=2)
    assert len(payload) == header.wire_length
    assert header.raw_length == size and header.encrypted == encrypted
    if compress == "auto":  # lz4 where it pays: never on random bytes, always on 4 KiB of text or zeros
        if kind == "random":
            assert not header.compressed
        elif kind != "mixed" and size >= 4096:
            assert header.compressed
    else:
        assert header.compressed == (compress is True)
    # Through the wire: a frame on a stream, read back and parsed.
    stream = io.BytesIO(frame_bytes(p.FrameType.CHUNK, header.pack(), payload))
    received, body = p.read_frame(stream).chunk()
    assert received == header
    assert p.decode_chunk(received, body, cipher=cipher) == data


def test_incompressible_chunk_is_sent_uncompressed() -> None:
    data = os.urandom(1 << 20)
    header, payload = chunk(data, cipher=None)
    assert not header.compressed
    assert payload == data
    sealed, sealed_payload = chunk(data, cipher=p.ChunkCipher.generate())
    assert not sealed.compressed
    assert sealed.wire_length == len(data) + p.CHECKSUM_BYTES + p.TAG_BYTES


def test_compressible_text_shrinks() -> None:
    data = text_bytes(1 << 20)
    header, payload = chunk(data, cipher=p.ChunkCipher.generate())
    assert header.compressed
    assert header.wire_length < len(data) // 2
    small, _ = chunk(text_bytes(4096), cipher=None)
    assert small.compressed


def test_auto_leaves_tiny_chunks_alone_and_always_forces_compression() -> None:
    tiny = b"a" * 100
    assert not chunk(tiny, cipher=None)[0].compressed
    forced, payload = chunk(os.urandom(5000), cipher=None, compress="always")
    assert forced.compressed and len(payload) > 5000  # forced, even though it grows
    assert not chunk(text_bytes(5000), cipher=None, compress="never")[0].compressed


def test_auto_does_not_keep_a_compression_that_barely_pays() -> None:
    # A text head followed by random data: the head shrinks a lot, the whole chunk by about 1%.
    data = text_bytes(64 * 1024) + os.urandom(4 << 20)
    header, payload = chunk(data, cipher=None)
    assert not header.compressed and payload == data


def _header_variants(header: p.ChunkHeader) -> dict[str, p.ChunkHeader]:
    """One valid-looking change to every field of an encrypted chunk's header."""
    changes = {
        "transfer_id": OTHER_TID,
        "chunk_id": header.chunk_id + 1,
        "key": header.key + "x",
        "offset": header.offset + 1,
        "object_size": header.object_size + 1,
        "route_id": header.route_id + 1,
        "part_number": header.part_number + 1,
        "flags": header.flags ^ p.ChunkFlags.LAST_OF_OBJECT,
        "checksum": b"\x00\x00\x00\x01",
        "nonce": bytes(b ^ 1 for b in header.nonce),
        "attempt": header.attempt + 1,
        "raw_length": header.raw_length - 1,
    }
    assert set(changes) | {"wire_length"} == {f.name for f in dataclasses.fields(p.ChunkHeader)}
    return {name: dataclasses.replace(header, **{name: value}) for name, value in changes.items()}


@pytest.mark.parametrize("compress", [True, False])
def test_tampering_with_any_header_field_is_detected(compress: bool) -> None:
    cipher = p.ChunkCipher.generate()
    header, payload = chunk(text_bytes(3000), cipher=cipher, compress=compress, offset=10, object_size=5000)
    for name, forged in _header_variants(header).items():
        with pytest.raises(ProtocolError, match="failed authentication") as info:
            p.decode_chunk(forged, payload, cipher=cipher)
        assert "altered in transit" in str(info.value), name
    # Every single bit of the serialized header, flipped: either unparseable or unauthenticated.
    packed = header.pack()
    for index in range(len(packed)):
        for bit in (0x01, 0x80):
            damaged = bytearray(packed)
            damaged[index] ^= bit
            with pytest.raises(ProtocolError):
                forged = p.ChunkHeader.unpack(bytes(damaged))
                p.decode_chunk(forged, payload, cipher=cipher)


def test_tampering_with_any_payload_byte_is_detected() -> None:
    cipher = p.ChunkCipher.generate()
    header, payload = chunk(b"attack at dawn " * 10, cipher=cipher, compress=False)
    for index in range(len(payload)):
        damaged = bytearray(payload)
        damaged[index] ^= 0x40
        with pytest.raises(ProtocolError, match=r"chunk 7 of 'logs/2024/a.json' .*failed authentication"):
            p.decode_chunk(header, bytes(damaged), cipher=cipher)


def test_another_transfers_key_fails_authentication() -> None:
    header, payload = chunk(b"payload", cipher=p.ChunkCipher.generate())
    with pytest.raises(ProtocolError, match="encrypted with another transfer's key"):
        p.decode_chunk(header, payload, cipher=p.ChunkCipher.generate())


def test_encrypted_chunk_without_key_and_plaintext_chunk_in_encrypted_transfer_are_refused() -> None:
    header, payload = chunk(b"payload", cipher=p.ChunkCipher.generate())
    with pytest.raises(ProtocolError, match="no transfer key was given"):
        p.decode_chunk(header, payload, cipher=None)
    plain_header, plain_payload = chunk(b"forged by someone on the path", cipher=None)
    with pytest.raises(ProtocolError, match="arrived unencrypted, but this transfer is encrypted"):
        p.decode_chunk(plain_header, plain_payload, cipher=p.ChunkCipher.generate())


def test_checksum_catches_corruption_without_encryption() -> None:
    data = b"0123456789" * 100
    header, payload = chunk(data, cipher=None, compress=False)
    assert header.checksum == zlib.crc32(data).to_bytes(4, "big")
    damaged = bytearray(payload)
    damaged[500] ^= 0x01
    with pytest.raises(ProtocolError, match="checksum mismatch on chunk 7 .*resend"):
        p.decode_chunk(header, bytes(damaged), cipher=None)


def test_corrupt_compressed_chunk_never_yields_wrong_data() -> None:
    data = text_bytes(20000)
    header, payload = chunk(data, cipher=None, compress=True)
    rejected = 0
    for index in range(len(payload)):
        damaged = bytearray(payload)
        damaged[index] ^= 0x10
        try:
            decoded = p.decode_chunk(header, bytes(damaged), cipher=None)
        except ProtocolError:
            rejected += 1
        else:  # lz4 is redundant on repetitive text: a moved match offset can copy identical bytes
            assert decoded == data, f"flipping byte {index} went unnoticed"
    assert rejected > len(payload) * 0.9


def test_encrypted_chunk_hides_the_checksum() -> None:
    header, _ = chunk(b"1234", cipher=p.ChunkCipher.generate())
    assert header.checksum == bytes(4)


def test_decompression_is_bounded_by_the_announced_length() -> None:
    bomb = lz4.frame.compress(bytes(1 << 20))
    header = p.ChunkHeader(
        transfer_id=TID,
        chunk_id=1,
        key="k",
        offset=0,
        raw_length=10,
        wire_length=len(bomb),
        object_size=10,
        flags=p.ChunkFlags.COMPRESSED,
        checksum=zlib.crc32(bytes(10)).to_bytes(4, "big"),
    )
    with pytest.raises(ProtocolError, match="inflates to more than the announced 10 bytes"):
        p.decode_chunk(header, bomb, cipher=None)
    truncated = dataclasses.replace(
        header, raw_length=1 << 20, object_size=1 << 20, wire_length=len(bomb) - 8
    )
    with pytest.raises(ProtocolError, match="truncated"):
        p.decode_chunk(truncated, bomb[:-8], cipher=None)
    garbage = dataclasses.replace(header, wire_length=20)
    with pytest.raises(ProtocolError, match="lz4 data is corrupt"):
        p.decode_chunk(garbage, b"not an lz4 frame....", cipher=None)


def test_payload_length_must_match_the_header() -> None:
    header, payload = chunk(b"abcdef", cipher=None, compress=False)
    with pytest.raises(ProtocolError, match="payload is 5 bytes but the header announces 6"):
        p.decode_chunk(header, payload[:5], cipher=None)


def test_header_validation() -> None:
    with pytest.raises(InvalidInputError, match="1025 bytes in UTF-8, over the 1024-byte limit"):
        chunk(b"x", cipher=None, key="k" * 1025)
    assert chunk(b"x", cipher=None, key="é" * 512)[0].key == "é" * 512  # exactly 1024 bytes
    with pytest.raises(InvalidInputError, match="past the end of the 3-byte object"):
        chunk(b"abcd", cipher=None, object_size=3)
    with pytest.raises(InvalidInputError, match="transfer_id must be 16 bytes"):
        chunk(b"abcd", cipher=None, transfer_id=b"short")
    with pytest.raises(InvalidInputError, match=r"route_id must be an integer in \[0, 2\*\*16\)"):
        chunk(b"abcd", cipher=None, route_id=70000)
    with pytest.raises(InvalidInputError, match="compress must be"):
        chunk(b"abcd", cipher=None, compress="sometimes")  # type: ignore[arg-type]


def test_header_unpack_rejects_malformed_bytes() -> None:
    header, _ = chunk(b"abcd", cipher=None, last_of_object=True)
    packed = header.pack()
    assert p.ChunkHeader.unpack(packed) == header and header.last_of_object
    with pytest.raises(ProtocolError, match="shorter than the"):
        p.ChunkHeader.unpack(packed[:20])
    with pytest.raises(ProtocolError, match="fixed part and 16-byte key make"):
        p.ChunkHeader.unpack(packed + b"!")
    bad_key = bytearray(packed)
    bad_key[-1] = 0xFF
    with pytest.raises(ProtocolError, match="not UTF-8"):
        p.ChunkHeader.unpack(bytes(bad_key))
    long_key = bytearray(packed)
    long_key[p._CHUNK_FIXED.size - 2 : p._CHUNK_FIXED.size] = (5000).to_bytes(2, "big")
    with pytest.raises(ProtocolError, match="5000-byte key, over the 1024-byte limit"):
        p.ChunkHeader.unpack(bytes(long_key))


# -- the cipher ------------------------------------------------------------------------------------------
def test_cipher_key_never_shows() -> None:
    cipher = p.ChunkCipher.generate()
    assert len(cipher.key) == 32
    for text in (repr(cipher), str(cipher), f"{cipher}", repr([cipher])):
        assert cipher.key.hex() not in text and repr(cipher.key) not in text
        assert cipher.key_id in text
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(cipher)
    assert p.ChunkCipher(cipher.key).key_id == cipher.key_id != p.ChunkCipher.generate().key_id


def test_cipher_rejects_wrong_key_sizes() -> None:
    with pytest.raises(InvalidInputError, match=r"32 random bytes \(AES-256\), got 16"):
        p.ChunkCipher(bytes(16))


def test_every_encryption_uses_a_fresh_nonce() -> None:
    cipher = p.ChunkCipher.generate()
    nonces = {chunk(b"same bytes", cipher=cipher, attempt=0)[0].nonce for _ in range(2000)}
    assert len(nonces) == 2000


# -- frames on a stream ------------------------------------------------------------------------------------
class Announcing:
    """A stream that announces a frame and then would produce bytes forever."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.requests: list[int] = []

    def read(self, size: int = -1) -> bytes:
        self.requests.append(size)
        if self.prefix:
            out, self.prefix = self.prefix[:size], self.prefix[size:]
            return out
        return b"\0" * min(size, 4096)


def test_oversize_payload_is_refused_before_allocating() -> None:
    stream = Announcing(struct.pack("!4sBHI", p.MAGIC, p.FrameType.CHUNK, 10, 2**31))
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as info:
            p.read_frame(stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(info.value) == (
        "frame payload of 2147483648 bytes exceeds the 268435456-byte limit: "
        "the peer is not a skyplane gateway or speaks another version"
    )
    assert peak < 1 << 20
    assert stream.requests == [11]  # nothing read past the prefix


def test_oversize_header_and_control_payload_are_refused() -> None:
    with pytest.raises(ProtocolError, match="frame header of 5000 bytes exceeds the 4096-byte limit"):
        p.read_frame(Announcing(struct.pack("!4sBHI", p.MAGIC, p.FrameType.CHUNK, 5000, 0)))
    with pytest.raises(ProtocolError, match="ACK frames carry no payload, this one announces 9 bytes"):
        p.read_frame(Announcing(struct.pack("!4sBHI", p.MAGIC, p.FrameType.ACK, 0, 9)))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", r"bad frame magic b'GET ', expected b'SKY1' \(it looks like text"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", r"\(it looks like TLS"),
        (b"SKY2" + bytes(7), "speaks skyplane wire protocol version b'2', this gateway speaks b'1'"),
        (
            struct.pack("!4sBHI", b"SKY1", 99, 0, 0),
            "unknown frame type 99: the peer is not a skyplane gateway",
        ),
        (b"SKY1\x01", "stream truncated: the frame prefix is 11 bytes, the connection closed after 5"),
        (b"", "closed the connection between frames without a CLOSE frame"),
        (
            struct.pack("!4sBHI", b"SKY1", 1, 10, 100) + bytes(10) + bytes(40),
            "CHUNK frame payload is 100 bytes",
        ),
        (struct.pack("!4sBHI", b"SKY1", 1, 10, 0) + bytes(3), "CHUNK frame header is 10 bytes"),
    ],
)
def test_garbage_and_truncated_streams_raise_protocol_errors(raw: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        p.read_frame(io.BytesIO(raw))


def test_frames_over_a_socket_pair_and_file_like_objects() -> None:
    header, payload = chunk(os.urandom(300_000), cipher=p.ChunkCipher.generate())  # large: not coalesced
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(30)
        right.settimeout(30)
        writer = threading.Thread(
            target=lambda: [
                p.write_frame(left, p.CHUNK, header.pack(), payload),
                p.write_frame(left, p.CLOSE, p.Close(TID).pack()),
            ]
        )
        writer.start()
        first, second = p.read_frame(right), p.read_frame(right)
        writer.join()
    assert first.chunk() == (header, payload)
    assert second.control() == p.Close(TID)

    class ReadOnly:  # neither recv_into nor readinto: plain read() returning short pieces
        def __init__(self, data: bytes) -> None:
            self.data = data

        def read(self, size: int = -1) -> bytes:
            out, self.data = self.data[: min(size, 1000)], self.data[min(size, 1000) :]
            return out

    raw = frame_bytes(p.CHUNK, header.pack(), payload)
    assert p.read_frame(ReadOnly(raw)).chunk() == (header, payload)
    assert p.read_frame(io.BufferedReader(io.BytesIO(raw))).chunk() == (header, payload)

    class RawWriter(io.RawIOBase):  # write() takes at most 7000 bytes per call
        def __init__(self) -> None:
            self.out = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:  # type: ignore[no-untyped-def,override]
            piece = bytes(data[:7000])
            self.out += piece
            return len(piece)

    sink = RawWriter()
    p.write_frame(sink, p.CHUNK, header.pack(), payload)
    assert bytes(sink.out) == raw


def test_frame_accessors_check_the_type_and_lengths() -> None:
    header, payload = chunk(b"abcdef", cipher=None, compress=False)
    frame = p.read_frame(io.BytesIO(frame_bytes(p.CHUNK, header.pack(), payload + b"!")))
    with pytest.raises(
        ProtocolError, match="the frame carries 7 payload bytes, the chunk header announces 6"
    ):
        frame.chunk()
    with pytest.raises(ProtocolError, match="expected a BATCH frame, got CHUNK"):
        frame.batch()
    with pytest.raises(ProtocolError, match="expected a control frame, got CHUNK"):
        frame.control()


def test_write_frame_refuses_what_the_reader_would_refuse() -> None:
    with pytest.raises(InvalidInputError, match="4097 bytes exceeds the 4096-byte limit"):
        p.write_frame(io.BytesIO(), p.CHUNK, bytes(4097))
    with pytest.raises(InvalidInputError, match="NACK frames carry no payload, got 1 bytes"):
        p.write_frame(io.BytesIO(), p.NACK, b"", b"x")
    with pytest.raises(InvalidInputError, match="unknown frame type 42"):
        p.write_frame(io.BytesIO(), 42)


# -- control messages --------------------------------------------------------------------------------------
def test_ack_nack_close_error_round_trip() -> None:
    messages: list[p.Control] = [
        p.Ack(TID, tuple(range(p.MAX_ACK_IDS))),
        p.Nack(TID, 12, 3, "checksum mismatch on chunk 12"),
        p.Close(TID),
        p.ErrorReport("disk full on the destination gateway"),
    ]
    wire = io.BytesIO(b"".join(frame_bytes(m.frame_type, m.pack()) for m in messages))
    assert [p.read_frame(wire).control() for _ in messages] == messages


def test_control_message_limits() -> None:
    with pytest.raises(InvalidInputError, match="an ACK names 1 to 500 chunks, got 501"):
        p.Ack(TID, tuple(range(501)))
    nack = p.Nack(TID, 1, 0, "é" * 1000)  # 2000 bytes of UTF-8, cut at a character boundary
    assert nack.reason == "é" * 512
    assert p.Nack.unpack(nack.pack()) == nack
    with pytest.raises(ProtocolError, match="an ACK of 3 chunks is 42 bytes, got 34"):
        p.Ack.unpack(TID + b"\x00\x03" + bytes(16))
    with pytest.raises(ProtocolError, match="announces a 2000-byte reason"):
        p.Nack.unpack(TID + bytes(10) + (2000).to_bytes(2, "big") + bytes(2000))
    with pytest.raises(ProtocolError, match="a CLOSE header is a 16-byte transfer id"):
        p.Close.unpack(b"short")


# -- batches -------------------------------------------------------------------------------------------------
def test_batch_of_a_thousand_tiny_chunks_round_trips() -> None:
    cipher = p.ChunkCipher.generate()
    objects = {f"small/{i:04d}.json": text_bytes(random.Random(i).randint(0, 300), i) for i in range(1000)}
    encoded = [
        chunk(data, cipher=cipher, chunk_id=i, key=key, last_of_object=True, batch=True)
        for i, (key, data) in enumerate(objects.items())
    ]
    header, payload = p.encode_batch(encoded)
    frame = p.read_frame(io.BytesIO(frame_bytes(p.BATCH, header, payload)))
    assert frame.type is p.FrameType.BATCH
    inner = frame.batch()
    assert [h for h, _ in inner] == [h for h, _ in encoded]
    decoded = {h.key: p.decode_chunk(h, body, cipher=cipher) for h, body in inner}
    assert decoded == objects
    assert all(h.flags & p.ChunkFlags.BATCH and h.last_of_object for h, _ in inner)


def test_a_relay_can_split_a_batch_and_forward_chunks_alone() -> None:
    cipher = p.ChunkCipher.generate()
    encoded = [chunk(b"part %d" % i, cipher=cipher, chunk_id=i, batch=True) for i in range(4)]
    inner = p.decode_batch(*p.encode_batch(encoded))
    first_half, _ = p.encode_batch(inner[:2]), p.encode_batch(inner[2:])  # re-batched without the key
    alone = io.BytesIO(frame_bytes(p.CHUNK, inner[3][0].pack(), inner[3][1]))
    assert p.decode_chunk(*p.read_frame(alone).chunk(), cipher=cipher) == b"part 3"
    assert [p.decode_chunk(h, b, cipher=cipher) for h, b in p.decode_batch(*first_half)] == [
        b"part 0",
        b"part 1",
    ]


def test_malformed_batches_are_rejected() -> None:
    encoded = [chunk(b"x" * 10, cipher=None, chunk_id=i) for i in range(3)]
    header, payload = p.encode_batch(encoded)
    with pytest.raises(
        ProtocolError, match="batch truncated: entry 2 of 3: payload needs 10 bytes, 4 remain"
    ):
        p.decode_batch(header, payload[:-6])
    with pytest.raises(ProtocolError, match="3 stray bytes follow the 3 chunks of the batch"):
        p.decode_batch(header, payload + b"xyz")
    with pytest.raises(ProtocolError, match="this one announces 0"):
        p.decode_batch(TID + bytes(4), b"")
    with pytest.raises(ProtocolError, match="holds chunk 0 of 'logs/2024/a.json' .* of transfer"):
        p.decode_batch(OTHER_TID + (3).to_bytes(4, "big"), payload)
    with pytest.raises(InvalidInputError, match="all chunks of a batch belong to one transfer"):
        p.encode_batch([*encoded, chunk(b"y", cipher=None, transfer_id=OTHER_TID)])
    with pytest.raises(InvalidInputError, match="at least one chunk"):
        p.encode_batch([])
    with pytest.raises(InvalidInputError, match="the payload is 9 bytes, its header says 10"):
        p.encode_batch([(encoded[0][0], encoded[0][1][:9])])


# -- what a relay sees ---------------------------------------------------------------------------------------
MARKER = b"PLAINTEXT-MARKER-7f3a"


def _relay_tap(encrypted: bool) -> tuple[bytes, list[bytes]]:
    """A sender, a relay that reads every frame and forwards it, and a receiver, over socket pairs.

    Returns every byte the relay read and what the receiver decoded."""
    cipher = p.ChunkCipher.generate() if encrypted else None
    objects = [MARKER * 5000, b"header " + MARKER + os.urandom(70_000), MARKER]
    up_send, up_recv = socket.socketpair()
    down_send, down_recv = socket.socketpair()
    tapped = bytearray()

    class Tap:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def recv_into(self, buffer: memoryview, nbytes: int = 0) -> int:
            count = self.sock.recv_into(buffer, nbytes)
            tapped.extend(buffer[:count])
            return count

    def sender() -> None:
        for i, data in enumerate(objects[:2]):
            header, payload = chunk(data, cipher=cipher, chunk_id=i, key=f"obj-{i}")
            p.write_frame(up_send, p.CHUNK, header.pack(), payload)
        last = [chunk(objects[2], cipher=cipher, chunk_id=2, key="obj-2", batch=True)]
        p.write_frame(up_send, p.BATCH, *p.encode_batch(last))
        p.write_frame(up_send, p.CLOSE, p.Close(TID).pack())

    def relay() -> None:
        tap = Tap(up_recv)
        while True:
            frame = p.read_frame(tap)
            p.write_frame(down_send, frame.type, frame.header, frame.payload)
            if frame.type is p.FrameType.CLOSE:
                return

    received: list[bytes] = []
    for sock in (up_send, up_recv, down_send, down_recv):
        sock.settimeout(30)
    threads = [threading.Thread(target=sender), threading.Thread(target=relay)]
    for thread in threads:
        thread.start()
    try:
        while True:
            frame = p.read_frame(down_recv)
            if frame.type is p.FrameType.CLOSE:
                break
            pairs = frame.batch() if frame.type is p.FrameType.BATCH else [frame.chunk()]
            received += [p.decode_chunk(h, b, cipher=cipher) for h, b in pairs]
    finally:
        for thread in threads:
            thread.join(30)
        for sock in (up_send, up_recv, down_send, down_recv):
            sock.close()
    assert received == objects
    return bytes(tapped), received


def test_a_tapping_relay_never_sees_plaintext_when_encrypted() -> None:
    tapped, _ = _relay_tap(encrypted=True)
    assert MARKER not in tapped
    assert b"obj-0" in tapped  # keys are routing metadata, visible to relays by design
    plain, _ = _relay_tap(encrypted=False)
    assert MARKER in plain  # the control: the same tap does see plaintext when encryption is off


# -- replay --------------------------------------------------------------------------------------------------
def test_replay_guard_rejects_repeats_within_its_window() -> None:
    guard = p.ReplayGuard(window=3)
    guard.check(TID, 1, 0)
    with pytest.raises(ProtocolError, match="replayed frame: chunk 1 attempt 0 of transfer 0001"):
        guard.check(TID, 1, 0)
    guard.check(TID, 1, 1)  # a resend carries a new attempt number
    guard.check(OTHER_TID, 1, 0)  # another transfer's chunk 1
    header, _ = chunk(b"abc", cipher=None, chunk_id=2)
    guard.check_header(header)
    with pytest.raises(ProtocolError, match="replayed"):
        guard.check_header(header)
    assert len(guard) == 3
    guard.check(TID, 1, 0)  # fell out of the 3-entry window: memory stays bounded
    assert len(guard) == 3
    with pytest.raises(InvalidInputError):
        p.ReplayGuard(window=0)
