"""``make demo``: replicate a dataset across an emulated sky, all on this machine.

It starts the emulated sky (moto for S3, gcp-storage-emulator for GCS, Azurite for Azure Blob) on
loopback, writes a small dataset to a local directory, and replicates it hop by hop
``file -> s3 -> gs -> az -> file``, each store opened through the Airflow hooks and connections
exactly as a task would. Large objects travel as parallel multipart writes. At every hop it checks
each object's size and the checksum the store reports against the source bytes, and at the end that
the last copy is byte-identical to the first. It prints one line per hop and a JSON summary.

The planned, relayed transfer (``SkyplaneTransferOperator``) replaces this round trip as the demo
once it exists; until then this shows the storage layer doing real work against real servers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def make_dataset(root: Path, objects: int, big_mib: int, seed: int = 42) -> dict[str, str]:
    """Write the source dataset; return key -> MD5 of its bytes."""
    rng = random.Random(seed)
    sums = {}
    files: list[tuple[str, bytes]] = [
        (f"events/date=2026-11-{day:02d}/part-{n:04d}.jsonl", _jsonl(rng, rng.randrange(1_000, 40_000)))
        for day in range(1, 4)
        for n in range(objects // 3)
    ]
    files.append(("models/encoder v2/weights.bin", rng.randbytes(big_mib * MiB)))
    files.append(("models/encoder v2/README", b""))  # zero-byte objects travel too
    files.append(
        (
            "tables/région=europe/data.csv",
            b"id,value\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(5000)),
        )
    )
    for key, data in files:
        path = root.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sums[key] = hashlib.md5(data, usedforsecurity=False).hexdigest()
    return sums


def _jsonl(rng: random.Random, size: int) -> bytes:
    line = json.dumps({"user": rng.randrange(10**6), "event": rng.choice(["view", "click", "buy"])}).encode()
    return (line + b"\n") * max(1, size // (len(line) + 1))


def copy_object(src: Any, dst: Any, key: str, size: int, part_size: int, pool: ThreadPoolExecutor) -> None:
    """Copy one object; above ``part_size`` as a multipart write whose parts go in parallel."""
    if size <= part_size:
        dst.put(key, src.read_range(key, 0, size) if size else b"")
        return
    upload = dst.begin_multipart(key)
    try:
        offsets = range(0, size, part_size)
        parts = list(
            pool.map(
                lambda n_off: dst.write_part(upload, n_off[0] + 1, src.read_range(key, n_off[1], part_size)),
                enumerate(offsets),
            )
        )
        dst.complete_multipart(upload, parts)
    except BaseException:
        dst.abort_multipart(upload)  # nothing half-written stays behind
        raise


def verify(store: Any, sums: dict[str, str], sizes: dict[str, int]) -> int:
    """Check listing, sizes and the checksums the store reports; return how many checksums matched."""
    from airflow_skyplane.storage.checksums import compute

    listed = {info.key: info for info in store.list()}
    if set(listed) != set(sums):
        raise SystemExit(
            f"{store.uri}: listing differs from the source: {sorted(set(listed) ^ set(sums))[:5]}"
        )
    checked = 0
    for key, info in listed.items():
        if info.size != sizes[key]:
            raise SystemExit(f"{store.describe(key)}: {info.size} bytes, expected {sizes[key]}")
        reported = store.head(key).checksum
        if reported is None:
            continue
        if reported.algorithm == "md5":
            ok = reported.value == sums[key]
        else:  # crc32c (GCS) or a multipart ETag (S3): recompute from the bytes
            part_sizes = [min(PART_SIZE, sizes[key] - o) for o in range(0, sizes[key], PART_SIZE)]
            ok = compute(reported.algorithm, [store.read(key)], part_sizes) == reported
        if not ok:
            raise SystemExit(
                f"{store.describe(key)}: the store reports {reported}, which the bytes do not match"
            )
        checked += 1
    return checked


PART_SIZE = 8 * MiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=150, help="small objects in the dataset (default 150)")
    parser.add_argument("--big-mib", type=int, default=96, help="size of the one large object (default 96)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="skyplane-demo-") as tmp:
        work = Path(tmp)
        os.environ["AIRFLOW_HOME"] = str(work / "airflow-home")  # never touch ~/airflow
        from airflow_skyplane.hooks.storage import open_store
        from airflow_skyplane.testing.sky import EmulatedSky, patched_environ

        source_dir, final_dir = work / "source", work / "replica"
        source_dir.mkdir()
        final_dir.mkdir()
        t0 = time.monotonic()
        sums = make_dataset(source_dir, args.objects, args.big_mib)
        print(f"dataset: {len(sums)} objects written to file://{source_dir} in {time.monotonic() - t0:.1f} s")

        sky = EmulatedSky(work / "sky")
        t0 = time.monotonic()
        with sky, patched_environ(sky.env()):
            print(f"emulated sky up in {time.monotonic() - t0:.1f} s: " + ", ".join(
                f"{svc} at {sky.endpoint(svc)}" for svc in sky.services))  # fmt: skip
            for service, reason in sky.missing.items():
                print(f"  (no {service}: {reason})")
            uris = (
                [f"file://{source_dir}"]
                + [sky.make_bucket(s) for s in sky.services]
                + [f"file://{final_dir}"]
            )
            stores = [open_store(uri).store for uri in uris]  # through S3Hook, GCSHook, WasbHook
            sizes = {info.key: info.size for info in stores[0].list()}
            hops = []
            with ThreadPoolExecutor(8) as objects_pool, ThreadPoolExecutor(4) as parts_pool:
                for src, dst in zip(stores, stores[1:], strict=False):
                    t0 = time.monotonic()
                    jobs = [
                        objects_pool.submit(copy_object, src, dst, key, size, PART_SIZE, parts_pool)
                        for key, size in sizes.items()
                    ]
                    for job in jobs:
                        job.result()
                    seconds = time.monotonic() - t0
                    checked = verify(dst, sums, sizes)
                    total = sum(sizes.values())
                    hop = {"from": src.uri, "to": dst.uri, "objects": len(sizes), "bytes": total}
                    hop.update(seconds=round(seconds, 2), MBps=round(total / MiB / seconds, 1))
                    hop["checksums_verified"] = checked
                    hops.append(hop)
                    print(
                        f"  {src.uri:<60} -> {dst.uri:<40} {len(sizes)} objects, {total / MiB:.1f} MiB "
                        f"in {seconds:.2f} s, {checked} store checksums verified"
                    )
            identical = all(
                hashlib.md5((final_dir / k).read_bytes(), usedforsecurity=False).hexdigest() == v
                for k, v in sums.items()
            )
        print(f"round trip complete; the replica is {'byte-identical' if identical else 'DIFFERENT'}")
        print(json.dumps({"hops": hops, "byte_identical": identical, "emulators_stopped": sky.pids() == []}))
        return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
