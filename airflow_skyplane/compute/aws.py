"""Relay VMs on AWS, rented and returned through Airflow's ``EC2Hook``.

A fleet in one region is: one security group, one key pair, and N instances, every one of them
tagged ``skyplane:fleet=<fleet id>`` and ``skyplane:expires=<unix time>`` (plus the DAG, run and task
that asked). Every step finds what it acts on **by those tags**, never only by ids it remembers, so:

* :meth:`AWSRelayBackend.teardown` of a fleet whose provisioning failed half-way (a security group
  but no key pair; some instances but not all) removes exactly what exists;
* :func:`sweep` run by another process, after the worker died, finds every resource of every fleet
  past its expiry in the regions it is given and removes them;
* a relay also removes itself: its user-data (which holds no secret) schedules ``shutdown -h`` at the
  fleet's expiry and the instance is launched with ``InstanceInitiatedShutdownBehavior=terminate``,
  so a VM cannot bill past the expiry even if no sweeper ever runs.

Order of teardown, per region: terminate the instances, wait until they are gone (a security group
cannot be deleted while an interface uses it), delete the security group (retrying while AWS still
reports a dependency), delete the key pair.

Network rules: the security group admits SSH (22) only from the worker's address (``worker_cidr``)
and the gateway port only from the fleet's own public addresses, added once they are known
(:meth:`AWSRelayBackend.admit_fleet`).

Capacity and quota errors (``InstanceLimitExceeded``, ``VcpuLimitExceeded``,
``InsufficientInstanceCapacity``, spot limits...) become :class:`RelayCapacityError` naming the
region, the quota and what to change; with ``use_spot`` a spot launch that fails for capacity is
retried on demand.

Why tenacity: the waits (instances running, instances gone, a security group free of dependencies)
are bounded retries with backoff, not hand-written loops.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tenacity import Retrying, retry_if_exception, retry_if_result, stop_after_delay, wait_exponential

from airflow_skyplane.compute.relays import (
    GATEWAY_PORT,
    GATEWAY_PORT_LAST,
    RelayCapacityError,
    RelayProvisionError,
    RelayVM,
    check_worker_cidr,
    host_keys_from_console,
    per_region,
    relay_fleet,
    self_destruct_script,
)
from airflow_skyplane.exceptions import InvalidInputError

__all__ = [
    "GATEWAY_PORT",
    "GATEWAY_PORT_LAST",
    "AWSFleetSpec",
    "AWSRelayBackend",
    "RelayCapacityError",
    "RelayProvisionError",
    "RelayVM",
]

log = logging.getLogger(__name__)

TAG_FLEET = "skyplane:fleet"
TAG_EXPIRES = "skyplane:expires"
#: Ubuntu 24.04 LTS through AWS's public SSM parameter: the current AMI of every region, no table
DEFAULT_IMAGE = (
    "resolve:ssm:/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
)
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]

_CAPACITY_FIXES = {
    "InstanceLimitExceeded": "the On-Demand instance quota",
    "VcpuLimitExceeded": "the vCPU quota for this instance family",
    "MaxSpotInstanceCountExceeded": "the Spot instance quota",
    "InsufficientInstanceCapacity": None,
    "SpotMaxPriceTooLow": None,
    "InsufficientCapacity": None,
    "Unsupported": None,
}


@dataclass
class AWSFleetSpec:
    """What to rent: ``regions`` maps a planner region (``aws:eu-west-1``) to a VM count."""

    fleet_id: str
    regions: Mapping[str, int]
    expires_at: float
    public_key: str  # OpenSSH public key of the fleet's ephemeral key pair
    worker_cidr: str  # SSH is admitted from here only, e.g. "203.0.113.7/32"
    instance_type: str = "m5.8xlarge"
    image: Mapping[str, str] = field(default_factory=dict)  # region or "aws" -> AMI id
    use_spot: bool = False
    owner: Mapping[str, Any] = field(default_factory=dict)
    #: region -> subnet id to launch the relays in (its VPC holds their security group); by default
    #: the region's default VPC. A subnet of a VPC peered with the worker's lets relays be reached on
    #: their private addresses (``relay_address="private"``).
    subnets: Mapping[str, str] = field(default_factory=dict)


def _aws_region(region: str) -> str:
    if not region.startswith("aws:"):
        raise InvalidInputError(f"region {region!r} is not an AWS region: AWS relays need 'aws:<region>'")
    return region.split(":", 1)[1]


def _error_code(err: BaseException) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _tags(spec: AWSFleetSpec, resource: str) -> list[dict[str, Any]]:
    tags = [
        {"Key": TAG_FLEET, "Value": spec.fleet_id},
        {"Key": TAG_EXPIRES, "Value": str(int(spec.expires_at))},
        {"Key": "Name", "Value": f"skyplane-{spec.fleet_id}"},
    ]
    for key in ("dag_id", "run_id", "task_id"):
        value = spec.owner.get(key)
        if value:
            tags.append({"Key": f"skyplane:{key}", "Value": str(value)[:255]})
    return [{"ResourceType": resource, "Tags": tags}]


def self_destruct_user_data(expires_at: float, now: float | None = None) -> str:
    """The user-data script: power off at the fleet's expiry (shutdown behaviour: terminate)."""
    return self_destruct_script(expires_at, now)


