"""OpenLineage datasets of a transfer: the source prefix in, each destination prefix out.

Names follow the OpenLineage dataset naming conventions: ``s3://bucket`` and ``gs://bucket``
namespaces with the prefix as the name; Azure Blob as ``wasbs://container@account.blob.core.windows.net``;
local folders under the ``file`` namespace. The provider's ``common.compat`` layer gives the classes,
so this works with or without the OpenLineage provider installed (without it, nothing is emitted).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from airflow_skyplane.storage.uri import parse_uri


def dataset_name(uri: str) -> tuple[str, str]:
    """(namespace, name) of a storage URI, per the OpenLineage naming conventions."""
    parsed = parse_uri(uri)
    name = parsed.prefix.rstrip("/") or "/"
    if parsed.scheme == "az":
        if parsed.account:
            return f"wasbs://{parsed.bucket}@{parsed.account}.blob.core.windows.net", name
        return f"wasbs://{parsed.bucket}", name  # the account is the wasb connection's
    if parsed.scheme == "file":
        return "file", os.path.join(parsed.bucket, parsed.prefix).rstrip("/") or "/"
    return f"{parsed.scheme}://{parsed.bucket}", name


def transfer_lineage(source: str, destinations: Sequence[str]) -> Any:
    from airflow.providers.common.compat.openlineage.facet import Dataset

    try:
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:  # the OpenLineage provider is not installed: nothing consumes lineage
        return None
    return OperatorLineage(
        inputs=[Dataset(*dataset_name(source))],
        outputs=[Dataset(*dataset_name(d)) for d in destinations],
    )
