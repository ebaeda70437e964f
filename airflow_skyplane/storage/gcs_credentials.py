"""Google Cloud Storage credentials for relays: an access token downscoped to the transfer's prefixes,
and a google-auth ``Credentials`` that reads it from the relay's credential file.

**Minting** (in the task, through ``GCSHook``'s connection: its key file, key dict, credential
configuration, impersonation chain, or the worker's application default credentials). The
connection's credentials give a fresh access token; the token exchange endpoint (STS, the
``gcp_sts_endpoint`` setting) swaps it for one bounded by a Credential Access Boundary: the bucket,
with ``roles/storage.objectViewer`` (reading gateway) or ``roles/storage.objectAdmin`` (writing
gateway: it writes objects and the parts of composed uploads) on objects whose name starts with the
transfer's prefixes. Google access tokens last an hour at most, so the controller renews the token
before it expires. An identity Google will not downscope (the exchange refuses it) hands its own
access token instead, with a warning.

**Reading** (on the relay, no Airflow). :class:`FileToken` is a google-auth ``Credentials`` whose
``refresh`` reads the token and its expiry from the credential file; google-auth calls it when the
token nears its expiry, and by then the controller has replaced the file.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any

from airflow_skyplane.exceptions import CredentialsError
from airflow_skyplane.storage.base import UPLOADS_PREFIX
from airflow_skyplane.storage.grants import Grant, Issued

log = logging.getLogger(__name__)

READ_ROLE = "roles/storage.objectViewer"
WRITE_ROLE = "roles/storage.objectAdmin"
_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a type's name
_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def _cel(text: str) -> str:
    """A CEL string literal of ``text``."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def access_boundary(grant: Grant) -> dict[str, Any]:
    """The Credential Access Boundary of ``grant`` (as the token exchange takes it)."""
    from google.auth import downscoped

    prefixes = list(grant.prefixes) + ([UPLOADS_PREFIX] if grant.write else [])
    condition = None
    if all(prefixes):  # an empty prefix is the whole bucket: no condition
        names = [f"projects/_/buckets/{grant.bucket}/objects/{p}" for p in prefixes]
        condition = downscoped.AvailabilityCondition(
            " || ".join(f"resource.name.startsWith({_cel(n)})" for n in names),
            title="transfer prefixes",
        )
    rule = downscoped.AccessBoundaryRule(
        available_resource=f"//storage.googleapis.com/projects/_/buckets/{grant.bucket}",
        available_permissions=[f"inRole:{WRITE_ROLE if grant.write else READ_ROLE}"],
        availability_condition=condition,
    )
    boundary: dict[str, Any] = downscoped.CredentialAccessBoundary(rules=[rule]).to_json()
    return boundary


def _expiry(value: datetime | None) -> float | None:
    return value.replace(tzinfo=timezone.utc).timestamp() if value is not None else None


def _where(grant: Grant) -> str:
    return ", ".join(f"gs://{grant.bucket}/{p}" for p in grant.prefixes) + (
        " (write)" if grant.write else " (read)"
    )


def issue(conn_id: str, grant: Grant) -> Issued | None:
    """An access token for a relay to do what ``grant`` allows, from connection ``conn_id``; None for
    an anonymous connection (an emulator)."""
    import google.auth.exceptions as auth_exc
    import google.auth.transport.requests
    from airflow.providers.google.cloud.hooks.gcs import GCSHook
    from google.auth.credentials import AnonymousCredentials
    from google.oauth2 import sts

    credentials, _ = GCSHook(gcp_conn_id=conn_id).get_credentials_and_project_id()
    if isinstance(credentials, AnonymousCredentials):
        return None
    request = google.auth.transport.requests.Request()
    try:
        credentials.refresh(request)  # a fresh token: as long a life as Google gives
    except auth_exc.GoogleAuthError as err:
        raise CredentialsError(
            f"connection {conn_id!r} could not get a Google access token for the relays "
            f"({type(err).__name__}): check its key file, keyfile_dict or credential configuration"
        ) from None
    token, expires = credentials.token, _expiry(credentials.expiry)
    own = Issued(
        {"token": token}, expires, f"an access token of connection {conn_id!r} (not narrowed)", scoped=False
    )
    if grant.mode == "connection":
        return own
    try:
        response = sts.Client(grant.gcp_sts_endpoint).exchange_token(
            request=request,
            grant_type=_EXCHANGE,
            subject_token=token,
            subject_token_type=_TOKEN_TYPE,
            requested_token_type=_TOKEN_TYPE,
            additional_options=access_boundary(grant),
        )
    except auth_exc.OAuthError as err:
        log.warning(
            "the token exchange would not downscope connection %r's token to %s (%s); the relays get "
            "its own access token, renewed before it expires",
            conn_id, _where(grant), str(err).split(",")[0][:200],
        )  # fmt: skip
        return own
    except auth_exc.TransportError as err:
        raise CredentialsError(
            f"cannot reach the token exchange endpoint {grant.gcp_sts_endpoint} to mint the relays' "
            f"token ({type(err).__name__}): check gcp_sts_endpoint and the worker's network"
        ) from None
    lifetime = response.get("expires_in")
    if lifetime:
        expires = time.time() + float(lifetime)
    return Issued(
        {"token": response["access_token"]}, expires, f"an access token downscoped to {_where(grant)}"
    )
