"""Open an object store on a relay from a store spec: a small JSON object, no Airflow.

Inside the Airflow task, :func:`airflow_skyplane.transfer.stores.store_spec` turns an opened store
(built from an Airflow connection) into such a spec: the bucket, the endpoint and short-lived
credentials. The spec travels to the gateway inside its program file (mode 0600, never logged; see
:func:`redact`), and the gateway rebuilds the same adapter on a plain SDK client here. Only the SDK of
the store a gateway touches is imported.

==========  ==================================================================================
scheme      fields
==========  ==================================================================================
``file``    ``root``
``s3``      ``bucket``, ``region``, ``endpoint_url``, ``access_key_id``, ``secret_access_key``,
            ``session_token`` (credentials optional: the SDK's default chain otherwise)
``gs``      ``bucket``, ``project``, ``emulator_host`` (then anonymous), or ``service_account_info``
``az``      ``container``, and ``connection_string`` or ``account_url`` + ``credential``
==========  ==================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.storage.base import ObjectStore

SECRET_FIELDS = frozenset(
    {
        "secret_access_key",
        "session_token",
        "access_key_id",
        "connection_string",
        "credential",
        "service_account_info",
    }
)


def redact(value: Any) -> Any:
    """A copy of a program or spec with every secret field replaced, for logs and status output."""
    if isinstance(value, Mapping):
        return {k: ("***" if k in SECRET_FIELDS and v else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _need(spec: Mapping[str, Any], field: str) -> Any:
    if not spec.get(field):
        raise InvalidInputError(
            f"store spec for scheme {spec.get('scheme')!r} lacks {field!r}: the gateway program is incomplete"
        )
    return spec[field]


def open_spec(spec: Mapping[str, Any]) -> ObjectStore:
    """Build the adapter a spec describes."""
    scheme = spec.get("scheme")
    if scheme == "file":
        from airflow_skyplane.storage.local import LocalStore

        return LocalStore(_need(spec, "root"))
    if scheme == "s3":
        import boto3
        from botocore.config import Config

        from airflow_skyplane.storage.s3 import S3Store

        client = boto3.client(
            "s3",
            region_name=spec.get("region") or None,
            endpoint_url=spec.get("endpoint_url") or None,
            aws_access_key_id=spec.get("access_key_id") or None,
            aws_secret_access_key=spec.get("secret_access_key") or None,
            aws_session_token=spec.get("session_token") or None,
            # one pooled connection per gateway thread, and the SDK's adaptive retries
            config=Config(max_pool_connections=64, retries={"mode": "adaptive", "max_attempts": 8}),
        )
        return S3Store(client, _need(spec, "bucket"))
    if scheme == "gs":
        from google.cloud import storage

        from airflow_skyplane.storage.gcs import GCSStore

        if spec.get("emulator_host"):
            from google.auth.credentials import AnonymousCredentials

            client = storage.Client(
                project=spec.get("project") or "anonymous",
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": spec["emulator_host"]},
            )
        elif spec.get("service_account_info"):
            from google.oauth2 import service_account

            creds = service_account.Credentials.from_service_account_info(spec["service_account_info"])  # type: ignore[no-untyped-call]
            client = storage.Client(project=spec.get("project"), credentials=creds)
        else:
            client = storage.Client(project=spec.get("project"))
        return GCSStore(client, _need(spec, "bucket"))
    if scheme == "az":
        from azure.storage.blob import BlobServiceClient

        from airflow_skyplane.storage.azure_blob import AzureBlobStore

        if spec.get("connection_string"):
            service = BlobServiceClient.from_connection_string(spec["connection_string"])
        else:
            service = BlobServiceClient(
                account_url=_need(spec, "account_url"), credential=spec.get("credential")
            )
        return AzureBlobStore(service, _need(spec, "container"))
    raise InvalidInputError(f"store spec has unknown scheme {scheme!r}: use one of file, s3, gs, az")
