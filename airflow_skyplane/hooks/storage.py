"""Open a store from a URI and Airflow connections: the Airflow side of the storage layer.

Each cloud store gets its SDK client from the Airflow hook of its provider, so every option a
connection can carry (credentials, role assumption, endpoint, proxies, retries) applies as it does to
Airflow's own transfer operators:

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
from airflow_skyplane.storage.uri import StorageURI, parse_uri

DEFAULT_CONN_IDS = {"s3": "aws_default", "gs": "google_cloud_default", "az": "wasb_default"}
_CONN_TYPES = {"s3": "aws", "gs": "google_cloud_platform", "az": "wasb"}
_EXTRAS = {"s3": "amazon", "gs": "google", "az": "azure"}


@dataclass(frozen=True)
class Location:
    """An opened store and the key prefix the URI names inside it."""

    store: ObjectStore
    prefix: str
    uri: StorageURI


def _require_connection(conn_id: str, scheme: str, uri: str, *, optional: bool) -> bool:
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
            f"'airflow connections add {conn_id} --conn-type {_CONN_TYPES[scheme]} ...' or set {env}, "
            "or pass the id of an existing connection"
        ) from None
    return True


def _missing_provider(scheme: str, err: ImportError) -> InvalidInputError:
    return InvalidInputError(
        f"{scheme}:// URIs need the {_EXTRAS[scheme]} provider ({err.name} is not installed): "
        f"pip install 'airflow-skyplane[{_EXTRAS[scheme]}]'"
    )


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
    store: ObjectStore
    if parsed.scheme == "file":
        from airflow_skyplane.storage.local import LocalStore

        return Location(LocalStore(parsed.bucket), parsed.prefix, parsed)

    given = {"s3": aws_conn_id, "gs": gcp_conn_id, "az": wasb_conn_id}[parsed.scheme]
    conn_id = given or DEFAULT_CONN_IDS[parsed.scheme]
    optional = given is None and parsed.scheme in ("s3", "gs")
    exists = _require_connection(conn_id, parsed.scheme, uri, optional=optional)

    try:
        if parsed.scheme == "s3":
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            from airflow_skyplane.storage.s3 import S3Store

            store = S3Store(
                S3Hook(aws_conn_id=conn_id if exists else None).get_conn(), parsed.bucket, conn_id=conn_id
            )
        elif parsed.scheme == "gs":
            from airflow.providers.google.cloud.hooks.gcs import GCSHook

            from airflow_skyplane.storage.gcs import GCSStore

            store = GCSStore(GCSHook(gcp_conn_id=conn_id).get_conn(), parsed.bucket, conn_id=conn_id)
        else:
            from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

            from airflow_skyplane.storage.azure_blob import AzureBlobStore

            client = WasbHook(wasb_conn_id=conn_id).get_conn()
            if parsed.account and client.account_name != parsed.account:
                raise InvalidInputError(
                    f"{uri} names storage account {parsed.account!r} but connection {conn_id!r} is for "
                    f"account {client.account_name!r}: use a connection for {parsed.account!r}, or write "
                    "the URI as az://container/prefix"
                )
            store = AzureBlobStore(client, parsed.bucket, conn_id=conn_id)
    except ImportError as err:
        raise _missing_provider(parsed.scheme, err) from None
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
