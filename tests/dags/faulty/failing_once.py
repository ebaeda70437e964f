"""A transfer whose destination gateway dies mid-way on the first try; the retry must complete."""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import DAG

from airflow_skyplane.operators.transfer import SkyplaneTransferOperator


class DiesOnFirstTry(SkyplaneTransferOperator):
    def execute(self, context: Any) -> dict[str, Any]:
        if context["ti"].try_number == 1:  # the destination gateway vanishes after its 3rd chunk
            self.test_faults = {"destination": {"exit_after_chunks": 3}}
        return super().execute(context)


with DAG(
    dag_id="failing_once",
    schedule=None,
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
):
    DiesOnFirstTry(
        task_id="copy",
        source=os.environ["FAULTY_SOURCE"],
        destination=os.environ["FAULTY_DESTINATION"],
        chunk_size_mb=2,
        retries=1,
        retry_delay=pendulum.duration(seconds=0),
    )
