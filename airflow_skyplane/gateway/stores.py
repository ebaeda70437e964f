"""Open an object store on a relay from a store spec: a small JSON object, no Airflow.

Inside the Airflow task, the store's kind (:mod:`airflow_skyplane.storage.kinds`) turns an opened
store (built from an Airflow connection) into such a spec: the bucket, the endpoint and the
connection's credentials. The spec travels to the gateway inside its program file (mode 0600, never
logged; see :func:`redact`), and the gateway rebuilds the same adapter on a plain SDK client here,
through the same kind. Only the SDK of the store a gateway touches is imported.

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

from airflow_skyplane.storage.base import ObjectStore
from airflow_skyplane.storage.kinds import store_kind

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


def open_spec(spec: Mapping[str, Any]) -> ObjectStore:
    """Build the adapter a spec describes, through the kind of store its scheme names."""
    return store_kind(spec.get("scheme")).open_spec(spec)
