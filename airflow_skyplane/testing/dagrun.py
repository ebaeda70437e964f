"""Run Airflow's own CLI against a temporary ``AIRFLOW_HOME`` and read what the tasks returned.

Used by ``make demo`` and by the tests that run the example DAGs with ``airflow dags test`` (SQLite
metadata database, no scheduler needed).
"""

from __future__ import annotations

import atexit
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

_MIGRATED: dict[str, Path] = {}


def airflow_cli(
    args: list[str], env: dict[str, str], timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """``airflow ARGS`` from this interpreter's environment, output captured."""
    airflow = str(Path(sys.executable).parent / "airflow")
    return subprocess.run(
        [airflow, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def migrate(home: str | Path, env: dict[str, str], timeout: float = 600) -> None:
    """Give the ``AIRFLOW_HOME`` ``home`` an up-to-date SQLite metadata database.

    The first call in a process runs ``airflow db migrate`` once, into a template home; every call
    then copies the template's database file, so each home has its own database (SQLite allows one
    writer) without paying the ten seconds of a migration each time. Where ``env`` points Airflow at
    another database (``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``) there is no file to copy, so that
    database is migrated in place. Raises RuntimeError with the end of Airflow's output on failure.
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    if env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        _migrate_into(home, env, timeout)
        return
    template = _MIGRATED.get("db")
    if template is None:
        folder = Path(tempfile.mkdtemp(prefix="skyplane-airflow-db-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _migrate_into(folder, env, timeout)
        template = _MIGRATED["db"] = folder / "airflow.db"
    shutil.copyfile(template, home / "airflow.db")


def _migrate_into(home: Path, env: dict[str, str], timeout: float) -> None:
    done = airflow_cli(["db", "migrate"], dict(env, AIRFLOW_HOME=str(home)), timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"airflow db migrate failed ({done.returncode}): {done.stderr[-2000:]}")


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
