"""The data plane end to end: real gateway processes on loopback, real stores, real TLS.

Each test runs a :class:`TransferJob` with the local relay backend: gateways start as
``python -m airflow_skyplane.gateway`` processes, talk mutual TLS, and write to the destination store.
"""

from __future__ import annotations

import json
import os
import random
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_skyplane.compute.local import LocalRelayBackend
from airflow_skyplane.gateway import protocol as proto
from airflow_skyplane.gateway import tls
from airflow_skyplane.hooks.storage import open_store
from airflow_skyplane.storage.local import LocalStore
from airflow_skyplane.testing.digest import tree_digest
from airflow_skyplane.testing.sky import AZURITE_KEY
from airflow_skyplane.transfer.job import Hop, Overlay, TransferJob

MiB = 1024 * 1024
RELAYED = Overlay("source", "destination", [Hop("source", "relay", 8), Hop("relay", "destination", 8)])


def run(source, sprefix, dest, dprefix, tmp_path: Path, **kwargs) -> tuple:
    backend = LocalRelayBackend(tmp_path / "fleet")
    job = TransferJob(source, sprefix, dest, dprefix, backend=backend, workdir=tmp_path / "job", **kwargs)
    try:
        result = job.run()
    finally:
        assert backend.running() == []  # every gateway stopped, whatever happened
    return job, result


