"""Gateways' mutual authentication: a certificate authority per fleet, and mutual-TLS contexts.

At plan time the controller makes a :class:`FleetCA` for the fleet of VMs one transfer uses, issues a
:class:`GatewayIdentity` (certificate + private key) to every gateway, ships each one its own identity
and the CA *certificate* (never the CA key), and forgets the CA key once the fleet is up. Gateways then
accept TLS connections only from peers holding a certificate of that CA, and connect only to such
peers: a stranger (no certificate, another fleet's certificate, an expired one, plain TCP) is dropped
in the handshake, before a single frame is read. Certificates live for hours, not years, so a leaked
identity expires with the fleet.

Why each dependency is here:

* ``cryptography``: EC P-256 keys and the X.509 builders for the CA and gateway certificates, instead
  of shelling out to ``openssl`` or hand-assembling ASN.1.
* the standard library ``ssl``: the TLS 1.3 stack itself (OpenSSL underneath), so no TLS code of ours
  touches the wire.

Python's ``ssl`` loads a certificate chain only from files. :func:`server_context` and
:func:`client_context` take identities in memory; on Linux they hand OpenSSL an anonymous in-memory
file (``memfd_create``) so the private key never touches a disk, elsewhere they write it to a fresh
private directory (mode 0700, files 0600) and delete it as soon as OpenSSL has read it. Nothing here
imports Airflow.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from airflow_skyplane.exceptions import AuthenticationError, InvalidInputError

__all__ = [
    "CA_CERT_FILE",
    "CERT_FILE",
    "KEY_FILE",
    "FleetCA",
    "GatewayIdentity",
    "client_context",
    "client_handshake",
    "peer_name",
    "server_context",
    "server_handshake",
]

CERT_FILE = "gateway.crt"
KEY_FILE = "gateway.key"
CA_CERT_FILE = "fleet-ca.crt"

DEFAULT_VALID_HOURS = 48
DEFAULT_ADDRESSES: tuple[str, ...] = ("127.0.0.1", "localhost")
HANDSHAKE_TIMEOUT = 30.0
"""Seconds a peer gets to finish the TLS handshake before it is dropped."""

_CLOCK_SKEW = dt.timedelta(minutes=5)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,63}")
_DNS_NAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_HAVE_MEMFD = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


def _check_name(what: str, name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInputError(
            f"{what} {name!r} is not usable in a certificate: use 1 to 64 letters, digits and . _ : / @ -, "
            "starting with a letter or digit, e.g. 'aws-us-east-1-0'"
        )
    return name


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _subject_alt_names(name: str, addresses: Sequence[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for item in ([name] if _DNS_NAME.fullmatch(name) else []) + list(addresses):
        entry: x509.GeneralName
        try:
            entry = x509.IPAddress(ipaddress.ip_address(item))
        except ValueError:
            if not _DNS_NAME.fullmatch(item):
                raise InvalidInputError(
                    f"address {item!r} is neither an IP address nor a DNS name: give the gateway's "
                    "IPs or host names, e.g. ['10.0.3.7', 'localhost']"
                ) from None
            entry = x509.DNSName(item.lower())
        if entry not in entries:
            entries.append(entry)
    return entries


# -- identities -----------------------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class GatewayIdentity:
    """One gateway's certificate and private key (PEM). The key never appears in ``repr``/``str``."""

    name: str
    cert_pem: bytes
    key_pem: bytes

    def __post_init__(self) -> None:
        cert = self.certificate
        try:
            key = serialization.load_pem_private_key(self.key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(
                f"the private key of gateway {self.name!r} is not a PEM key: {exc}"
            ) from None
        if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise InvalidInputError(
                f"the private key of gateway {self.name!r} does not belong to its certificate: "
                "ship the key and certificate issued together"
            )

    def __repr__(self) -> str:
        return f"GatewayIdentity(name={self.name!r}, expires={self.not_valid_after.isoformat()})"

    __str__ = __repr__

    @property
    def certificate(self) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(self.cert_pem)
        except ValueError as exc:
            raise InvalidInputError(f"the certificate of gateway {self.name!r} is not PEM: {exc}") from None

    @property
    def not_valid_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def write(
        self, directory: str | os.PathLike[str], *, ca_cert_pem: bytes | None = None
    ) -> dict[str, Path]:
        """Write ``gateway.crt``, ``gateway.key`` (and ``fleet-ca.crt`` when given) into ``directory``,
        created with mode 0700 if missing, every file mode 0600; returns ``{"cert", "key"[, "ca"]}``."""
        root = Path(directory)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = {"cert": (root / CERT_FILE, self.cert_pem), "key": (root / KEY_FILE, self.key_pem)}
        if ca_cert_pem is not None:
            files["ca"] = (root / CA_CERT_FILE, ca_cert_pem)
        for path, data in files.values():
            _write_private(path, data)
        return {role: path for role, (path, _) in files.items()}

    @classmethod
    def read(cls, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> GatewayIdentity:
        """Load an identity from its two PEM files; the key file must not be readable by group or others."""
        key_file = Path(key_path)
        mode = key_file.stat().st_mode
        if mode & 0o077:
            raise InvalidInputError(
                f"private key {key_file} is readable by other users (mode {mode & 0o777:o}): "
                f"run 'chmod 600 {key_file}'"
            )
        cert_pem = Path(cert_path).read_bytes()
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise InvalidInputError(f"{cert_path} is not a PEM certificate: {exc}") from None
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(names[0].value) if names else ""
        return cls(name, cert_pem, key_file.read_bytes())

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> GatewayIdentity:
        """The identity :meth:`write` put into ``directory``."""
        root = Path(directory)
        return cls.read(root / CERT_FILE, root / KEY_FILE)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the file may have existed with a wider mode
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(data)
    finally:
        os.close(fd)


# -- the fleet CA ----------------------------------------------------------------------------------------
class FleetCA:
    """The certificate authority of one fleet: issues the gateways' certificates, trusts nothing else.

    The CA key stays with the controller (``repr``/``str`` never show it); :meth:`key_pem` exports it
    only for the controller's own secret storage.
    """

    __slots__ = ("_key", "certificate", "fleet_id")

    def __init__(self, fleet_id: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.fleet_id = fleet_id
        self.certificate = certificate
        self._key = key

    @classmethod
    def create(
        cls, fleet_id: str, valid_hours: float = DEFAULT_VALID_HOURS, *, now: dt.datetime | None = None
    ) -> FleetCA:
        """A fresh CA (EC P-256, self-signed) valid from ``now`` (minus 5 minutes of clock skew) for
        ``valid_hours``."""
        _check_name("fleet id", fleet_id)
        if not valid_hours > 0:
            raise InvalidInputError(f"valid_hours must be positive, got {valid_hours!r}")
        start = now or _now()
        key = _new_key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "airflow-skyplane"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"skyplane fleet {fleet_id} CA"[:64]),
            ]
        )
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - _CLOCK_SKEW)
            .not_valid_after(start + dt.timedelta(hours=valid_hours))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(fleet_id, cert, key)

    @classmethod
    def from_pem(cls, fleet_id: str, cert_pem: bytes, key_pem: bytes) -> FleetCA:
        """A CA saved with :attr:`cert_pem` and :meth:`key_pem`."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(f"the CA of fleet {fleet_id!r} does not load: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidInputError(f"the CA key of fleet {fleet_id!r} is not an EC key")
        return cls(fleet_id, cert, key)

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, which every gateway of the fleet trusts (and nothing else)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """The CA private key, unencrypted PEM: for the controller's secret store only."""
        return _key_pem(self._key)

    def __repr__(self) -> str:
        return (
            f"FleetCA(fleet_id={self.fleet_id!r}, expires={self.certificate.not_valid_after_utc.isoformat()})"
        )

    __str__ = __repr__

    def issue(
        self,
        name: str,
        addresses: Sequence[str] = DEFAULT_ADDRESSES,
        *,
        valid_hours: float | None = None,
        now: dt.datetime | None = None,
    ) -> GatewayIdentity:
        """A certificate and key for gateway ``name``, usable as TLS server and client.

        The subject CN is ``name``; the subject alternative names are ``name`` (when it is a DNS name)
        and ``addresses`` (IP addresses or DNS names). ``valid_hours`` defaults to, and is capped at,
        the CA's own lifetime.
        """
        _check_name("gateway name", name)
        if isinstance(addresses, str):
            raise InvalidInputError(f"addresses is a list of IPs or names, got the string {addresses!r}")
        start = now or _now()
        ca_end = self.certificate.not_valid_after_utc
        end = ca_end if valid_hours is None else min(ca_end, start + dt.timedelta(hours=valid_hours))
        if valid_hours is not None and not valid_hours > 0:
            raise InvalidInputError(f"valid_hours must be positive, got {valid_hours!r}")
        key = _new_key()
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"skyplane fleet {self.fleet_id}"[:64]),
                        x509.NameAttribute(NameOID.COMMON_NAME, name),
                    ]
                )
            )
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - _CLOCK_SKEW)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(_subject_alt_names(name, addresses)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        return GatewayIdentity(name, cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


# -- TLS contexts ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _pem_files(
    cert_pem: bytes, key_pem: bytes, directory: str | os.PathLike[str] | None
) -> Iterator[tuple[str, str]]:
    """Paths from which OpenSSL can read the certificate and key, gone when the block ends."""
    if directory is None and _HAVE_MEMFD:
        fds = [os.memfd_create("skyplane-gateway-cert"), os.memfd_create("skyplane-gateway-key")]
        try:
            for fd, data in ((fds[0], cert_pem), (fds[1], key_pem)):
                with open(fd, "wb", closefd=False) as out:
                    out.write(data)
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    private = tempfile.mkdtemp(prefix="skyplane-tls-", dir=directory)  # mode 0700
    try:
        cert_path, key_path = Path(private) / CERT_FILE, Path(private) / KEY_FILE
        _write_private(cert_path, cert_pem)
        _write_private(key_path, key_pem)
        yield str(cert_path), str(key_path)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _context(
    purpose: ssl._SSLMethod,
    identity: GatewayIdentity,
    ca_cert_pem: bytes,
    key_dir: str | os.PathLike[str] | None,
) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if purpose == ssl.PROTOCOL_TLS_SERVER:
        # No session tickets: gateways never resume a session, so a ticket would be bytes for nothing.
        # (They also hung links once, when data connections kept TLS for their whole life: a TLS 1.3
        # ticket arrived while one thread wrote frames and another read ACKs on the same SSLSocket,
        # which OpenSSL's SSL object does not allow. Data connections now use TLS from one thread,
        # for the handshake and the hop keys only, and frames go on the bare socket: see hop.py.)
        context.num_tickets = 0
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        # Only the fleet CA: the system store is never loaded, so no public CA's certificate passes.
        context.load_verify_locations(cadata=ca_cert_pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(f"the fleet CA certificate does not load: {exc}") from None
    with _pem_files(identity.cert_pem, identity.key_pem, key_dir) as (cert_path, key_path):
        try:
            context.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise InvalidInputError(
                f"the identity of gateway {identity.name!r} does not load: {exc}"
            ) from None
    return context


def server_context(
    identity: GatewayIdentity, ca_cert_pem: bytes, *, key_dir: str | os.PathLike[str] | None = None
) -> ssl.SSLContext:
    """A TLS 1.3 server context that demands a client certificate of the fleet CA (mutual TLS).

    Session tickets are off, so every connection presents and checks certificates afresh. ``key_dir``:
    where the key briefly lives on disk when ``memfd_create`` is unavailable (default: the temp dir).
    """
    context = _context(ssl.PROTOCOL_TLS_SERVER, identity, ca_cert_pem, key_dir)
    context.options |= ssl.OP_NO_TICKET
    return context


def client_context(
    identity: GatewayIdentity,
    ca_cert_pem: bytes,
    *,
    check_hostname: bool = False,
    key_dir: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A TLS 1.3 client context that presents ``identity`` and accepts only servers of the fleet CA.

    Trust comes from the fleet CA, whose certificates only this fleet's gateways hold, so by default
    the server's name is not checked (gateways are dialled by IP addresses that are often unknown when
    certificates are issued). With ``check_hostname=True``, pass ``server_hostname=<gateway name>`` to
    ``wrap_socket`` to also pin *which* gateway answers; the name is in every certificate's SAN.
    """
    context = _context(ssl.PROTOCOL_TLS_CLIENT, identity, ca_cert_pem, key_dir)
    context.check_hostname = check_hostname
    return context


def _refused(err: BaseException, peer: str) -> AuthenticationError:
    reason = getattr(err, "reason", None) or type(err).__name__
    detail = getattr(err, "verify_message", None) or str(err)
    return AuthenticationError(
        f"mutual TLS with {peer} failed ({reason}: {detail}): the peer is not a gateway of this fleet, "
        "its certificate expired, or it does not speak TLS"
    )


def _address(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "an unknown peer"
    return f"{host}:{port}"


def server_handshake(
    context: ssl.SSLContext, sock: socket.socket, *, timeout: float | None = HANDSHAKE_TIMEOUT
) -> ssl.SSLSocket:
    """Wrap an accepted socket and finish the handshake; a peer that fails is closed and reported
    as :class:`AuthenticationError` before any application byte is read from it."""
    peer = _address(sock)
    previous = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        tls_sock = context.wrap_socket(sock, server_side=True)
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise _refused(exc, peer) from exc
    tls_sock.settimeout(previous)
    return tls_sock


def client_handshake(
    context: ssl.SSLContext,
    sock: socket.socket,
    server_hostname: str | None = None,
    *,
    timeout: float | None = HANDSHAKE_TIMEOUT,
) -> ssl.SSLSocket:
    """Wrap a connected socket and finish the handshake (:class:`AuthenticationError` on failure).

    In TLS 1.3 the server checks the client's certificate after the client has finished its side of
    the handshake, so a server that rejects *this* client shows up as an error on the first read.
    """
    peer = _address(sock)
    previous = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        tls_sock = context.wrap_socket(sock, server_hostname=server_hostname)
    except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
        sock.close()
        raise _refused(exc, peer) from exc
    tls_sock.settimeout(previous)
    return tls_sock


def peer_name(sock: ssl.SSLSocket) -> str:
    """The gateway name (certificate CN) of the authenticated peer, for logs and routing checks."""
    der = sock.getpeercert(binary_form=True)
    if not der:
        raise AuthenticationError("the peer presented no verified certificate")
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise AuthenticationError("the peer's certificate names no gateway (no CN)")
    return str(names[0].value)
