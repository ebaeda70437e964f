"""The operator on Azure relay VMs, rented through ``AzureComputeHook``'s connection, bootstrapped over
SSH, torn down.

The fake of Resource Manager (:class:`~airflow_skyplane.testing.fake_arm.FakeARM`) serves the
management API over HTTPS with long-running operations, and the token service of a fake Entra ID
tenant that knows one service principal: the ``azure_default`` connection's (its login, password,
``tenantId`` and ``subscriptionId``), which the backend logs in with through azure-identity, as it
would at Microsoft, and which may do exactly the actions docs/connections.md lists, on the relays'
resource group. The settings ``azure_management_endpoint``, ``azure_authority_host`` and
``azure_ca_bundle`` point the SDKs at the fake. :meth:`EmulatedVMs.on_fake_arm` brings each VM to
life as an sshd on the loopback address of its public IP and prints its host key to the VM's boot
diagnostics, where the worker reads it before the first connection. After every case: no VM, NIC,
public IP, disk, security group, network or schedule in the fake, no process any emulated VM started,
no fleet record.
"""

from __future__ import annotations

import getpass
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from airflow_skyplane.compute.fleets import fleet_ids
from airflow_skyplane.compute.relays import RelayProvisionError
from airflow_skyplane.exceptions import TransferError
from airflow_skyplane.operators.plan_files import read_plans
from airflow_skyplane.operators.transfer import SkyplaneTransferOperator
from airflow_skyplane.testing.fake_arm import FakeARM
from airflow_skyplane.testing.fake_rbac import documented_actions
from airflow_skyplane.testing.sky import EmulatedSky
from airflow_skyplane.testing.vms import EmulatedVMs

pytestmark = pytest.mark.requires("sshd")

REGIONS = ["azure:eastus", "azure:westeurope", "azure:northeurope", "azure:francecentral"]
TENANT, CLIENT_ID, CLIENT_SECRET = "tenant-relays", "relay-app-id", "relay-app-secret-value"
MiB = 1024 * 1024


@pytest.fixture
def arm_vms(
    emulated_sky: EmulatedSky, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FakeARM, EmulatedVMs]]:
    with FakeARM(loopback_addresses=True) as arm:
        url = arm.start()
        arm.entra.add_principal(TENANT, CLIENT_ID, CLIENT_SECRET)
        # the connection may do exactly what docs/connections.md lists, on the relays' group
        docs = (Path(__file__).resolve().parents[2] / "docs" / "connections.md").read_text()
        arm.rbac.enforce(
            CLIENT_ID, documented_actions(docs), "/subscriptions/sub-relays/resourceGroups/relays"
        )
        connection = {"conn_type": "azure", "login": CLIENT_ID, "password": CLIENT_SECRET,
                      "extra": {"tenantId": TENANT, "subscriptionId": "sub-relays"}}  # fmt: skip
        monkeypatch.setenv("AIRFLOW_CONN_AZURE_DEFAULT", json.dumps(connection))
        grid = tmp_path / "grid.csv"  # today's scenario: the direct path is congested
        grid.write_text(
            "src_region,src_tier,dst_region,dst_tier,throughput_gbps,iperf3_connections\n"
            "azure:eastus,PREMIUM,azure:westeurope,PREMIUM,0.3,64\n"
        )
        for name, value in {
            "RELAY_BACKEND": "azure",
            "WORKER_CIDR": "198.51.100.7/32",
            "SSH_PORT": "2222",
            "SSH_USERNAME": getpass.getuser(),  # the admin user the VMs are created with, as sshd runs
            "RELAY_PYTHON": sys.executable,
            "GRID_PATH": str(grid),
            "ALLOWED_REGIONS": json.dumps(REGIONS),
            "AZURE_RESOURCE_GROUP": "relays",
            "AZURE_MANAGEMENT_ENDPOINT": url,
            "AZURE_AUTHORITY_HOST": url,
            "AZURE_CA_BUNDLE": arm.ca_file,
        }.items():
            monkeypatch.setenv(f"AIRFLOW__SKYPLANE__{name}", value)
        with EmulatedVMs.on_fake_arm(arm) as emulated:
            yield arm, emulated
        assert emulated.errors == []


