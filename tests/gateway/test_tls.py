"""Gateways' mutual authentication: the fleet CA, identities on disk, and mutual TLS on loopback."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from airflow_skyplane.exceptions import AuthenticationError, InvalidInputError, ProtocolError
from airflow_skyplane.gateway import protocol as p
from airflow_skyplane.gateway import tls

TID = bytes(16)
WAIT = 30.0  # a safety net against a hung test, not an assertion about speed


@pytest.fixture(scope="module")
def fleet() -> tls.FleetCA:
    return tls.FleetCA.create("transfer-0a1b")


@pytest.fixture(scope="module")
def server_identity(fleet: tls.FleetCA) -> tls.GatewayIdentity:
    return fleet.issue("gw-server")


@pytest.fixture(scope="module")
def client_identity(fleet: tls.FleetCA) -> tls.GatewayIdentity:
    return fleet.issue("gw-client")


@dataclass
class Server:
    """Accepts one connection, authenticates it, then reads frames and ACKs each until CLOSE."""

    context: ssl.SSLContext
    listener: socket.socket = field(init=False)
    rejected: AuthenticationError | None = None
    frames: list[p.Frame] = field(default_factory=list)
    peer: str | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(WAIT)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        try:
            sock = tls.server_handshake(self.context, conn, timeout=WAIT)
        except AuthenticationError as exc:
            self.rejected = exc
            return
        with sock:
            sock.settimeout(WAIT)
            self.peer = tls.peer_name(sock)
            while True:
                frame = p.read_frame(sock)
                self.frames.append(frame)
                if frame.type is p.FrameType.CLOSE:
                    return
                p.write_frame(sock, p.ACK, p.Ack(TID, (len(self.frames),)).pack())

    def finish(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        self.listener.close()


def connect(port: int, context: ssl.SSLContext, server_hostname: str | None = None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    return tls.client_handshake(context, raw, server_hostname, timeout=WAIT)


def exchange(sock: ssl.SSLSocket) -> p.Control:
    """Send one chunk frame and read the answer."""
    header, payload = p.encode_chunk(TID, 1, "k", 0, b"chunk bytes", object_size=11, cipher=None)
    p.write_frame(sock, p.CHUNK, header.pack(), payload)
    return p.read_frame(sock).control()


def attempt_as(context: ssl.SSLContext, port: int) -> BaseException:
    """Connect with ``context`` and try to exchange a frame; return how that failed."""
    try:
        sock = connect(port, context)
    except AuthenticationError as exc:
        return exc
    with sock:  # TLS 1.3: the server judges the client's certificate after the client's handshake ends
        try:
            exchange(sock)
        except (ssl.SSLError, OSError, ProtocolError) as exc:
            return exc
    raise AssertionError("the connection was accepted")


def bare_client_context(ca_cert_pem: bytes) -> ssl.SSLContext:
    """Trusts the fleet CA but presents no certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=ca_cert_pem.decode())
    return context


# -- connections --------------------------------------------------------------------------------------------
def test_gateways_of_one_fleet_authenticate_each_other_and_exchange_frames(
    fleet: tls.FleetCA, server_identity: tls.GatewayIdentity, client_identity: tls.GatewayIdentity
) -> None:
    server = Server(tls.server_context(server_identity, fleet.cert_pem))
    with connect(server.port, tls.client_context(client_identity, fleet.cert_pem)) as sock:
        assert sock.version() == "TLSv1.3"
        assert tls.peer_name(sock) == "gw-server"
        assert exchange(sock) == p.Ack(TID, (1,))
        p.write_frame(sock, p.CLOSE, p.Close(TID).pack())
    server.finish()
    assert server.rejected is None
    assert server.peer == "gw-client"
    header, payload = server.frames[0].chunk()
    assert p.decode_chunk(header, payload, cipher=None) == b"chunk bytes"


def _rejected(server: Server, client_context: ssl.SSLContext) -> tuple[BaseException, AuthenticationError]:
    client_failure = attempt_as(client_context, server.port)
    server.finish()
    assert server.frames == []  # not one application byte read from the stranger
    assert server.peer is None
    assert isinstance(server.rejected, AuthenticationError)
    return client_failure, server.rejected


def test_client_without_certificate_is_rejected(
    fleet: tls.FleetCA, server_identity: tls.GatewayIdentity
) -> None:
    server = Server(tls.server_context(server_identity, fleet.cert_pem))
    _, error = _rejected(server, bare_client_context(fleet.cert_pem))
    assert "mutual TLS with 127.0.0.1:" in str(error)
    assert "certificate" in str(error).lower()


