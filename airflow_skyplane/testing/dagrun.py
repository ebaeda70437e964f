"""Run Airflow's own CLI against a temporary ``AIRFLOW_HOME`` and read what the tasks returned.

Used by ``make demo`` and by the tests that run the example DAGs with ``airflow dags test`` (SQLite
metadata database, no scheduler needed).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any


def airflow_cli(
    args: list[str], env: dict[str, str], timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """``airflow ARGS`` from this interpreter's environment, output captured."""
    airflow = str(Path(sys.executable).parent / "airflow")
    return subprocess.run(
        [airflow, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def xcom_return_values(home: str | Path, dag_id: str, task_id: str) -> list[Any]:
    """The return values of ``task_id`` in the latest run of ``dag_id``, one per map index."""
    with sqlite3.connect(Path(home) / "airflow.db") as db:
        run = db.execute(
            "SELECT run_id FROM xcom WHERE dag_id=? AND task_id=? AND key='return_value' "
            "ORDER BY timestamp DESC LIMIT 1",
            (dag_id, task_id),
        ).fetchone()
        if run is None:
            return []
        rows = db.execute(
            "SELECT value FROM xcom WHERE dag_id=? AND task_id=? AND key='return_value' AND run_id=? "
            "ORDER BY map_index",
            (dag_id, task_id, run[0]),
        ).fetchall()
    values = []
    for (raw,) in rows:
        value = json.loads(raw) if isinstance(raw, str | bytes) else raw
        values.append(json.loads(value) if isinstance(value, str) else value)
    return values