@pytest.mark.slow
@pytest.mark.full_tier(
    reason="a minute of 2 GiB; the other data-plane tests cross relays byte-exact with MiBs"
)
def test_1gib_random_and_1gib_text_through_a_relay(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    with (src / "random.bin").open("wb") as f:
        for _ in range(64):
            f.write(os.urandom(16 * MiB))
    rng = random.Random(1)
    rows = [
        f"{n},2026-11-{1 + n % 28:02d},user{rng.randrange(10**5)},{rng.choice(['view', 'buy'])}\n"
        for n in range(300_000)
    ]
    block = "".join(rows).encode()[: 8 * MiB]  # CSV-like text; 8 MiB is far beyond lz4's 64 KiB window
    with (src / "table.csv").open("wb") as f:
        for _ in range(128):
            f.write(block)
    _, result = run(LocalStore(src), "", LocalStore(dst), "", tmp_path, overlay=RELAYED, chunk_size=32 * MiB)
    assert tree_digest(dst) == tree_digest(src)
    assert result.objects == 2 and result.bytes == 2048 * MiB
    assert result.wire_bytes < 0.8 * result.bytes  # the text compressed, the random bytes did not grow much
    assert result.resends == 0


def _fill_s3(store, count_small: int = 300) -> int:
    rng = random.Random(5)
    total = 0
    big = rng.randbytes(120 * MiB)
    store.put("mixed/big/model.bin", big)
    total += len(big)
    for i in range(20):
        data = rng.randbytes(rng.randrange(1, 4) * MiB)
        store.put(f"mixed/medium/part-{i:03d}.bin", data)
        total += len(data)
    for i in range(count_small):
        data = f"small object {i} ".encode() * 1000
        store.put(f"mixed/small/{i:05d} é=+.txt", data)
        total += len(data)
    return total


@pytest.mark.slow
def test_200mib_mixed_objects_from_s3_to_azure_blob(sky_bucket: Callable[[str], str], tmp_path: Path) -> None:
    s3 = open_store(sky_bucket("s3") + "/mixed/")
    az = open_store(sky_bucket("az") + "/copy/")
    total = _fill_s3(s3.store)
    _, result = run(s3.store, s3.prefix, az.store, az.prefix, tmp_path, overlay=RELAYED, chunk_size=16 * MiB)
    assert result.bytes == total and result.objects == 321
    source = {i.key[len("mixed/") :]: i for i in s3.store.list("mixed/")}
    copied = {i.key[len("copy/") :]: i for i in az.store.list("copy/")}
    assert {k: i.size for k, i in copied.items()} == {k: i.size for k, i in source.items()}
    for key in ["big/model.bin", "medium/part-007.bin", "small/00042 é=+.txt"]:
        assert az.store.read("copy/" + key) == s3.store.read("mixed/" + key)
    assert result.checksums_verified >= 320  # every single-put object by MD5 at both ends
    assert list(az.store.list_multipart_uploads()) == []
    # the gateways' credentials were minted for them, in credential files the programs name (0600,
    # deleted at teardown): no connection secret, nor theirs, shows in logs or results
    fleet = tmp_path / "fleet"
    assert list(fleet.glob("*.program.json")) == [] and list(tmp_path.rglob("*.credentials")) == []
    shown = "".join(p.read_text(errors="replace") for p in fleet.glob("*.log"))
    shown += json.dumps(result.summary()) + json.dumps(result.gateways)
    assert "emulated-secret-key" not in shown and AZURITE_KEY not in shown
    assert "sig=" not in shown  # no SAS either
    assert shown.count('"credentials_file": ') == 2  # the programs were shown: they name the files only


def test_two_relays_split_the_flow_by_weight(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    rng = random.Random(2)
    for i in range(40):
        (src / f"obj-{i:02d}.bin").write_bytes(rng.randbytes(1 * MiB + i))
    overlay = Overlay(
        "source",
        "destination",
        [
            Hop("source", "relay-a", 4, weight=3.0),
            Hop("source", "relay-b", 4, weight=1.0),
            Hop("relay-a", "destination", 4),
            Hop("relay-b", "destination", 4),
        ],
    )
    reports = []
    _, result = run(
        LocalStore(src), "", LocalStore(dst), "", tmp_path, overlay=overlay, chunk_size=4 * MiB,
        on_progress=reports.append, progress_every_s=0.05,
    )  # fmt: skip
    assert tree_digest(dst) == tree_digest(src)
    final = reports[-1]  # the tracker's last word: everything, at a measured rate
    assert final.fraction == 1.0 and final.chunks_done == final.chunks_total == 40
    assert final.bytes_done == result.bytes and final.gbps > 0 and final.eta_seconds == 0
    assert "100.0%" in final.line()
    a = result.gateways["relay-a"]["raw_bytes"]  # what each relay forwarded (frame bytes)
    b = result.gateways["relay-b"]["raw_bytes"]
    assert a + b >= result.bytes
    # 3:1 as the plan's edge flows asked (0.75); an even split would be 0.5. Paths are fed by demand,
    # so a relay whose process gets less CPU on a loaded machine takes a little less than its weight
    assert 0.62 <= a / (a + b) <= 0.85


def test_corrupted_chunk_is_detected_and_resent(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for i in range(6):
        (src / f"f{i}.bin").write_bytes(os.urandom(3 * MiB))
    _, result = run(
        LocalStore(src),
        "",
        LocalStore(dst),
        "",
        tmp_path,
        overlay=RELAYED,
        chunk_size=1 * MiB,
        test_faults={"relay": {"corrupt_forwarded_frame": 3}},
    )
    assert tree_digest(dst) == tree_digest(src)
    assert result.resends >= 1
    assert result.gateways["destination"]["rejected_chunks"] == 1


def test_a_frame_a_relay_replays_is_detected_and_not_written_twice(tmp_path: Path) -> None:
    """The relay sends its second forwarded frame twice, re-sealed for the hop as any frame it sends:
    the hop cannot tell, the writer's record of the chunks it wrote does, and drops the copy."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for i in range(3):
        (src / f"f{i}.bin").write_bytes(os.urandom(2 * MiB))
    _, result = run(
        LocalStore(src), "", LocalStore(dst), "", tmp_path, overlay=RELAYED, chunk_size=1 * MiB,
        test_faults={"relay": {"replay_forwarded_frame": 2}},
    )  # fmt: skip
    assert tree_digest(dst) == tree_digest(src)
    destination = result.gateways["destination"]
    assert destination["replayed_chunks"] == 1
    assert destination["chunks_received"] == 7  # six chunks, and the copy
    assert destination["chunks_written"] == 6


@pytest.mark.parametrize("encrypt", [True, False])
def test_a_tapping_relay_sees_no_plaintext(tmp_path: Path, encrypt: bool) -> None:
    marker = b"TOP-SECRET-MARKER-4242"
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "secret.txt").write_bytes(b"header\n" + marker + b"\n" + os.urandom(1000))
    (src / "bulk.bin").write_bytes(os.urandom(2 * MiB) + marker)
    tap = tmp_path / "tap.bin"
    run(
        LocalStore(src),
        "",
        LocalStore(dst),
        "",
        tmp_path,
        overlay=RELAYED,
        compress="never",
        encrypt=encrypt,
        chunk_size=1 * MiB,
        test_faults={"relay": {"tap_file": str(tap)}},
    )
    assert tree_digest(dst) == tree_digest(src)
    seen = tap.read_bytes()
    assert len(seen) > 2 * MiB  # the tap saw every frame
    assert (marker in seen) is (not encrypt)  # with encryption on, the relay never sees the marker


def _lone_destination(tmp_path: Path) -> tuple[subprocess.Popen[bytes], dict, tls.FleetCA, Path]:
    """A writing gateway, started by hand, and its fleet CA."""
    ca = tls.FleetCA.create("fleet-under-test")
    files = ca.issue("destination").write(tmp_path / "dst-id", ca_cert_pem=ca.cert_pem)
    key = tmp_path / "transfer.key"
    key.write_bytes(proto.ChunkCipher.generate().key)
    (tmp_path / "out").mkdir()
    program = {
        "version": 1,
        "transfer_id": "ab" * 16,
        "gateway_id": "destination",
        "tls": {k: str(v) for k, v in files.items()},
        "listen": {"host": "127.0.0.1", "port": 0},
        "cipher_key_file": str(key),
        "destination": {"store": {"scheme": "file", "root": str(tmp_path / "out")}},
    }
    (tmp_path / "program.json").write_text(json.dumps(program))
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_skyplane.gateway", "--program", str(tmp_path / "program.json"),
         "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    return proc, json.loads(ready.read_text()), ca, tmp_path / "out"


def _status(info: dict) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{info['control_port']}/status", timeout=5) as r:
        return json.loads(r.read())


def test_unauthenticated_peers_are_dropped_before_any_chunk(tmp_path: Path) -> None:
    proc, info, ca, out = _lone_destination(tmp_path)
    try:
        # a valid-looking frame over plain TCP
        head, payload = proto.encode_chunk(
            b"\xab" * 16, 1, "injected.txt", 0, b"evil", object_size=4, cipher=None, compress=False
        )
        with socket.create_connection(("127.0.0.1", info["listen_port"])) as plain:
            plain.sendall(proto.MAGIC + b"\x01" + len(head.pack()).to_bytes(2, "big") + head.pack() + payload)
            plain.settimeout(5)
            with pytest.raises((ConnectionError, socket.timeout, OSError)):
                if not plain.recv(1):
                    raise ConnectionError("closed")
        # a TLS client whose certificate comes from another fleet's CA
        other = tls.FleetCA.create("another-fleet").issue("intruder")
        ctx = tls.client_context(other, ca.cert_pem)
        raw = socket.create_connection(("127.0.0.1", info["listen_port"]))
        with pytest.raises((ssl.SSLError, OSError, proto.ProtocolError)):
            sock = tls.client_handshake(ctx, raw, timeout=5)
            proto.write_frame(sock, proto.CHUNK, head.pack(), payload)
            proto.read_frame(sock)
        deadline = time.monotonic() + 5
        while _status(info)["rejected_peers"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        status = _status(info)
        assert status["rejected_peers"] == 2
        assert status["chunks_received"] == 0 and status["chunks_written"] == 0
        assert list(out.iterdir()) == []
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_failed_transfer_leaves_no_partial_object_and_no_gateway(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "big.bin").write_bytes(os.urandom(6 * MiB))
    (src / "ok.txt").write_bytes(b"fine")
    backend = LocalRelayBackend(tmp_path / "fleet")
    job = TransferJob(
        LocalStore(src),
        "",
        LocalStore(dst),
        "",
        backend=backend,
        workdir=tmp_path / "job",
        overlay=RELAYED,
        chunk_size=1 * MiB,
        # the relay corrupts every frame it forwards: each chunk fails MAX_ATTEMPTS times
        test_faults={"relay": {"corrupt_forwarded_frame": -1}},
        timeout=60,
    )
    with pytest.raises(Exception, match="rejected"):
        job.run()
    assert backend.running() == []
    assert not (dst / "big.bin").exists()  # no partial object
    assert list(LocalStore(dst).list_multipart_uploads()) == []  # no dangling upload
    assert not (tmp_path / "job" / "transfer.key").exists()


def test_gateways_run_where_airflow_cannot_be_imported(
    sky_bucket: Callable[[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relays run without Airflow: here any import of it inside a gateway fails, and the copy works."""
    shim = tmp_path / "no-airflow"
    (shim / "airflow").mkdir(parents=True)
    (shim / "airflow" / "__init__.py").write_text("raise ImportError('Airflow is not installed on relays')\n")
    monkeypatch.setenv("PYTHONPATH", str(shim))  # the gateways inherit it; this process has Airflow loaded
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(3 * MiB))
    (src / "b.txt").write_bytes(b"small")
    dst = open_store(sky_bucket("s3") + "/copy/")
    _, result = run(LocalStore(src), "", dst.store, dst.prefix, tmp_path, overlay=RELAYED, chunk_size=1 * MiB)
    assert result.objects == 2
    assert dst.store.read("copy/a.bin") == (src / "a.bin").read_bytes()
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "fleet").glob("*.log"))
    assert "Airflow is not installed" not in logs
