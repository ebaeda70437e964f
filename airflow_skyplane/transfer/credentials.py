"""The store credentials of one transfer's gateways: minted for the relays, written 0600, renewed.

A transfer's reading gateway may read its source prefix, and its writing gateway may write its
destination prefix, until the fleet's expiry; nothing else. :class:`RelayCredentials` asks each
store's kind (:meth:`~airflow_skyplane.storage.kinds.StoreKind.issue`) for credentials limited to that
:class:`~airflow_skyplane.storage.grants.Grant`, minted from the task's own connection, and writes them
to a credential file of their own in the job's folder (0600, replaced whole); the gateway's store
spec names the file, never its content. ``credentials.json`` beside it records, without a secret,
what each file is for and when it expires.

**Renewal.** Credentials the cloud gives a shorter life than the fleet's (an STS session of a role
capped at an hour, a Google access token) are renewed before they expire
(:func:`~airflow_skyplane.storage.grants.due`): minted again, the file replaced, and handed to the
gateway (:meth:`~airflow_skyplane.compute.launcher.GatewayHandle.resend`: over the fleet's SSH session
to a relay VM; a local gateway reads the file itself). Gateways read the new file through their
SDK's refresh hook, without a restart and without a pause in their data path. Whoever watches the
transfer renews: the task's wait loop (:meth:`TransferJob.poll
<airflow_skyplane.transfer.job.TransferJob.poll>`), the transfer sensor's pokes and the trigger's
polls (:func:`renew_fleet`, for a transfer left running on local relays). A transfer nobody watches
runs on what it was given first, which is sized to the fleet's lifetime where the cloud allows.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_skyplane.compute.launcher import GatewayHandle
from airflow_skyplane.exceptions import SkyplaneError
from airflow_skyplane.storage.base import ObjectStore
from airflow_skyplane.storage.grants import GCP_STS_ENDPOINT, Grant, Issued, due, write_credential_file
from airflow_skyplane.storage.kinds import StoreSpec, store_kind
from airflow_skyplane.transfer.manifest import private_write

if TYPE_CHECKING:
    from airflow_skyplane.transfer.options import TransferOptions

log = logging.getLogger(__name__)

INDEX_FILE = "credentials.json"
ROLES = ("source", "destination")
#: the files of a job's folder that hold the relays' credentials, and their record
FILES = (*(f"{role}.credentials" for role in ROLES), INDEX_FILE)
#: after a failed renewal, the next try waits this long (the credentials in hand still hold meanwhile)
RETRY_S = 30.0


@dataclass
class _Entry:
    """One role's credential file, as ``credentials.json`` records it (no secret)."""

    role: str
    scheme: str
    uri: str
    path: Path
    grant: Grant
    issued_at: float
    expires_at: float | None
    what: str
    retry_at: float = 0.0

    def record(self) -> dict[str, object]:
        return {
            "role": self.role,
            "scheme": self.scheme,
            "uri": self.uri,
            "path": str(self.path),
            "grant": self.grant.as_record(),
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "what": self.what,
        }

    @classmethod
    def parse(cls, raw: Mapping[str, object]) -> _Entry:
        grant = raw["grant"]
        assert isinstance(grant, Mapping)
        expires = raw.get("expires_at")
        issued = raw["issued_at"]
        assert isinstance(issued, int | float)
        return cls(
            role=str(raw["role"]),
            scheme=str(raw["scheme"]),
            uri=str(raw["uri"]),
            path=Path(str(raw["path"])),
            grant=Grant.from_record(grant),
            issued_at=float(issued),
            expires_at=float(expires) if isinstance(expires, int | float) else None,
            what=str(raw.get("what", "")),
        )

    def due(self, now: float) -> bool:
        return now >= self.retry_at and due(
            self.expires_at, self.issued_at, until=self.grant.expires_at, now=now
        )


