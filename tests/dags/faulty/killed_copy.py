"""A copy to two destinations that the test stops with SIGTERM mid-way (slow writers keep it in
flight): the task fails for good (no retries) and its failure callback must clean both destinations.
Before it, a copy into a bucket that does not exist fails before it starts anything: its failure
callback must find nothing to clean, and pull nothing that was never pushed. First of all, a copy
left running (``wait_for_completion=False``, very slow writer) for ``fleets teardown`` to end."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_skyplane.operators.transfer import SkyplaneTransferOperator

with DAG(
    dag_id="killed_copy",
    schedule=None,
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
):
    detached = SkyplaneTransferOperator(
        task_id="left_running",
        source=os.environ.get("KILLED_SOURCE", "s3://killed-source/data/"),
        destination=os.environ.get("DETACHED_DESTINATION", "s3://killed-c/copy/"),
        chunk_size_mb=1,
        connections_per_hop=1,
        wait_for_completion=False,
        retries=1,  # so the transfer keeps its state and uploads for a retry of the task
    )
    detached.test_faults = {"destination": {"delay_per_chunk_s": 5}}
    missing = SkyplaneTransferOperator(
        task_id="into_a_missing_bucket",
        source=os.environ.get("KILLED_SOURCE", "s3://killed-source/data/"),
        destination="gs://skyplane-no-such-bucket/copy/",
        retries=0,
    )
    copy = SkyplaneTransferOperator(
        task_id="copy",
        source=os.environ.get("KILLED_SOURCE", "s3://killed-source/data/"),
        destination=os.environ.get("KILLED_DESTINATIONS", "gs://killed-a/copy/ az://killed-b/copy/").split(),
        chunk_size_mb=1,
        connections_per_hop=1,
        retries=0,
        trigger_rule="all_done",
    )
    detached >> missing >> copy
    copy.test_faults = {"destination": {"delay_per_chunk_s": 0.4}}  # each writer: a chunk per 0.4 s
