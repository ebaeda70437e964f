"""Azure relays through the real management SDKs, against a stateful fake of Resource Manager served
over HTTPS on loopback: create, fail at each step, tear down, sweep."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from airflow_skyplane.compute.azure import AzureFleetSpec, AzureRelayBackend, azure_fleet, sweep
from airflow_skyplane.compute.relays import GATEWAY_PORTS, RelayCapacityError
from airflow_skyplane.compute.ssh import SSHKeyPair
from airflow_skyplane.testing.fake_arm import FakeARM

REGIONS = {"azure:westeurope": 2, "azure:eastus": 1}


class OfflineToken:
    """Entra ID has no emulator: a credential that hands out a token without asking it."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("offline-test-token", int(time.time()) + 3600)


class Boom(RuntimeError):
    pass


@pytest.fixture
def fake() -> Iterator[FakeARM]:
    with FakeARM() as arm:
        arm.url = arm.start()  # type: ignore[attr-defined]
        yield arm


@pytest.fixture
def backend(fake: FakeARM) -> AzureRelayBackend:
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.network import NetworkManagementClient

    from airflow_skyplane.compute.azure import _resource_client_class

    ResourceManagementClient = _resource_client_class()  # noqa: N806

    options = {"base_url": fake.url, "connection_verify": fake.ca_file}  # type: ignore[attr-defined]

    def clients() -> tuple[Any, Any, Any, str]:
        cred = OfflineToken()
        return (
            ComputeManagementClient(cred, "sub-1", **options),
            NetworkManagementClient(cred, "sub-1", **options),
            ResourceManagementClient(cred, "sub-1", **options),
            "sub-1",
        )

    return AzureRelayBackend(
        resource_group="relays", clients_factory=clients, base_url=fake.url,  # type: ignore[attr-defined]
        connection_verify=fake.ca_file,
    )  # fmt: skip


def _spec(fleet_id: str, **kwargs: Any) -> AzureFleetSpec:
    return AzureFleetSpec(
        fleet_id=fleet_id, regions=kwargs.pop("regions", REGIONS),
        expires_at=kwargs.pop("expires_at", time.time() + 3600),
        public_key=SSHKeyPair.generate("t").public_openssh, worker_cidr="198.51.100.7/32",
        owner={"dag_id": "d", "task_id": "t"}, **kwargs,
    )  # fmt: skip


def test_a_fleet_in_two_regions_is_created_tagged_and_torn_down(
    fake: FakeARM, backend: AzureRelayBackend
) -> None:
    with azure_fleet(backend, _spec("fleet-a")) as vms:
        assert sorted(vm.region for vm in vms) == ["azure:eastus", "azure:westeurope", "azure:westeurope"]
        assert all(vm.public_ip for vm in vms)
        kinds = {r["type"] for r in fake.resources.values()}
        assert "Microsoft.DevTestLab/schedules" in kinds  # deallocation at expiry, within a day
        [nsg] = [r for r in fake.resources.values() if r["id"].lower().endswith("skyplane-fleet-a-westeurope")
                 and r["type"].endswith("networkSecurityGroups")]  # fmt: skip
        rules = {r["name"]: r["properties"] for r in nsg["properties"]["securityRules"]}
        assert rules["ssh-from-worker"]["sourceAddressPrefix"] == "198.51.100.7/32"
        assert rules["gateway-from-fleet"]["destinationPortRange"] == GATEWAY_PORTS
        assert sorted(rules["gateway-from-fleet"]["sourceAddressPrefixes"]) == sorted(
            f"{vm.public_ip}/32" for vm in vms
        )
    assert fake.tagged("skyplane-fleet", "fleet-a") == []
    # deleting a VM deleted its NIC, public IP and OS disk with it
    names = sorted(vm.instance_id for vm in vms)
    assert sorted(fake.deleted_with) == sorted([*names, *names, *(f"{n}-osdisk" for n in names)])
    assert fake.rbac.assignments == {}  # the relays' role assignments went with their resources
    assert fake.resources == {}
    assert backend.teardown("fleet-a") == {}
    # every PUT and DELETE was a long-running operation, polled from InProgress until it Succeeded
    assert len(fake.seen_statuses) > 2 * len(vms) * 4
    assert {tuple(statuses) for statuses in fake.seen_statuses.values()} == {("InProgress", "Succeeded")}


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(
            kind, marks=pytest.mark.full_tier(reason="13 s each; the last step, with the most to undo, stays")
        )
        for kind in ("networkSecurityGroups", "publicIPAddresses")
    ]
    + ["virtualMachines"],
)
def test_a_failure_at_each_step_leaves_nothing(fake: FakeARM, backend: AzureRelayBackend, kind: str) -> None:
    if kind == "virtualMachines":
        fake.fail_next(
            kind, 409, "OperationNotAllowed", "Operation could result in exceeding quota limits of Core."
        )
        with pytest.raises(RelayCapacityError, match="vCPU quota"):
            backend.provision(_spec(f"fleet-{kind.lower()}"))
    else:
        fake.fail_next(kind, 400, "InvalidParameter", "no")
        with pytest.raises(Exception, match="failed"):
            backend.provision(_spec(f"fleet-{kind.lower()}"))
    assert fake.tagged("skyplane-fleet", f"fleet-{kind.lower()}") == []


