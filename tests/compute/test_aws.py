"""AWS relays against moto in server mode, through EC2Hook: create, fail at each step, tear down, sweep.

After every case no instance of the fleet is pending or running, and no security group or key pair
of the fleet remains, in any of the three regions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from airflow_skyplane.compute.aws import (
    GATEWAY_PORT,
    GATEWAY_PORT_LAST,
    TAG_FLEET,
    AWSFleetSpec,
    AWSRelayBackend,
    aws_fleet,
    self_destruct_user_data,
    sweep,
)
from airflow_skyplane.compute.ssh import SSHKeyPair
from airflow_skyplane.testing.sky import EmulatedSky

REGIONS = {"aws:us-east-1": 2, "aws:us-west-2": 1, "aws:eu-west-1": 1}


class Boom(RuntimeError):
    pass


def _spec(fleet_id: str, **kwargs: Any) -> AWSFleetSpec:
    return AWSFleetSpec(
        fleet_id=fleet_id,
        regions=kwargs.pop("regions", REGIONS),
        expires_at=kwargs.pop("expires_at", time.time() + 3600),
        public_key=SSHKeyPair.generate("test").public_openssh,
        worker_cidr="198.51.100.7/32",
        instance_type="m5.large",
        owner={"dag_id": "d", "run_id": "manual__2026-11-24T00:00:00+00:00", "task_id": "t"},
        **kwargs,
    )


def _leftovers(backend: AWSRelayBackend, fleet_id: str) -> dict[str, Any]:
    found = backend.resources(fleet_id, REGIONS)
    return {r: {k: v for k, v in kinds.items() if v} for r, kinds in found.items() if any(kinds.values())}


@pytest.fixture
def backend(emulated_sky: EmulatedSky) -> AWSRelayBackend:
    return AWSRelayBackend(wait_timeout_s=60)


def test_a_fleet_across_three_regions_is_created_tagged_and_torn_down(backend: AWSRelayBackend) -> None:
    spec = _spec("fleet-a")
    with aws_fleet(backend, spec) as vms:
        assert sorted(vm.region for vm in vms) == sorted(r for r, n in REGIONS.items() for _ in range(n))
        assert all(vm.public_ip or vm.private_ip for vm in vms)
        ec2 = backend.client("us-east-1")
        reservations = ec2.describe_instances(Filters=[{"Name": f"tag:{TAG_FLEET}", "Values": ["fleet-a"]}])
        instance = reservations["Reservations"][0]["Instances"][0]
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags["skyplane:task_id"] == "t" and float(tags["skyplane:expires"]) > time.time()
        attribute = ec2.describe_instance_attribute(
            InstanceId=instance["InstanceId"], Attribute="instanceInitiatedShutdownBehavior"
        )
        assert attribute["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
        [group] = ec2.describe_security_groups(Filters=[{"Name": f"tag:{TAG_FLEET}", "Values": ["fleet-a"]}])[
            "SecurityGroups"
        ]
        rules = {
            (p["FromPort"], p["ToPort"], tuple(sorted(r["CidrIp"] for r in p["IpRanges"])))
            for p in group["IpPermissions"]
        }
        fleet_ips = tuple(sorted(f"{vm.public_ip or vm.private_ip}/32" for vm in vms))
        assert rules == {  # nothing open to the world
            (22, 22, ("198.51.100.7/32",)),
            (GATEWAY_PORT, GATEWAY_PORT_LAST, fleet_ips),
        }
        assert _leftovers(backend, "fleet-a") != {}
    assert _leftovers(backend, "fleet-a") == {}
    assert backend.teardown("fleet-a", REGIONS) == {r: {"instance": [], "security-group": [], "key-pair": []}
                                                    for r in REGIONS}  # fmt: skip


@pytest.mark.parametrize("step", ["after_security_group", "after_key_pair", "after_instance_1"])
def test_a_failure_at_each_provisioning_step_leaves_nothing(emulated_sky: EmulatedSky, step: str) -> None:
    backend = AWSRelayBackend(wait_timeout_s=60, test_faults={step: Boom(step)})
    with pytest.raises(Boom):
        backend.provision(_spec(f"fleet-{step.replace('_', '-')}"))
    assert _leftovers(backend, f"fleet-{step.replace('_', '-')}") == {}


@pytest.mark.parametrize("stage", ["bootstrap", "transfer"])
def test_a_failure_after_provisioning_tears_the_fleet_down(backend: AWSRelayBackend, stage: str) -> None:
    with pytest.raises(Boom), aws_fleet(backend, _spec(f"fleet-{stage}")):
        raise Boom(f"{stage} failed")
    assert _leftovers(backend, f"fleet-{stage}") == {}


def test_capacity_errors_name_region_quota_and_fix(backend: AWSRelayBackend) -> None:
    from botocore.exceptions import ClientError

    err = ClientError({"Error": {"Code": "VcpuLimitExceeded", "Message": "x"}}, "RunInstances")
    message = str(AWSRelayBackend._capacity("aws:eu-west-1", _spec("q"), err))
    assert "aws:eu-west-1" in message and "vCPU quota" in message and "max_relays_per_region" in message


def test_user_data_schedules_the_self_destruct_and_holds_no_secret() -> None:
    script = self_destruct_user_data(expires_at=10_000, now=10_000 - 3600)
    assert "shutdown -h +60" in script and "KEY" not in script.upper()


_KILLED_WORKER = """
import json, sys, time
from airflow_skyplane.compute.aws import AWSFleetSpec, AWSRelayBackend
from airflow_skyplane.compute.ssh import SSHKeyPair
spec = AWSFleetSpec(fleet_id=sys.argv[1], regions=json.loads(sys.argv[2]), expires_at=time.time() + 60,
                    public_key=SSHKeyPair.generate("w").public_openssh, worker_cidr="198.51.100.7/32")
