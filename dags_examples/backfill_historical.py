"""Backfill of historical, date-partitioned datasets: one mapped task per dataset and day.

With ``catchup=True`` Airflow makes one run per day since ``start_date`` (or run
``airflow dags backfill backfill_historical -s 2026-10-01 -e 2026-10-31``); up to four days run at
once (``max_active_runs``), each with its own fleet of relays, and within a day every dataset is a
mapped task instance (dynamic task mapping over the prefixes). ``mode="sync"`` makes a rerun of a
finished day copy nothing. The URIs default to buckets of the emulated sky; set
``SKYPLANE_EXAMPLE_ARCHIVE`` and ``SKYPLANE_EXAMPLE_LAKE`` (or edit them) to use real ones.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_skyplane.operators.transfer import SkyplaneTransferOperator

ARCHIVE = os.environ.get("SKYPLANE_EXAMPLE_ARCHIVE", "s3://skyplane-example-archive")
LAKE = os.environ.get("SKYPLANE_EXAMPLE_LAKE", "gs://skyplane-example-lake")
DATASETS = ["events", "sessions", "billing"]

with DAG(
    dag_id="backfill_historical",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 10, 1, tz="UTC"),
    end_date=pendulum.datetime(2026, 10, 31, tz="UTC"),
    catchup=True,
    max_active_runs=4,
    tags=["skyplane", "example"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=2)},
):
    SkyplaneTransferOperator.partial(
        task_id="backfill_partition",
        mode="sync",
        destination_region="gcp:us-central1-a",
        max_active_tis_per_dagrun=2,
    ).expand_kwargs(
        [
            {
                "source": f"{ARCHIVE}/{name}/dt={{{{ ds }}}}/",
                "destination": f"{LAKE}/{name}/dt={{{{ ds }}}}/",
            }
            for name in DATASETS
        ]
    )
