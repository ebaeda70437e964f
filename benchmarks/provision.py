"""Provisioning wall time of a 6-relay AWS fleet against moto (server mode), parallel vs. sequential.

The fleet is 6 relays in 6 regions (one security group, key pair and instance per region, every
resource tagged), created and torn down through ``EC2Hook`` exactly as the operator does; regions
are provisioned at once (``parallel_regions=True``, the default) or one after the other. Repeated
``--runs`` times, alternating the order; prints JSON with the median times and the speedup.

moto answers in about a millisecond, where a worker's call to a distant region's EC2 endpoint takes
a round trip of tens to hundreds of milliseconds (and an instance tens of seconds to boot). So the
EC2 API is reached through the fault proxy, which holds every request ``--api-latency-ms`` (100 by
default; 0 reaches moto directly): the figure is then the overlap of those round trips. Against a
real cloud the per-region boot waits overlap too.

    .venv/bin/python benchmarks/provision.py --runs 5 [--api-latency-ms 100]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REGIONS = ["aws:us-east-1", "aws:us-west-2", "aws:eu-west-1", "aws:eu-central-1", "aws:ap-northeast-1",
           "aws:sa-east-1"]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--api-latency-ms", type=float, default=100.0, help="held per EC2 API request")
    args = parser.parse_args()
    if args.api_latency_ms < 0:
        parser.error(f"--api-latency-ms={args.api_latency_ms} must be >= 0")
    logging.disable(logging.INFO)
    from airflow_skyplane.compute.aws import AWSFleetSpec, AWSRelayBackend
    from airflow_skyplane.compute.ssh import SSHKeyPair
    from airflow_skyplane.testing.faultproxy import FaultProxy
    from airflow_skyplane.testing.sky import EmulatedSky, patched_environ

    times: dict[str, list[float]] = {"parallel": [], "sequential": []}
    teardown: dict[str, list[float]] = {"parallel": [], "sequential": []}
    key = SSHKeyPair.generate("bench").public_openssh
    with tempfile.TemporaryDirectory(prefix="skyplane-provision-") as tmp:
        with EmulatedSky(Path(tmp) / "sky", services=("s3",)) as sky, FaultProxy(sky.endpoint("s3")) as proxy:
            conn = sky.connections()["aws_default"]
            conn["extra"]["endpoint_url"] = proxy.url  # EC2 through the proxy
            with patched_environ({**sky.env(), "AIRFLOW_CONN_AWS_EC2_API": json.dumps(conn)}):
                if args.api_latency_ms:
                    proxy.delay(args.api_latency_ms / 1000, seconds=24 * 3600)
                for run in range(args.runs):
                    order = ["parallel", "sequential"] if run % 2 == 0 else ["sequential", "parallel"]
                    for mode in order:
                        backend = AWSRelayBackend(
                            aws_conn_id="aws_ec2_api", wait_timeout_s=60, parallel_regions=mode == "parallel"
                        )
                        for region in REGIONS:
                            backend.client(region.split(":", 1)[1])  # clients made outside the timing
                        spec = AWSFleetSpec(
                            fleet_id=f"bench-{uuid.uuid4().hex[:8]}", regions=dict.fromkeys(REGIONS, 1),
                            expires_at=time.time() + 3600, public_key=key, worker_cidr="198.51.100.7/32",
                            instance_type="m5.large",
                        )  # fmt: skip
                        t0 = time.perf_counter()
                        vms = backend.provision(spec)
                        t1 = time.perf_counter()
                        backend.teardown(spec.fleet_id, REGIONS)
                        t2 = time.perf_counter()
                        left = backend.resources(spec.fleet_id, REGIONS)
                        assert len(vms) == 6 and not any(any(kinds.values()) for kinds in left.values())
                        times[mode].append(t1 - t0)
                        teardown[mode].append(t2 - t1)
    par, seq = statistics.median(times["parallel"]), statistics.median(times["sequential"])
    result = {
        "benchmark": "provision_6_relays_moto",
        "runs": args.runs,
        "regions": REGIONS,
        "api_latency_ms": args.api_latency_ms,
        "api_requests": proxy.counters.forwarded,
        "provision_parallel_s": round(par, 3),
        "provision_sequential_s": round(seq, 3),
        "provision_speedup": round(seq / par, 2),
        "teardown_parallel_s": round(statistics.median(teardown["parallel"]), 3),
        "teardown_s_all_runs": {k: [round(x, 3) for x in v] for k, v in teardown.items()},
        "provision_s_all_runs": {k: [round(x, 3) for x in v] for k, v in times.items()},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