def _seed(emulated_sky: EmulatedSky, uri: str) -> dict[str, bytes]:
    rng = random.Random(20)
    data = {f"part-{n}.bin": rng.randbytes(rng.randrange(1, 300_000)) for n in range(8)}
    data["big/model.bin"] = rng.randbytes(12 * MiB)
    store = emulated_sky.open(uri)
    for key, body in data.items():
        store.put("in/" + key, body)
    return data


def _operator(src: str, dst: str) -> SkyplaneTransferOperator:
    return SkyplaneTransferOperator(
        task_id="to_eu", source=f"{src}/in/", destination=f"{dst}/out/", chunk_size_mb=4,
        source_region="azure:eastus", destination_region="azure:westeurope",
    )  # fmt: skip


def _assert_nothing_left(arm: FakeARM, vms: EmulatedVMs, state_dir: Path) -> None:
    with arm.lock:
        left = sorted(f"{r['type']}/{r['name']}" for r in arm.resources.values())
    assert left == [], "resources of the fleet remain in the resource group"
    deadline = time.monotonic() + 10
    while vms.sshd and time.monotonic() < deadline:
        time.sleep(0.1)  # the emulated VMs notice their deletion at their next look at the fake
    assert not vms.sshd, "an emulated VM is still up"
    assert vms.live_processes() == [], "a relay VM's process outlived the fleet"
    assert fleet_ids(state_dir) == []


def test_a_transfer_through_azure_relay_vms_is_byte_exact_and_leaves_nothing(
    emulated_sky: EmulatedSky,
    sky_bucket: Callable[..., str],
    arm_vms: tuple[FakeARM, EmulatedVMs],
    state_dir: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="airflow_skyplane.compute.cloud")
    arm, vms = arm_vms
    src, dst = sky_bucket("az"), sky_bucket("az")
    data = _seed(emulated_sky, src)
    summary = _operator(src, dst).execute(context={})
    out = emulated_sky.open(dst)
    assert {k: out.read("out/" + k) for k in data} == data
    relays = read_plans(summary)["destinations"][f"{dst}/out/"]["plan"]["relays"]
    assert len(relays) >= 3, relays  # source, relay and destination regions: the congested path avoided
    assert len(vms.started) == len(relays)  # one VM per region of the plan, each reached over SSH
    assert summary["objects"] == len(data)
    # the connection's service principal logged in, for the endpoint's scope, and nothing else did
    assert {(t, c) for t, c, _ in arm.entra.issued} == {(TENANT, CLIENT_ID)}
    assert all(scope.endswith("/.default") for _, _, scope in arm.entra.issued)
    # every PUT and DELETE ran as a long-running operation, polled until it succeeded
    assert arm.seen_statuses and all(s[-1] == "Succeeded" for s in arm.seen_statuses.values())
    assert any(len(s) > 1 for s in arm.seen_statuses.values())
    # each VM's OS disk, NIC and public IP went with it
    assert sum(name.endswith("-osdisk") for name in arm.deleted_with) == len(relays)
    # each VM's identity was given the self-delete role on its own resources, gone with them
    assert len(arm.rbac.assigned) == 4 * len(relays)
    assert [a for a in arm.rbac.assignments.values() if a["properties"]["principalId"] != CLIENT_ID] == []
    assert arm.rbac.refused == []  # the documented actions were enough for every call
    _assert_nothing_left(arm, vms, state_dir)
    assert caplog.text.count("host key pinned from the azure console") == len(relays)
    assert "trusted at the first connection" not in caplog.text
    shown = json.dumps(summary) + "".join(capfd.readouterr()) + "".join(vms.metadata.values())
    for secret in (CLIENT_SECRET, "PRIVATE KEY"):
        assert secret not in shown  # not in the logs, the XCom summary, the VMs' tags or custom data
    assert summary["fleet_id"] in "".join(vms.metadata.values())  # tagged with the fleet


