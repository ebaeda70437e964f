"""The operator's modes against the emulated sky: sync, filters, multicast, detached + sensor,
deferrable with its trigger, a gateway killed mid-way, teardown by fleet id, bad input."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import TaskDeferred

from airflow_skyplane.compute import fleets
from airflow_skyplane.exceptions import (
    ConnectionNotFoundError,
    InfeasiblePlanError,
    InvalidInputError,
    TransferError,
)
from airflow_skyplane.hooks.storage import open_store
from airflow_skyplane.operators.plan_files import read_plans
from airflow_skyplane.operators.transfer import SkyplaneTransferOperator
from airflow_skyplane.sensors.transfer import SkyplaneReplicaSensor, SkyplaneTransferSensor
from airflow_skyplane.testing.sky import AZURITE_KEY, EmulatedSky
from airflow_skyplane.transfer.fleet import teardown
from airflow_skyplane.triggers.transfer import SkyplaneTransferTrigger

MiB = 1024 * 1024


def _syncs(summary: dict[str, Any]) -> list[dict[str, int]]:
    """What sync found (and deleted) at each destination, in order."""
    return [entry["sync"] for entry in summary["destinations"].values()]


def _contents(uri: str) -> dict[str, bytes]:
    loc = open_store(uri)
    return {i.key[len(loc.prefix) :]: loc.store.read(i.key) for i in loc.store.list(loc.prefix)}


def _seed(emulated_sky: EmulatedSky, uri: str, data: dict[str, bytes]) -> None:
    store = emulated_sky.open(uri)
    for key, body in data.items():
        store.put(key, body)


def _dataset(n: int = 12, seed: int = 3) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {
        f"in/day={d}/part-{i}.csv": rng.randbytes(rng.randrange(1, 200_000))
        for d in (1, 2)
        for i in range(n // 2)
    }


def test_sync_copies_only_new_and_changed_objects(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str]
) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("gs")
    data = _dataset()
    _seed(emulated_sky, src, data)

    def run() -> dict[str, Any]:
        op = SkyplaneTransferOperator(
            task_id="sync", source=f"{src}/in/", destination=f"{dst}/replica/", mode="sync", chunk_size_mb=1
        )
        return op.execute(context={})

    first = run()
    assert _syncs(first) == [{"new": 12, "changed": 0, "unchanged": 0, "extraneous": 0, "deleted": 0}]
    assert first["objects"] == 12 and _contents(f"{dst}/replica/") == {k[3:]: v for k, v in data.items()}
    second = run()
    assert _syncs(second)[0]["unchanged"] == 12 and second["objects"] == 0 and second["bytes"] == 0
    source = emulated_sky.open(src)
    source.put("in/day=1/part-0.csv", b"changed, and of another size")
    source.put("in/day=3/part-0.csv", b"new")
    third = run()
    assert _syncs(third)[0] == {"new": 1, "changed": 1, "unchanged": 11, "extraneous": 0, "deleted": 0}
    assert third["objects"] == 2
    replica = _contents(f"{dst}/replica/")
    assert (
        replica["day=1/part-0.csv"] == b"changed, and of another size"
        and replica["day=3/part-0.csv"] == b"new"
    )


def test_include_and_exclude_select_what_is_sent(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str]
) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("file")
    data = _dataset()
    data["in/day=1/_SUCCESS"] = b""
    _seed(emulated_sky, src, data)
    summary = SkyplaneTransferOperator(
        task_id="filtered", source=f"{src}/in/", destination=dst, include=["*.csv", "*_SUCCESS"],
        exclude="day=2/*",
    ).execute(context={})  # fmt: skip
    wanted = {k[3:]: v for k, v in data.items() if k.startswith("in/day=1/")}
    assert _contents(dst) == wanted and summary["objects"] == len(wanted)


def test_multicast_to_three_stores_in_one_task(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str]
) -> None:
    src = sky_bucket("s3")
    dsts = [sky_bucket("gs") + "/ckpt-100/", sky_bucket("az") + "/ckpt-100/", sky_bucket("file")]
    checkpoint = {
        "model/ckpt-100/weights.bin": random.Random(1).randbytes(9 * MiB),
        "model/ckpt-100/meta.json": b"{}",
    }
    _seed(emulated_sky, src, checkpoint)
    summary = SkyplaneTransferOperator(
        task_id="distribute",
        source=f"{src}/model/ckpt-100/",
        destination=dsts,
        destination_region=["gcp:europe-west4-a", "azure:westeurope", "aws:ap-northeast-1"],
        chunk_size_mb=2,
    ).execute(context={})
    for d in dsts:
        assert _contents(d) == {k[len("model/ckpt-100/") :]: v for k, v in checkpoint.items()}
    assert list(summary["destinations"]) == dsts and [
        d["objects"] for d in summary["destinations"].values()
    ] == [2, 2, 2]
    assert summary["objects"] == 6 and list(read_plans(summary)["destinations"]) == dsts  # in order
    assert read_plans(summary)["multicast_plan"]["destinations"] == [
        "gcp:europe-west4-a",
        "azure:westeurope",
        "aws:ap-northeast-1",
    ]


def test_detached_transfer_is_finished_by_the_sensor(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str], state_dir: Path
) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("az")
    data = _dataset()
    _seed(emulated_sky, src, data)
    started = SkyplaneTransferOperator(
        task_id="start", source=f"{src}/in/", destination=f"{dst}/r/", wait_for_completion=False
    ).execute(context={})
    assert started["status"] == "running" and (state_dir / started["fleet_id"]).is_dir()
    sensor = SkyplaneTransferSensor(task_id="wait", fleet_id=started["fleet_id"], poke_interval=0.2)
    deadline = time.monotonic() + 60
    result: Any = False
    while result is False and time.monotonic() < deadline:
        result = sensor.poke(context={})
        time.sleep(0.1)
    assert isinstance(result, PokeReturnValue) and result.is_done
    summary = result.xcom_value
    assert (
        summary["status"] == "done"
        and summary["objects"] == len(data)
        and summary["fleet_id"] == started["fleet_id"]
    )
    assert _contents(f"{dst}/r/") == {k[3:]: v for k, v in data.items()}
    assert not (state_dir / started["fleet_id"]).exists()
    assert AZURITE_KEY not in json.dumps(summary)


def test_deferrable_operator_resumes_from_its_trigger(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str], state_dir: Path
) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("gs")
    data = _dataset()
    _seed(emulated_sky, src, data)
    op = SkyplaneTransferOperator(
        task_id="deferred", source=f"{src}/in/", destination=dst, destination_region="gcp:us-central1-a",
        deferrable=True, poll_interval=0.2,
    )  # fmt: skip
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context={})
    trigger = deferred.value.trigger
    assert isinstance(trigger, SkyplaneTransferTrigger) and deferred.value.method_name == "execute_complete"
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_skyplane.triggers.transfer.SkyplaneTransferTrigger"
    rebuilt = SkyplaneTransferTrigger(**json.loads(json.dumps(kwargs)))  # what the triggerer gets

    async def first_event() -> Any:
        async for event in rebuilt.run():
            return event

    event = asyncio.run(first_event())
    assert event.payload["status"] == "done"
    summary = op.execute_complete(context={}, event=event.payload)
    assert summary["status"] == "done" and summary["objects"] == len(data)
    assert summary["predicted_gbps"] > 0 and summary["destinations"][dst]["region"] == "gcp:us-central1-a"
    assert read_plans(summary)["destinations"][dst]["plan"]["destinations"] == ["gcp:us-central1-a"]
    assert _contents(dst) == {k[3:]: v for k, v in data.items()}
    assert not (state_dir / summary["fleet_id"]).exists()


def test_a_gateway_killed_midway_fails_cleanly_and_a_retry_completes(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str], state_dir: Path
) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("az")
    data = {"big/weights.bin": random.Random(5).randbytes(24 * MiB), "big/small.txt": b"x" * 100}
    _seed(emulated_sky, src, data)

    def operator() -> SkyplaneTransferOperator:
        return SkyplaneTransferOperator(
            task_id="fragile", source=f"{src}/big/", destination=f"{dst}/copy/", chunk_size_mb=2
        )

    op = operator()
    op.test_faults = {"destination": {"exit_after_chunks": 4}}
    with pytest.raises(TransferError, match="gateway destination exited|does not answer|lost the status"):
        op.execute(context={})
    assert fleets.gateways_under(state_dir) == [] and fleets.fleet_ids(state_dir) == []
    replica = open_store(f"{dst}/copy/").store
    assert not replica.exists("copy/weights.bin")  # no partial object
    assert list(replica.list_multipart_uploads()) == []
    summary = operator().execute(context={})  # the retry
    assert summary["objects"] == 2 and _contents(f"{dst}/copy/") == {k[4:]: v for k, v in data.items()}


def test_a_detached_fleet_is_torn_down_by_its_id_alone(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str], state_dir: Path
) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("s3")
    _seed(emulated_sky, src, {"a/big.bin": random.Random(2).randbytes(16 * MiB)})
    op = SkyplaneTransferOperator(
        task_id="t", source=f"{src}/a/", destination=dst, wait_for_completion=False, chunk_size_mb=5
    )
    op.test_faults = {"destination": {"exit_after_chunks": 1_000_000}}
    started = op.execute(context={})
    fleet_id = started["fleet_id"]
    teardown(fleet_id, str(state_dir))
    assert fleets.gateways_under(state_dir) == [] and not (state_dir / fleet_id).exists()
    assert (
        list(open_store(dst).store.list_multipart_uploads()) == []
        and list(open_store(dst).store.list()) == []
    )
    assert teardown(fleet_id, str(state_dir)) == []  # idempotent


def test_the_sweeper_removes_expired_fleets(state_dir: Path, tmp_path: Path) -> None:
    fleets.FleetRecord("old", "local", time.time() - 7200, time.time() - 3600).write(state_dir / "old")
    fleets.FleetRecord("young", "local", time.time(), time.time() + 3600).write(state_dir / "young")
    assert [r.fleet_id for r, _ in fleets.list_fleets(state_dir)] == ["old", "young"]
    assert fleets.sweep(state_dir) == ["old"]
    assert fleets.fleet_ids(state_dir) == ["young"]


def test_replica_sensor_waits_for_sync(emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str]) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("file")
    data = _dataset(4)
    _seed(emulated_sky, src, data)
    sensor = SkyplaneReplicaSensor(task_id="fresh", source=f"{src}/in/", destination=dst)
    assert sensor.poke(context={}).is_done is False  # type: ignore[union-attr]
    SkyplaneTransferOperator(task_id="c", source=f"{src}/in/", destination=dst).execute(context={})
    done = sensor.poke(context={})
    assert isinstance(done, PokeReturnValue) and done.is_done and done.xcom_value["unchanged"] == 4


def test_replica_sensor_sees_a_chain_in_sync_where_the_middle_bucket_holds_transfer_state(
    sky_bucket: Callable[[str], str], tmp_path: Path
) -> None:
    """A -> B -> C, B a destination and a source: a failed resumable try into B leaves its state
    (and uploads) under B's .skyplane-state/; the operator never copies that folder on to C, and the
    replica sensor, listing the same way, reports both links in sync."""
    from airflow_skyplane.compute.local import LocalRelayBackend
    from airflow_skyplane.transfer import resume
    from airflow_skyplane.transfer.job import Overlay, TransferJob

    a, b, c = sky_bucket("file"), sky_bucket("file"), sky_bucket("file")
    data = _dataset(6, seed=11)
    a_store, b_store = open_store(a).store, open_store(b).store
    for key, body in data.items():
        a_store.put(key, body)
    SkyplaneTransferOperator(task_id="a_to_b", source=a, destination=b).execute(context={})
    a_store.put("later/big.bin", random.Random(12).randbytes(6 * MiB))
    key = resume.state_key(
        resume.DEFAULT_STATE_PREFIX, dag_id="d", task_id="t", run_id="r", map_index=-1, destination=b
    )
    failed = TransferJob(
        a_store, "later/", b_store, "later/", backend=LocalRelayBackend(tmp_path / "fleet"),
        workdir=tmp_path / "job", overlay=Overlay.direct(2), chunk_size=MiB, state_key=key,
        test_faults={"destination": {"exit_after_chunks": 2}},
    )  # fmt: skip
    with pytest.raises(TransferError, match="exited"):
        failed.run()
    assert b_store.exists(key) and [u.key for u in b_store.list_multipart_uploads()] == ["later/big.bin"]

    SkyplaneTransferOperator(task_id="b_to_c", source=b, destination=c).execute(context={})
    replica = [i.key for i in open_store(c).store.list()]
    assert sorted(replica) == sorted(data) and not any(
        k.startswith(resume.DEFAULT_STATE_PREFIX) for k in replica
    )
    a_to_b = SkyplaneReplicaSensor(task_id="ab", source=a, destination=b, exclude="later/*").poke(context={})
    b_to_c = SkyplaneReplicaSensor(task_id="bc", source=b, destination=c).poke(context={})
    assert isinstance(a_to_b, PokeReturnValue) and a_to_b.is_done
    assert isinstance(b_to_c, PokeReturnValue) and b_to_c.is_done
    assert b_to_c.xcom_value == {"new": 0, "changed": 0, "unchanged": len(data), "extraneous": 0}
    assert b_store.exists(key)  # the state is still in B, and was never taken for data


def test_lineage_names_source_and_destinations() -> None:
    op = SkyplaneTransferOperator(
        task_id="l", source="s3://src-bucket/data/", destination=["gs://dst-bucket/copy/", "az://cont/x/"]
    )
    lineage = op.get_openlineage_facets_on_start()
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("s3://src-bucket", "data")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [
        ("gs://dst-bucket", "copy"),
        ("wasbs://cont", "x"),
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"aws_conn_id": "no_such_conn"}, ConnectionNotFoundError, "no_such_conn"),
        (
            {"deadline": 0.001, "objective": "cost", "destination_region": "azure:westeurope"},
            InfeasiblePlanError,
            "deadline=",
        ),
        ({"deferrable": True, "wait_for_completion": False}, InvalidInputError, "deferrable=True"),
        (
            {"objective": "throughput", "deadline": 60},
            InvalidInputError,
            "deadline is a limit of objective='cost'",
        ),
        ({"mode": "mirror"}, InvalidInputError, "mode='mirror'"),
        ({"compare": "mtime"}, InvalidInputError, "compare='mtime'"),
        ({"include": "/abs/*"}, InvalidInputError, "include='/abs/\\*'"),
        (
            {"destination_region": ["aws:us-east-1", "aws:us-west-2"]},
            InvalidInputError,
            "destination_region has 2",
        ),
        ({"max_cost_usd": -1}, InvalidInputError, "max_cost_usd=-1"),
        ({"chunk_size_mb": 0}, InvalidInputError, "chunk_size_mb=0"),
        ({"relay_backend": "moon"}, InvalidInputError, "relay_backend='moon'"),
    ],
)
def test_bad_input_fails_before_anything_starts(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str], state_dir: Path,
    kwargs: dict[str, Any], error: type[Exception], match: str,
) -> None:  # fmt: skip
    src, dst = sky_bucket("s3"), sky_bucket("az")
    _seed(emulated_sky, src, {"d/x.bin": random.Random(0).randbytes(3 * MiB)})
    with pytest.raises(error, match=match):
        SkyplaneTransferOperator(task_id="bad", source=f"{src}/d/", destination=dst, **kwargs).execute(
            context={}
        )
    assert fleets.fleet_ids(state_dir) == []
    assert list(open_store(dst).store.list()) == []


def test_an_infeasible_plan_names_the_binding_limits_by_the_operators_parameters(
    sky_bucket: Callable[[str], str],
) -> None:
    from airflow_skyplane.planner import NetworkModel, plan_transfer

    with pytest.raises(InfeasiblePlanError) as planner:
        plan_transfer(
            NetworkModel.default(), "aws:us-east-1", "azure:westeurope", objective="cost", size_gb=1.0,
            deadline_s=0.001, max_vms_per_region=1,
        )  # fmt: skip
    assert planner.value.limits == ("deadline_s", "max_vms_per_region")
    src, dst = sky_bucket("file"), sky_bucket("file")
    open_store(src).store.put("d/x.bin", random.Random(0).randbytes(MiB))
    op = SkyplaneTransferOperator(
        task_id="tight", source=f"{src}/d/", destination=dst, source_region="aws:us-east-1",
        destination_region="azure:westeurope", objective="cost", deadline=0.001, max_relays_per_region=1,
    )  # fmt: skip
    with pytest.raises(InfeasiblePlanError) as task:
        op.execute(context={})
    assert task.value.limits == ("deadline", "max_relays_per_region")
    assert "deadline=0.001" in str(task.value) and "max_relays_per_region=1" in str(task.value)
    assert list(open_store(dst).store.list()) == []


@pytest.mark.parametrize("target", [{}, {"objective": "cost", "min_throughput_gbps": 2.0}])
def test_a_budget_too_small_names_max_cost_usd_and_the_real_minimum(
    sky_bucket: Callable[[str], str], target: dict[str, Any]
) -> None:
    src, dst = sky_bucket("file"), sky_bucket("file")
    open_store(src).store.put("d/x.bin", random.Random(0).randbytes(4 * MiB))

    def operator(budget: float) -> SkyplaneTransferOperator:
        return SkyplaneTransferOperator(
            task_id="cheap", source=f"{src}/d/", destination=dst, source_region="aws:us-east-1",
            destination_region="azure:westeurope", max_cost_usd=budget, dry_run=True, **target,
        )  # fmt: skip

    with pytest.raises(InfeasiblePlanError) as small:
        operator(0.0001).execute(context={})
    message = str(small.value)
    assert message.startswith("task 'cheap': max_cost_usd=0.0001 is too small: the cheapest plan")
    assert "--budget-usd" not in message and small.value.limits[0] == "max_cost_usd"
    [cost, minimum] = re.findall(r"costs \$(\S+) \(.*raise max_cost_usd to at least ([\d.e-]*\d)", message)[0]
    assert float(cost) <= float(minimum) < 0.01  # 4 MiB costs a fraction of a cent: said as it is
    planned = operator(float(minimum)).execute(context={})  # the minimum it names is enough
    assert planned["estimated_cost_usd"] <= float(minimum)


def test_the_same_destination_twice_is_refused(sky_bucket: Callable[[str], str]) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("gs")
    op = SkyplaneTransferOperator(task_id="twice", source=src, destination=[dst, dst])
    with pytest.raises(InvalidInputError, match="names the same URI twice"):
        op.execute(context={})


def test_user_failure_callbacks_are_kept_beside_the_teardown() -> None:
    calls: list[str] = []
    op = SkyplaneTransferOperator(
        task_id="cb",
        source="s3://a-bucket/x/",
        destination="gs://b-bucket/",
        on_failure_callback=lambda ctx: calls.append("user"),
    )
    names = [getattr(cb, "__name__", "") for cb in op.on_failure_callback]  # type: ignore[union-attr]
    assert names == ["<lambda>", "teardown_on_failure"]


def test_cleanup_operator_and_cli_sweep_expired_fleets(
    emulated_sky: EmulatedSky,
    sky_bucket: Callable[[str], str],
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from airflow_skyplane.cli import main
    from airflow_skyplane.operators.cleanup import SkyplaneCleanupOperator

    src, dst = sky_bucket("s3"), sky_bucket("gs")
    _seed(emulated_sky, src, {"a/big.bin": random.Random(2).randbytes(12 * MiB)})
    op = SkyplaneTransferOperator(
        task_id="t", source=f"{src}/a/", destination=dst, wait_for_completion=False, chunk_size_mb=5
    )
    op.test_faults = {"destination": {"exit_after_chunks": 1_000_000}}
    fleet_id = op.execute(context={})["fleet_id"]
    capsys.readouterr()  # the task's own log lines
    assert main(["fleets", "list", "--json", "--state-dir", str(state_dir)]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["fleet_id"] == fleet_id and listed["owner"]["task_id"] == "t"
    assert SkyplaneCleanupOperator(task_id="sweep").execute(context={}) == []  # not expired yet
    assert SkyplaneCleanupOperator(task_id="sweep", older_than_minutes=0.001).execute(context={}) == [
        fleet_id
    ]
    assert fleets.gateways_under(state_dir) == [] and list(open_store(dst).store.list()) == []
    capsys.readouterr()
    assert main(["fleets", "sweep", "--state-dir", str(state_dir)]) == 0
    assert "swept 0 fleet(s)" in capsys.readouterr().out


def _first_event(trigger: SkyplaneTransferTrigger) -> Any:
    classpath, kwargs = trigger.serialize()
    rebuilt = SkyplaneTransferTrigger(**json.loads(json.dumps(kwargs)))

    async def first() -> Any:
        async for event in rebuilt.run():
            return event

    return asyncio.run(first()).payload


def test_deferrable_sensor_finishes_a_detached_transfer(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str], state_dir: Path
) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("file")
    data = _dataset(6)
    _seed(emulated_sky, src, data)
    fleet_id = SkyplaneTransferOperator(
        task_id="start", source=f"{src}/in/", destination=dst, wait_for_completion=False
    ).execute(context={})["fleet_id"]
    sensor = SkyplaneTransferSensor(task_id="wait", fleet_id=fleet_id, deferrable=True, poke_interval=0.2)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context={})
    summary = sensor.execute_complete(context={}, event=_first_event(deferred.value.trigger))
    assert summary["objects"] == 6 and _contents(dst) == {k[3:]: v for k, v in data.items()}
    assert fleets.fleet_ids(state_dir) == []


def test_a_failed_deferred_transfer_fails_the_task_and_tears_down(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str], state_dir: Path
) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("az")
    _seed(emulated_sky, src, {"w/big.bin": random.Random(3).randbytes(16 * MiB)})
    op = SkyplaneTransferOperator(
        task_id="doomed",
        source=f"{src}/w/",
        destination=dst,
        deferrable=True,
        poll_interval=0.2,
        chunk_size_mb=2,
    )
    op.test_faults = {"destination": {"exit_after_chunks": 2}}
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context={})
    event = _first_event(deferred.value.trigger)
    assert event["status"] == "failed" and "destination" in event["message"]
    with pytest.raises(TransferError, match="failed"):
        op.execute_complete(context={}, event=event)
    assert fleets.gateways_under(state_dir) == [] and fleets.fleet_ids(state_dir) == []
    store = open_store(dst).store
    assert list(store.list()) == [] and list(store.list_multipart_uploads()) == []


def test_the_sensor_fails_with_the_gateways_error_and_tears_down(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str], state_dir: Path
) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("s3")
    _seed(emulated_sky, src, {"w/big.bin": random.Random(4).randbytes(16 * MiB)})
    op = SkyplaneTransferOperator(
        task_id="t", source=f"{src}/w/", destination=dst, wait_for_completion=False, chunk_size_mb=5
    )
    op.test_faults = {"destination": {"exit_after_chunks": 1}}
    fleet_id = op.execute(context={})["fleet_id"]
    sensor = SkyplaneTransferSensor(task_id="wait", fleet_id=fleet_id)
    with pytest.raises(TransferError, match=f"transfer on fleet {fleet_id} failed"):
        deadline = time.monotonic() + 60
        while sensor.poke(context={}) is False and time.monotonic() < deadline:
            time.sleep(0.1)
    assert fleets.fleet_ids(state_dir) == [] and list(open_store(dst).store.list_multipart_uploads()) == []


def test_deferrable_replica_sensor_sleeps_in_the_triggerer(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str]
) -> None:
    from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

    src, dst = sky_bucket("s3"), sky_bucket("gs")
    _seed(emulated_sky, src, _dataset(2))
    sensor = SkyplaneReplicaSensor(task_id="fresh", source=f"{src}/in/", destination=dst, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context={})
    assert isinstance(deferred.value.trigger, TimeDeltaTrigger)
    SkyplaneTransferOperator(task_id="c", source=f"{src}/in/", destination=dst).execute(context={})
    started = deferred.value.kwargs["started"]
    assert sensor.execute_complete(context={}, event=None, started=started) == {
        "new": 0, "changed": 0, "unchanged": 2, "extraneous": 0
    }  # fmt: skip


def test_sync_day_two_copies_exactly_the_changes_and_deletes_with_a_guard(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str], state_dir: Path
) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("gs")
    rng = random.Random(11)
    day1 = {f"t/part-{n:03d}.csv": rng.randbytes(rng.randrange(100, 20_000)) for n in range(100)}
    _seed(emulated_sky, src, day1)

    def sync(**kwargs: Any) -> dict[str, Any]:
        return SkyplaneTransferOperator(
            task_id="sync", source=f"{src}/t/", destination=dst, mode="sync", delete_extraneous=True, **kwargs
        ).execute(context={})

    assert _syncs(sync()) == [{"new": 100, "changed": 0, "unchanged": 0, "extraneous": 0, "deleted": 0}]
    source = emulated_sky.open(src)
    keys = sorted(day1)
    for key in keys[:5]:  # 5% changed
        source.put(key, b"changed " + day1[key])
    for key in keys[5:10]:  # 5% deleted at the source
        source.delete(key)
    for n in range(5):  # 5% added
        source.put(f"t/new-{n}.csv", b"new %d" % n)
    with pytest.raises(InvalidInputError, match="would delete 5 objects .* more than max_delete=3"):
        sync(max_delete=3)
    assert len(list(open_store(dst).store.list())) == 100  # the guard deleted nothing, sent nothing
    planned = sync(dry_run=True)
    assert _syncs(planned)[0]["extraneous"] == 5 and len(list(open_store(dst).store.list())) == 100
    summary = sync()
    assert _syncs(summary) == [{"new": 5, "changed": 5, "unchanged": 90, "extraneous": 5, "deleted": 5}]
    assert summary["objects"] == 10
    expected = {k[2:]: source.read(k) for k in (i.key for i in source.list("t/"))}
    assert _contents(dst) == expected


_DOOMED_WORKER = """
import sys
from airflow_skyplane.operators.transfer import SkyplaneTransferOperator
SkyplaneTransferOperator(task_id="doomed", source=sys.argv[1], destination=sys.argv[2], chunk_size_mb=4,
                         compression=False).execute(context={})