def test_client_of_another_fleet_is_rejected(
    fleet: tls.FleetCA, server_identity: tls.GatewayIdentity
) -> None:
    other = tls.FleetCA.create("another-fleet")
    intruder = other.issue("gw-client")  # same name, wrong CA
    server = Server(tls.server_context(server_identity, fleet.cert_pem))
    # The intruder even trusts our CA, so only the server's check can stop it.
    _, error = _rejected(server, tls.client_context(intruder, fleet.cert_pem))
    assert "unknown ca" in str(error).lower() or "unable to get" in str(error).lower()


def test_client_refuses_a_server_of_another_fleet(
    fleet: tls.FleetCA, client_identity: tls.GatewayIdentity
) -> None:
    other = tls.FleetCA.create("another-fleet")
    server = Server(tls.server_context(other.issue("gw-server"), fleet.cert_pem))
    with pytest.raises(AuthenticationError, match="CERTIFICATE_VERIFY_FAILED"):
        connect(server.port, tls.client_context(client_identity, fleet.cert_pem))
    server.finish()
    assert server.frames == [] and server.rejected is not None


def test_expired_client_certificate_is_rejected(
    fleet: tls.FleetCA, server_identity: tls.GatewayIdentity
) -> None:
    three_days_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
    expired = fleet.issue("gw-old", valid_hours=1, now=three_days_ago)
    assert expired.not_valid_after < dt.datetime.now(dt.timezone.utc)
    server = Server(tls.server_context(server_identity, fleet.cert_pem))
    _, error = _rejected(server, tls.client_context(expired, fleet.cert_pem))
    assert "expired" in str(error)


def test_plain_tcp_client_is_rejected(fleet: tls.FleetCA, server_identity: tls.GatewayIdentity) -> None:
    server = Server(tls.server_context(server_identity, fleet.cert_pem))
    header, payload = p.encode_chunk(TID, 1, "k", 0, b"plaintext", object_size=9, cipher=None)
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as raw:
        p.write_frame(raw, p.CHUNK, header.pack(), payload)
        server.finish()
    assert server.frames == []
    assert isinstance(server.rejected, AuthenticationError)
    assert "does not speak TLS" in str(server.rejected)


def test_tls_below_1_3_is_refused(
    fleet: tls.FleetCA, server_identity: tls.GatewayIdentity, client_identity: tls.GatewayIdentity
) -> None:
    old = tls.client_context(client_identity, fleet.cert_pem)
    old.minimum_version = ssl.TLSVersion.TLSv1_2
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    server = Server(tls.server_context(server_identity, fleet.cert_pem))
    with pytest.raises(AuthenticationError):
        connect(server.port, old)
    server.finish()
    assert server.frames == [] and server.rejected is not None


def test_hostname_check_pins_which_gateway_answers(
    fleet: tls.FleetCA, server_identity: tls.GatewayIdentity, client_identity: tls.GatewayIdentity
) -> None:
    pinned = tls.client_context(client_identity, fleet.cert_pem, check_hostname=True)
    server = Server(tls.server_context(server_identity, fleet.cert_pem))
    with connect(server.port, pinned, server_hostname="gw-server") as sock:
        p.write_frame(sock, p.CLOSE, p.Close(TID).pack())
    server.finish()
    impostor = Server(tls.server_context(fleet.issue("gw-impostor"), fleet.cert_pem))
    with pytest.raises(AuthenticationError, match="gw-server"):
        connect(impostor.port, pinned, server_hostname="gw-server")
    impostor.finish()


# -- contexts -----------------------------------------------------------------------------------------------
def test_contexts_are_mutual_tls_1_3_trusting_only_the_fleet_ca(
    fleet: tls.FleetCA, server_identity: tls.GatewayIdentity
) -> None:
    for context in (
        tls.server_context(server_identity, fleet.cert_pem),
        tls.client_context(server_identity, fleet.cert_pem),
    ):
        assert context.minimum_version is ssl.TLSVersion.TLSv1_3
        assert context.verify_mode is ssl.CERT_REQUIRED
        trusted = context.get_ca_certs()
        assert len(trusted) == 1
        assert (
            dict(item[0] for item in trusted[0]["subject"])["commonName"] == "skyplane fleet transfer-0a1b CA"
        )


def test_without_memfd_the_key_lives_on_disk_only_while_loading(
    fleet: tls.FleetCA,
    server_identity: tls.GatewayIdentity,
    client_identity: tls.GatewayIdentity,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tls, "_HAVE_MEMFD", False)
    seen: list[int] = []
    real_load = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: str, keyfile: str) -> None:
        seen.append(stat.S_IMODE(os.stat(keyfile).st_mode))
        seen.append(stat.S_IMODE(os.stat(os.path.dirname(keyfile)).st_mode))
        real_load(self, certfile, keyfile)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    server = Server(tls.server_context(server_identity, fleet.cert_pem, key_dir=tmp_path))
    with connect(server.port, tls.client_context(client_identity, fleet.cert_pem, key_dir=tmp_path)) as sock:
        p.write_frame(sock, p.CLOSE, p.Close(TID).pack())
    server.finish()
    assert seen == [0o600, 0o700, 0o600, 0o700]
    assert list(tmp_path.iterdir()) == []


