"""The CPU floor of a gateway's per-GB work in Python: TLS in and out, the payload cipher, CRC-32C.

A relay receives every byte and sends it on; a source seals each chunk (AES-GCM) and sends it; a
destination receives it and opens it. Data connections used to run TLS for their whole life (so a
relay decrypted and re-encrypted every byte); they now use it for the handshake only and carry
frames on the bare socket with sealed heads (:mod:`airflow_skyplane.gateway.hop`). This measures the
steps of both
alone, with the gateway's own TLS contexts (TLS 1.3, mutual certificates) on loopback, so that the
CPU-seconds per GB that ``benchmarks/wan.py`` reports can be set against what the steps cost before
any store, thread hand-off or emulated network is added.

Prints one JSON object (last line): ``tls_in_and_out_cpu_s_per_gb`` (one process sends and receives
each byte once over a loopback TLS connection: a relay's floor before the data connections left
TLS after the handshake, its kernel time included), ``hop_in_and_out_cpu_s_per_gb`` (the same over a
gateway data connection as it is now, :mod:`airflow_skyplane.gateway.hop`: chunk frames sealed end to
end cross the bare socket, only their heads sealed for the hop: a relay's floor now),
``aes_gcm_seal_cpu_s_per_gb``, ``aes_gcm_open_cpu_s_per_gb`` (``cryptography``'s AESGCM, the
payload cipher), ``crc32c_cpu_s_per_gb`` (``google-crc32c``), the TLS cipher negotiated, and the
load average.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import threading
import time

import google_crc32c
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from airflow_skyplane.gateway import hop, tls
from airflow_skyplane.gateway import protocol as proto

MiB = 1024 * 1024
BLOCK = 4 * MiB  # a chunk's size in the WAN benchmark's range


def _endpoints(fleet_id: str) -> tuple[ssl.SSLContext, ssl.SSLContext, socket.socket]:
    """The server and client contexts of two gateways of a fresh fleet, and a loopback listener."""
    fleet = tls.FleetCA.create(fleet_id)
    server_ctx = tls.server_context(fleet.issue("gw-b"), fleet.cert_pem)
    client_ctx = tls.client_context(fleet.issue("gw-a"), fleet.cert_pem)
    return server_ctx, client_ctx, socket.create_server(("127.0.0.1", 0))


def tls_in_and_out(gib: float) -> tuple[float, str]:
    """CPU-seconds per GB of sending and receiving ``gib`` over one loopback TLS connection."""
    server_ctx, client_ctx, listener = _endpoints("tls-floor")
    total = int(gib * 1024) * MiB
    got = [0]

    def receive() -> None:
        raw, _ = listener.accept()
        with tls.server_handshake(server_ctx, raw, timeout=30) as sock:
            sock.settimeout(60)
            buffer = memoryview(bytearray(BLOCK))
            while got[0] < total:
                n = sock.recv_into(buffer)
                if not n:
                    break
                got[0] += n

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    raw = socket.create_connection(listener.getsockname()[:2], timeout=30)
    sock = tls.client_handshake(client_ctx, raw, timeout=30)
    sock.settimeout(60)
    cipher = (sock.cipher() or ("?",))[0]
    payload = os.urandom(BLOCK)
    cpu0 = time.process_time()
    for _ in range(total // BLOCK):
        sock.sendall(payload)
    thread.join(120)
    cpu = time.process_time() - cpu0
    sock.close()
    listener.close()
    if got[0] != total:
        raise RuntimeError(f"received {got[0]} of {total} bytes")
    return cpu / (total / 1e9), cipher


def hop_in_and_out(gib: float) -> float:
    """CPU-seconds per GB of sending and receiving ``gib`` as the gateways' data connections carry it:
    mutual TLS to meet, then chunk frames (sealed end to end, so the hop seals their heads only) on
    the bare socket, read as a relay reads them (head, then the payload into one buffer)."""
    server_ctx, client_ctx, listener = _endpoints("hop-floor")
    total = int(gib * 1024) * MiB
    got = [0]

    def receive() -> None:
        raw, _ = listener.accept()
        with hop.accept_hop(server_ctx, raw, timeout=30) as stream:
            buffer = memoryview(bytearray(BLOCK + 64))
            while got[0] < total:
                _, _, length = proto.read_frame_head(stream)
                filled = 0
                while filled < length:
                    filled += proto.read_payload_into(stream, buffer[filled:length])
                got[0] += length

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    stream = hop.open_hop(
        client_ctx, socket.create_connection(listener.getsockname()[:2], timeout=30), timeout=30
    )
    cipher = proto.ChunkCipher.generate()
    head, payload = proto.encode_chunk(
        b"\x01" * 16,
        1,
        "floor.bin",
        0,
        os.urandom(BLOCK - 20),
        object_size=BLOCK,
        cipher=cipher,
        compress=False,
    )
    header = head.pack()
    cpu0 = time.process_time()
    for _ in range(total // len(payload)):
        proto.write_frame(stream, proto.CHUNK, header, payload)
    total = (total // len(payload)) * len(payload)
    thread.join(120)
    cpu = time.process_time() - cpu0
    stream.close()
    listener.close()
    if got[0] != total:
        raise RuntimeError(f"received {got[0]} of {total} bytes")
    return cpu / (total / 1e9)


def per_gb(step: object, gib: float) -> float:
    """CPU-seconds per GB of calling ``step`` once per block over ``gib``."""
    rounds = int(gib * 1024) * MiB // BLOCK
    cpu0 = time.process_time()
    for _ in range(rounds):
        step()  # type: ignore[operator]
    return (time.process_time() - cpu0) / (rounds * BLOCK / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="bytes through each step")
    args = parser.parse_args()
    load0 = os.getloadavg()[0]
    tls_cpu, cipher = tls_in_and_out(args.gib)
    aes = AESGCM(os.urandom(32))
    nonce, data = os.urandom(12), os.urandom(BLOCK)
    sealed = aes.encrypt(nonce, data, None)
    report = {
        "benchmark": "tls_floor",
        "gib": args.gib,
        "tls_cipher": cipher,
        "tls_in_and_out_cpu_s_per_gb": round(tls_cpu, 3),
        "hop_in_and_out_cpu_s_per_gb": round(hop_in_and_out(args.gib), 3),
        "aes_gcm_seal_cpu_s_per_gb": round(per_gb(lambda: aes.encrypt(nonce, data, None), args.gib), 3),
        "aes_gcm_open_cpu_s_per_gb": round(per_gb(lambda: aes.decrypt(nonce, sealed, None), args.gib), 3),
        "crc32c_cpu_s_per_gb": round(per_gb(lambda: google_crc32c.value(data), args.gib), 3),
        "load_1m_start": round(load0, 2),
        "load_1m_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
