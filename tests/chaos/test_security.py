"""Security checks on real gateways: what an intruder, an observer of the wire, a relay's disk and the
logs get to see. ``docs/security.md`` lists what each test proves.

The handshake itself (no certificate, another fleet's certificate, plain TCP, TLS below 1.3, an
expired certificate) is covered gateway by gateway in ``tests/gateway/test_tls.py``; here the same
rule is checked across the emulated WAN, from another region, during a real transfer.

The WAN test needs root, iproute2, ``tcpdump`` and ``sshd``; it is skipped with the reason
otherwise.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaoslib import drive, local_store, own_namespaces

from airflow_skyplane.compute.local import LocalRelayBackend
from airflow_skyplane.hooks.storage import open_store
from airflow_skyplane.storage.local import LocalStore
from airflow_skyplane.testing.netns import EmulatedWAN
from airflow_skyplane.testing.sky import AZURITE_KEY
from airflow_skyplane.testing.wan_relays import WANSSHRelayBackend
from airflow_skyplane.transfer.control import status as gateway_status
from airflow_skyplane.transfer.job import Hop, Overlay, TransferJob

MiB = 1024 * 1024
SRC, RELAY, DST = "aws:us-east-1", "aws:us-west-2", "aws:eu-west-1"
MARKER = b"MARKER-9f2c41-DO-NOT-LEAK-MARKER"
CONTROL = b"CONTROL-3b7e55-PLAINTEXT-ON-PURPOSE"
needs_wan = pytest.mark.requires("netns", "tcpdump", "sshd")


def _marked_source(root: Path) -> dict[str, bytes]:
    rng = random.Random(11)
    root.mkdir(parents=True, exist_ok=True)
    data = {
        "secret.txt": b"header\n" + MARKER + b"\n" + rng.randbytes(2000),
        "bulk.bin": rng.randbytes(3 * MiB) + MARKER + rng.randbytes(3 * MiB),  # the marker inside a part
    }
    for key, body in data.items():
        (root / key).write_bytes(body)
    return data


def _files(*roots: Path) -> Iterator[Path]:
    for root in roots:
        if root.exists():
            yield from (p for p in root.rglob("*") if p.is_file())


def _holding(needle: bytes, *roots: Path) -> list[str]:
    found = []
    for path in _files(*roots):
        try:
            if needle in path.read_bytes():
                found.append(str(path))
        except OSError:
            continue
    return found


def _connect(wan: EmulatedWAN, region: str, host: str, port: int) -> str:
    """From inside ``region``: 'open', 'refused' or 'unreachable' for a TCP connect to host:port."""
    code = (
        "import socket,sys\n"
        f"s=socket.socket(); s.settimeout(3)\n"
        f"try:\n s.connect(({host!r},{port})); print('open')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except OSError: print('unreachable')\n"
    )
    return wan.run(region, [sys.executable, "-c", code], timeout=30).stdout.strip()


_INTRUDER = """
import json, socket, sys
from airflow_skyplane.gateway import tls
host, port, ca = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], 'rb').read()
out = {}
raw = socket.create_connection((host, port), timeout=5)  # plain TCP, a frame magic, then silence
raw.sendall(b'SKYP\\x01' + bytes(64))
raw.settimeout(15)
try:
    while raw.recv(4096):  # at most a TLS alert, then the gateway hangs up
        pass
    out['plain'] = 'dropped'
except ConnectionResetError:
    out['plain'] = 'dropped'
except OSError:
    out['plain'] = 'still open'
other = tls.FleetCA.create('intruder-fleet').issue('intruder')  # a certificate, but not of this fleet
try:
    conn = socket.create_connection((host, port), timeout=5)
    tls.client_handshake(tls.client_context(other, ca), conn, timeout=5).recv(1)
    out['foreign_tls'] = 'accepted'
except Exception as err:
    out['foreign_tls'] = 'rejected: ' + type(err).__name__
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def wan() -> Iterator[EmulatedWAN]:
    before = own_namespaces()
    with EmulatedWAN([SRC, RELAY, DST]) as built:
        yield built
    assert own_namespaces() == before


