"""The operator on AWS relay VMs: rented through ``EC2Hook`` (moto), bootstrapped over SSH, torn down.

moto serves the EC2 API; :class:`~airflow_skyplane.testing.vms.EmulatedVMs` brings each instance to
life as an sshd on the loopback address moto gave it. Everything after the API call runs for real:
the paramiko bootstrap, the gateways on the "VMs", the data plane between them, the control
endpoints through SSH port forwards, and the teardown. After every case: no instance, security
group or key pair of the fleet, no process any emulated VM started, no fleet record.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_skyplane.compute.aws import AWSRelayBackend
from airflow_skyplane.compute.fleets import fleet_ids
from airflow_skyplane.compute.relays import RelayCapacityError
from airflow_skyplane.exceptions import TransferError
from airflow_skyplane.operators.plan_files import read_plans
from airflow_skyplane.operators.transfer import SkyplaneTransferOperator
from airflow_skyplane.testing.sky import AZURITE_KEY, EmulatedSky
from airflow_skyplane.testing.vms import EmulatedVMs

pytestmark = pytest.mark.requires("sshd")

REGIONS = ["aws:us-east-1", "aws:eu-west-1", "aws:us-west-2", "aws:eu-central-1"]
MiB = 1024 * 1024


@pytest.fixture
def vms(emulated_sky: EmulatedSky, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatedVMs]:
    backend = AWSRelayBackend(wait_timeout_s=60)
    emulated = EmulatedVMs.on_moto(backend.client, REGIONS, console_dir=emulated_sky.ec2_console_dir)
    subnets = emulated.subnets()
    grid = tmp_path / "grid.csv"  # today's scenario: the direct path is congested
    grid.write_text(
        "src_region,src_tier,dst_region,dst_tier,throughput_gbps,iperf3_connections\n"
        "aws:us-east-1,PREMIUM,aws:eu-west-1,PREMIUM,0.3,64\n"
    )
    for name, value in {
        "RELAY_BACKEND": "aws",
        "WORKER_CIDR": "198.51.100.7/32",
        "RELAY_ADDRESS": "private",
        "SSH_PORT": str(emulated.ssh_port),
        "SSH_USERNAME": getpass.getuser(),  # the emulated VMs' sshd runs as this user
        "RELAY_PYTHON": sys.executable,
        "AWS_SUBNETS": json.dumps(subnets),
        "AWS_INSTANCE_TYPE": "m5.large",
        "GRID_PATH": str(grid),
        "ALLOWED_REGIONS": json.dumps(REGIONS),
    }.items():
        monkeypatch.setenv(f"AIRFLOW__SKYPLANE__{name}", value)
    with emulated:
        yield emulated
    assert emulated.errors == []


def _leftovers(fleet: str) -> dict[str, Any]:
    found = AWSRelayBackend().resources(fleet, REGIONS)
    return {r: {k: v for k, v in kinds.items() if v} for r, kinds in found.items() if any(kinds.values())}


def _seed(emulated_sky: EmulatedSky, uri: str) -> dict[str, bytes]:
    rng = random.Random(6)
    data = {f"part-{n}.bin": rng.randbytes(rng.randrange(1, 400_000)) for n in range(12)}
    data["big/model.bin"] = rng.randbytes(24 * MiB)
    store = emulated_sky.open(uri)
    for key, body in data.items():
        store.put("in/" + key, body)
    return data


def _assert_nothing_left(vms: EmulatedVMs, state_dir: Path, fleet: str) -> None:
    assert _leftovers(fleet) == {}, "relay resources of the fleet remain"
    deadline = time.monotonic() + 10
    while vms.sshd and time.monotonic() < deadline:
        time.sleep(0.1)  # the emulated VMs notice their termination at their next look at moto
    assert vms.live_processes() == [], "a relay VM's process outlived the fleet"
    assert not vms.sshd, "an emulated VM is still up"
    assert fleet_ids(state_dir) == []


def _operator(src: str, dst: str, **kwargs: Any) -> SkyplaneTransferOperator:
    return SkyplaneTransferOperator(
        task_id="to_eu", source=f"{src}/in/", destination=f"{dst}/out/",
        destination_region="aws:eu-west-1", chunk_size_mb=4, **kwargs,
    )  # fmt: skip


def test_a_transfer_through_aws_relay_vms_is_byte_exact_and_leaves_nothing(
    emulated_sky: EmulatedSky,
    sky_bucket: Callable[..., str],
    vms: EmulatedVMs,
    state_dir: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="airflow_skyplane.compute.cloud")
    src, dst = sky_bucket("s3"), sky_bucket("s3", "aws:eu-west-1")
    data = _seed(emulated_sky, src)
    summary = _operator(src, dst).execute(context={})
    out = emulated_sky.open(dst)
    for key, body in data.items():
        assert out.read("out/" + key) == body
    plan = read_plans(summary)["destinations"][f"{dst}/out/"]["plan"]
    assert len(plan["relays"]) >= 3, (
        plan
    )  # source, relay and destination regions: the congested path is avoided
    assert len(vms.started) == len(plan["relays"])  # one VM per region of the plan, each reached over SSH
    assert summary["objects"] == len(data) and summary["checksums_verified"] == len(data)
    _assert_nothing_left(vms, state_dir, summary["fleet_id"])
    logged = "".join(capfd.readouterr())
    # every relay's host key was read from its EC2 console output before the first connection
    assert caplog.text.count("host key pinned from the aws console") == len(plan["relays"])
    assert "trusted at the first connection" not in caplog.text
    shown = json.dumps(summary) + logged + "".join(vms.metadata.values())
    for secret in ("emulated-secret-key", AZURITE_KEY, "PRIVATE KEY"):
        assert secret not in shown  # not in the logs, the XCom summary, the VMs' tags or user-data
    assert summary["fleet_id"] in "".join(vms.metadata.values())  # tagged with the fleet


def test_a_relay_that_cannot_run_the_gateway_fails_clearly_and_leaves_nothing(
    emulated_sky: EmulatedSky,
    sky_bucket: Callable[..., str],
    vms: EmulatedVMs,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW__SKYPLANE__RELAY_PYTHON", "/nonexistent/python3")
    src, dst = sky_bucket("s3"), sky_bucket("s3", "aws:eu-west-1")
    _seed(emulated_sky, src)
    op = _operator(src, dst)
    with pytest.raises(TransferError, match="relay_python"):
        op.execute(context={})
    assert len(vms.started) >= 3
    assert list(emulated_sky.open(dst).list("out/")) == []
    [fleet] = {re.search(r"'skyplane:fleet', 'Value': '([^']+)'", m)[1] for m in vms.metadata.values()}  # type: ignore[index]
    _assert_nothing_left(vms, state_dir, fleet)


def test_a_relay_region_out_of_capacity_is_planned_around(
    emulated_sky: EmulatedSky, sky_bucket: Callable[..., str], vms: EmulatedVMs, state_dir: Path
) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("s3", "aws:eu-west-1")
    data = _seed(emulated_sky, src)
    planned = _operator(src, dst, dry_run=True).execute(context={})
    first = read_plans(planned)["destinations"][f"{dst}/out/"]["plan"]
    relay = next(r for r in first["relays"] if r not in ("aws:us-east-1", "aws:eu-west-1"))
    refusal = RelayCapacityError(
        f"{relay}: EC2 refused a relay VM (InsufficientInstanceCapacity)", region=relay
    )
    op = _operator(src, dst)
    op.cloud_backends = {
        "aws": AWSRelayBackend(wait_timeout_s=60, test_faults={f"before_instances:{relay}": refusal})
    }
    summary = op.execute(context={})
    assert summary["excluded_regions"] == [relay]
    assert relay not in summary["destinations"][f"{dst}/out/"]["plan"]["relays"]
    again = read_plans(summary)  # the plan file holds the new plan
    assert (
        again["excluded_regions"] == [relay]
        and relay not in again["destinations"][f"{dst}/out/"]["plan"]["relays"]
    )
    assert summary["predicted_gbps"] == round(
        again["destinations"][f"{dst}/out/"]["plan"]["throughput_gbps"], 4
    )
    out = emulated_sky.open(dst)
    assert {k: out.read("out/" + k) for k in data} == data
    _assert_nothing_left(vms, state_dir, summary["fleet_id"])


def test_a_fleet_whose_worker_died_is_torn_down_by_its_id_alone(vms: EmulatedVMs, state_dir: Path) -> None:
    """What the failure callback does: the fleet id from XCom and cloud.json are enough."""
    from airflow_skyplane.compute.cloud import CloudFleet, CloudOptions
    from airflow_skyplane.compute.fleets import FleetRecord, fleet_dir
    from airflow_skyplane.transfer.fleet import teardown

    folder = fleet_dir(state_dir, "deadworker1")
    FleetRecord("deadworker1", "cloud", time.time(), time.time() + 600).write(folder)
    options = CloudOptions(
        worker_cidr="198.51.100.7/32", relay_address="private", ssh_port=vms.ssh_port,
        ssh_username=getpass.getuser(), relay_python=sys.executable,
        aws_subnets=json.loads(os.environ["AIRFLOW__SKYPLANE__AWS_SUBNETS"]),
    )  # fmt: skip
    CloudFleet("deadworker1", folder, options).provision(
        dict.fromkeys(REGIONS[:3], 1), expires_at=time.time() + 600, owner={"task_id": "t"}
    )  # the process that rented them forgets them, as a dead worker would
    assert _leftovers("deadworker1") != {}
    assert "relay VMs" in teardown("deadworker1", str(state_dir))
    assert _leftovers("deadworker1") == {}
    assert teardown("deadworker1", str(state_dir)) == []  # idempotent
    _assert_nothing_left(vms, state_dir, "deadworker1")


GCP_ZONES = ["gcp:us-central1-a", "gcp:europe-west4-a", "gcp:us-east4-a", "gcp:europe-west1-b"]


@pytest.fixture
def gce_vms(emulated_sky: EmulatedSky, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from airflow_skyplane.compute.gcp import GCPRelayBackend
    from airflow_skyplane.testing.fake_gce import FakeGCE

    with FakeGCE(loopback_addresses=True) as gce:
        url = gce.start()
        grid = tmp_path / "grid.csv"
        grid.write_text(
            "src_region,src_tier,dst_region,dst_tier,throughput_gbps,iperf3_connections\n"
            "gcp:us-central1-a,PREMIUM,gcp:europe-west4-a,PREMIUM,0.3,64\n"
        )
        for name, value in {
            "RELAY_BACKEND": "gcp",
            "WORKER_CIDR": "198.51.100.7/32",
            "SSH_PORT": "2222",
            "SSH_USERNAME": getpass.getuser(),  # the user the relays are created with, as the sshd runs
            "RELAY_PYTHON": sys.executable,
            "GRID_PATH": str(grid),
            "ALLOWED_REGIONS": json.dumps(GCP_ZONES),
        }.items():
            monkeypatch.setenv(f"AIRFLOW__SKYPLANE__{name}", value)
        with EmulatedVMs.on_fake_gce(gce) as emulated:
            yield gce, GCPRelayBackend(compute_endpoint=url), emulated
        assert emulated.errors == []


def test_a_transfer_through_gcp_relay_vms_is_byte_exact_and_leaves_nothing(
    emulated_sky: EmulatedSky, sky_bucket: Callable[..., str], gce_vms: Any, state_dir: Path
) -> None:
    from airflow_skyplane.compute.gcp import _label

    gce, backend, vms = gce_vms
    src, dst = sky_bucket("gs"), sky_bucket("gs")
    data = _seed(emulated_sky, src)
    op = SkyplaneTransferOperator(
        task_id="to_eu", source=f"{src}/in/", destination=f"{dst}/out/", chunk_size_mb=4,
        source_region="gcp:us-central1-a", destination_region="gcp:europe-west4-a",
    )  # fmt: skip
    op.cloud_backends = {"gcp": backend}
    summary = op.execute(context={})
    out = emulated_sky.open(dst)
    assert {k: out.read("out/" + k) for k in data} == data
    relays = read_plans(summary)["destinations"][f"{dst}/out/"]["plan"]["relays"]
    assert len(relays) >= 3 and len(vms.started) == len(relays)
    fleet = summary["fleet_id"]
    assert gce.live_instances("skyplane-fleet", _label(fleet)) == []
    assert [n for n in gce.firewalls if _label(fleet) in n] == []
    deadline = time.monotonic() + 10
    while vms.sshd and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not vms.sshd and vms.live_processes() == [] and fleet_ids(state_dir) == []
    assert "PRIVATE KEY" not in json.dumps(summary) + "".join(vms.metadata.values())


def test_a_relay_whose_console_shows_another_host_key_is_refused_and_leaves_nothing(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str], gce_vms: Any, state_dir: Path
) -> None:
    """The serial port shows one key, the machine at the VM's address presents another (an address
    taken over, a machine in the middle): the worker refuses to connect, and the fleet is removed."""
    from airflow_skyplane.compute.ssh import HostKeyMismatchError

    gce, backend, vms = gce_vms
    vms.forge_console = True
    src, dst = sky_bucket("gs"), sky_bucket("gs")  # buckets in the regions the relays are asked for
    _seed(emulated_sky, src)
    op = SkyplaneTransferOperator(
        task_id="to_eu", source=f"{src}/in/", destination=f"{dst}/out/", chunk_size_mb=4,
        source_region="gcp:us-central1-a", destination_region="gcp:europe-west4-a",
    )  # fmt: skip
    op.cloud_backends = {"gcp": backend}
    with pytest.raises(Exception) as raised:
        op.execute(context={})
    chain = [raised.value, raised.value.__cause__, raised.value.__context__]
    refused = any(isinstance(e, HostKeyMismatchError) for e in chain)
    assert refused or "not the key pinned" in str(raised.value), raised.value
    assert vms.started  # the VMs were up: only their key was wrong
    assert list(emulated_sky.open(dst).list("out/")) == []
    fleets = {inst["labels"]["skyplane-fleet"] for inst in gce.instances.values()}
    assert fleets
    for fleet in fleets:
        assert gce.live_instances("skyplane-fleet", fleet) == []
        assert [n for n in gce.firewalls if fleet in n] == []
    deadline = time.monotonic() + 10
    while vms.sshd and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not vms.sshd and vms.live_processes() == [] and fleet_ids(state_dir) == []
