"""Azure Blob credentials for relays: a SAS for the transfer's container, and an Azure SAS credential
that reads it from the relay's credential file.

**Minting** (in the task, through ``WasbHook``'s connection). Relays get a SAS of the container only,
read (reading gateway) or create and write (writing gateway), valid until the fleet's expiry:

* a connection with a shared key (``shared_access_key``, an account key, a connection string with
  one): a *service SAS* signed with that key;
* a connection that signs in with Entra ID (a service principal's ``tenant_id``, a managed or
  workload identity): a *user delegation SAS* signed with a user delegation key of that identity
  (at most 7 days, the longest a fleet lives); the identity needs
  ``Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action``;
* a connection that is a SAS already: that SAS, as it is (it cannot be narrowed here).

An Azure SAS names a container, not a prefix inside it (except on accounts with a hierarchical
namespace), so the relays' rights stop at the container.

**Reading** (on the relay, no Airflow). :class:`FileSas` is an ``AzureSasCredential`` whose signature
is read from the credential file, again whenever the file was replaced.
"""

from __future__ import annotations

import urllib.parse
from datetime import datetime, timedelta, timezone
from typing import Any

from azure.core.credentials import AzureSasCredential

from airflow_skyplane.exceptions import CredentialsError
from airflow_skyplane.storage.grants import EXPIRY_SLACK_S, Grant, Issued

#: a user delegation key is valid for 7 days at most
MAX_DELEGATION_S = 7 * 24 * 3600.0


def _expiry_of(sas: str) -> float | None:
    """The expiry (``se=``) a SAS states, as unix time."""
    found = urllib.parse.parse_qs(sas.lstrip("?")).get("se")
    if not found:
        return None
    try:
        return datetime.fromisoformat(found[0].replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def account_url(client: Any) -> str:
    """The service's URL without a query (a SAS in it stays out of the spec)."""
    parts = urllib.parse.urlsplit(client.url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def issue(client: Any, container: str, grant: Grant, conn_id: str | None) -> Issued | None:
    """A SAS for a relay to do what ``grant`` allows in ``container`` (``client``: the task's
    ``BlobServiceClient`` of connection ``conn_id``); None for an anonymous connection."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    via = f"connection {conn_id!r}"
    where = f"az://{container} ({'create and write' if grant.write else 'read'})"
    credential = client.credential
    query = urllib.parse.urlsplit(client.url).query
    if credential is None and "sig=" in query:  # a SAS in the account URL
        credential = query
    if credential is None:
        return None
    if isinstance(credential, AzureSasCredential) or isinstance(credential, str):
        sas = credential.signature if isinstance(credential, AzureSasCredential) else credential
        return Issued(
            {"sas": sas.lstrip("?")}, _expiry_of(sas), f"the SAS of {via} (not narrowed)", scoped=False
        )
    now = datetime.now(timezone.utc)
    permission = ContainerSasPermissions(read=not grant.write, create=grant.write, write=grant.write)
    https = client.url.startswith("https:")
    if hasattr(credential, "account_key"):  # a shared key
        if grant.mode == "connection":
            return Issued(
                {"connection_string": _connection_string(client, credential)},
                None,
                f"the shared key of {via} (not narrowed)",
                scoped=False,
            )
        expiry = now + timedelta(seconds=grant.lifetime())
        sas = generate_container_sas(
            client.account_name, container, account_key=credential.account_key, permission=permission,
            expiry=expiry, start=now - timedelta(minutes=5), protocol="https" if https else None,
        )  # fmt: skip
        return Issued({"sas": sas}, expiry.timestamp(), f"a service SAS of {where}, signed with {via}'s key")
    if not hasattr(credential, "get_token"):
        raise CredentialsError(
            f"{via}: relays cannot be given its {type(credential).__name__} credential; use a shared key, "
            "a SAS token, a connection string or an Entra ID identity in the wasb connection"
        )
    if grant.mode == "connection":
        raise CredentialsError(
            f"{via} signs in with Entra ID, whose identity cannot be handed to relays: leave "
            "relay_credentials='scoped' (relays get a user delegation SAS of the container)"
        )
    expiry = now + timedelta(seconds=min(grant.lifetime(), MAX_DELEGATION_S - EXPIRY_SLACK_S))
    try:
        key = client.get_user_delegation_key(now - timedelta(minutes=5), expiry)
    except Exception as err:  # noqa: BLE001 - the SDK raises several kinds of refusal
        raise CredentialsError(
            f"{via} may not get a user delegation key of account {client.account_name!r} "
            f"({type(err).__name__}): give its identity the Storage Blob Delegator role (or Storage Blob "
            "Data Contributor) on the account"
        ) from None
    sas = generate_container_sas(
        client.account_name, container, user_delegation_key=key, permission=permission, expiry=expiry,
        start=now - timedelta(minutes=5), protocol="https" if https else None,
    )  # fmt: skip
    return Issued({"sas": sas}, expiry.timestamp(), f"a user delegation SAS of {where} from {via}")


def _connection_string(client: Any, credential: Any) -> str:
    endpoint = account_url(client).rstrip("/")
    protocol = endpoint.split(":", 1)[0]
    return (
        f"DefaultEndpointsProtocol={protocol};AccountName={credential.account_name};"
        f"AccountKey={credential.account_key};BlobEndpoint={endpoint};"
    )