@pytest.mark.root
@needs_wan
def test_wan_relay_sees_no_plaintext_admits_no_stranger_and_keeps_no_secret(
    wan: EmulatedWAN, tmp_path: Path
) -> None:
    """One transfer through a relay bootstrapped over SSH, as on a cloud VM, observed from everywhere."""
    data = _marked_source(tmp_path / "src")
    fleet, jobdir = tmp_path / "fleet", tmp_path / "job"
    backend = WANSSHRelayBackend(fleet, wan)
    dst = local_store(tmp_path / "dst")
    overlay = Overlay(SRC, DST, [Hop(SRC, RELAY, 4), Hop(RELAY, DST, 4)], {SRC: SRC, RELAY: RELAY, DST: DST})
    job = TransferJob(
        LocalStore(tmp_path / "src"), "", dst, "", backend=backend, workdir=jobdir, overlay=overlay,
        chunk_size=1 * MiB, compress="never", timeout=300,
        test_faults={DST: {"delay_per_chunk_s": 0.1}},
    )  # fmt: skip
    # the wire: every byte that crosses the relay's link from the source region, headers and payload
    capture = tmp_path / "relay-link.pcap"
    link = wan.interface(RELAY, SRC)
    argv = ["tcpdump", "-i", link, "-s", "0", "-B", "65536", "-U", "-n", "-w", str(capture)]
    tcpdump = wan.popen(RELAY, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _await_listening(tcpdump)  # a packet sent before tcpdump listens would be missed
    seen: dict[str, Any] = {}

    def observe() -> None:  # while chunks are in flight
        relay = backend.gateways[RELAY]
        seen["relay_disk"] = _holding(MARKER, fleet / f"remote-{RELAY.replace(':', '-')}")
        seen["anywhere_but_stores"] = _holding(MARKER, fleet, jobdir)
        relay_link = wan.address(SRC, RELAY)
        argv = [sys.executable, "-c", _INTRUDER, relay_link, str(relay.listen_port), str(jobdir / "ca.pem")]
        intruder = wan.run(SRC, argv, timeout=60)
        assert intruder.stdout, intruder.stderr
        seen["intruder"] = json.loads(intruder.stdout.strip().splitlines()[-1])
        for _ in range(100):  # the relay counts a rejected peer once its handshake thread gives up
            seen["rejected_peers"] = gateway_status(relay)["rejected_peers"]
            if seen["rejected_peers"] >= 2:
                break
            time.sleep(0.1)
        seen["sshd_dirs"] = [sshd._dir for sshd in backend._sshd.values()]
        # the relay's control endpoint: from its own host only, over the region's control link
        port = relay.control_port
        seen["control_from_host"] = _probe_host(relay.control_host, port)
        seen["control_from_source_region"] = _connect(wan, SRC, relay_link, port)
        seen["control_addr_from_source_region"] = _connect(wan, SRC, relay.control_host, port)
        remote = fleet / f"remote-{RELAY.replace(':', '-')}"
        seen["remote_files"] = {str(p): stat.S_IMODE(p.stat().st_mode) for p in _files(remote)}
        seen["remote_dir_mode"] = stat.S_IMODE(remote.stat().st_mode)

    try:
        outcome, result = drive(job, observe)
        _plaintext_through(wan, RELAY, SRC)  # the capture's own control: plaintext does show
        for _ in range(200):  # tcpdump writes what it has read before it is stopped: let it catch up
            if CONTROL in capture.read_bytes():
                break
            time.sleep(0.05)
    finally:
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.wait(timeout=30)
    assert outcome == "completed", result
    assert {k: (tmp_path / "dst" / k).read_bytes() for k in data} == data
    wire = capture.read_bytes()
    assert len(wire) > sum(map(len, data.values()))  # the capture saw every chunk cross
    assert CONTROL in wire  # ... and would show plaintext
    assert MARKER not in wire  # but the object's never crossed in the clear
    assert seen["relay_disk"] == [] and seen["anywhere_but_stores"] == []
    assert seen["intruder"]["plain"] == "dropped", seen
    assert seen["intruder"]["foreign_tls"].startswith("rejected"), seen
    assert seen["rejected_peers"] == 2 and result.gateways[RELAY]["chunks_received"] >= 1
    assert seen["control_from_host"] == "open"
    assert seen["control_from_source_region"] == "refused"  # not bound on the data link
    assert seen["control_addr_from_source_region"] == "unreachable"  # no route to another control link
    # on the relay: its folder is private, and so is every file holding a secret (key, program, certs)
    assert seen["remote_dir_mode"] == 0o700
    private = {
        k: v for k, v in seen["remote_files"].items() if k.endswith((".key", ".pem", ".crt", "program.json"))
    }
    assert len(private) >= 4 and all(mode == 0o600 for mode in private.values()), seen["remote_files"]
    # teardown: the relay's folder (certificates, keys, transfer key, program), the sshd's host key and
    # authorized key, the programs and the transfer key are gone; no private key is left on disk
    assert not list(fleet.glob("remote-*"))
    assert not list(fleet.glob("*.program.json")) and not (jobdir / "transfer.key").exists()
    assert _holding(b"PRIVATE KEY", fleet) == []
    assert seen["sshd_dirs"] and not any(Path(d).exists() for d in seen["sshd_dirs"])
    logs = "".join(p.read_text(errors="replace") for p in _files(fleet, jobdir) if p.suffix == ".log")
    assert "PRIVATE KEY" not in logs and MARKER.decode() not in logs


def _probe_host(host: str, port: int) -> str:
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "unreachable"


_SINK = """
import socket, sys
server = socket.create_server((sys.argv[1], 47011))
server.settimeout(30)
while True:  # probes connect and hang up; stop at the first bytes received
    conn, _ = server.accept()
    if conn.recv(100):
        break
"""
_SEND = """
import socket, sys, time
for _ in range(100):
    try:
        c = socket.create_connection((sys.argv[1], 47011), timeout=3)
        break
    except ConnectionRefusedError:
        time.sleep(0.1)
c.sendall(sys.argv[2].encode())
time.sleep(0.3)
"""


def _await_listening(tcpdump: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """Return once tcpdump says on stderr that it listens (it says so after opening the interface)."""
    assert tcpdump.stderr is not None
    deadline = time.monotonic() + timeout_s
    said = b""
    while b"listening on" not in said:
        left = deadline - time.monotonic()
        if left <= 0 or tcpdump.poll() is not None:
            raise AssertionError(f"tcpdump did not start listening: {said.decode(errors='replace')}")
        ready, _, _ = select.select([tcpdump.stderr], [], [], left)
        if ready:
            said += os.read(tcpdump.stderr.fileno(), 4096)


def _plaintext_through(wan: EmulatedWAN, receiver: str, sender: str) -> None:
    """Send CONTROL in the clear over the captured link, so the capture is shown to see payloads."""
    addr = wan.address(sender, receiver)
    sink = wan.popen(receiver, [sys.executable, "-c", _SINK, addr])
    try:
        wan.run(sender, [sys.executable, "-c", _SEND, addr, CONTROL.decode()])
    finally:
        sink.wait(timeout=60)


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a listening TCP socket on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        addr_hex, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(addr_hex)[::-1]))
    return found


