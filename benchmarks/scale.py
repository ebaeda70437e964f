"""Scale figures for buckets of many small objects: memory per object count, requests per object.

1. ``--objects`` (default ``100000,1000000``): for each count, that many 1 KiB objects copied between
   two local folders by a controller in a child process, through a direct overlay of local gateways:
   the controller's peak RSS (the child's own), each gateway's (all its processes, as its status
   reports it), the wall time and objects/s. The issue's target: the controller at most 300 MB, and
   within 20% between the counts.
2. ``--requests`` (default 1000; 0 skips it): that many 1 KiB objects copied between two buckets of
   the emulated S3 (moto), the controller and the gateways reaching it through a recording proxy:
   the requests that name an object, per object (target: 2, one read and one write).

Folders live on /dev/shm when present (the store is not what is measured). The last line is one
JSON object.

    .venv/bin/python benchmarks/scale.py [--objects 100000,1000000] [--requests 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

CONTROLLER = r"""
import json, resource, sys, time
from airflow_skyplane.compute.local import LocalRelayBackend
from airflow_skyplane.storage.local import LocalStore
from airflow_skyplane.transfer.job import Overlay, TransferJob
src, dst, work = sys.argv[1:4]
t0 = time.perf_counter()
result = TransferJob(
    LocalStore(src), "", LocalStore(dst), "", backend=LocalRelayBackend(work + "/fleet"),
    workdir=work + "/job", overlay=Overlay.direct(8), timeout=7200,
).run()
seconds = time.perf_counter() - t0
print(json.dumps({
    "objects": result.objects, "seconds": round(seconds, 2),
    "objects_per_s": round(result.objects / seconds, 1),
    "controller_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "gateway_peak_rss_mb": {g: s.get("peak_rss_mb") for g, s in result.gateways.items()},
    "checksums_verified": result.checksums_verified,
}))
"""

SIZE = 1024


def _scratch() -> Path:
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="skyplane-scale-", dir=shm if shm.is_dir() else None))


def _seed(folder: Path, count: int) -> None:
    """``count`` objects of 1 KiB, a thousand per folder (as a date-partitioned bucket holds them)."""
    block = os.urandom(SIZE)
    for i in range(count):
        part = folder / f"part={i // 1000:05d}"
        if i % 1000 == 0:
            part.mkdir(parents=True)
        (part / f"event-{i:08d}.json").write_bytes(block[i % 7 :] + block[: i % 7])


def memory(count: int) -> dict[str, object]:
    root = _scratch()
    try:
        src, dst, work = root / "src", root / "dst", root / "work"
        _seed(src, count)
        dst.mkdir()
        work.mkdir()
        out = subprocess.run(
            [sys.executable, "-c", CONTROLLER, str(src), str(dst), str(work)],
            capture_output=True, text=True, check=True, timeout=7200,
        )  # fmt: skip
        figures: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
        return figures
    finally:
        shutil.rmtree(root, ignore_errors=True)


def requests_per_object(count: int) -> dict[str, object]:
    import boto3

    from airflow_skyplane.compute.local import LocalRelayBackend
    from airflow_skyplane.storage.s3 import S3Store
    from airflow_skyplane.testing.faultproxy import FaultProxy, object_named
    from airflow_skyplane.testing.sky import AWS_REGION, EmulatedSky
    from airflow_skyplane.transfer.job import Overlay, TransferJob

    root = _scratch()
    keys = {"aws_access_key_id": "emulated-access-key", "aws_secret_access_key": "emulated-secret-key"}
    try:
        with EmulatedSky(root / "sky", services=("s3",)) as sky:
            source_bucket, destination_bucket = (sky.make_bucket("s3")[5:] for _ in range(2))
            seeding = sky.open(f"s3://{source_bucket}")
            names = {f"event-{i:08d}.json" for i in range(count)}
            for name in names:
                seeding.put(f"in/{name}", os.urandom(SIZE))
            with FaultProxy(sky.endpoint("s3"), record=True) as proxy:

                def store(bucket: str) -> tuple[S3Store, dict[str, object]]:
                    client = boto3.client("s3", endpoint_url=proxy.url, region_name=AWS_REGION, **keys)
                    spec = {"scheme": "s3", "bucket": bucket, "region": AWS_REGION, "endpoint_url": proxy.url,
                            "access_key_id": keys["aws_access_key_id"],
                            "secret_access_key": keys["aws_secret_access_key"]}  # fmt: skip
                    return S3Store(client, bucket), spec

                (source, source_spec), (destination, destination_spec) = (
                    store(source_bucket),
                    store(destination_bucket),
                )
                result = TransferJob(
                    source, "in/", destination, "out/", backend=LocalRelayBackend(root / "fleet"),
                    workdir=root / "job", overlay=Overlay.direct(8), source_spec=source_spec,
                    destination_spec=destination_spec, timeout=3600,
                ).run()  # fmt: skip
                recorded = list(proxy.requests)
        per_object = Counter(object_named(r, names) for r in recorded)
        per_object.pop(None, None)
        methods = Counter(r.method for r in recorded if object_named(r, names) is not None)
        return {
            "objects": result.objects,
            "requests_naming_an_object": sum(per_object.values()),
            "requests_per_object": round(sum(per_object.values()) / count, 3),
            "by_method": dict(methods),
            "all_requests": len(recorded),
            "checksums_verified": result.checksums_verified,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--objects", default="100000,1000000", help="object counts, comma-separated")
    parser.add_argument("--requests", type=int, default=1000, help="objects for the request count (0: skip)")
    args = parser.parse_args()
    out: dict[str, object] = {"load_average": os.getloadavg()[0], "object_size": SIZE}
    scales = {}
    for count in (int(n) for n in args.objects.split(",") if n):
        started = time.perf_counter()
        scales[str(count)] = memory(count)
        print(f"{count:,} objects: {json.dumps(scales[str(count)])} ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)  # fmt: skip
    out["memory"] = scales
    rss = [float(str(s["controller_peak_rss_mb"])) for s in scales.values()]
    if len(rss) >= 2:
        out["controller_rss_growth"] = round(rss[-1] / rss[0] - 1, 3)
    if args.requests:
        out["requests"] = requests_per_object(args.requests)
    out["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
