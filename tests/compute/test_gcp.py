"""GCP relays through ComputeEngineHook's credentials and the real API client, against a stateful fake
of the Compute Engine REST resources on loopback: create, fail at each step, tear down, sweep."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_skyplane.compute.gcp import GCPFleetSpec, GCPRelayBackend, gcp_fleet, sweep
from airflow_skyplane.compute.relays import GATEWAY_PORTS, RelayCapacityError
from airflow_skyplane.compute.ssh import SSHKeyPair
from airflow_skyplane.testing.fake_gce import FakeGCE
from airflow_skyplane.testing.sky import EmulatedSky

ZONES = {"gcp:us-central1-a": 2, "gcp:europe-west4-a": 1, "gcp:asia-east1-a": 1}


class Boom(RuntimeError):
    pass


@pytest.fixture
def fake() -> Iterator[tuple[FakeGCE, str]]:
    with FakeGCE() as gce:
        yield gce, gce.start()


@pytest.fixture
def backend(fake: tuple[FakeGCE, str], emulated_sky: EmulatedSky) -> GCPRelayBackend:
    # the emulated sky's google_cloud_default connection: anonymous credentials and a project
    return GCPRelayBackend(compute_endpoint=fake[1])


def _spec(fleet_id: str, **kwargs: Any) -> GCPFleetSpec:
    return GCPFleetSpec(
        fleet_id=fleet_id,
        regions=kwargs.pop("regions", ZONES),
        expires_at=kwargs.pop("expires_at", time.time() + 3600),
        public_key=SSHKeyPair.generate("t").public_openssh,
        worker_cidr="198.51.100.7/32",
        owner={"dag_id": "Nightly_Replication", "task_id": "sync_day"},
        **kwargs,
    )


def _leftovers(gce: FakeGCE, fleet_id: str) -> list[str]:
    return gce.live_instances("skyplane-fleet", fleet_id) + [n for n in gce.firewalls if fleet_id in n]


def test_a_fleet_in_three_zones_is_created_labelled_and_torn_down(
    fake: tuple[FakeGCE, str], backend: GCPRelayBackend
) -> None:
    gce, _ = fake
    with gcp_fleet(backend, _spec("fleet-a", network_tier="STANDARD")) as vms:
        assert sorted(vm.region for vm in vms) == sorted(z for z, n in ZONES.items() for _ in range(n))
        instance = next(iter(gce.instances.values()))
        assert (
            instance["labels"]["skyplane-fleet"] == "fleet-a"
            and instance["labels"]["skyplane-dag-id"] == "nightly_replication"
        )
        assert instance["scheduling"]["instanceTerminationAction"] == "DELETE"
        assert instance["networkInterfaces"][0]["accessConfigs"][0]["networkTier"] == "STANDARD"
        rules = {name: rule for name, rule in gce.firewalls.items() if "fleet-a" in name}
        assert rules["skyplane-fleet-a-ssh"]["sourceRanges"] == ["198.51.100.7/32"]
        assert rules["skyplane-fleet-a-gw"]["allowed"] == [{"IPProtocol": "tcp", "ports": [GATEWAY_PORTS]}]
        assert sorted(rules["skyplane-fleet-a-gw"]["sourceRanges"]) == sorted(
            f"{vm.public_ip}/32" for vm in vms
        )
        assert "skyplane-relays" in gce.networks  # the dedicated network
        assert all(i["status"] == "RUNNING" for i in gce.instances.values())
    assert _leftovers(gce, "fleet-a") == []
    # every insert and delete was an operation that went PENDING -> RUNNING -> DONE, and each was
    # polled until DONE before the next step went on (the instances and rules are gone)
    assert len(gce.seen_statuses) >= 2 * (len(vms) + 2)
    for statuses in gce.seen_statuses.values():
        assert statuses[0] == "PENDING" and statuses[-1] == "DONE" and "RUNNING" in statuses, statuses
    assert backend.teardown("fleet-a") == {"instance": [], "firewall": []}  # idempotent


@pytest.mark.parametrize(
    ("kind", "how"), [("firewall", "quota"), ("instance", "quota"), ("instance", "capacity")]
)
def test_a_failure_while_provisioning_leaves_nothing(
    fake: tuple[FakeGCE, str], backend: GCPRelayBackend, kind: str, how: str
) -> None:
    gce, _ = fake
    if kind == "instance":
        backend.provision(_spec("warm-up", regions={"gcp:us-central1-a": 1}))  # so a later instance fails
        backend.teardown("warm-up")
    gce.fail_next(kind, how)
    with pytest.raises(RelayCapacityError) as failed:
        backend.provision(_spec(f"fleet-{kind}-{how}"))
    assert _leftovers(gce, f"fleet-{kind}-{how}") == []
    message = str(failed.value)
    assert ("quota increase" in message and "Quota" in message) if how == "quota" else "capacity" in message


def test_a_failure_in_bootstrap_or_transfer_tears_the_fleet_down(
    fake: tuple[FakeGCE, str], backend: GCPRelayBackend
) -> None:
    with pytest.raises(Boom), gcp_fleet(backend, _spec("fleet-boot")):
        raise Boom("bootstrap failed")
    assert _leftovers(fake[0], "fleet-boot") == []


def test_the_sweeper_removes_expired_fleets_only(fake: tuple[FakeGCE, str], backend: GCPRelayBackend) -> None:
    gce, _ = fake
    backend.provision(_spec("fleet-dead", expires_at=time.time() + 60))  # its worker "died"
    backend.provision(_spec("fleet-live", regions={"gcp:europe-west4-a": 1}))
    assert sweep(backend, now=time.time() + 120) == ["fleet-dead"]
    assert _leftovers(gce, "fleet-dead") == [] and _leftovers(gce, "fleet-live") != []
    backend.teardown("fleet-live")


def test_the_cleanup_operator_sweeps_gcp_fleets(fake: tuple[FakeGCE, str], backend: GCPRelayBackend) -> None:
    from airflow_skyplane.operators.cleanup import SkyplaneCleanupOperator

    backend.provision(_spec("fleet-gone", regions={"gcp:us-central1-a": 1}, expires_at=time.time() + 1))
    time.sleep(1.5)
    swept = SkyplaneCleanupOperator(task_id="sweep", gcp=True, gcp_compute_endpoint=fake[1]).execute(
        context={}
    )
    assert swept == ["fleet-gone"] and _leftovers(fake[0], "fleet-gone") == []
