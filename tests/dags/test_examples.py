"""The example DAGs, parsed and run for real with `airflow dags test` against the emulated sky."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_skyplane.compute.fleets import fleet_ids, gateways_under
from airflow_skyplane.hooks.storage import open_store
from airflow_skyplane.operators.plan_files import read_plans
from airflow_skyplane.testing.dagrun import airflow_cli, migrate, xcom_return_values
from airflow_skyplane.testing.sky import AZURITE_KEY, EmulatedSky
from airflow_skyplane.transfer.fleet import teardown
from airflow_skyplane.transfer.resume import load_state

pytestmark = pytest.mark.airflow
DAGS = Path(__file__).resolve().parents[2] / "dags_examples"
MiB = 1024 * 1024


@pytest.fixture
def airflow_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(tmp_path / "airflow-home"),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__SKYPLANE__STATE_DIR=str(tmp_path / "fleets"),
    )
    migrate(env["AIRFLOW_HOME"], env)
    return env


def _run(env: dict[str, str], *args: str) -> str:
    run = airflow_cli(["dags", "test", *args], env, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "emulated-secret-key" not in output and AZURITE_KEY not in output
    assert gateways_under(env["AIRFLOW__SKYPLANE__STATE_DIR"]) == []
    return output


def _syncs(summary: dict[str, Any]) -> list[dict[str, int]]:
    """What sync found (and deleted) at each destination, in order."""
    return [entry["sync"] for entry in summary["destinations"].values()]


def _contents(uri: str) -> dict[str, bytes]:
    loc = open_store(uri)
    return {i.key[len(loc.prefix) :]: loc.store.read(i.key) for i in loc.store.list(loc.prefix)}


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
    assert result["dags"] == [
        "backfill_historical", "multicast_distribution", "nightly_replication", "replica_report"
    ]  # fmt: skip


def test_nightly_replication_syncs_one_day_to_gcs_and_azure(
    airflow_env: dict[str, str], emulated_sky: EmulatedSky, sky_bucket: Callable[..., str]
) -> None:
    src, gcs, azure = sky_bucket("s3"), sky_bucket("gs"), sky_bucket("az")
    source = emulated_sky.open(src)
    rng = random.Random(4)
    day = {f"date=2026-11-20/part-{n}.json": f'{{"n": {n}}}\n'.encode() * (n * 500 + 1) for n in range(12)}
    day["date=2026-11-20/model.bin"] = rng.randbytes(6 * MiB)
    other = {"date=2026-11-19/part-0.json": b"not this day\n", "date=2026-11-20/x.tmp": b"excluded"}
    for key, body in {**day, **other}.items():
        source.put("events/" + key, body)
    env = dict(airflow_env, **emulated_sky.env())
    env.update(
        SKYPLANE_EXAMPLE_SOURCE=f"{src}/events", SKYPLANE_EXAMPLE_GCS=f"{gcs}/events",
        SKYPLANE_EXAMPLE_AZURE=f"{azure}/events",
    )  # fmt: skip
    _run(env, "nightly_replication", "2026-11-20")
    for replica in (gcs, azure):
        assert _contents(f"{replica}/events/") == day
    [summary] = xcom_return_values(env["AIRFLOW_HOME"], "nightly_replication", "sync_day")
    assert "emulated-secret-key" not in json.dumps(summary) and AZURITE_KEY not in json.dumps(summary)
    assert summary["objects"] == 2 * len(day) and summary["checksums_verified"] == 2 * len(day)
    assert list(summary["destinations"]) == [
        f"{gcs}/events/date=2026-11-20/", f"{azure}/events/date=2026-11-20/"
    ]  # fmt: skip
    assert len(json.dumps(summary)) < 2048  # plans whole are in the plan file, not in XCom
    assert read_plans(summary)["destinations"][f"{azure}/events/date=2026-11-20/"]["plan"] is not None
    _run(env, "nightly_replication", "2026-11-20")  # a rerun finds everything in place
    [again] = xcom_return_values(env["AIRFLOW_HOME"], "nightly_replication", "sync_day")
    assert again["objects"] == 0 and [s["unchanged"] for s in _syncs(again)] == [len(day), len(day)]


def test_multicast_distribution_defers_and_reaches_three_regions(
    airflow_env: dict[str, str], emulated_sky: EmulatedSky, sky_bucket: Callable[..., str]
) -> None:
    models, eu, az = sky_bucket("s3"), sky_bucket("gs"), sky_bucket("az")
    ap = sky_bucket("s3", "aws:ap-northeast-1")  # where the DAG says that replica is
    ckpt = {"weights.bin": random.Random(3).randbytes(12 * MiB), "config.json": b'{"layers": 12}'}
    store = emulated_sky.open(models)
    for key, body in ckpt.items():
        store.put(f"checkpoints/ckpt-000100/{key}", body)
    env = dict(airflow_env, **emulated_sky.env())
    env.update(
        SKYPLANE_EXAMPLE_MODELS=f"{models}/checkpoints", SKYPLANE_EXAMPLE_SERVING_EU=f"{eu}/models",
        SKYPLANE_EXAMPLE_SERVING_AZ=f"{az}/models", SKYPLANE_EXAMPLE_SERVING_AP=f"{ap}/models",
    )  # fmt: skip
    output = _run(env, "multicast_distribution", "--conf", json.dumps({"checkpoint": "ckpt-000100"}))
    assert "running trigger in line" in output  # the operator deferred to SkyplaneTransferTrigger
    for replica in (eu, az, ap):
        assert _contents(f"{replica}/models/ckpt-000100/") == ckpt
    [summary] = xcom_return_values(env["AIRFLOW_HOME"], "multicast_distribution", "distribute")
    assert summary["status"] == "done" and summary["objects"] == 6
    assert read_plans(summary)["multicast_plan"]["destinations"] == [
        "gcp:europe-west4-a",
        "azure:westeurope",
        "aws:ap-northeast-1",
    ]
    checks = xcom_return_values(env["AIRFLOW_HOME"], "multicast_distribution", "check_gcp_europe_west4_a")
    assert checks == [{"new": 0, "changed": 0, "unchanged": 2, "extraneous": 0}]


@pytest.mark.full_tier(
    reason="a minute of Airflow start-ups; test_operator_modes.py kills a gateway and retries in seconds"
)
def test_a_gateway_killed_midway_fails_the_try_tears_down_and_the_retry_completes(
    airflow_env: dict[str, str], emulated_sky: EmulatedSky, sky_bucket: Callable[..., str], tmp_path: Path
) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("az")
    data = {"w/big.bin": random.Random(6).randbytes(20 * MiB), "w/small.txt": b"small"}
    store = emulated_sky.open(src)
    for key, body in data.items():
        store.put(key, body)
    env = dict(airflow_env, **emulated_sky.env())
    env.update(
        AIRFLOW__CORE__DAGS_FOLDER=str(Path(__file__).parent / "faulty"),
        FAULTY_SOURCE=f"{src}/w/", FAULTY_DESTINATION=f"{dst}/copy/",
    )  # fmt: skip
    output = _run(env, "failing_once")
    assert "gateway destination exited with code 17" in output  # the first try failed, and said why
    assert _contents(f"{dst}/copy/") == {k[2:]: v for k, v in data.items()}  # the retry completed
    assert fleet_ids(env["AIRFLOW__SKYPLANE__STATE_DIR"]) == []  # both fleets torn down
    [summary] = xcom_return_values(env["AIRFLOW_HOME"], "failing_once", "copy")
    assert summary["objects"] == 2
    # the first try kept its upload and checkpoint for the retry; the retry completed and cleaned both
    destination = emulated_sky.open(dst)
    assert list(destination.list(".skyplane-state/")) == []
    assert list(destination.list_multipart_uploads()) == []


def _under_way(store: Any) -> bool:
    """A transfer into ``store`` is under way: it holds its durable state and parts written."""
    return bool(list(store.list(".skyplane-state/")) and list(store.list_multipart_uploads()))


def test_a_task_stopped_mid_transfer_runs_its_failure_callback_to_the_end(
    airflow_env: dict[str, str], emulated_sky: EmulatedSky, sky_bucket: Callable[..., str], tmp_path: Path
) -> None:
    """SIGTERM to ``airflow dags test`` of a two-destination copy once both transfers are under way:
    the task fails for good, and the failure callback Airflow 3 runs tears the fleet down and discards
    the state of each destination, logging every step; nothing is left at either destination. A task
    that failed before it started a fleet logs no error from its callback."""
    src, gcs, azure, left = sky_bucket("s3"), sky_bucket("gs"), sky_bucket("az"), sky_bucket("s3")
    rng = random.Random(8)
    source = emulated_sky.open(src)
    for n in range(3):
        source.put(f"data/part-{n}.bin", rng.randbytes(8 * MiB))
    destinations = [f"{gcs}/copy/", f"{azure}/copy/"]
    env = dict(airflow_env, **emulated_sky.env())
    env.update(
        AIRFLOW__CORE__DAGS_FOLDER=str(Path(__file__).parent / "faulty"),
        KILLED_SOURCE=f"{src}/data/", KILLED_DESTINATIONS=" ".join(destinations),
        DETACHED_DESTINATION=f"{left}/copy/",
    )  # fmt: skip
    stores = [emulated_sky.open(gcs), emulated_sky.open(azure)]
    airflow = str(Path(sys.executable).parent / "airflow")
    log = tmp_path / "dags-test.log"
    with log.open("w") as out:
        run = subprocess.Popen(
            [airflow, "dags", "test", "killed_copy", "2026-11-03"], env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while not all(_under_way(s) for s in stores):
                assert run.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, "the transfers did not start"
                time.sleep(0.2)
            os.kill(run.pid, signal.SIGTERM)  # the task process only: what a worker's kill does
            run.wait(timeout=300)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
    output = log.read_text()
    assert "emulated-secret-key" not in output and AZURITE_KEY not in output
    assert "the task was stopped (SIGTERM, on_kill) during the transfer" in output
    assert "skyplane-no-such-bucket" in output  # the task before it failed before it started
    assert "Failed to run task callback" not in output and "XCom not found" not in output, output[-6000:]
    assert re.search(r"fleet \w+ torn down after the failure", output), output[-6000:]
    discarded = re.findall(r"transfer state of (\S+) discarded after the failure: (\d+) upload", output)
    assert [uri for uri, _ in discarded] == destinations, output[-6000:]
    for store in stores:
        assert list(store.list(".skyplane-state/")) == []
        assert list(store.list_multipart_uploads()) == []
        assert list(store.list("copy/")) == []  # no object, whole or partial

    # the transfer left running keeps its state and uploads (its task may be retried) until a person
    # tears its fleet down, for good
    state_dir = env["AIRFLOW__SKYPLANE__STATE_DIR"]
    [running] = fleet_ids(state_dir)
    detached = emulated_sky.open(left)
    assert list(detached.list(".skyplane-state/")) != []
    cli = str(Path(sys.executable).parent / "airflow-skyplane")
    done = subprocess.run(
        [cli, "fleets", "teardown", running, "--state-dir", state_dir], env=env, capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith(
        "aborted its uploads, deleted its transfer states, removed its record"
    )
    assert list(detached.list(".skyplane-state/")) == [] and list(detached.list_multipart_uploads()) == []
    assert gateways_under(state_dir) == [] and fleet_ids(state_dir) == []


@pytest.mark.slow
@pytest.mark.full_tier(
    reason="a minute of Airflow start-ups; tests/transfer/test_resume.py resumes killed transfers in seconds"
)
def test_a_task_killed_midway_is_resumed_by_its_next_try(
    airflow_env: dict[str, str], emulated_sky: EmulatedSky, sky_bucket: Callable[..., str]
) -> None:
    """SIGKILL the task's process and its gateways once a quarter is checkpointed; the next try of the
    same task instance (``tasks test`` on the killed run) continues the S3 multipart upload and sends
    only the rest; the killed fleet, swept afterwards, harms nothing."""
    src, dst = sky_bucket("s3"), sky_bucket("s3")
    rng = random.Random(21)
    data = {"data/weights.bin": rng.randbytes(64 * MiB), "data/config.json": b'{"k": 1}'}
    data.update({f"data/shard-{n}.bin": rng.randbytes(4 * MiB) for n in range(4)})
    total = sum(len(b) for b in data.values())
    _seed_store = emulated_sky.open(src)
    for key, body in data.items():
        _seed_store.put(key, body)
    env = dict(airflow_env, **emulated_sky.env())
    env.update(
        AIRFLOW__CORE__DAGS_FOLDER=str(Path(__file__).parent / "faulty"),
        RESUMABLE_SOURCE=f"{src}/data/", RESUMABLE_DESTINATION=f"{dst}/copy/",
    )  # fmt: skip
    state_dir = env["AIRFLOW__SKYPLANE__STATE_DIR"]
    replica = emulated_sky.open(dst)

    def recorded() -> int:
        # read as the next try reads it, while the task keeps rewriting it
        states = [load_state(replica, i.key) for i in replica.list(".skyplane-state/")]
        return sum(r["length"] for s in states if s for r in s["receipts"])

    airflow = str(Path(sys.executable).parent / "airflow")
    first = subprocess.Popen(
        [airflow, "dags", "test", "resumable_copy", "2026-11-02"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        while (at_kill := recorded()) < total // 4:
            assert first.poll() is None, "the first try ended before it was killed"
            time.sleep(0.1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the task process ...
        first.wait(timeout=60)
        for pid in gateways_under(state_dir):  # ... and its gateways
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    while gateways_under(state_dir):
        time.sleep(0.1)
    [killed] = fleet_ids(state_dir)  # nobody tore it down
    assert [u.key for u in replica.list_multipart_uploads()] == ["copy/weights.bin"]

    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        [(run_id,)] = db.execute("SELECT run_id FROM dag_run WHERE dag_id='resumable_copy'").fetchall()
    retry = airflow_cli(["tasks", "test", "resumable_copy", "copy", run_id], env, timeout=600)
    output = retry.stdout + retry.stderr
    assert retry.returncode == 0, output[-4000:]
    assert "emulated-secret-key" not in output and gateways_under(state_dir) == []
    [resumed] = re.findall(r"Resumed the previous try: (\d+) bytes", output)
    assert at_kill <= int(resumed) < total  # what was checkpointed was not sent again
    expected = {k[5:]: v for k, v in data.items()}
    assert _contents(f"{dst}/copy/") == expected
    assert list(replica.list(".skyplane-state/")) == [] and list(replica.list_multipart_uploads()) == []

    teardown(killed, state_dir)  # the sweeper comes for the killed try's fleet, late
    assert fleet_ids(state_dir) == [] and _contents(f"{dst}/copy/") == expected


def _xcom(home: str, dag_id: str, key: str) -> list[Any]:
    with sqlite3.connect(Path(home) / "airflow.db") as db:
        rows = db.execute("SELECT value FROM xcom WHERE dag_id=? AND key=?", (dag_id, key)).fetchall()
    values = [json.loads(raw) if isinstance(raw, str | bytes) else raw for (raw,) in rows]
    return [json.loads(v) if isinstance(v, str) else v for v in values]


@pytest.mark.slow
@pytest.mark.parametrize(
    "parallel",
    [
        2,
        pytest.param(
            5, marks=pytest.mark.full_tier(reason="15 task instances: five minutes of Airflow start-ups")
        ),
    ],
)
def test_backfill_of_dates_in_parallel_is_byte_exact_and_a_rerun_copies_nothing(
    airflow_env: dict[str, str],
    emulated_sky: EmulatedSky,
    sky_bucket: Callable[..., str],
    tmp_path: Path,
    parallel: int,
) -> None:
    """``parallel`` ``airflow dags test`` processes at once, one per logical date, each with its own metadata
    database (a copy of one migrated SQLite file) but one worker's fleet records, as parallel runs on
    one worker share them. Each run maps over three datasets: a fleet and a state of its own per
    mapped task, and only its date's partitions copied."""
    archive, lake = sky_bucket("s3"), sky_bucket("gs")
    store = emulated_sky.open(archive)
    rng = random.Random(15)
    dates = [f"2026-10-{d:02d}" for d in range(1, 1 + parallel)]
    wanted = {}
    for name in ("events", "sessions", "billing"):
        for ds in [*dates, "2026-10-28"]:  # a later date that no run copies
            for n in range(3):
                body = rng.randbytes(rng.randrange(1, 200_000))
                store.put(f"{name}/dt={ds}/part-{n}", body)
                if ds in dates:
                    wanted[f"{name}/dt={ds}/part-{n}"] = body
    homes = {}
    for ds in dates:
        home = tmp_path / f"home-{ds}"
        migrate(home, airflow_env)
        homes[ds] = dict(
            airflow_env, **emulated_sky.env(), AIRFLOW_HOME=str(home),
            SKYPLANE_EXAMPLE_ARCHIVE=archive, SKYPLANE_EXAMPLE_LAKE=lake,
        )  # fmt: skip
    airflow = str(Path(sys.executable).parent / "airflow")
    runs = {
        ds: subprocess.Popen(
            [airflow, "dags", "test", "backfill_historical", ds],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for ds, env in homes.items()
    }
    outputs = {}
    try:
        for ds, run in runs.items():
            outputs[ds] = run.communicate(timeout=900)[0]
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.wait()
    for ds, run in runs.items():
        assert run.returncode == 0, outputs[ds][-4000:]
        assert "emulated-secret-key" not in outputs[ds]
    state_dir = airflow_env["AIRFLOW__SKYPLANE__STATE_DIR"]
    assert gateways_under(state_dir) == [] and fleet_ids(state_dir) == []
    assert _contents(lake) == wanted  # every partition byte for byte, nothing else (no state left)

    fleets_seen, state_keys = set(), set()
    for ds, env in homes.items():
        summaries = xcom_return_values(env["AIRFLOW_HOME"], "backfill_historical", "backfill_partition")
        assert [s["objects"] for s in summaries] == [3, 3, 3]
        assert [uri for s in summaries for uri in s["destinations"]] == [
            f"{lake}/{name}/dt={ds}/" for name in ("events", "sessions", "billing")
        ]
        fleets_seen |= {s["fleet_id"] for s in summaries}
        pushed = _xcom(env["AIRFLOW_HOME"], "backfill_historical", "skyplane_state")
        state_keys |= {key for pairs in pushed for _, key in pairs}
    # a fleet and a state of its own per task
    assert len(fleets_seen) == 3 * parallel and len(state_keys) == 3 * parallel

    again = homes[dates[-1]]
    _run(again, "backfill_historical", dates[-1])
    rerun = xcom_return_values(again["AIRFLOW_HOME"], "backfill_historical", "backfill_partition")
    assert [s["bytes"] for s in rerun] == [0, 0, 0] and [s["objects"] for s in rerun] == [0, 0, 0]
    assert [_syncs(s)[0]["unchanged"] for s in rerun] == [3, 3, 3]
    assert _contents(lake) == wanted
