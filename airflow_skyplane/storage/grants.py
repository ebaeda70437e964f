"""What a gateway may do in a store, and the credential file it reads that right from.

Relays never get a connection: the controller asks the store's kind
(:meth:`~airflow_skyplane.storage.kinds.StoreKind.issue`) for credentials limited to a
:class:`Grant` - one bucket, the transfer's prefixes, read or write, until the fleet's expiry - minted
from the task's own connection (an STS session, a downscoped GCS token, a container SAS). What it
mints is an :class:`Issued`: the secret fields, and when they expire.

The secret fields travel in a **credential file** of their own (JSON, mode 0600, replaced whole):
the gateway's store spec names its path (``credentials_file``), never its content, so a program holds
no secret. The store adapters read the file through their SDK's own refresh hook (a botocore
credential provider, a google-auth ``Credentials``, an Azure SAS credential) and read it again when
the credentials near their expiry or the file changed; the controller rewrites the file before then
(:mod:`airflow_skyplane.transfer.credentials`), so gateways go on without a restart.

Standard library only: a gateway imports this.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_skyplane.exceptions import CredentialsError
from airflow_skyplane.files import replaced_whole

#: how credentials reach relays: minted for the transfer (``scoped``), or the connection's own
RELAY_CREDENTIAL_MODES = ("scoped", "connection")
#: the token exchange endpoint that downscopes Google access tokens (Credential Access Boundaries)
GCP_STS_ENDPOINT = "https://sts.googleapis.com/v1/token"
#: credentials are renewed this long before they expire at the latest (half their lifetime when shorter)
REFRESH_MARGIN_S = 20 * 60.0
#: minted credentials outlive the fleet by this much: clocks differ a little between machines
EXPIRY_SLACK_S = 5 * 60.0


@dataclass(frozen=True)
class Grant:
    """What one gateway may do in one store: read (or write) objects under ``prefixes`` of
    ``bucket`` until ``expires_at`` (the fleet's expiry, unix time)."""

    bucket: str
    prefixes: tuple[str, ...]
    write: bool
    expires_at: float
    #: names the session in the cloud's audit log (``skyplane-<transfer>-src``)
    session_name: str
    #: ``scoped`` (minted for this grant) or ``connection`` (the connection's own, refreshed)
    mode: str = "scoped"
    gcp_sts_endpoint: str = GCP_STS_ENDPOINT

    def as_record(self) -> dict[str, Any]:
        """The grant as JSON (it holds no secret)."""
        return {
            "bucket": self.bucket,
            "prefixes": list(self.prefixes),
            "write": self.write,
            "expires_at": self.expires_at,
            "session_name": self.session_name,
            "mode": self.mode,
            "gcp_sts_endpoint": self.gcp_sts_endpoint,
        }

    @classmethod
    def from_record(cls, raw: Mapping[str, Any]) -> Grant:
        return cls(
            bucket=str(raw["bucket"]),
            prefixes=tuple(str(p) for p in raw["prefixes"]),
            write=bool(raw["write"]),
            expires_at=float(raw["expires_at"]),
            session_name=str(raw["session_name"]),
            mode=str(raw.get("mode", "scoped")),
            gcp_sts_endpoint=str(raw.get("gcp_sts_endpoint", GCP_STS_ENDPOINT)),
        )

    def lifetime(self, now: float | None = None) -> float:
        """Seconds from now to the fleet's expiry, plus the slack for clocks."""
        return self.expires_at - (time.time() if now is None else now) + EXPIRY_SLACK_S


@dataclass(frozen=True)
class Issued:
    """Credentials minted for a grant: the secret ``fields`` a credential file holds, their expiry
    (None: they do not expire), and what they are, in words that hold no secret."""

    fields: Mapping[str, Any] = field(repr=False)
    expires_at: float | None
    #: e.g. "STS session (AssumeRole) limited to s3://bucket/prefix"
    what: str
    #: False when the cloud could not narrow them and the connection's own credentials go instead
    scoped: bool = True

    def __repr__(self) -> str:  # never show the fields, even in a traceback's locals
        return f"Issued({self.what!r}, expires_at={self.expires_at!r}, scoped={self.scoped})"


def due(expires_at: float | None, issued_at: float, *, until: float, now: float | None = None) -> bool:
    """True when credentials issued at ``issued_at`` and expiring at ``expires_at`` are to be renewed
    now: within :data:`REFRESH_MARGIN_S` of their expiry (or half their lifetime, when shorter), and
    only if they would expire before ``until`` (the fleet's own expiry)."""
    if expires_at is None or expires_at >= until:
        return False
    now = time.time() if now is None else now
    margin = min(REFRESH_MARGIN_S, max(0.0, expires_at - issued_at) / 2)
    return now >= expires_at - margin


def write_credential_file(path: str | os.PathLike[str], issued: Issued) -> Path:
    """Write ``issued`` to ``path`` whole (a reader sees the old file or the new one), mode 0600
    before a byte is written."""
    document = {"version": 1, "expires_at": issued.expires_at, "fields": dict(issued.fields)}
    with replaced_whole(path, what="relay credentials", mode=0o600) as tmp:
        tmp.write_text(json.dumps(document))
    return Path(path)


def read_credential_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], float | None]:
    """The secret fields of a credential file and their expiry; raise :class:`CredentialsError`
    (naming the file, never its content) when it cannot be read."""
    try:
        document = json.loads(Path(path).read_text())
        fields = document["fields"]
        expires_at = document.get("expires_at")
        if not isinstance(fields, dict) or not (expires_at is None or isinstance(expires_at, int | float)):
            raise ValueError("bad fields")
    except (OSError, ValueError, KeyError, TypeError):
        raise CredentialsError(
            f"the relay's credential file {str(path)!r} is missing or unreadable: the controller writes "
            "it before the gateway starts and replaces it before the credentials expire"
        ) from None
    return fields, (float(expires_at) if expires_at is not None else None)


class CredentialFile:
    """A credential file as a gateway reads it: the fields again whenever the file was replaced."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._fields: dict[str, Any] = {}
        self.expires_at: float | None = None

    def fields(self) -> dict[str, Any]:
        """The current fields (read again when the file changed since the last read)."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns)
        except OSError:
            stamp = None
        if stamp is None or stamp != self._stamp:
            self._fields, self.expires_at = read_credential_file(self.path)
            self._stamp = stamp
        return dict(self._fields)

    def __repr__(self) -> str:
        return f"CredentialFile({str(self.path)!r})"


def prefixes_of(*prefixes: str) -> tuple[str, ...]:
    """Distinct prefixes, none inside another (a prefix covers every key that starts with it)."""
    kept: list[str] = []
    for prefix in sorted(set(prefixes), key=len):
        if not any(prefix.startswith(k) for k in kept):
            kept.append(prefix)
    return tuple(kept)