"""


def test_gateways_stop_when_their_worker_is_killed_without_teardown(tmp_path: Path, state_dir: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for n in range(6):
        (src / f"blob-{n}.bin").write_bytes(os.urandom(64 * MiB))
    worker = subprocess.Popen(
        [sys.executable, "-c", _DOOMED_WORKER, f"file://{src}", f"file://{dst}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not fleets.gateways_under(state_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fleets.gateways_under(state_dir), "the transfer never started"
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # no finally, no atexit, no callback runs
        worker.wait(timeout=30)
    deadline = time.monotonic() + 15
    while fleets.gateways_under(state_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fleets.gateways_under(state_dir) == []  # they noticed, and stopped themselves
    [fleet_id] = fleets.fleet_ids(state_dir)
    teardown(fleet_id, str(state_dir))  # what the sweeper does: records and dangling uploads go too
    assert fleets.fleet_ids(state_dir) == [] and sorted(p.name for p in dst.iterdir()) in (
        [],
        [".skyplane-uploads"],
    )
    left = sorted(str(p.relative_to(dst)) for p in dst.rglob("*"))
    assert left in ([], [".skyplane-uploads"]), left


def test_a_second_transfer_into_a_prefix_being_written_fails_clearly(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str], state_dir: Path
) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("gs")
    _seed(emulated_sky, src, _dataset(4))
    first = SkyplaneTransferOperator(
        task_id="first", source=f"{src}/in/", destination=f"{dst}/day=1/", wait_for_completion=False
    ).execute(context={})
    second = SkyplaneTransferOperator(task_id="second", source=f"{src}/in/", destination=f"{dst}/day=1/part/")
    with pytest.raises(TransferError, match=f"is being written by fleet {first['fleet_id']} .*first"):
        second.execute(context={})
    other_prefix = SkyplaneTransferOperator(task_id="other", source=f"{src}/in/", destination=f"{dst}/day=2/")
    assert other_prefix.execute(context={})["objects"] == 4  # another prefix of the bucket: no conflict
    teardown(first["fleet_id"], str(state_dir))
    assert second.execute(context={})["objects"] == 4  # once the first is gone