def retry_wait(expires_at: float | None, now: float) -> float:
    """How long to wait before trying a failed renewal again: ``RETRY_S``, but at most a quarter
    of the time the credentials in hand still hold (a short session gets several tries before it
    lapses), and never under a second."""
    if expires_at is None:
        return RETRY_S
    return max(1.0, min(RETRY_S, (expires_at - now) / 4))


def _when(stamp: float | None) -> str:
    return "never" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))


class RelayCredentials:
    """The credential files of one transfer's gateways (in ``workdir``).

    :param mode: ``scoped`` (minted for the transfer) or ``connection`` (the connection's own).
    :param expires_at: the fleet's expiry: no credential is asked to outlive it.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        transfer_id: str,
        expires_at: float,
        mode: str = "scoped",
        gcp_sts_endpoint: str = GCP_STS_ENDPOINT,
    ) -> None:
        self.workdir = workdir
        self.transfer_id = transfer_id
        self.expires_at = expires_at
        self.mode, self.gcp_sts_endpoint = mode, gcp_sts_endpoint
        self.entries: dict[str, _Entry] = {}

    @classmethod
    def for_transfer(
        cls, workdir: Path, transfer_id: str, expires_at: float, options: TransferOptions
    ) -> RelayCredentials:
        """The credentials a transfer mints for its gateways, as its ``options`` say."""
        return cls(
            workdir, transfer_id=transfer_id, expires_at=expires_at, mode=options.relay_credentials,
            gcp_sts_endpoint=options.gcp_sts_endpoint,
        )  # fmt: skip

    @classmethod
    def load(cls, workdir: Path) -> RelayCredentials | None:
        """The credentials a job recorded in ``workdir`` (None: it has none)."""
        try:
            raw = json.loads((workdir / INDEX_FILE).read_text())
        except (OSError, ValueError):
            return None
        found = cls(workdir, transfer_id=str(raw.get("transfer_id", "")), expires_at=float(raw["expires_at"]))
        for item in raw.get("entries", []):
            entry = _Entry.parse(item)
            found.entries[entry.role] = entry
        return found

    def _grant(self, role: str, store: ObjectStore, prefix: str) -> Grant:
        writes = role == "destination"
        return Grant(
            bucket=store.bucket,
            prefixes=(prefix,),
            write=writes,
            expires_at=self.expires_at,
            session_name=f"skyplane-{self.transfer_id[:12]}-{'dst' if writes else 'src'}",
            mode=self.mode,
            gcp_sts_endpoint=self.gcp_sts_endpoint,
        )

    def spec(self, role: str, store: ObjectStore, prefix: str, spec: StoreSpec | None = None) -> StoreSpec:
        """``spec`` (by default the store's own, without a secret: its kind's
        :meth:`~airflow_skyplane.storage.kinds.StoreKind.spec`) of the gateway that plays ``role``
        (``source`` or ``destination``), with the credential file minted for it now (unchanged for a
        store that needs none)."""
        spec = store_kind(store.scheme).spec(store) if spec is None else spec
        grant = self._grant(role, store, prefix)
        issued = store_kind(store.scheme).issue(store, grant)
        if issued is None:
            return spec
        entry = _Entry(
            role, store.scheme, store.uri + prefix, self.workdir / f"{role}.credentials", grant,
            time.time(), issued.expires_at, issued.what,
        )  # fmt: skip
        self._write(entry, issued)
        log.info("relays' %s credentials: %s, expiring %s", role, issued.what, _when(issued.expires_at))
        return {**spec, "credentials_file": str(entry.path)}

    def _write(self, entry: _Entry, issued: Issued) -> None:
        write_credential_file(entry.path, issued)
        entry.issued_at, entry.expires_at, entry.what = time.time(), issued.expires_at, issued.what
        self.entries[entry.role] = entry
        index = {
            "transfer_id": self.transfer_id,
            "expires_at": self.expires_at,
            "entries": [e.record() for e in self.entries.values()],
        }
        tmp = self.workdir / (INDEX_FILE + ".tmp")
        private_write(tmp, json.dumps(index))
        tmp.replace(self.workdir / INDEX_FILE)

    def due(self, now: float | None = None) -> list[str]:
        """The roles whose credentials are to be renewed now."""
        now = time.time() if now is None else now
        return [role for role, entry in self.entries.items() if entry.due(now)]

    def renew(
        self,
        stores: Mapping[str, ObjectStore],
        gateways: Iterable[GatewayHandle],
        *,
        now: float | None = None,
        roles: Iterable[str] | None = None,
    ) -> list[str]:
        """Renew what is due, from ``stores`` (role -> the task's store, opened on the connection);
        hand each new file to ``gateways``. Returns the roles renewed. ``roles`` are the ones the
        caller found due when it opened ``stores`` (another may have fallen due since: it waits for
        the next call rather than fail for want of a store). A renewal that fails is logged and tried
        again soon: the credentials in hand hold until they expire."""
        renewed = []
        handles = list(gateways)
        for role in self.due(now) if roles is None else list(roles):
            entry = self.entries[role]
            store = stores.get(role)
            try:
                if store is None:
                    raise SkyplaneError(f"the {role} store is not open")
                issued = store_kind(entry.scheme).issue(store, entry.grant)
                if issued is None:
                    raise SkyplaneError(f"{entry.uri} gave no credentials")
                self._write(entry, issued)
                for gateway in handles:
                    gateway.resend(str(entry.path))
            except (SkyplaneError, OSError) as err:
                wait = retry_wait(entry.expires_at, time.time())
                entry.retry_at = time.time() + wait
                log.warning(
                    "could not renew the relays' %s credentials (%s); they hold until %s, trying again "
                    "in %.0f s",
                    role, str(err)[:300], _when(entry.expires_at), wait,
                )  # fmt: skip
                continue
            log.info(
                "renewed the relays' %s credentials: %s, expiring %s",
                role,
                entry.what,
                _when(entry.expires_at),
            )
            renewed.append(role)
        return renewed

    def close(self) -> None:
        """Delete the credential files and their record. Idempotent."""
        for entry in self.entries.values():
            entry.path.unlink(missing_ok=True)
        for name in FILES:
            (self.workdir / name).unlink(missing_ok=True)


def renew_fleet(folder: str | Path) -> list[str]:
    """Renew the due credentials of every transfer of the (local) fleet recorded in ``folder``,
    reopening its stores through the Airflow hooks: what the transfer sensor and the trigger do at
    each poll of a transfer left running. Returns ``<transfer>/<role>`` of each renewal."""
    from airflow_skyplane.compute import fleets

    root = Path(folder)
    renewed: list[str] = []
    request: dict[str, object] | None = None
    for sub in fleets.transfer_dirs(root):
        found = RelayCredentials.load(sub)
        due = [] if found is None else found.due()
        if found is None or not due:
            continue
        if request is None:
            try:
                request = json.loads((root / "request.json").read_text())
            except (OSError, ValueError):
                return renewed
        stores: dict[str, ObjectStore] = {}
        for role in due:
            try:
                stores[role] = _open(found.entries[role].uri, request)
            except SkyplaneError as err:  # renew() logs the role it cannot renew, and it is tried again
                log.warning("could not open %s to renew its relays' credentials: %s", role, str(err)[:300])
        renewed += [f"{sub.name}/{role}" for role in found.renew(stores, (), roles=due)]
    return renewed


def _open(uri: str, request: Mapping[str, object]) -> ObjectStore:
    from airflow_skyplane.hooks.storage import open_store

    def conn(name: str) -> str | None:
        value = request.get(name)
        return value if isinstance(value, str) else None

    return open_store(
        uri,
        aws_conn_id=conn("aws_conn_id"),
        gcp_conn_id=conn("gcp_conn_id"),
        wasb_conn_id=conn("wasb_conn_id"),
        check=False,
    ).store
