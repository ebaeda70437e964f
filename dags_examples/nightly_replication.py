"""Nightly replication of one day's partition from S3 to Azure Blob, through planned relays.

Each run copies ``<source>/date=<ds>/`` to ``<destination>/date=<ds>/``. The URIs default to buckets of
the emulated sky (``airflow_skyplane.testing``), so the DAG runs on one machine; point
``SKYPLANE_EXAMPLE_SOURCE`` / ``SKYPLANE_EXAMPLE_DESTINATION`` (or edit them) at real buckets, and the
``aws_default`` / ``wasb_default`` connections at real accounts, to run it for real. The destination
is declared as an Asset, so downstream DAGs can be scheduled on the replica.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Asset

from airflow_skyplane.operators.transfer import SkyplaneTransferOperator

SOURCE = os.environ.get("SKYPLANE_EXAMPLE_SOURCE", "s3://skyplane-example-events/events")
DESTINATION = os.environ.get("SKYPLANE_EXAMPLE_DESTINATION", "az://skyplane-example-replica/events")

with DAG(
    dag_id="nightly_replication",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    tags=["skyplane", "example"],
    doc_md=__doc__,
):
    SkyplaneTransferOperator(
        task_id="replicate_day",
        source=SOURCE + "/date={{ ds }}/",
        destination=DESTINATION + "/date={{ ds }}/",
        destination_region="azure:westeurope",  # the source's region comes from its aws connection
        outlets=[Asset(DESTINATION.replace("az://", "abfs://") + "/")],
    )