def test_a_relay_whose_boot_diagnostics_show_another_host_key_is_refused_and_leaves_nothing(
    emulated_sky: EmulatedSky,
    sky_bucket: Callable[..., str],
    arm_vms: tuple[FakeARM, EmulatedVMs],
    state_dir: Path,
) -> None:
    """The serial log shows one key, the machine at the VM's address presents another: the worker
    refuses to connect, and everything of the fleet is deleted."""
    from airflow_skyplane.compute.ssh import HostKeyMismatchError

    arm, vms = arm_vms
    vms.forge_console = True
    src, dst = sky_bucket("az"), sky_bucket("az")
    _seed(emulated_sky, src)
    with pytest.raises(Exception) as raised:
        _operator(src, dst).execute(context={})
    chain = [raised.value, raised.value.__cause__, raised.value.__context__]
    refused = any(isinstance(e, HostKeyMismatchError) for e in chain)
    assert refused or "not the key pinned" in str(raised.value), raised.value
    assert vms.started  # the VMs were up: only their key was wrong
    assert list(emulated_sky.open(dst).list("out/")) == []
    _assert_nothing_left(arm, vms, state_dir)


@pytest.mark.full_tier(
    reason="20 s; tests/compute/test_azure.py fails each Azure step and finds nothing left"
)
def test_a_relay_that_azure_refuses_fails_clearly_and_leaves_nothing(
    emulated_sky: EmulatedSky,
    sky_bucket: Callable[..., str],
    arm_vms: tuple[FakeARM, EmulatedVMs],
    state_dir: Path,
) -> None:
    """Resource Manager refuses a NIC half-way through provisioning: the error names the step, and
    what the other regions had made is deleted."""
    arm, vms = arm_vms
    arm.fail_next("networkInterfaces", 400, "InvalidRequestFormat", "the NIC's request is malformed")
    src, dst = sky_bucket("az"), sky_bucket("az")
    _seed(emulated_sky, src)
    with pytest.raises((RelayProvisionError, TransferError), match="networkInterfaces"):
        _operator(src, dst).execute(context={})
    assert list(emulated_sky.open(dst).list("out/")) == []
    _assert_nothing_left(arm, vms, state_dir)


@pytest.mark.full_tier(reason="20 s; test_cloud_relays.py tears a fleet down by its id alone on AWS")
def test_a_fleet_whose_worker_died_is_torn_down_by_its_id_alone(
    arm_vms: tuple[FakeARM, EmulatedVMs], state_dir: Path
) -> None:
    """What the failure callback does: the fleet id and ``cloud.json`` (the connection, the group and
    the endpoints, no secret) are enough to find and delete an Azure fleet."""
    from airflow_skyplane.compute.cloud import CloudFleet, CloudOptions
    from airflow_skyplane.compute.fleets import FleetRecord, fleet_dir
    from airflow_skyplane.hooks.skyplane import SkyplaneHook
    from airflow_skyplane.transfer.fleet import teardown

    arm, vms = arm_vms
    folder = fleet_dir(state_dir, "deadworker1")
    FleetRecord("deadworker1", "cloud", time.time(), time.time() + 600).write(folder)
    options = CloudOptions.from_settings(
        SkyplaneHook().get_settings(), aws_conn_id=None, gcp_conn_id=None, azure_conn_id="azure_default"
    )
    CloudFleet("deadworker1", folder, options).provision(
        dict.fromkeys(REGIONS[:2], 1), expires_at=time.time() + 600, owner={"task_id": "t"}
    )  # the process that rented them forgets them, as a dead worker would
    assert arm.tagged("skyplane-fleet", "deadworker1") != []
    recorded = (folder / "cloud.json").read_text()
    assert arm.ca_file in recorded and CLIENT_SECRET not in recorded
    assert "relay VMs" in teardown("deadworker1", str(state_dir))
    assert teardown("deadworker1", str(state_dir)) == []  # idempotent
    _assert_nothing_left(arm, vms, state_dir)