AWSRelayBackend(wait_timeout_s=60).provision(spec)
print("provisioned", flush=True)
time.sleep(600)
"""


def test_a_worker_killed_before_teardown_is_cleaned_by_the_sweeper(
    backend: AWSRelayBackend, emulated_sky: EmulatedSky
) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WORKER, "fleet-killed", json.dumps(REGIONS)],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ), start_new_session=True,
    )  # fmt: skip
    try:
        assert worker.stdout is not None
        assert any(line.strip() == "provisioned" for line in iter(worker.stdout.readline, ""))
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    assert _leftovers(backend, "fleet-killed") != {}
    live = _spec("fleet-young", regions={"aws:us-west-2": 1})
    backend.provision(live)
    swept = sweep(backend, REGIONS, now=time.time() + 120)  # after the killed fleet's expiry
    assert swept["fleet-killed"] == sorted(REGIONS)
    assert "fleet-young" not in swept
    assert _leftovers(backend, "fleet-killed") == {}
    backend.teardown("fleet-young", live.regions)


def test_host_keys_are_read_from_the_console_output(backend: AWSRelayBackend) -> None:
    from airflow_skyplane.compute.aws import host_keys_from_console

    console = (
        "boot...\n-----BEGIN SSH HOST KEY KEYS-----\n"
        "ecdsa-sha2-nistp256 AAAAE2VjZHNh root@ip-10-0-0-1\n"
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 root@ip-10-0-0-1\n"
        "-----END SSH HOST KEY KEYS-----\nlogin:"
    )
    assert host_keys_from_console(console) == [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5",
        "ecdsa-sha2-nistp256 AAAAE2VjZHNh",
    ]
    with aws_fleet(backend, _spec("fleet-console", regions={"aws:eu-west-1": 1})) as [vm]:
        assert backend.console_host_keys(vm) == []  # moto's console shows none: pin on first use instead


def test_cleanup_operator_and_cli_sweep_expired_aws_fleets(
    backend: AWSRelayBackend, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_skyplane.cli import main
    from airflow_skyplane.operators.cleanup import SkyplaneCleanupOperator

    backend.provision(_spec("fleet-old", regions={"aws:us-east-1": 1}, expires_at=time.time() + 1))
    backend.provision(_spec("fleet-cli", regions={"aws:eu-west-1": 1}, expires_at=time.time() + 1))
    time.sleep(1.5)
    swept = SkyplaneCleanupOperator(task_id="sweep", aws_regions=["aws:us-east-1"]).execute(context={})
    assert swept == ["fleet-old"] and _leftovers(backend, "fleet-old") == {}
    # the CLI, without Airflow: boto3's own credentials and endpoint, here moto's
    conn = json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", conn["extra"]["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", conn["login"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", conn["password"])
    capsys.readouterr()
    assert main(["fleets", "list", "--cloud", "aws", "--region", "eu-west-1", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)) == ["fleet-cli"]
    assert main(["fleets", "sweep", "--cloud", "aws", "--region", "eu-west-1"]) == 0
    assert "swept 1 fleet(s): fleet-cli" in capsys.readouterr().out
    assert _leftovers(backend, "fleet-cli") == {}
