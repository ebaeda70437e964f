"""Sync figures: the streaming diff against rclone's, and the worker's memory on a large listing.

1. ``--objects`` (default 100,000) small files in a source folder, the same in a replica, then 1% of
   them changed: the wall time and objects/s of our inventory (two listings merged, the selection
   spooled) against ``rclone sync --dry-run`` over the same two folders, in the same run.
2. ``--large`` (default 1,000,000) objects listed from a source folder and diffed against an empty
   replica in a child process: its peak RSS (target <= 500 MB), the listing never held in memory.

Folders live on /dev/shm when present (local files stand in for the stores: with 100,000 objects the
emulators, not the diff, would be measured). The last line is one JSON object.

    .venv/bin/python benchmarks/sync.py [--objects 100000] [--large 1000000]
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
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from airflow_skyplane.storage.local import LocalStore
from airflow_skyplane.transfer.diff import DiffCounts, KeyFilter, Spool, diff
src, dst = LocalStore(sys.argv[1]), LocalStore(sys.argv[2])
counts = DiffCounts()
t0 = time.perf_counter()
spool = Spool(diff(src.list(), dst.list(), source_prefix="", destination_prefix="", compare="size_mtime",
                   keep=KeyFilter(), counts=counts))
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "selected": spool.count, **counts.as_dict(),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def populate(root: Path, count: int, per_dir: int = 1000) -> None:
    for n in range(count):
        folder = root / f"part={n // per_dir:05d}"
        if n % per_dir == 0:
            folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"obj-{n:07d}.json", "wb") as f:
            f.write(b'{"n": %d}\n' % n)


def child(src: Path, dst: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(src), str(dst)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    args = parser.parse_args()
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="skyplane-sync-", dir=base))
    try:
        src, dst = work / "src", work / "dst"
        populate(src, args.objects)
        time.sleep(1.1)  # the replica is written after the source, as a real copy is
        shutil.copytree(src, dst)
        changed = max(1, args.objects // 100)
        time.sleep(1.1)
        for n in range(0, args.objects, args.objects // changed):
            path = src / f"part={n // 1000:05d}" / f"obj-{n:07d}.json"
            path.write_bytes(b'{"n": %d, "changed": true}\n' % n)
        ours = child(src, dst)
        result = {"objects": args.objects, "changed": ours["changed"], "ours_s": round(ours["seconds"], 2),
                  "ours_objects_per_s": round(args.objects / ours["seconds"])}  # fmt: skip
        rclone = shutil.which("rclone")
        if rclone:
            env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
            t0 = time.perf_counter()
            run = subprocess.run(
                [rclone, "sync", "--dry-run", str(src), str(dst)], capture_output=True, text=True, env=env
            )
            rclone_s = time.perf_counter() - t0
            result.update(
                rclone_s=round(rclone_s, 2),
                rclone_objects_per_s=round(args.objects / rclone_s),
                rclone_exit=run.returncode,
                speedup_vs_rclone=round(rclone_s / ours["seconds"], 2),
            )
        else:
            result["rclone"] = "not installed"
        print(json.dumps({"run": "diff", **result}), flush=True)
        shutil.rmtree(work)
        work.mkdir()
        (work / "dst").mkdir()
        t0 = time.perf_counter()
        populate(work / "src", args.large)
        made = time.perf_counter() - t0
        large = child(work / "src", work / "dst")
        print(
            json.dumps({"run": "large", "objects": args.large, "populate_s": round(made, 1), **large}),
            flush=True,
        )
        result.update(large_objects=args.large, large_diff_s=round(large["seconds"], 1),
                      large_peak_rss_mb=round(large["peak_rss_mb"], 1), rss_target_mb=500)  # fmt: skip
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
