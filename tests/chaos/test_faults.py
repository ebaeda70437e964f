"""The fault suite: real gateways, real stores, real faults, on loopback and on the emulated WAN.

Each test starts a transfer, injects one fault while the transfer is in flight, and then
:func:`chaoslib.audit` checks that the transfer either completed byte-exact or failed with a clear
error; that the destination holds no partial or corrupt object; and that no gateway process,
network namespace, multipart upload or secret file is left behind.

Faults: a relay killed mid-transfer, the destination gateway killed; a link cut, then restored
(``SKYPLANE_CHAOS_CUT_S``: 3 s in ``make test``, 30 s in ``make chaos``); 5 % of the packets dropped on
every link (nftables in the namespaces, as this kernel has no netem); the destination store
answering 500/503 for a while and throttling (the fault proxy in front of moto); a source object
overwritten during the transfer; SIGTERM to the Airflow task process running the operator
(``airflow dags test``). The WAN tests need root and ``nft``; they are skipped with the reason
otherwise.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from chaoslib import CUT_SECONDS, audit, drive, kill_gateway, local_store, own_namespaces

from airflow_skyplane.exceptions import TransferError
from airflow_skyplane.storage.local import LocalStore
from airflow_skyplane.storage.s3 import S3Store
from airflow_skyplane.testing import wanfaults
from airflow_skyplane.testing.faultproxy import FaultProxy
from airflow_skyplane.testing.netns import EmulatedWAN
from airflow_skyplane.testing.sky import AWS_REGION, AZURITE_KEY, EmulatedSky
from airflow_skyplane.testing.wan_relays import local_relays as LocalRelayBackend
from airflow_skyplane.transfer.job import Hop, Overlay, TransferJob

MiB = 1024 * 1024
RELAYED = Overlay("source", "destination", [Hop("source", "relay", 4), Hop("relay", "destination", 4)])
SRC, RELAY, DST = "aws:us-east-1", "aws:us-west-2", "aws:eu-west-1"
needs_wan = pytest.mark.requires("netns", "nft")


def _dataset(root: Path, n: int = 6, size: int = 3 * MiB, seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    data = {f"obj-{i:02d}.bin": rng.randbytes(size + i) for i in range(n)}
    data["small.txt"] = b"a small object\n"
    for key, body in data.items():
        (root / key).write_bytes(body)
    return data


# -- local relay backend -------------------------------------------------------------------------
@pytest.mark.parametrize("victim", ["relay", "destination"])
def test_a_gateway_killed_mid_transfer(tmp_path: Path, request: pytest.FixtureRequest, victim: str) -> None:
    data = _dataset(tmp_path / "src")
    backend = LocalRelayBackend(tmp_path / "fleet")
    dst = local_store(tmp_path / "dst")
    job = TransferJob(
        LocalStore(tmp_path / "src"), "", dst, "", backend=backend, workdir=tmp_path / "job",
        overlay=RELAYED, chunk_size=1 * MiB, timeout=120,
        test_faults={"destination": {"delay_per_chunk_s": 0.05}},
    )  # fmt: skip
    outcome, detail = drive(job, lambda: kill_gateway(backend, victim))
    assert outcome == "failed"
    assert f"gateway {victim} exited with code -9" in str(detail)  # the cause, named
    audit(
        request, fault=f"kill the {victim} gateway", backend="local", outcome=outcome, expected=data,
        destination=dst, fleet_dirs=[tmp_path / "fleet"], job_dirs=[tmp_path / "job"],
        running=backend.running, error=detail,
    )  # fmt: skip


@pytest.fixture(scope="module")
def s3_sky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedSky]:
    with EmulatedSky(tmp_path_factory.mktemp("chaos-sky"), services=("s3",)) as sky:
        yield sky


def _s3(endpoint: str, bucket: str, attempts: int = 5) -> S3Store:
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name=AWS_REGION, aws_access_key_id="emulated-access-key",
        aws_secret_access_key="emulated-secret-key",  # noqa: S106 - moto accepts any key
        config=Config(retries={"mode": "standard", "max_attempts": attempts}),
    )  # fmt: skip
    return S3Store(client, bucket)


def _s3_spec(endpoint: str, bucket: str) -> dict[str, Any]:
    return {
        "scheme": "s3", "bucket": bucket, "region": AWS_REGION, "endpoint_url": endpoint,
        "access_key_id": "emulated-access-key", "secret_access_key": "emulated-secret-key",
    }  # fmt: skip


def _logs(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.glob("*.log"))


def test_destination_store_errors_and_throttling_are_retried(
    s3_sky: EmulatedSky, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    data = _dataset(tmp_path / "src", n=4, size=6 * MiB)
    bucket = s3_sky.make_bucket("s3")[len("s3://") :]
    with FaultProxy(s3_sky.endpoint("s3")) as proxy:
        dst = _s3(proxy.url, bucket)
        backend = LocalRelayBackend(tmp_path / "fleet")
        job = TransferJob(
            LocalStore(tmp_path / "src"), "", dst, "copy/", backend=backend, workdir=tmp_path / "job",
            overlay=RELAYED, chunk_size=5 * MiB, timeout=300,
            destination_spec=_s3_spec(proxy.url, bucket),
        )  # fmt: skip

        def storm() -> None:  # every write fails for a while, alternating 500 and 503, then it is slow
            proxy.fail(requests=6, statuses=(500, 503), methods=("PUT",))
            proxy.throttle(8 * MiB, requests=6, methods=("PUT",))

        outcome, detail = drive(job, storm, when=lambda status: True)
        assert proxy.counters.injected == 6 and proxy.counters.throttled == 6  # the faults happened
        assert set(proxy.counters.by_status) == {500, 503}
        assert outcome == "completed", detail
        assert detail.objects == len(data)
        audit(
            request, fault="destination store 500/503 then throttled", backend="local", outcome=outcome,
            expected=data, destination=_s3(s3_sky.endpoint("s3"), bucket), destination_prefix="copy/",
            fleet_dirs=[tmp_path / "fleet"], job_dirs=[tmp_path / "job"], running=backend.running,
            faults_injected=proxy.counters.injected,
        )  # fmt: skip
    assert "emulated-secret-key" not in _logs(tmp_path / "fleet")


def test_destination_killed_while_the_store_also_fails_the_cleanup(
    s3_sky: EmulatedSky, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    data = _dataset(tmp_path / "src", n=2, size=6 * MiB)
    bucket = s3_sky.make_bucket("s3")[len("s3://") :]
    with FaultProxy(s3_sky.endpoint("s3")) as proxy:
        backend = LocalRelayBackend(tmp_path / "fleet")
        job = TransferJob(
            LocalStore(tmp_path / "src"), "", _s3(proxy.url, bucket, attempts=2), "copy/", backend=backend,
            workdir=tmp_path / "job", overlay=RELAYED, chunk_size=5 * MiB, timeout=300,
            destination_spec=_s3_spec(proxy.url, bucket),
            test_faults={"destination": {"delay_per_chunk_s": 0.1}},
        )  # fmt: skip

        def crash() -> None:  # the writer dies, and the store refuses the first aborts as well
            proxy.fail(requests=5, statuses=(503,), methods=("DELETE",))
            kill_gateway(backend, "destination")

        outcome, detail = drive(job, crash)
        assert proxy.counters.by_status.get(503) == 5  # more refusals than the SDK's own retries
    assert outcome == "failed" and "gateway destination exited with code -9" in str(detail)
    audit(
        request, fault="kill the destination gateway, store refuses aborts", backend="local",
        outcome=outcome, expected=data, destination=_s3(s3_sky.endpoint("s3"), bucket),
        destination_prefix="copy/", fleet_dirs=[tmp_path / "fleet"], job_dirs=[tmp_path / "job"],
        running=backend.running, faults_injected=1 + 5, error=detail,
    )  # fmt: skip


def test_a_source_object_overwritten_during_the_transfer(
    s3_sky: EmulatedSky, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    bucket = s3_sky.make_bucket("s3")[len("s3://") :]
    direct = _s3(s3_sky.endpoint("s3"), bucket)
    rng = random.Random(7)
    old, new = rng.randbytes(12 * MiB), rng.randbytes(12 * MiB)
    direct.put("in/table.bin", old)
    direct.put("in/steady.txt", b"unchanged\n")
    with FaultProxy(s3_sky.endpoint("s3")) as proxy:
        proxy.throttle(6 * MiB, seconds=120, methods=("GET",))  # reads take a while: the change lands mid-way
        backend = LocalRelayBackend(tmp_path / "fleet")
        dst = local_store(tmp_path / "dst")
        job = TransferJob(
            _s3(proxy.url, bucket), "in/", dst, "", backend=backend, workdir=tmp_path / "job",
            overlay=RELAYED, chunk_size=1 * MiB, timeout=300, source_spec=_s3_spec(proxy.url, bucket),
        )  # fmt: skip
        outcome, detail = drive(job, lambda: direct.put("in/table.bin", new))
        proxy.clear()
    # a striped object that changed mid-way fails the transfer, and nothing is written for it
    assert outcome == "failed" and "changed during the transfer" in str(detail), detail
    assert "table.bin" not in {info.key for info in dst.list()}
    audit(
        request, fault="source object overwritten mid-transfer", backend="local", outcome=outcome,
        expected={"table.bin": [old, new], "steady.txt": b"unchanged\n"}, destination=dst,
        fleet_dirs=[tmp_path / "fleet"], job_dirs=[tmp_path / "job"], running=backend.running,
        error=detail if outcome == "failed" else None,
    )  # fmt: skip


_SIGTERM_DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_skyplane.operators.transfer import SkyplaneTransferOperator

with DAG(dag_id="chaos_sigterm", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    op = SkyplaneTransferOperator(
        task_id="copy", source="file://{src}", destination="file://{dst}", chunk_size_mb=1,
        compression=False,
    )
    op.test_faults = {{"destination": {{"delay_per_chunk_s": 1.0}}}}
"""


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated metadata database for the module's `airflow dags test` runs (each its own run)."""
    from airflow_skyplane.testing.dagrun import migrate

    home = tmp_path_factory.mktemp("airflow-home")
    migrate(home, dict(os.environ, AIRFLOW__CORE__LOAD_EXAMPLES="False"), timeout=300)
    return home


