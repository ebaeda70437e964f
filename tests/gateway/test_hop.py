"""Data connections between gateways: mutual TLS to meet, then sealed frame heads on the bare socket.

The path between two gateways is played by a pair of loopback sockets whose bytes the test reads, and
alters, drops or repeats before the receiving gateway reads them."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from airflow_skyplane.exceptions import AuthenticationError, ProtocolError
from airflow_skyplane.gateway import hop, tls
from airflow_skyplane.gateway import protocol as p

TID = b"\x11" * 16
MARKER = b"MARKER-OF-THE-PLAINTEXT-7313"


def _keyed_pair() -> tuple[hop.HopStream, socket.socket, socket.socket, hop.HopStream]:
    """A sender whose bytes land on ``wire_in``; what the test writes to ``wire_out`` reaches the receiver."""
    send_key, back_key = os.urandom(32), os.urandom(32)
    a, wire_in = socket.socketpair()
    wire_out, b = socket.socketpair()
    return (
        hop.HopStream(a, send_key, back_key, "gw-a"),
        wire_in,
        wire_out,
        hop.HopStream(b, back_key, send_key, "gw-b"),
    )


def _sent(wire_in: socket.socket, size_hint: int = 1 << 22) -> bytes:
    wire_in.settimeout(0.1)
    data = b""
    try:
        while True:
            more = wire_in.recv(size_hint)
            if not more:
                break
            data += more
    except TimeoutError:
        pass
    return data


def _chunk(chunk_id: int, data: bytes, cipher: p.ChunkCipher | None) -> tuple[p.ChunkHeader, bytes]:
    return p.encode_chunk(
        TID,
        chunk_id,
        f"secret-name-{chunk_id}.bin",
        0,
        data,
        object_size=len(data),
        cipher=cipher,
        compress=False,
    )


def test_an_end_to_end_sealed_chunk_crosses_as_is_and_everything_else_is_sealed_for_the_hop() -> None:
    sender, wire_in, wire_out, receiver = _keyed_pair()
    cipher = p.ChunkCipher.generate()
    sealed_head, sealed_payload = _chunk(1, MARKER * 1000, cipher)
    clear_head, clear_payload = _chunk(2, MARKER * 10, None)
    p.write_frame(sender, p.CHUNK, sealed_head.pack(), sealed_payload)
    p.write_frame(sender, p.CHUNK, clear_head.pack(), clear_payload)
    p.write_frame(sender, p.ACK, p.Ack(TID, (1, 2)).pack())
    wire = _sent(wire_in)
    assert sealed_payload in wire  # no second encryption of what is sealed end to end
    assert MARKER not in wire  # an unencrypted transfer's chunk is sealed for the hop
    assert b"secret-name" not in wire  # chunk headers (object keys) travel sealed
    wire_out.sendall(wire)
    first = p.read_frame(receiver)
    assert p.decode_chunk(*first.chunk(), cipher=cipher) == MARKER * 1000
    second = p.read_frame(receiver)
    assert p.decode_chunk(*second.chunk(), cipher=None) == MARKER * 10
    assert p.read_frame(receiver).control() == p.Ack(TID, (1, 2))


def test_a_byte_flipped_in_a_forwarded_payload_is_refused_by_the_destination() -> None:
    sender, wire_in, wire_out, receiver = _keyed_pair()
    cipher = p.ChunkCipher.generate()
    head, payload = _chunk(7, os.urandom(100_000), cipher)
    p.write_frame(sender, p.CHUNK, head.pack(), payload)
    wire = bytearray(_sent(wire_in))
    wire[-5000] ^= 0x01  # inside the payload, which the hop does not seal
    wire_out.sendall(wire)
    frame = p.read_frame(receiver)  # the head is intact: the frame is read
    with pytest.raises(ProtocolError, match="failed authentication: it was altered in transit"):
        p.decode_chunk(*frame.chunk(), cipher=cipher)  # and the chunk refused (NACKed and resent)


@pytest.mark.parametrize(
    "damage",
    ["flip a head byte", "replay a frame", "reorder frames", "drop a frame", "flip a sealed payload byte"],
)
def test_a_frame_altered_replayed_reordered_or_dropped_on_the_path_ends_the_connection(damage: str) -> None:
    sender, wire_in, wire_out, receiver = _keyed_pair()
    frames = []
    for n in range(3):
        head, payload = _chunk(n, MARKER + bytes([n]) * 100, None)  # hop-sealed payloads
        p.write_frame(sender, p.CHUNK, head.pack(), payload)
        frames.append(_sent(wire_in))
    if damage == "flip a head byte":
        first = bytearray(frames[0])
        first[20] ^= 0x80
        frames[0] = bytes(first)
    elif damage == "flip a sealed payload byte":
        first = bytearray(frames[0])
        first[-3] ^= 0x80
        frames[0] = bytes(first)
    elif damage == "replay a frame":
        frames.insert(1, frames[0])
    elif damage == "reorder frames":
        frames[0], frames[1] = frames[1], frames[0]
    else:
        del frames[0]
    wire_out.sendall(b"".join(frames))
    with pytest.raises(ProtocolError, match="failed authentication"):
        for _ in range(3):
            p.read_frame(receiver)


def test_a_sender_cannot_pass_a_payload_sealed_neither_end_to_end_nor_for_the_hop() -> None:
    sender, _, _, _ = _keyed_pair()
    head, _ = _chunk(3, b"x" * 50, None)
    with pytest.raises(Exception, match="sent whole"):
        sender.write_head(p.CHUNK, head.pack(), 50)


def test_gateways_of_the_fleet_agree_hop_keys_and_strangers_are_refused() -> None:
    fleet = tls.FleetCA.create("hop-test")
    server_ctx = tls.server_context(fleet.issue("gw-b"), fleet.cert_pem)
    listener = socket.create_server(("127.0.0.1", 0))
    results: list[object] = []

    def serve(times: int) -> None:
        for _ in range(times):
            raw, _ = listener.accept()
            try:
                with hop.accept_hop(server_ctx, raw, timeout=5) as stream:
                    frame = p.read_frame(stream)
                    p.write_frame(stream, p.ACK, p.Ack(TID, (frame.chunk()[0].chunk_id,)).pack())
                    results.append(stream.peer)
            except ProtocolError as err:
                results.append(err)

    thread = threading.Thread(target=serve, args=(2,), daemon=True)
    thread.start()
    try:
        member = tls.client_context(fleet.issue("gw-a"), fleet.cert_pem)
        with hop.open_hop(member, socket.create_connection(listener.getsockname()[:2]), timeout=5) as stream:
            assert stream.peer == "gw-b"
            head, payload = _chunk(9, b"hello", p.ChunkCipher.generate())
            p.write_frame(stream, p.CHUNK, head.pack(), payload)
            assert p.read_frame(stream).control() == p.Ack(TID, (9,))
        stranger = tls.client_context(tls.FleetCA.create("other").issue("gw-x"), fleet.cert_pem)
        with pytest.raises(AuthenticationError):
            hop.open_hop(stranger, socket.create_connection(listener.getsockname()[:2]), timeout=5)
        thread.join(10)
    finally:
        listener.close()
    assert results[0] == "gw-a"
    assert isinstance(results[1], AuthenticationError)