def test_loopback_gateways_listen_on_loopback_and_hand_credentials_only_to_private_files(
    sky_bucket: Any, tmp_path: Path
) -> None:
    """A gateway gets credentials minted for the transfer in a 0600 credential file, never the
    connection's own secret; they leave with the transfer."""
    secret = "emulated-secret-key"  # what the sky's S3 connection holds (moto accepts any)
    src = local_store(tmp_path / "src")
    data = _marked_source(tmp_path / "src")
    dst = open_store(sky_bucket("s3") + "/copy/")
    fleet, jobdir = tmp_path / "fleet", tmp_path / "job"
    backend = LocalRelayBackend(fleet)
    job = TransferJob(
        src, "", dst.store, dst.prefix, backend=backend, workdir=jobdir, chunk_size=5 * MiB,
        overlay=Overlay("source", "destination", [Hop("source", "relay", 2), Hop("relay", "destination", 2)]),
        test_faults={"destination": {"delay_per_chunk_s": 0.2}},
    )  # fmt: skip
    seen: dict[str, Any] = {}

    def observe() -> None:
        seen["holding"] = {
            p: stat.S_IMODE(os.stat(p).st_mode) for p in _holding(secret.encode(), fleet, jobdir)
        }
        seen["credential_files"] = {
            p.name: stat.S_IMODE(p.stat().st_mode) for p in jobdir.glob("*.credentials")
        }
        seen["cmdlines"] = [
            gw.process.pid for gw in backend.gateways.values()
            if secret.encode() in Path(f"/proc/{gw.process.pid}/cmdline").read_bytes()
        ]  # fmt: skip
        seen["environ"] = [
            gw.process.pid for gw in backend.gateways.values()
            if secret.encode() in Path(f"/proc/{gw.process.pid}/environ").read_bytes()
        ]  # fmt: skip
        seen["listening"] = {
            gid: (_listening_addresses(gw.control_port), _listening_addresses(gw.listen_port or 0))
            for gid, gw in backend.gateways.items()
        }

    outcome, result = drive(job, observe)
    assert outcome == "completed", result
    # while it ran: the connection's secret was in no file at all; the writer had a credential file
    # of its own (a session minted for the transfer), private to its owner
    assert seen["holding"] == {}, seen["holding"]
    assert seen["credential_files"] == {"destination.credentials": 0o600}, seen["credential_files"]
    assert seen["cmdlines"] == [] and seen["environ"] == []
    for gid, (control, data_port) in seen["listening"].items():
        assert control == {"127.0.0.1"}, (gid, control)  # the control endpoint: loopback only
        assert data_port <= {"127.0.0.1"}, (gid, data_port)  # on loopback, so is the data port
    # after teardown: no file, log or result holds it
    assert _holding(secret.encode(), fleet, jobdir) == []
    assert _holding(AZURITE_KEY.encode(), fleet, jobdir) == []
    assert list(jobdir.glob("*.credentials")) == []
    logs = "".join(p.read_text(errors="replace") for p in fleet.glob("*.log"))
    assert secret not in logs and secret not in json.dumps(result.summary()) + json.dumps(result.gateways)
    assert '"credentials_file": ' in logs  # the program was logged: it names its credential file only
    assert dst.store.read("copy/secret.txt") == data["secret.txt"]
