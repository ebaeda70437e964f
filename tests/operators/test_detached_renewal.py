"""A transfer left running (``wait_for_completion=False``) has its relays' store credentials renewed
by the transfer sensor's pokes, with nobody else watching: S3 sessions that last 5 seconds, under
exactly the policy of docs/connections.md with moto's IAM enforced."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import PokeReturnValue

from airflow_skyplane.operators.transfer import SkyplaneTransferOperator
from airflow_skyplane.sensors.transfer import SkyplaneTransferSensor
from airflow_skyplane.testing.iam_account import documented_account

ROOT = Path(__file__).resolve().parents[2]


def test_the_sensor_renews_the_relays_sessions_of_a_detached_transfer(
    tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = (ROOT / "docs" / "connections.md").read_text()
    with documented_account(tmp_path / "iam", docs, session_lifetime_s=5.0) as (account, front):
        monkeypatch.setenv("AIRFLOW_CONN_AWS_IAM", json.dumps(account.connection(front.url)))
        monkeypatch.setenv("AIRFLOW__SKYPLANE__CONNECTIONS_PER_RELAY", "1")
        s3 = account.admin_client("s3")
        for bucket in ("src-bucket", "dst-bucket"):
            s3.create_bucket(Bucket=bucket)
        rng = random.Random(23)
        data = {f"in/obj-{n:02d}.bin": rng.randbytes(rng.randrange(100_000, 400_000)) for n in range(12)}
        for key, body in data.items():
            s3.put_object(Bucket="src-bucket", Key=key, Body=body)
        op = SkyplaneTransferOperator(
            task_id="start", source="s3://src-bucket/in/", destination="s3://dst-bucket/out/",
            aws_conn_id="aws_iam", wait_for_completion=False,
        )  # fmt: skip
        op.test_faults = {"destination": {"delay_per_chunk_s": 3.0}}  # the transfer spans expiries
        started = op.execute(context={})
        assert started["status"] == "running"
        sensor = SkyplaneTransferSensor(task_id="wait", fleet_id=started["fleet_id"], poke_interval=0.5)
        deadline = time.monotonic() + 240
        result: Any = False
        while result is False and time.monotonic() < deadline:
            result = sensor.poke(context={})
            time.sleep(0.5)
        assert isinstance(result, PokeReturnValue) and result.is_done, result
        for key, body in data.items():
            assert s3.get_object(Bucket="dst-bucket", Key="out/" + key[3:])["Body"].read() == body
        assert front.front.refused_expired == []  # no request signed with an expired session
        writing = {s.access_key_id for s in front.sessions("skyplane-") if s.name.endswith("-dst")}
        signed = [(k, m, p) for k, calls in front.front.signed.items() for m, p in calls]
        writes = {k for k, m, p in signed if m == "PUT" and "/dst-bucket/out/" in p}
        # the writing gateway took up sessions minted by the pokes as it wrote (how many depends on
        # how its writes fall in time, which the machine's load decides); none had expired in use
        assert writes <= writing and len(writes) >= 2, (len(writes), len(writing))
        assert account.user_keys[1] not in json.dumps(result.xcom_value)
