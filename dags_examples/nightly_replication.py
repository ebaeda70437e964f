"""Nightly replication: each day's partition of an S3 prefix synced to GCS and to Azure Blob.

Each run syncs ``<source>/date=<ds>/`` to ``<replica>/date=<ds>/`` in both destinations with one
task (one plan, one fleet of relays): only objects new or changed since the last run travel. The
URIs default to buckets of the emulated sky (``make demo`` creates them), reached through the usual
``aws_default``, ``google_cloud_default`` and ``wasb_default`` connections; point
``SKYPLANE_EXAMPLE_SOURCE``, ``SKYPLANE_EXAMPLE_GCS`` and ``SKYPLANE_EXAMPLE_AZURE`` (or edit them)
at real buckets, and the connections at real accounts, to run it for real.

The XCom summary is keyed by destination URI; the plans whole, and a picture of each, are written
beside the task's logs (``plan_file`` in the summary names them).

The replicas are declared as Assets: ``replica_report`` runs whenever both have been refreshed.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Asset, task

from airflow_skyplane.operators.transfer import SkyplaneTransferOperator

SOURCE = os.environ.get("SKYPLANE_EXAMPLE_SOURCE", "s3://skyplane-example-events/events")
GCS_REPLICA = os.environ.get("SKYPLANE_EXAMPLE_GCS", "gs://skyplane-example-replica/events")
AZURE_REPLICA = os.environ.get("SKYPLANE_EXAMPLE_AZURE", "az://skyplane-example-replica/events")

GCS_ASSET = Asset(GCS_REPLICA + "/")
AZURE_ASSET = Asset(AZURE_REPLICA.replace("az://", "abfs://") + "/")

with DAG(
    dag_id="nightly_replication",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    tags=["skyplane", "example"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=5)},
):
    SkyplaneTransferOperator(
        task_id="sync_day",
        source=SOURCE + "/date={{ ds }}/",
        destination=[GCS_REPLICA + "/date={{ ds }}/", AZURE_REPLICA + "/date={{ ds }}/"],
        # checked against each bucket where its store tells; the source's is asked of its bucket
        destination_region=["gcp:europe-west4-a", "azure:westeurope"],
        mode="sync",
        exclude=["*.tmp", "_temporary/*"],
        plan_picture=True,  # a PNG per plan beside the task's logs (the plot extra)
        outlets=[GCS_ASSET, AZURE_ASSET],
    )

with DAG(
    dag_id="replica_report",
    schedule=(GCS_ASSET & AZURE_ASSET),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    tags=["skyplane", "example"],
):

    @task
    def report(triggering_asset_events: dict | None = None) -> list[str]:  # type: ignore[type-arg]
        """Downstream work starts once both replicas are fresh; here it only lists what triggered it."""
        return sorted(str(asset) for asset in (triggering_asset_events or {}))

    report()