@pytest.mark.full_tier(
    reason="50 s; the sweeper's removal of an Azure relay is tested by the self-destruct tests"
)
def test_a_failure_in_bootstrap_tears_down_and_the_sweeper_takes_expired_fleets(
    fake: FakeARM, backend: AzureRelayBackend
) -> None:
    with pytest.raises(Boom), azure_fleet(backend, _spec("fleet-boot")):
        raise Boom("bootstrap failed")
    assert fake.tagged("skyplane-fleet", "fleet-boot") == []
    backend.provision(_spec("fleet-dead", regions={"azure:eastus": 1}, expires_at=time.time() + 60))
    backend.provision(_spec("fleet-live", regions={"azure:eastus": 1}))
    assert sweep(backend, now=time.time() + 120) == ["fleet-dead"]
    assert (
        fake.tagged("skyplane-fleet", "fleet-dead") == []
        and fake.tagged("skyplane-fleet", "fleet-live") != []
    )
    backend.teardown("fleet-live")


def test_the_backend_takes_its_subscription_and_credential_from_the_connection(
    fake: FakeARM, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """No clients injected: the management clients are built from the ``AzureComputeHook``
    connection's subscription (Entra ID has no emulator, so only the token comes from here)."""
    import json

    from azure.identity import ClientSecretCredential

    from airflow_skyplane.compute.azure import _connection_credential
    from airflow_skyplane.exceptions import InvalidInputError

    conn = {"conn_type": "azure", "login": "app-id", "password": "app-secret",
            "extra": {"tenantId": "tenant-1", "subscriptionId": "sub-of-the-connection"}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_AZURE_RELAYS", json.dumps(conn))
    credential, subscription = _connection_credential("azure_relays")
    assert isinstance(credential, ClientSecretCredential) and subscription == "sub-of-the-connection"

    backend = AzureRelayBackend(
        resource_group="relays", azure_conn_id="azure_relays", base_url=fake.url,  # type: ignore[attr-defined]
        connection_verify=fake.ca_file, credential=OfflineToken(),
    )  # fmt: skip
    with azure_fleet(backend, _spec("fleet-conn", regions={"azure:eastus": 1})) as vms:
        assert len(vms) == 1 and vms[0].public_ip
        ids = [r["id"] for r in fake.resources.values()]
        assert ids and all(
            i.startswith("/subscriptions/sub-of-the-connection/resourceGroups/relays/") for i in ids
        )
    assert fake.tagged("skyplane-fleet", "fleet-conn") == []

    for extra, fix in (({"tenantId": "t"}, "set subscriptionId"), ({"key_path": str(tmp_path / "no.json"),
                       "subscriptionId": "s"}, "auth file")):  # fmt: skip
        monkeypatch.setenv("AIRFLOW_CONN_AZURE_RELAYS", json.dumps({"conn_type": "azure", "extra": extra}))
        with pytest.raises(InvalidInputError, match=fix) as err:
            AzureRelayBackend(resource_group="relays", azure_conn_id="azure_relays").clients()
        assert "azure_relays" in str(err.value)


def test_a_relays_host_keys_are_read_from_its_boot_diagnostics(
    fake: FakeARM, backend: AzureRelayBackend
) -> None:
    from airflow_skyplane.testing.vms import cloud_init_console

    key = SSHKeyPair.generate("host").public_openssh
    with azure_fleet(backend, _spec("fleet-keys", regions={"azure:eastus": 1})) as vms:
        [vm] = vms
        body = fake.resources[backend._id("Microsoft.Compute/virtualMachines", vm.instance_id).lower()]
        assert body["properties"]["diagnosticsProfile"] == {"bootDiagnostics": {"enabled": True}}
        assert backend.console_host_keys(vm) == []  # nothing printed yet
        fake.serial_output[vm.instance_id] = "booting\n" + cloud_init_console(key)
        assert backend.console_host_keys(vm) == [" ".join(key.split()[:2])]


def _self_destruct(fake: FakeARM, script: str, vm_name: str, tmp_path: Any) -> Any:
    """Run the self-destruct program a relay's boot script holds, as the relay ``vm_name`` would at
    expiry: its metadata service is the fake's for that VM, Resource Manager the fake."""
    import os
    import subprocess
    import sys

    from airflow_skyplane.compute.azure_identity import program_of

    program = tmp_path / f"self_destruct_{vm_name}.py"
    program.write_text(program_of(script))
    env = {**os.environ, "SKYPLANE_IMDS_ENDPOINT": f"{fake.url}/imds/{vm_name}",  # type: ignore[attr-defined]
           "SSL_CERT_FILE": fake.ca_file}  # fmt: skip
    return subprocess.run(
        [sys.executable, str(program)], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _boot_script(fake: FakeARM, backend: AzureRelayBackend, vm_name: str) -> str:
    import base64

    body = fake.resources[backend._id("Microsoft.Compute/virtualMachines", vm_name).lower()]
    return base64.b64decode(body["properties"]["osProfile"]["customData"]).decode()


def test_a_relay_deletes_itself_with_its_own_identity_and_only_itself(
    fake: FakeARM, backend: AzureRelayBackend, tmp_path: Any
) -> None:
    from airflow_skyplane.compute.azure_identity import SELF_DELETE_ACTIONS, self_destruct_program

    expires_at = time.time() + 3600
    vms = backend.provision(_spec("fleet-sd", regions={"azure:eastus": 2}, expires_at=expires_at))
    first, second = sorted(vm.instance_id for vm in vms)
    script = _boot_script(fake, backend, first)
    assert f"delay=$(( {int(expires_at)} - $(date +%s) ))" in script and "systemd-run" in script
    # the relay's identity holds a role of deletions only, on the relay's own resources only
    principal = fake.resources[backend._id("Microsoft.Compute/virtualMachines", first).lower()]["identity"][
        "principalId"
    ]
    scopes = sorted(
        a["properties"]["scope"].rsplit("/providers/", 1)[-1]
        for a in fake.rbac.assignments.values()
        if a["properties"]["principalId"] == principal
    )
    assert scopes == sorted([f"Microsoft.Compute/virtualMachines/{first}",
                             f"Microsoft.Network/networkInterfaces/{first}",
                             f"Microsoft.Network/publicIPAddresses/{first}",
                             f"Microsoft.Compute/disks/{first}-osdisk"])  # fmt: skip
    [role] = fake.rbac.definitions.values()
    assert role["properties"]["permissions"][0]["actions"] == list(SELF_DELETE_ACTIONS)

    # its identity cannot delete another relay of the fleet
    other = backend._id("Microsoft.Compute/virtualMachines", second)
    stolen = script.replace(
        self_destruct_program(
            backend._id("Microsoft.Compute/virtualMachines", first), fake.url, "2024-07-01"
        ),  # type: ignore[attr-defined]
        self_destruct_program(other, fake.url, "2024-07-01"),  # type: ignore[attr-defined]
    )
    refused = _self_destruct(fake, stolen, first, tmp_path)
    assert refused.returncode == 1 and "AuthorizationFailed" in refused.stderr, refused.stderr
    assert other.lower() in fake.resources

    # at expiry, its own deletion reaches Resource Manager and takes its NIC, public IP and disk
    done = _self_destruct(fake, script, first, tmp_path)
    assert done.returncode == 0 and "Succeeded" in done.stderr, done.stderr
    left = {r["name"] for r in fake.resources.values()}
    assert not {first, f"{first}-osdisk"} & left and second in left
    assert sorted(n for n in fake.deleted_with) == sorted([first, first, f"{first}-osdisk"])
    assert not any(a["properties"]["principalId"] == principal for a in fake.rbac.assignments.values())
    backend.teardown("fleet-sd")  # the rest: the other relay, the region's network
    assert fake.tagged("skyplane-fleet", "fleet-sd") == []


def test_a_relay_whose_identity_lacks_the_role_logs_it_and_the_sweeper_removes_it(
    fake: FakeARM, backend: AzureRelayBackend, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    fake.fail_next("roleAssignments", 403, "AuthorizationFailed", "no roleAssignments/write on the group")
    with caplog.at_level(logging.WARNING, logger="airflow_skyplane.compute.azure_identity"):
        [vm] = backend.provision(
            _spec("fleet-norole", regions={"azure:eastus": 1}, expires_at=time.time() + 60)
        )
    assert "cannot delete itself at expiry" in caplog.text and "AuthorizationFailed" in caplog.text
    refused = _self_destruct(fake, _boot_script(fake, backend, vm.instance_id), vm.instance_id, tmp_path)
    assert refused.returncode == 1 and "refused to delete" in refused.stderr, refused.stderr
    assert "the sweeper deletes it" in refused.stderr
    assert backend._id("Microsoft.Compute/virtualMachines", vm.instance_id).lower() in fake.resources
    assert sweep(backend, now=time.time() + 120) == ["fleet-norole"]
    assert fake.tagged("skyplane-fleet", "fleet-norole") == [] and fake.resources == {}


def test_a_connection_without_the_right_to_assign_roles_gets_relays_that_cannot_delete_themselves(
    fake: FakeARM, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection's service principal, logged in at the fake Entra ID, held to the role
    docs/connections.md documents less ``roleAssignments/write``: the fleet is made and torn down,
    each relay's missing self-deletion is logged, and the refusal came from the role check."""
    import json
    import logging
    from pathlib import Path

    from airflow_skyplane.testing.fake_rbac import documented_actions

    docs = (Path(__file__).resolve().parents[2] / "docs" / "connections.md").read_text()
    fake.entra.add_principal("tenant-1", "app-id", "app-secret")
    lacking = "Microsoft.Authorization/roleAssignments/write"
    actions = [a for a in documented_actions(docs) if a != lacking]
    fake.rbac.enforce("app-id", actions, "/subscriptions/sub-1/resourceGroups/relays")
    conn = {"conn_type": "azure", "login": "app-id", "password": "app-secret",
            "extra": {"tenantId": "tenant-1", "subscriptionId": "sub-1"}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_AZURE_RELAYS", json.dumps(conn))
    backend = AzureRelayBackend(
        resource_group="relays", azure_conn_id="azure_relays", base_url=fake.url,  # type: ignore[attr-defined]
        authority=fake.url, connection_verify=fake.ca_file,  # type: ignore[attr-defined]
    )  # fmt: skip
    logger = logging.getLogger("airflow_skyplane.compute.azure_identity")
    logger.addHandler(caplog.handler)  # Airflow's logging, set up by the connection, may not propagate
    try:
        with azure_fleet(backend, _spec("fleet-rbac", regions={"azure:eastus": 1})) as vms:
            assert len(vms) == 1
    finally:
        logger.removeHandler(caplog.handler)
    assert "cannot delete itself at expiry" in caplog.text and "roleAssignments/write" in caplog.text
    assert {(p, a) for p, a, _ in fake.rbac.refused} == {("app-id", lacking)}
    assert fake.tagged("skyplane-fleet", "fleet-rbac") == []