def _source_status(state: Path) -> dict[str, Any] | None:
    """The status of the reading gateway of the one fleet recorded in ``state``, once it answers."""
    import json
    import urllib.request

    from airflow_skyplane.compute import fleets

    for fleet_id in fleets.fleet_ids(state):
        for sub in fleets.transfer_dirs(state / fleet_id):
            for gid, gw in fleets.read_gateways(sub).items():
                if gid == "source" and gw.get("control_port"):
                    url = f"http://{gw.get('control_host', '127.0.0.1')}:{gw['control_port']}/status"
                    try:
                        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback
                            return dict(json.loads(r.read()))
                    except OSError:
                        return None
    return None


@pytest.mark.airflow
@pytest.mark.parametrize(
    "moment",
    [
        "while_starting",
        pytest.param(
            "while_sending",
            marks=pytest.mark.full_tier(reason="a minute of Airflow start-up"),
        ),
    ],
)
def test_sigterm_to_the_airflow_task_process(
    airflow_home: Path, tmp_path: Path, request: pytest.FixtureRequest, moment: str
) -> None:
    from airflow_skyplane.compute import fleets

    data = _dataset(tmp_path / "src", n=8, size=2 * MiB)
    (tmp_path / "dst").mkdir()
    dags, state = tmp_path / "dags", tmp_path / "fleets"
    dags.mkdir()
    (dags / "chaos_sigterm.py").write_text(_SIGTERM_DAG.format(src=tmp_path / "src", dst=tmp_path / "dst"))
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(airflow_home), AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__SKYPLANE__STATE_DIR=str(state),
    )  # fmt: skip
    airflow = str(Path(sys.executable).parent / "airflow")
    task = subprocess.Popen(
        [airflow, "dags", "test", "chaos_sigterm"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180

        def ready() -> bool:
            if moment == "while_starting":  # the fleet is recorded, its gateways are being started
                return bool(fleets.fleet_ids(state))
            status = _source_status(state)
            return status is not None and status["chunks_sent"] >= 1

        while not ready():
            assert task.poll() is None, task.stdout.read().decode()[-3000:] if task.stdout else ""
            assert time.monotonic() < deadline, "the transfer never started"
            time.sleep(0.02)
        os.kill(task.pid, signal.SIGTERM)  # what Airflow's supervisor sends a task it stops
        output = task.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        if task.poll() is None:
            os.killpg(task.pid, signal.SIGKILL)
            task.wait(timeout=30)
    assert task.returncode != 0, output[-3000:]  # the task failed, and said why
    assert "the task was stopped (SIGTERM, on_kill) during the transfer" in output, output[-3000:]
    assert "emulated-secret-key" not in output and AZURITE_KEY not in output
    assert fleets.fleet_ids(state) == [], output[-3000:]  # on_kill tore the fleet down, records and all
    audit(
        request, fault="SIGTERM to the Airflow task process", backend="local", outcome="failed",
        expected=data, destination=LocalStore(tmp_path / "dst"), fleet_dirs=[state],
        error=TransferError(f"task exited with code {task.returncode}"),
    )  # fmt: skip


# -- the emulated WAN ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wan() -> Iterator[EmulatedWAN]:
    before = own_namespaces()
    with EmulatedWAN([SRC, RELAY, DST]) as built:
        yield built
    assert own_namespaces() == before


def _wan_job(
    wan: EmulatedWAN, tmp_path: Path, name: str, **kwargs: Any
) -> tuple[TransferJob, Any, LocalStore]:
    backend = LocalRelayBackend(tmp_path / f"fleet-{name}", wan=wan)
    dst = local_store(tmp_path / f"dst-{name}")
    overlay = Overlay(SRC, DST, [Hop(SRC, RELAY, 4), Hop(RELAY, DST, 4)], {SRC: SRC, RELAY: RELAY, DST: DST})
    job = TransferJob(
        LocalStore(tmp_path / "src"), "", dst, "", backend=backend, workdir=tmp_path / f"job-{name}",
        overlay=overlay, chunk_size=1 * MiB, compress="never", timeout=600, **kwargs,
    )  # fmt: skip
    return job, backend, dst


@pytest.mark.root
@needs_wan
@pytest.mark.parametrize("victim", [RELAY, DST])
def test_wan_gateway_killed_mid_transfer(
    wan: EmulatedWAN, tmp_path: Path, request: pytest.FixtureRequest, victim: str
) -> None:
    data = _dataset(tmp_path / "src")
    before = own_namespaces()
    job, backend, dst = _wan_job(wan, tmp_path, "kill", test_faults={DST: {"delay_per_chunk_s": 0.05}})
    outcome, detail = drive(job, lambda: kill_gateway(backend, victim))
    assert outcome == "failed" and f"gateway {victim} exited with code -9" in str(detail)
    audit(
        request, fault=f"kill the {'relay' if victim == RELAY else 'destination'} gateway", backend="wan",
        outcome=outcome, expected=data, destination=dst, fleet_dirs=[tmp_path / "fleet-kill"],
        job_dirs=[tmp_path / "job-kill"], running=backend.running, namespaces_before=before, error=detail,
    )  # fmt: skip


@pytest.mark.root
@needs_wan
def test_wan_link_cut_then_restored(wan: EmulatedWAN, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    data = _dataset(tmp_path / "src")
    before = own_namespaces()
    job, backend, dst = _wan_job(wan, tmp_path, "cut", test_faults={DST: {"delay_per_chunk_s": 0.05}})

    def cut() -> None:
        wanfaults.cut(wan, SRC, RELAY)
        try:
            assert wanfaults.dropped(wan, SRC) and wanfaults.dropped(wan, RELAY)
            time.sleep(CUT_SECONDS)
        finally:
            wanfaults.heal(wan, SRC, RELAY)

    outcome, detail = drive(job, cut)
    assert outcome == "completed", detail  # TCP carries the stream over the cut; no chunk is lost
    audit(
        request, fault=f"cut a link for {CUT_SECONDS:g} s", backend="wan", outcome=outcome, expected=data,
        destination=dst, fleet_dirs=[tmp_path / "fleet-cut"], job_dirs=[tmp_path / "job-cut"],
        running=backend.running, namespaces_before=before,
    )  # fmt: skip


@pytest.mark.root
@needs_wan
def test_wan_five_percent_packet_loss(
    wan: EmulatedWAN, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    data = _dataset(tmp_path / "src", n=4)
    before = own_namespaces()
    job, backend, dst = _wan_job(wan, tmp_path, "loss")
    wanfaults.lossy(wan, SRC, RELAY, 5)
    wanfaults.lossy(wan, RELAY, DST, 5)
    try:
        outcome, detail = drive(job)
    finally:
        wanfaults.heal(wan, SRC, RELAY)
        wanfaults.heal(wan, RELAY, DST)
    assert outcome == "completed", detail
    audit(
        request, fault="drop 5% of packets on every link", backend="wan", outcome=outcome, expected=data,
        destination=dst, fleet_dirs=[tmp_path / "fleet-loss"], job_dirs=[tmp_path / "job-loss"],
        running=backend.running, namespaces_before=before,
    )  # fmt: skip
