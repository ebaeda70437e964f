"""One registry of store kinds: everything that differs by URI scheme, in one class per scheme.

A :class:`StoreKind` knows, for its scheme:

* **open**: build the adapter through the Airflow hook of its provider, from a URI and an Airflow
  connection (the task's side: :func:`~airflow_skyplane.hooks.storage.open_store`);
* **spec**: turn a store opened that way into a *store spec*, the small JSON object a gateway opens
  without Airflow (the bucket, the endpoint: no secret);
* **issue**: mint, from the same connection, credentials for a relay limited to a
  :class:`~airflow_skyplane.storage.grants.Grant` (the transfer's bucket and prefixes, read or write,
  until the fleet's expiry); they travel in a credential file the spec names
  (:mod:`airflow_skyplane.storage.grants`);
* **open_spec**: build the adapter from a spec on a relay (:mod:`airflow_skyplane.gateway.stores`),
  reading its credential file through the SDK's own refresh hook;
* **region**: where the store is, asked of the store itself (the bucket's location), in the planner's
  names (:mod:`airflow_skyplane.storage.placement`).

Each kind is defined beside its adapter (:mod:`.s3`, :mod:`.gcs`, :mod:`.azure_blob`, :mod:`.local`)
and imports Airflow and the cloud SDKs only inside the methods that need them, so a relay that opens
a spec never imports Airflow. Adding a store kind is its adapter module with its kind, a line in
:data:`KIND_MODULES`, and its parameter in the storage contract tests.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.storage.base import ObjectStore
from airflow_skyplane.storage.grants import Grant, Issued
from airflow_skyplane.storage.uri import StorageURI

if TYPE_CHECKING:
    from airflow_skyplane.storage.placement import Placement

#: scheme -> the module whose ``KIND`` is the scheme's :class:`StoreKind`
KIND_MODULES = {
    "file": "airflow_skyplane.storage.local",
    "s3": "airflow_skyplane.storage.s3",
    "gs": "airflow_skyplane.storage.gcs",
    "az": "airflow_skyplane.storage.azure_blob",
}

#: a store as a gateway opens it: plain JSON values (the credentials among them are masked by
#: :func:`airflow_skyplane.gateway.stores.redact` wherever a program is shown)
StoreSpec = dict[str, object]


@dataclass(frozen=True)
class ConnectionKind:
    """The Airflow connection a store kind is opened with."""

    #: the keyword that names it on the operator, the sensors and ``open_store`` (``aws_conn_id``)
    param: str
    default_id: str
    conn_type: str
    #: the extra of this package that installs the provider's hook
    extra: str
    #: the default connection may be absent (the SDK's default credential chain is used then)
    default_optional: bool = False


class StoreKind(abc.ABC):
    """What differs between stores of one URI scheme, from the task to the relay."""

    scheme: ClassVar[str]
    #: None for a store that needs no connection (local files)
    connection: ClassVar[ConnectionKind | None] = None

    @abc.abstractmethod
    def open(self, location: StorageURI, conn_id: str | None, *, exists: bool, uri: str) -> ObjectStore:
        """The adapter of ``location``'s bucket, built through the provider's Airflow hook from
        connection ``conn_id`` (``exists``: whether that connection is defined); ``uri`` as the user
        wrote it, for messages. Airflow side only."""

    @abc.abstractmethod
    def spec(self, store: ObjectStore) -> StoreSpec:
        """The spec a gateway opens ``store`` from (a store this kind opened). Airflow side only."""

    @abc.abstractmethod
    def open_spec(self, spec: Mapping[str, object]) -> ObjectStore:
        """The adapter a spec describes, on plain SDK clients (no Airflow); with ``credentials_file``
        in the spec, its credentials are read from that file, and read again as it is replaced."""

    def issue(self, store: ObjectStore, grant: Grant) -> Issued | None:
        """Credentials for a relay to do what ``grant`` allows in ``store``, minted from the
        connection ``store`` was opened with; None when the store needs none (local files, an
        anonymous emulator). Airflow side only."""
        return None

    def region(self, store: ObjectStore) -> Placement | None:
        """Where the store is (:class:`~airflow_skyplane.storage.placement.Placement`: the planner's
        name of its region, or why the store could not tell); None for a store of no cloud region.
        Airflow side only."""
        return None


def store_kind(scheme: object) -> StoreKind:
    """The kind of store of ``scheme``; raise naming the schemes there are."""
    module = KIND_MODULES.get(scheme) if isinstance(scheme, str) else None
    if module is None:
        raise InvalidInputError(f"store kind {scheme!r} is unknown: use one of {', '.join(KIND_MODULES)}")
    kind = importlib.import_module(module).KIND
    assert isinstance(kind, StoreKind)
    return kind


def need(spec: Mapping[str, object], field: str) -> str:
    """A text field a spec must have."""
    value = spec.get(field)
    if not value or not isinstance(value, str):
        raise InvalidInputError(
            f"store spec for scheme {spec.get('scheme')!r} lacks {field!r}: the gateway program is incomplete"
        )
    return value


def text(spec: Mapping[str, object], field: str) -> str | None:
    """An optional text field of a spec (None when absent or empty)."""
    value = spec.get(field)
    return value if isinstance(value, str) and value else None
