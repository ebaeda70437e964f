"""A transfer nobody waits on in the task has its relays' store credentials renewed by whoever
watches it: the transfer sensor's pokes (``wait_for_completion=False``), or the trigger's polls in the
triggerer (``deferrable=True``, the task resuming in ``execute_complete``). S3 sessions that last
10 seconds (the transfer's start, planning and gateways, must fit in one on a loaded machine: nobody
renews before the watcher's first look), under exactly the policy of docs/connections.md with moto's
IAM enforced."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from airflow.exceptions import TaskDeferred
from airflow.sdk import PokeReturnValue

from airflow_skyplane.compute.fleets import fleet_ids
from airflow_skyplane.operators.transfer import SkyplaneTransferOperator
from airflow_skyplane.sensors.transfer import SkyplaneTransferSensor
from airflow_skyplane.testing.iam_account import documented_account
from airflow_skyplane.transfer.fleet import teardown
from airflow_skyplane.triggers.transfer import SkyplaneTransferTrigger

ROOT = Path(__file__).resolve().parents[2]
SESSION_S = 10.0


@contextmanager
def _account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: dict[str, bytes]
) -> Iterator[tuple[Any, Any, Any]]:
    """The documented account (``aws_iam``), its buckets, ``data`` under ``src-bucket``."""
    docs = (ROOT / "docs" / "connections.md").read_text()
    with documented_account(tmp_path / "iam", docs, session_lifetime_s=SESSION_S) as (
        account,
        front,
    ):
        monkeypatch.setenv("AIRFLOW_CONN_AWS_IAM", json.dumps(account.connection(front.url)))
        monkeypatch.setenv("AIRFLOW__SKYPLANE__CONNECTIONS_PER_RELAY", "1")
        s3 = account.admin_client("s3")
        for bucket in ("src-bucket", "dst-bucket"):
            s3.create_bucket(Bucket=bucket)
        for key, body in data.items():
            s3.put_object(Bucket="src-bucket", Key=key, Body=body)
        yield account, front, s3


def _check_renewed(account: Any, front: Any, s3: Any, data: dict[str, bytes], summary: Any) -> None:
    """Every object arrived; no request was signed with an expired session; the writing gateway took
    up sessions minted while it wrote (how many depends on how its writes fall in time, which the
    machine's load decides); the connection's own key is nowhere in the summary."""
    for key, body in data.items():
        assert s3.get_object(Bucket="dst-bucket", Key="out/" + key[3:])["Body"].read() == body
    assert front.front.refused_expired == []
    writing = {s.access_key_id for s in front.sessions("skyplane-") if s.name.endswith("-dst")}
    signed = [(k, m, p) for k, calls in front.front.signed.items() for m, p in calls]
    writes = {k for k, m, p in signed if m == "PUT" and "/dst-bucket/out/" in p}
    assert writes <= writing and len(writes) >= 2, (len(writes), len(writing))
    assert account.user_keys[1] not in json.dumps(summary)


def test_the_sensor_renews_the_relays_sessions_of_a_detached_transfer(
    tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(23)
    data = {f"in/obj-{n:02d}.bin": rng.randbytes(rng.randrange(100_000, 400_000)) for n in range(12)}
    with _account(tmp_path, monkeypatch, data) as (account, front, s3):
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
        _check_renewed(account, front, s3, data, result.xcom_value)


def test_the_trigger_renews_the_relays_sessions_of_a_deferred_transfer(
    tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(29)
    # objects of two chunks or so each (not batched into one frame), so the writer's delays add up
    data = {f"in/obj-{n:02d}.bin": rng.randbytes(rng.randrange(1_200_000, 1_700_000)) for n in range(6)}
    with _account(tmp_path, monkeypatch, data) as (account, front, s3):
        op = SkyplaneTransferOperator(
            task_id="deferred", source="s3://src-bucket/in/", destination="s3://dst-bucket/out/",
            aws_conn_id="aws_iam", deferrable=True, poll_interval=0.5,
        )  # fmt: skip
        op.test_faults = {"destination": {"delay_per_chunk_s": 2.0}}  # the transfer spans expiries
        with pytest.raises(TaskDeferred) as deferred:
            op.execute(context={})
        _, kwargs = deferred.value.trigger.serialize()
        trigger = SkyplaneTransferTrigger(**json.loads(json.dumps(kwargs)))  # what the triggerer gets

        async def first_event() -> Any:
            async for event in trigger.run():
                return event

        try:
            event = asyncio.run(asyncio.wait_for(first_event(), timeout=120))
            assert event.payload["status"] == "done", event.payload
            summary = op.execute_complete(context={}, event=event.payload)
        finally:
            teardown(kwargs["fleet_id"], kwargs["state_dir"])  # idempotent: a failed event's fleet too
        assert summary["status"] == "done" and summary["objects"] == len(data)
        _check_renewed(account, front, s3, data, summary)
        assert fleet_ids(state_dir) == []