class AWSRelayBackend:
    """Rent, find and return the relay VMs of fleets on EC2, through ``EC2Hook``.

    :param client_factory: ``region -> boto3 EC2 client``; by default ``EC2Hook(aws_conn_id=...,
        region_name=region, api_type="client_type").conn``, so credentials, endpoint and retries come
        from the Airflow connection.
    :param parallel_regions: provision the regions of a fleet at once (the default), or one after
        the other (to measure what parallelism saves: ``benchmarks/provision.py``).
    :param test_faults: test-only: step name -> exception to raise there (``after_security_group``,
        ``after_key_pair``, ``after_instance_1``, ``before_instances:<region>``...), to prove teardown
        after a failure at each step.
    """

    def __init__(
        self,
        *,
        aws_conn_id: str | None = "aws_default",
        client_factory: Callable[[str], Any] | None = None,
        wait_timeout_s: float = 600.0,
        test_faults: Mapping[str, BaseException] | None = None,
        parallel_regions: bool = True,
    ) -> None:
        self.aws_conn_id = aws_conn_id
        self.parallel_regions = parallel_regions
        self._factory = client_factory
        self._clients: dict[str, Any] = {}
        self.wait_timeout_s = wait_timeout_s
        self._faults = dict(test_faults or {})

    def client(self, aws_region: str) -> Any:
        if aws_region not in self._clients:
            if self._factory is not None:
                self._clients[aws_region] = self._factory(aws_region)
            else:
                from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook

                hook = EC2Hook(aws_conn_id=self.aws_conn_id, region_name=aws_region, api_type="client_type")
                self._clients[aws_region] = hook.conn
        return self._clients[aws_region]

    def _fault(self, step: str) -> None:
        if step in self._faults:
            raise self._faults[step]

    # -- provisioning ------------------------------------------------------------------------------
    def provision(self, spec: AWSFleetSpec) -> list[RelayVM]:
        """Create the fleet in every region, in parallel; on any failure remove all of it and raise."""
        check_worker_cidr(spec.worker_cidr)
        for region, count in spec.regions.items():
            _aws_region(region)
            if not isinstance(count, int) or count < 1:
                raise InvalidInputError(f"relay count {count!r} for {region} must be a positive whole number")
        try:
            vms = per_region(
                spec.regions,
                lambda region, count: self._provision_region(spec, region, count),
                parallel=self.parallel_regions,
            )
            self.admit_fleet(spec, vms)
            return vms
        except BaseException:
            self.teardown(spec.fleet_id, spec.regions)
            raise

    def _provision_region(self, spec: AWSFleetSpec, region: str, count: int) -> list[RelayVM]:
        aws_region = _aws_region(region)
        ec2 = self.client(aws_region)
        name = f"skyplane-{spec.fleet_id}"
        subnet = spec.subnets.get(region)
        if subnet:
            found = ec2.describe_subnets(Filters=[{"Name": "subnet-id", "Values": [subnet]}])["Subnets"]
            if not found:
                raise RelayProvisionError(
                    f"{region}: subnet {subnet!r} (aws_subnets) does not exist there: give a subnet id of "
                    "that region, or leave the region out of aws_subnets to use its default VPC"
                )
            vpc = found[0]["VpcId"]
        else:
            vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
            if not vpcs:
                raise RelayProvisionError(
                    f"{region} has no default VPC for the relays' security group: create one "
                    "(aws ec2 create-default-vpc), give a subnet in aws_subnets, or leave the region out "
                    "with allowed_regions"
                )
            vpc = vpcs[0]["VpcId"]
        group = ec2.create_security_group(
            GroupName=name,
            Description=f"airflow-skyplane relays of fleet {spec.fleet_id}",
            VpcId=vpc,
            TagSpecifications=_tags(spec, "security-group"),
        )["GroupId"]
        ec2.authorize_security_group_ingress(
            GroupId=group,
            IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                 "IpRanges": [{"CidrIp": spec.worker_cidr, "Description": "SSH from the Airflow worker"}]},
            ],
        )  # fmt: skip
        self._fault("after_security_group")
        ec2.import_key_pair(
            KeyName=name,
            PublicKeyMaterial=spec.public_key.encode(),
            TagSpecifications=_tags(spec, "key-pair"),
        )
        self._fault("after_key_pair")
        image = spec.image.get(region) or spec.image.get("aws") or DEFAULT_IMAGE
        self._fault(f"before_instances:{region}")
        vms = []
        for index in range(count):
            vms.append(self._launch(ec2, spec, region, image, group, name, index, subnet))
            self._fault(f"after_instance_{index + 1}")
        return self._wait_running(ec2, region, vms)

    def _launch(
        self,
        ec2: Any,
        spec: AWSFleetSpec,
        region: str,
        image: str,
        group: str,
        key: str,
        index: int,
        subnet: str | None = None,
    ) -> RelayVM:
        request: dict[str, Any] = {
            "ImageId": image,
            "InstanceType": spec.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "KeyName": key,
            "SecurityGroupIds": [group],
            "UserData": self_destruct_user_data(spec.expires_at),
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": _tags(spec, "instance") + _tags(spec, "volume"),
            # idempotent: a retried call does not launch a second VM
            "ClientToken": f"{spec.fleet_id}-{_aws_region(region)}-{index}",
        }
        if subnet:
            request["SubnetId"] = subnet
        spot = spec.use_spot
        if spot:
            request["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        from botocore.exceptions import ClientError

        try:
            instance = ec2.run_instances(**request)["Instances"][0]
        except ClientError as err:
            code = _error_code(err)
            if spot and code in _CAPACITY_FIXES:
                log.warning("no spot capacity in %s (%s): launching on demand", region, code)
                request.pop("InstanceMarketOptions")
                request["ClientToken"] += "-od"
                spot = False
                try:
                    instance = ec2.run_instances(**request)["Instances"][0]
                except ClientError as retry_err:
                    raise self._capacity(region, spec, retry_err) from None
            else:
                raise self._capacity(region, spec, err) from None
        return RelayVM("aws", region, instance["InstanceId"], spot=spot)

    @staticmethod
    def _capacity(region: str, spec: AWSFleetSpec, err: BaseException) -> BaseException:
        code = _error_code(err)
        if code not in _CAPACITY_FIXES:
            return err
        quota = _CAPACITY_FIXES[code]
        if quota:
            fix = (
                f"request an increase of {quota} in {region} (Service Quotas), or lower "
                "max_relays_per_region, or exclude the region with allowed_regions"
            )
        else:
            fix = (
                f"AWS has no {spec.instance_type} capacity there now: choose another aws_instance_type, "
                "retry later, or exclude the region with allowed_regions"
            )
        return RelayCapacityError(f"{region}: EC2 refused a relay VM ({code}): {fix}", region=region)

    def _wait_running(self, ec2: Any, region: str, vms: list[RelayVM]) -> list[RelayVM]:
        ids = [vm.instance_id for vm in vms]

        def states() -> dict[str, dict[str, Any]]:
            pages = ec2.describe_instances(InstanceIds=ids)["Reservations"]
            return {i["InstanceId"]: i for r in pages for i in r["Instances"]}

        retrying = Retrying(
            retry=retry_if_result(lambda found: any(i["State"]["Name"] == "pending" for i in found.values())),
            stop=stop_after_delay(self.wait_timeout_s),
            wait=wait_exponential(multiplier=0.5, max=10),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else {},
            reraise=True,
        )
        found = retrying(states)
        for vm in vms:
            info = found.get(vm.instance_id, {})
            state = info.get("State", {}).get("Name")
            if state != "running":
                raise RelayProvisionError(
                    f"relay {vm.instance_id} in {region} is {state or 'gone'} instead of running after "
                    f"{self.wait_timeout_s:.0f} s; the fleet is torn down"
                )
            vm.public_ip = info.get("PublicIpAddress")
            vm.private_ip = info.get("PrivateIpAddress")
        return vms

    def admit_fleet(self, spec: AWSFleetSpec, vms: Sequence[RelayVM]) -> None:
        """Open the gateway port of every region's group to the fleet's own addresses, and only them."""
        addresses = sorted({a for vm in vms if (a := vm.public_ip or vm.private_ip)})
        if not addresses:
            return

        def admit(region: str, _count: int) -> list[RelayVM]:
            ec2 = self.client(_aws_region(region))
            for group in self._find(ec2, "security-group", spec.fleet_id):
                ec2.authorize_security_group_ingress(
                    GroupId=group,
                    IpPermissions=[
                        {"IpProtocol": "tcp", "FromPort": GATEWAY_PORT, "ToPort": GATEWAY_PORT_LAST,
                         "IpRanges": [{"CidrIp": f"{a}/32", "Description": "fleet gateway"}
                                      for a in addresses]},
                    ],
                )  # fmt: skip
            return []

        per_region(spec.regions, admit, parallel=self.parallel_regions)  # a round trip per region, at once

    def console_host_keys(self, vm: RelayVM) -> list[str]:
        """The relay's host keys from its console output (empty until cloud-init has printed them)."""
        ec2 = self.client(_aws_region(vm.region))
        output = ec2.get_console_output(InstanceId=vm.instance_id, Latest=True).get("Output") or ""
        if output and "BEGIN SSH HOST KEY KEYS" not in output:
            try:  # the API returns it base64-encoded through some SDK paths
                output = base64.b64decode(output, validate=True).decode(errors="replace")
            except (ValueError, binascii.Error):
                pass
        return host_keys_from_console(output)

    # -- finding and removing ----------------------------------------------------------------------
    @staticmethod
    def _find(ec2: Any, kind: str, fleet_id: str | None) -> list[str]:
        """Ids of the fleet's live resources of one kind (every fleet's when ``fleet_id`` is None)."""
        flt = (
            [{"Name": f"tag:{TAG_FLEET}", "Values": [fleet_id]}]
            if fleet_id
            else [{"Name": "tag-key", "Values": [TAG_FLEET]}]
        )
        if kind == "instance":
            pages = ec2.describe_instances(
                Filters=flt + [{"Name": "instance-state-name", "Values": LIVE_STATES}]
            )
            return [i["InstanceId"] for r in pages["Reservations"] for i in r["Instances"]]
        if kind == "security-group":
            return [g["GroupId"] for g in ec2.describe_security_groups(Filters=flt)["SecurityGroups"]]
        return [k["KeyName"] for k in ec2.describe_key_pairs(Filters=flt)["KeyPairs"]]

    def resources(self, fleet_id: str | None, regions: Iterable[str]) -> dict[str, dict[str, list[str]]]:
        """Live instances, security groups and key pairs of a fleet (or of every fleet), per region."""
        out = {}
        for region in regions:
            ec2 = self.client(_aws_region(region))
            out[region] = {
                kind: self._find(ec2, kind, fleet_id) for kind in ("instance", "security-group", "key-pair")
            }
        return out

    def teardown(self, fleet_id: str, regions: Iterable[str]) -> dict[str, dict[str, list[str]]]:
        """Remove every resource of ``fleet_id`` in ``regions`` (found by tag); idempotent.

        Returns what was removed, per region. Regions are torn down in parallel; an error in one
        does not stop the others, and is raised at the end.
        """
        regions = list(regions)
        removed: dict[str, dict[str, list[str]]] = {}
        errors = []
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(regions)))) as pool:
            futures = {r: pool.submit(self._teardown_region, fleet_id, r) for r in regions}
        for region, future in futures.items():
            try:
                removed[region] = future.result()
            except Exception as err:  # noqa: BLE001 - report every region's failure together
                errors.append(f"{region}: {type(err).__name__}: {err}")
        if errors:
            raise RelayProvisionError(
                f"teardown of fleet {fleet_id} left resources behind ({'; '.join(errors)}); the sweeper "
                "retries at the next run"
            )
        return removed

    def _teardown_region(self, fleet_id: str, region: str) -> dict[str, list[str]]:
        ec2 = self.client(_aws_region(region))
        instances = self._find(ec2, "instance", fleet_id)
        if instances:
            ec2.terminate_instances(InstanceIds=instances)
            Retrying(
                retry=retry_if_result(bool),
                stop=stop_after_delay(self.wait_timeout_s),
                wait=wait_exponential(multiplier=0.5, max=10),
                reraise=True,
            )(lambda: [i for i in self._find(ec2, "instance", fleet_id) if i in instances])
        groups = self._find(ec2, "security-group", fleet_id)
        for group in groups:
            Retrying(
                retry=retry_if_exception(lambda e: _error_code(e) == "DependencyViolation"),
                stop=stop_after_delay(self.wait_timeout_s),
                wait=wait_exponential(multiplier=0.5, max=10),
                reraise=True,
            )(lambda g=group: ec2.delete_security_group(GroupId=g))
        keys = self._find(ec2, "key-pair", fleet_id)
        for key in keys:
            ec2.delete_key_pair(KeyName=key)
        return {"instance": instances, "security-group": groups, "key-pair": keys}


