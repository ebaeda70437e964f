"""The example DAGs: they parse, and `airflow dags test` replicates against the emulated sky."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_skyplane.hooks.storage import open_store
from airflow_skyplane.testing.sky import EmulatedSky

pytestmark = pytest.mark.airflow
DAGS = Path(__file__).resolve().parents[2] / "dags_examples"


def _airflow(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    airflow = str(Path(sys.executable).parent / "airflow")
    return subprocess.run([airflow, *args], env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def airflow_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(tmp_path / "airflow-home"),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
    )
    migrated = _airflow(["db", "migrate"], env)
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    return env


def test_example_dags_parse_without_import_errors(airflow_env: dict[str, str]) -> None:
    code = (
        "import json; from airflow.dag_processing.dagbag import DagBag;"
        f"bag = DagBag(dag_folder={str(DAGS)!r});"
        "print(json.dumps({'errors': bag.import_errors, 'dags': sorted(bag.dag_ids)}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=airflow_env, capture_output=True, text=True, timeout=300, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert "nightly_replication" in result["dags"]


def test_nightly_replication_copies_one_day(
    airflow_env: dict[str, str], emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str]
) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("az")
    source = emulated_sky.open(src)
    day = {f"date=2026-11-20/part-{n}.json": f'{{"n": {n}}}\n'.encode() * (n * 500 + 1) for n in range(12)}
    other = {"date=2026-11-19/part-0.json": b"not this day\n"}
    for key, body in {**day, **other}.items():
        source.put("events/" + key, body)
    env = dict(airflow_env, **emulated_sky.env())
    env.update(SKYPLANE_EXAMPLE_SOURCE=f"{src}/events", SKYPLANE_EXAMPLE_DESTINATION=f"{dst}/events")
    run = _airflow(["dags", "test", "nightly_replication", "2026-11-20"], env)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    replica = open_store(dst).store
    assert {i.key: replica.read(i.key) for i in replica.list()} == {"events/" + k: v for k, v in day.items()}
    assert "emulated-secret-key" not in output
