"""Load: one transfer of many small objects, and concurrent DAG runs of the backfill example.

Both are bounded and stop by themselves. ``make test`` runs a small version: 2,000 objects
(``SKYPLANE_CHAOS_LOAD_OBJECTS``) and no concurrent DAG runs (``tests/dags`` runs the backfill example
once); ``make chaos`` the full one: 100,000 objects and 8 concurrent runs (``SKYPLANE_CHAOS_DAG_RUNS``).
Each is audited like a faulted transfer: every object byte-exact, nothing left behind.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from chaoslib import LOAD_DAG_RUNS, LOAD_OBJECTS, audit, drive, local_store

from airflow_skyplane.compute import fleets
from airflow_skyplane.compute.local import LocalRelayBackend
from airflow_skyplane.storage.local import LocalStore
from airflow_skyplane.testing.dagrun import migrate, xcom_return_values
from airflow_skyplane.testing.sky import AZURITE_KEY, EmulatedSky
from airflow_skyplane.transfer.job import Hop, Overlay, TransferJob

MiB = 1024 * 1024
DAGS = Path(__file__).resolve().parents[2] / "dags_examples"
RELAYED = Overlay("source", "destination", [Hop("source", "relay", 8), Hop("relay", "destination", 8)])


@pytest.mark.slow
def test_one_transfer_of_many_small_objects(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    rng = random.Random(12)
    src = tmp_path / "src"
    data: dict[str, bytes] = {}
    for i in range(LOAD_OBJECTS):
        key = f"shard-{i // 1000:03d}/obj-{i:06d}.json"
        data[key] = (
            f'{{"n": {i}, "pad": "'.encode() + rng.randbytes(rng.randrange(8, 200)).hex().encode() + b'"}'
        )
        path = src / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[key])
    backend = LocalRelayBackend(tmp_path / "fleet")
    dst = local_store(tmp_path / "dst")
    job = TransferJob(
        LocalStore(src), "", dst, "", backend=backend, workdir=tmp_path / "job", overlay=RELAYED,
        chunk_size=4 * MiB, timeout=3600,
    )  # fmt: skip
    outcome, result = drive(job)
    assert outcome == "completed", result
    assert result.objects == LOAD_OBJECTS and result.bytes == sum(map(len, data.values()))
    assert result.checksums_verified == LOAD_OBJECTS  # every object by MD5 at the destination
    peak = max(s["peak_rss_mb"] for s in result.gateways.values())
    print(f"load: {LOAD_OBJECTS:,} objects in {result.seconds:.1f} s; peak gateway RSS {peak} MB")
    audit(
        request, fault="load", backend="local", outcome=outcome, expected=data, destination=dst,
        fleet_dirs=[tmp_path / "fleet"], job_dirs=[tmp_path / "job"], running=backend.running,
        faults_injected=0,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.airflow
@pytest.mark.full_tier(
    reason="concurrent DAG runs cost about a minute of CPU per run: make chaos runs 8 "
    "(SKYPLANE_CHAOS_DAG_RUNS); make test runs one backfill in tests/dags",
)
def test_concurrent_backfill_dag_runs_do_not_interfere(
    emulated_sky: EmulatedSky,
    sky_bucket: Callable[[str], str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """``LOAD_DAG_RUNS`` runs of ``backfill_historical`` at once, one per day, on one worker: they share
    the fleet state folder (and its overlap lock) and the stores, and each copies exactly its day."""
    archive, lake = sky_bucket("s3"), sky_bucket("gs")
    store = emulated_sky.open(archive)
    rng = random.Random(9)
    days = [f"2026-10-{d:02d}" for d in range(1, LOAD_DAG_RUNS + 1)]
    wanted: dict[str, bytes] = {}
    for name in ("events", "sessions", "billing"):
        for ds in days:
            for n in range(3):
                body = rng.randbytes(rng.randrange(1, 200_000))
                store.put(f"{name}/dt={ds}/part-{n}", body)
                wanted[f"{name}/dt={ds}/part-{n}"] = body
    store.put("events/dt=2026-09-30/part-0", b"a day before the backfill: not copied")
    state = tmp_path / "fleets"  # one worker: one state folder for every run
    airflow = str(Path(sys.executable).parent / "airflow")
    runs: dict[str, subprocess.Popen[str]] = {}
    homes: dict[str, Path] = {}
    try:
        for ds in days:
            homes[ds] = tmp_path / f"home-{ds}"
            migrate(homes[ds], dict(os.environ, AIRFLOW__CORE__LOAD_EXAMPLES="False"), timeout=300)
            run_env = dict(os.environ, **emulated_sky.env())
            run_env.update(
                AIRFLOW_HOME=str(homes[ds]), AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
                AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__SKYPLANE__STATE_DIR=str(state),
                SKYPLANE_EXAMPLE_ARCHIVE=archive, SKYPLANE_EXAMPLE_LAKE=lake,
            )  # fmt: skip
            runs[ds] = subprocess.Popen(
                [airflow, "dags", "test", "backfill_historical", ds], env=run_env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        outputs = {ds: proc.communicate(timeout=1200)[0] for ds, proc in runs.items()}
    finally:
        for proc in runs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=30)
    for ds, proc in runs.items():
        assert proc.returncode == 0, outputs[ds][-4000:]
        assert "emulated-secret-key" not in outputs[ds] and AZURITE_KEY not in outputs[ds]
        summaries = xcom_return_values(homes[ds], "backfill_historical", "backfill_partition")
        assert [s["objects"] for s in summaries] == [3, 3, 3], (ds, summaries)
        assert "emulated-secret-key" not in json.dumps(summaries)
    assert fleets.fleet_ids(state) == []  # every run tore its fleets down
    audit(
        request, fault="load", backend="local", outcome="completed", expected=wanted,
        destination=emulated_sky.open(lake), fleet_dirs=[state], faults_injected=0,
        transfers=len(days) * 3,  # one mapped transfer per dataset and day
    )  # fmt: skip
