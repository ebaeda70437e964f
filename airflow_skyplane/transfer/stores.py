"""Turn a store opened in the task into a store spec a gateway can open without Airflow.

The credentials come from the same Airflow connection the task used (``S3Hook.get_credentials``,
the ``wasb`` connection's fields, the GCS emulator or the VM's own identity), are written only into
gateway program files (mode 0600) and are masked by :func:`airflow_skyplane.gateway.stores.redact`
wherever a program is shown.
"""

from __future__ import annotations

import os
from typing import Any

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.storage.base import ObjectStore


def store_spec(store: ObjectStore) -> dict[str, Any]:
    """The spec of an opened store (see :mod:`airflow_skyplane.gateway.stores`)."""
    from airflow_skyplane.storage.azure_blob import AzureBlobStore
    from airflow_skyplane.storage.gcs import GCSStore
    from airflow_skyplane.storage.local import LocalStore
    from airflow_skyplane.storage.s3 import S3Store

    if isinstance(store, LocalStore):
        return {"scheme": "file", "root": str(store.root)}
    if isinstance(store, S3Store):
        spec: dict[str, Any] = {
            "scheme": "s3",
            "bucket": store.bucket,
            "region": store.client.meta.region_name,
            "endpoint_url": store.client.meta.endpoint_url,
        }
        if store.conn_id:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            # the connection's credentials, resolved (role assumed) by the hook, frozen for the relay
            frozen = S3Hook(aws_conn_id=store.conn_id).get_credentials()
            spec.update(
                access_key_id=frozen.access_key,
                secret_access_key=frozen.secret_key,
                session_token=frozen.token,
            )
        return spec
    if isinstance(store, GCSStore):
        spec = {"scheme": "gs", "bucket": store.bucket, "project": store.client.project}
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            spec["emulator_host"] = os.environ["STORAGE_EMULATOR_HOST"]
        return spec
    if isinstance(store, AzureBlobStore):
        client = store.client
        credential = client.credential
        if hasattr(credential, "account_key"):  # shared key (also what a connection string carries)
            endpoint = client.url.rstrip("/")
            protocol = endpoint.split(":", 1)[0]
            return {
                "scheme": "az",
                "container": store.bucket,
                "connection_string": (
                    f"DefaultEndpointsProtocol={protocol};AccountName={credential.account_name};"
                    f"AccountKey={credential.account_key};BlobEndpoint={endpoint};"
                ),
            }
        if isinstance(credential, str) or credential is None:  # SAS token in the URL or anonymous
            return {
                "scheme": "az",
                "container": store.bucket,
                "account_url": client.url,
                "credential": credential,
            }
        raise InvalidInputError(
            f"{store.uri}: relays cannot reuse the connection's {type(credential).__name__} credential; give "
            "the wasb connection a shared key, SAS token or connection string"
        )
    raise InvalidInputError(f"{store!r} cannot be opened by a relay")
