"""Open an object store on a relay from a store spec: a small JSON object, no Airflow.

Inside the Airflow task, the store's kind (:mod:`airflow_skyplane.storage.kinds`) turns an opened
store (built from an Airflow connection) into such a spec: the bucket and the endpoint, and the path
of a credential file (``credentials_file``) holding what the kind minted for this gateway from the
connection (:mod:`airflow_skyplane.storage.grants`; the file is 0600, the spec never holds its
content). The spec travels to the gateway inside its program file, and the gateway rebuilds the same
adapter on a plain SDK client here, through the same kind. Only the SDK of the store a gateway
touches is imported.

==========  ==================================================================================
scheme      fields
==========  ==================================================================================
``file``    ``root``
``s3``      ``bucket``, ``region``, ``endpoint_url``, ``credentials_file`` (an STS session), or
            inline ``access_key_id``, ``secret_access_key``, ``session_token``; with neither,
            the SDK's default chain
``gs``      ``bucket``, ``project``, ``emulator_host``, ``credentials_file`` (an access token);
            without it an emulator anonymously, else the machine's own identity
``az``      ``container``, ``account_url``, ``credentials_file`` (a SAS of the container), or
            inline ``connection_string`` or ``credential`` (a SAS token)
==========  ==================================================================================

Inline secrets are still read (a caller may hand a gateway a spec of its own), and :func:`redact`
masks them wherever a program is shown.
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
        "sas",
        "token",
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