def list_fleets(backend: AWSRelayBackend, regions: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Every fleet with a live resource in ``regions``, found by tag: fleet id -> its expiry and,
    per region, the ids of its instances, security groups and key pairs."""
    fleets: dict[str, dict[str, Any]] = {}
    flt = [{"Name": "tag-key", "Values": [TAG_FLEET]}]
    for region in regions:
        ec2 = backend.client(_aws_region(region))
        found: list[tuple[str, str, list[dict[str, str]]]] = []
        pages = ec2.describe_instances(Filters=flt + [{"Name": "instance-state-name", "Values": LIVE_STATES}])
        found += [
            ("instance", i["InstanceId"], i.get("Tags", []))
            for r in pages["Reservations"]
            for i in r["Instances"]
        ]
        groups = ec2.describe_security_groups(Filters=flt)["SecurityGroups"]
        found += [("security-group", g["GroupId"], g.get("Tags", [])) for g in groups]
        keys = ec2.describe_key_pairs(Filters=flt)["KeyPairs"]
        found += [("key-pair", k["KeyName"], k.get("Tags", [])) for k in keys]
        for kind, rid, tags in found:
            values = {t["Key"]: t["Value"] for t in tags}
            try:
                expires = float(values.get(TAG_EXPIRES, "0"))
            except ValueError:
                expires = 0.0  # a mangled expiry: treat as expired rather than leak
            fleet = fleets.setdefault(values[TAG_FLEET], {"expires_at": expires, "regions": {}})
            fleet["expires_at"] = min(fleet["expires_at"], expires)
            fleet["regions"].setdefault(region, {}).setdefault(kind, []).append(rid)
    return fleets


def sweep(
    backend: AWSRelayBackend, regions: Iterable[str], *, now: float | None = None
) -> dict[str, list[str]]:
    """Tear down every fleet past its expiry in ``regions``: fleet id -> regions swept.

    Finds fleets by the tags of their instances, security groups and key pairs, so a fleet whose
    provisioning stopped half-way (say, a security group and no instance) is found too.
    """
    now = time.time() if now is None else now
    expired = {
        fleet_id: sorted(info["regions"])
        for fleet_id, info in list_fleets(backend, regions).items()
        if now >= info["expires_at"]
    }
    for fleet_id, fleet_regions in expired.items():
        backend.teardown(fleet_id, fleet_regions)
    return expired


aws_fleet = relay_fleet  # provision, yield the VMs, always tear down
