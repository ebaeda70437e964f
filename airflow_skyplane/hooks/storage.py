"""Open a store from a URI and Airflow connections: the Airflow side of the storage layer.

Each cloud store gets its SDK client from the Airflow hook of its provider, so every option a
connection can carry (credentials, role assumption, endpoint, proxies, retries) applies as it does to
Airflow's own transfer operators. Which hook and which connection is the store kind's
(:mod:`airflow_skyplane.storage.kinds`):

============  ======================  ===============================  ===========================
scheme        hook                    default connection id            client
============  ======================  ===============================  ===========================
``s3``        ``S3Hook``              ``aws_default``                  boto3 S3 client
``gs``        ``GCSHook``             ``google_cloud_default``         ``storage.Client``
``az``        ``WasbHook``            ``wasb_default``                 ``BlobServiceClient``
``file``      none                    none                             the local file system
============  ======================  ===============================  ===========================

A connection id the caller names explicitly must exist. The default ids for AWS and GCP may be
absent, as everywhere in Airflow: the hooks then use the SDK's default credential chain.
"""

from __future__ import annotations

from dataclasses import dataclass

from airflow_skyplane.exceptions import ConnectionNotFoundError, InvalidInputError, SkyplaneError
from airflow_skyplane.storage.base import ObjectStore
from airflow_skyplane.storage.kinds import ConnectionKind, store_kind
from airflow_skyplane.storage.uri import StorageURI, parse_uri


@dataclass(frozen=True)
class Location:
    """An opened store and the key prefix the URI names inside it."""

    store: ObjectStore
    prefix: str
    uri: StorageURI


def _require_connection(conn_id: str, kind: ConnectionKind, uri: str, *, optional: bool) -> bool:
    """True when the connection exists; raise when it must exist and does not."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        if optional:
            return False
        env = "AIRFLOW_CONN_" + conn_id.upper().replace("-", "_")
        raise ConnectionNotFoundError(
            f"Airflow connection {conn_id!r} (needed for {uri}) does not exist: create it with "
            f"'airflow connections add {conn_id} --conn-type {kind.conn_type} ...' or set {env}, "
            "or pass the id of an existing connection"
        ) from None
    return True


def open_store(
    uri: str,
    *,
    aws_conn_id: str | None = None,
    gcp_conn_id: str | None = None,
    wasb_conn_id: str | None = None,
    check: bool = True,
) -> Location:
    """Parse ``uri`` and open its bucket through the matching Airflow hook.

    With ``check`` (the default) the bucket is probed once, so a missing bucket or refused
    credentials fail here with a clear message rather than in the middle of a transfer.
    """
    parsed = parse_uri(uri)
    kind = store_kind(parsed.scheme)
    connection = kind.connection
    if connection is None:  # local files: nothing to probe beyond what the adapter checks
        return Location(kind.open(parsed, None, exists=False, uri=uri), parsed.prefix, parsed)

    given = {"aws_conn_id": aws_conn_id, "gcp_conn_id": gcp_conn_id, "wasb_conn_id": wasb_conn_id}
    conn_id = given.get(connection.param) or connection.default_id
    optional = given.get(connection.param) is None and connection.default_optional
    exists = _require_connection(conn_id, connection, uri, optional=optional)
    try:
        store = kind.open(parsed, conn_id, exists=exists, uri=uri)
    except ImportError as err:
        raise InvalidInputError(
            f"{parsed.scheme}:// URIs need the {connection.extra} provider ({err.name} is not installed): "
            f"pip install 'airflow-skyplane[{connection.extra}]'"
        ) from None
    except SkyplaneError:
        raise
    except Exception as err:  # noqa: BLE001 - hooks raise many kinds of credential errors
        from airflow_skyplane.exceptions import CredentialsError

        raise CredentialsError(
            f"cannot build a client for {uri} from connection {conn_id!r} ({type(err).__name__}): check "
            "the connection's credentials fields"
        ) from None
    if check:
        store.check_bucket()
    return Location(store, parsed.prefix, parsed)
