"""Where an Azure storage account is, asked of Azure Resource Manager: task side, since it reads the
Airflow connection's extra (``subscription_id``) and signs in with the connection's own identity.
Kept apart from :mod:`.placement`, which maps locations to the planner's names and holds nothing a
relay could not load.
"""

from __future__ import annotations

from typing import Any

from airflow_skyplane.storage.placement import Placement, azure_placement, unknown


def azure_account_placement(client: Any, conn_id: str | None) -> Placement:
    """Where the storage account of ``client`` (a ``BlobServiceClient``) is, asked of Azure Resource
    Manager with the client's own Azure AD credential and the ``subscription_id`` in the extra of
    connection ``conn_id``. Task side (reads the Airflow connection)."""
    credential = getattr(client, "credential", None)
    if not hasattr(credential, "get_token"):
        return unknown(
            "the connection signs in with a shared key, SAS or connection string, and the account's "
            "location is told only to an Azure AD identity (with subscription_id in its extra)"
        )
    subscription = _extra(conn_id).get("subscription_id")
    if not subscription:
        return unknown(f"connection {conn_id!r} has no subscription_id in its extra to ask for the account")
    from azure.core.exceptions import AzureError

    from airflow_skyplane.compute.azure import _resource_client_class  # the SDK moved it in v24

    account = client.account_name
    try:
        found = list(
            _resource_client_class()(credential, subscription).resources.list(
                filter=f"resourceType eq 'Microsoft.Storage/storageAccounts' and name eq '{account}'"
            )
        )
    except AzureError as err:
        return unknown(f"the management API did not tell the account's location ({str(err)[:200]})")
    if not found:
        return unknown(f"storage account {account!r} is not in subscription {subscription}")
    return azure_placement(found[0].location)


def _extra(conn_id: str | None) -> dict[str, Any]:
    if not conn_id:
        return {}
    from airflow.sdk import BaseHook

    try:
        return dict(BaseHook.get_connection(conn_id).extra_dejson)
    except Exception:  # noqa: BLE001 - a connection that cannot be read tells no subscription
        return {}