def test_a_broken_ca_certificate_is_an_input_error(server_identity: tls.GatewayIdentity) -> None:
    with pytest.raises(InvalidInputError, match="the fleet CA certificate does not load"):
        tls.server_context(
            server_identity, b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
        )


# -- certificates -------------------------------------------------------------------------------------------
def test_ca_and_gateway_certificates(fleet: tls.FleetCA) -> None:
    ca = fleet.certificate
    assert (
        ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "skyplane fleet transfer-0a1b CA"
    )
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.not_valid_after_utc - ca.not_valid_before_utc <= dt.timedelta(hours=48, minutes=5)
    identity = fleet.issue("gw-3", ["10.0.3.7", "gw-3.internal", "localhost"])
    cert = identity.certificate
    assert cert.issuer == ca.subject
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw-3", "gw-3.internal", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.3.7"]
    assert cert.not_valid_after_utc <= ca.not_valid_after_utc  # never outlives the fleet CA
    assert fleet.issue("aws:us-east-1/0").name == "aws:us-east-1/0"  # not a DNS name: CN only


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ca: ca.issue(""), "gateway name '' is not usable in a certificate"),
        (lambda ca: ca.issue("x" * 65), "is not usable in a certificate"),
        (lambda ca: ca.issue("gw-1", ["not an address!"]), "neither an IP address nor a DNS name"),
        (lambda ca: ca.issue("gw-1", "127.0.0.1"), "a list of IPs or names, got the string"),
        (lambda ca: ca.issue("gw-1", valid_hours=0), "valid_hours must be positive"),
        (lambda ca: tls.FleetCA.create("bad fleet id"), "fleet id 'bad fleet id' is not usable"),
    ],
)
def test_bad_certificate_requests(
    fleet: tls.FleetCA, call: Callable[[tls.FleetCA], object], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        call(fleet)


def test_private_keys_never_show(fleet: tls.FleetCA, server_identity: tls.GatewayIdentity) -> None:
    ca_key = fleet.key_pem()
    for text in (
        repr(server_identity),
        str(server_identity),
        repr(fleet),
        str(fleet),
        f"{[server_identity]}",
    ):
        assert "PRIVATE KEY" not in text
        assert server_identity.key_pem.decode() not in text and ca_key.decode() not in text
    assert "gw-server" in repr(server_identity) and "transfer-0a1b" in repr(fleet)


def test_saved_ca_keeps_issuing_trusted_certificates(
    fleet: tls.FleetCA, server_identity: tls.GatewayIdentity
) -> None:
    restored = tls.FleetCA.from_pem(fleet.fleet_id, fleet.cert_pem, fleet.key_pem())
    late = restored.issue("gw-late")
    server = Server(tls.server_context(server_identity, fleet.cert_pem))
    with connect(server.port, tls.client_context(late, fleet.cert_pem)) as sock:
        p.write_frame(sock, p.CLOSE, p.Close(TID).pack())
    server.finish()
    assert server.peer == "gw-late"


# -- identities on disk -------------------------------------------------------------------------------------
def test_identity_written_privately_and_loaded_back(
    fleet: tls.FleetCA, server_identity: tls.GatewayIdentity, tmp_path: Path
) -> None:
    target = tmp_path / "relay" / "tls"
    paths = server_identity.write(target, ca_cert_pem=fleet.cert_pem)
    assert paths == {
        "cert": target / "gateway.crt",
        "key": target / "gateway.key",
        "ca": target / "fleet-ca.crt",
    }
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in paths.values()} == {0o600}
    loaded = tls.GatewayIdentity.load(target)
    assert loaded == server_identity
    assert tls.GatewayIdentity.read(paths["cert"], paths["key"]) == server_identity
    assert paths["ca"].read_bytes() == fleet.cert_pem
    tls.server_context(loaded, paths["ca"].read_bytes())  # usable as is


def test_rewriting_tightens_a_loose_key_file_and_loose_keys_are_refused(
    server_identity: tls.GatewayIdentity, tmp_path: Path
) -> None:
    key = tmp_path / "gateway.key"
    key.write_bytes(b"old")
    key.chmod(0o644)
    server_identity.write(tmp_path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    key.chmod(0o640)
    with pytest.raises(InvalidInputError, match=r"readable by other users \(mode 640\): run 'chmod 600"):
        tls.GatewayIdentity.load(tmp_path)


def test_mismatched_key_and_certificate_are_refused(
    server_identity: tls.GatewayIdentity, client_identity: tls.GatewayIdentity
) -> None:
    with pytest.raises(InvalidInputError, match="does not belong to its certificate"):
        tls.GatewayIdentity("gw-server", server_identity.cert_pem, client_identity.key_pem)
