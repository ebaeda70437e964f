"""The emulated sky itself: servers start on loopback, connections point at them, stop kills only them.
Also the demo, which replicates a dataset across the sky through the Airflow hooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_skyplane.testing.plugin import require
from airflow_skyplane.testing.sky import AZURITE_KEY, EmulatedSky


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def test_start_and_stop_only_its_own_processes(tmp_path: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with EmulatedSky(tmp_path, services=("s3", "gs")) as sky:
            pids = sky.pids()
            assert len(pids) == 2 and all(_alive(p) for p in pids)
            env = sky.env()
            assert json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])["extra"]["endpoint_url"] == sky.endpoint("s3")
            assert env["STORAGE_EMULATOR_HOST"] == sky.endpoint("gs")
            assert all(sky.endpoint(s).startswith("http://127.0.0.1:") for s in sky.services)
            assert "AIRFLOW_CONN_WASB_DEFAULT" not in env
        assert not any(_alive(p) for p in pids)
        assert bystander.poll() is None  # untouched
    finally:
        bystander.kill()
        bystander.wait()


def test_renamed_connections(tmp_path: Path) -> None:
    sky = EmulatedSky(tmp_path, services=("s3",))  # not started: env() needs only the ports
    env = sky.env(conn_ids={"aws_default": "aws_replica"})
    assert "AIRFLOW_CONN_AWS_REPLICA" in env and "AIRFLOW_CONN_AWS_DEFAULT" not in env


def test_missing_azurite_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYPLANE_AZURITE_BIN", str(tmp_path / "no-azurite"))
    sky = EmulatedSky(tmp_path, services=("az",))
    assert "az" not in sky.services
    assert "make install" in sky.missing["az"] and "SKYPLANE_AZURITE_BIN" in sky.missing["az"]
    with pytest.raises(LookupError, match="Azurite not found"):
        sky.endpoint("az")


def test_unknown_service_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown emulated services"):
        EmulatedSky(tmp_path, services=("s3", "dynamodb"))


@pytest.mark.full_tier(
    reason="a minute; make demo, which CI runs, is this job, and tests/dags checks DAG runs' logs for secrets"
)
def test_demo_runs_the_nightly_dag_twice_and_leaks_no_secret(tmp_path: Path) -> None:
    require("azurite")  # the demo replicates to Azure Blob
    result = subprocess.run(
        [sys.executable, "-m", "airflow_skyplane.demo", "--mib", "48", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["byte_identical"] is True and summary["emulators_stopped"] is True
    assert summary["second_run_objects"] == 0 and summary["gbps"] > 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "nightly_replication-plan-0.png", "nightly_replication-plan-1.png"
    ]  # fmt: skip
    assert "emulated-secret-key" not in output and AZURITE_KEY not in output
