"""A copy the test kills (the task process and its gateways, SIGKILL) and runs again for the same
logical date: the second try of the task instance resumes from the state the first left."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_skyplane.operators.transfer import SkyplaneTransferOperator

with DAG(
    dag_id="resumable_copy",
    schedule=None,
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
):
    SkyplaneTransferOperator(
        task_id="copy",
        source=os.environ.get("RESUMABLE_SOURCE", "s3://resumable-source/data/"),
        destination=os.environ.get("RESUMABLE_DESTINATION", "s3://resumable-destination/copy/"),
        chunk_size_mb=8,
        connections_per_hop=2,
    )
