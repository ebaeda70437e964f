"""Fuzzing the parsers that read what a peer or a controller sends: the frame decoder, a gateway
data connection (sealed frame heads, :mod:`airflow_skyplane.gateway.hop`) and the gateway program
parser. Any input must end in a result or in one of the package's own errors
(``SkyplaneError``), never in another exception.

``make test`` runs a fast tier (SKYPLANE_FUZZ_EXAMPLES, default 1,500 inputs per target);
``make chaos`` runs the full tier (100,000 per target) and prints the counts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_skyplane.exceptions import SkyplaneError
from airflow_skyplane.gateway import hop
from airflow_skyplane.gateway import protocol as p
from airflow_skyplane.gateway.program import Program

EXAMPLES = int(os.environ.get("SKYPLANE_FUZZ_EXAMPLES", "1500"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)  # fmt: skip
TID = bytes(range(16))
CIPHER = p.ChunkCipher.generate()


def _frame(kind: p.FrameType, header: bytes = b"", payload: bytes = b"") -> bytes:
    out = io.BytesIO()
    p.write_frame(out, kind, header, payload)
    return out.getvalue()


def _valid_frames() -> list[bytes]:
    frames = []
    for cipher in (None, CIPHER):
        for data in (b"", b"x" * 700, bytes(range(256)) * 40):
            head, body = p.encode_chunk(TID, 9, "logs/a.json", 0, data, object_size=len(data), cipher=cipher)
            frames.append(_frame(p.FrameType.CHUNK, head.pack(), body))
        pairs = [
            p.encode_chunk(TID, n, f"k/{n}", 0, b"%d" % n * 50, object_size=100, cipher=cipher, batch=True)
            for n in range(3)
        ]
        frames.append(_frame(p.FrameType.BATCH, *p.encode_batch(pairs)))
    frames.append(_frame(p.FrameType.ACK, p.Ack(TID, [1, 2, 3]).pack()))
    frames.append(_frame(p.FrameType.NACK, p.Nack(TID, 5, 0, "bad checksum").pack()))
    frames.append(_frame(p.FrameType.CLOSE, p.Close(TID).pack()))
    return frames


VALID = _valid_frames()


def consume(data: bytes) -> int:
    """Decode every frame of ``data`` as a receiving gateway would; count the chunks that decode."""
    stream = io.BytesIO(data)
    decoded = 0
    guard = p.ReplayGuard()
    for _ in range(8):
        try:
            frame = p.read_frame(stream)
        except SkyplaneError:
            return decoded
        for cipher in (None, CIPHER):
            try:
                if frame.type is p.FrameType.CHUNK:
                    pairs = [frame.chunk()]
                elif frame.type is p.FrameType.BATCH:
                    pairs = frame.batch()
                else:
                    frame.control()
                    pairs = []
                for header, payload in pairs:
                    guard.check_header(header)
                    p.decode_chunk(header, payload, cipher=cipher)
                    decoded += 1
            except SkyplaneError:
                pass
    return decoded


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_never_crash_the_frame_decoder(data: bytes) -> None:
    consume(data)


@FUZZ
@given(
    st.sampled_from(range(len(VALID))),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8),
    st.integers(0, 1 << 16),
)
def test_mutated_and_truncated_frames_never_crash_the_frame_decoder(
    which: int, flips: list[tuple[int, int]], cut: int
) -> None:
    frame = bytearray(VALID[which])
    for position, value in flips:
        frame[position % len(frame)] = value
    consume(bytes(frame[: max(1, len(frame) - cut % len(frame))]) if cut % 3 == 0 else bytes(frame))


class _Wire:
    """Stands in for a socket under a :class:`HopStream`: what is sent piles up; reads come from it."""

    def __init__(self, data: bytes = b"") -> None:
        self.sent = bytearray()
        self._in = io.BytesIO(data)

    def sendall(self, data: Any) -> None:
        self.sent += data

    def sendmsg(self, parts: list[Any]) -> int:
        for part in parts:
            self.sent += part
        return sum(memoryview(part).nbytes for part in parts)

    def recv_into(self, view: memoryview, size: int = 0) -> int:
        return self._in.readinto(view[: size or len(view)])


HOP_KEY = os.urandom(32)


def _hop_frames() -> bytes:
    wire = _Wire()
    sender = hop.HopStream(wire, HOP_KEY, os.urandom(32), "gw-a")  # type: ignore[arg-type]
    for frame in VALID:
        parsed = p.read_frame(io.BytesIO(frame))
        p.write_frame(sender, parsed.type, parsed.header, parsed.payload)
    return bytes(wire.sent)


HOP_FRAMES = _hop_frames()


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8),
    st.integers(0, 1 << 16),
)
def test_mutated_and_truncated_hop_frames_never_crash_the_data_connection(
    flips: list[tuple[int, int]], cut: int
) -> None:
    """What arrives on a gateway data connection, damaged on the path, ends in frames or the package's
    own error (an end-to-end sealed payload is checked by the chunk's own tag, not by the hop)."""
    wire = bytearray(HOP_FRAMES)
    for position, value in flips:
        wire[position % len(wire)] = value
    data = bytes(wire[: max(1, len(wire) - cut % len(wire))]) if cut % 3 == 0 else bytes(wire)
    receiver = hop.HopStream(_Wire(data), os.urandom(32), HOP_KEY, "gw-b")  # type: ignore[arg-type]
    frames = []
    try:
        for _ in VALID:
            frames.append(p.read_frame(receiver))
    except SkyplaneError:
        assert data != HOP_FRAMES  # an intact stream reads whole
    if data == HOP_FRAMES:
        assert [f.type for f in frames] == [p.read_frame(io.BytesIO(v)).type for v in VALID]
    for frame in frames:
        if frame.type is p.FrameType.CHUNK:
            with contextlib.suppress(SkyplaneError):
                header, payload = frame.chunk()
                p.decode_chunk(header, payload, cipher=CIPHER if header.encrypted else None)


BASE: dict[str, Any] = {
    "version": 1,
    "transfer_id": "ab" * 16,
    "gateway_id": "relay",
    "tls": {"cert": "c.pem", "key": "k.pem", "ca": "ca.pem"},
    "listen": {"host": "127.0.0.1", "port": 0},
    "next_hops": [{"gateway_id": "dst", "host": "127.0.0.1", "port": 7000, "connections": 4, "weight": 1}],
}
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
FIELDS = sorted({*BASE, "source", "destination", "cipher_key_file", "control", "compress", "encrypt",
                 "max_inflight_mb", "chunk_size_mb", "expires_at", "watch_pid", "test_faults"})  # fmt: skip


@FUZZ
@given(
    st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=5), st.lists(st.sampled_from(FIELDS), max_size=3)
)
def test_gateway_programs_never_crash_the_parser(changes: dict[str, Any], dropped: list[str]) -> None:
    raw = {**BASE, **changes}
    for name in dropped:
        raw.pop(name, None)
    try:
        program = Program.parse(raw)
    except SkyplaneError:
        return
    assert Program.loads(program.dumps()) == program  # what parses, round-trips


@FUZZ
@given(st.text(max_size=300))
def test_program_text_never_crashes_the_loader(text: str) -> None:
    try:
        Program.loads(text)
    except SkyplaneError:
        pass
    try:
        Program.loads(json.dumps({**BASE, "gateway_id": text}))
    except SkyplaneError:
        pass
