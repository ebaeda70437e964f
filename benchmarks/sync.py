"""Sync figures: the streaming diff against rclone's, and the worker's memory on a large listing.

1. ``--objects`` (default 100,000) small files in a source folder, the same in a replica, then 1% of
   them changed: the wall time and objects/s of our inventory (two listings merged, the selection
   spooled) against ``rclone sync --dry-run`` over the same two folders, in the same run.
2. ``--large`` (default 1,000,000) objects listed from a source folder and diffed against an empty
   replica in a child process: its peak RSS (target <= 500 MB), the listing never held in memory.
3. ``--resume-mb`` (default 2048; 0 skips it) of data, half in one object and half in 64 MiB
   objects, copied between two local folders by a controller process that is SIGKILLed with its
   gateways once half the bytes are written at the destination (wherever its last checkpoint
   was); then the retry: the bytes it sent again
   that the killed try had already written, as a share of the total (checkpoint settings at the
   operator's defaults). These folders are on disk, not /dev/shm.

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


RESUME_CONTROLLER = r"""
import os, sys
from airflow_skyplane.compute.local import LocalRelayBackend
from airflow_skyplane.storage.local import LocalStore
from airflow_skyplane.transfer.job import Overlay, TransferJob
src, dst, work, key = sys.argv[1:5]
TransferJob(
    LocalStore(src), "", LocalStore(dst), "", backend=LocalRelayBackend(work + "/fleet"),
    workdir=work + "/job", overlay=Overlay.direct(8), chunk_size=32 << 20, state_key=key,
    watch_pid=os.getpid(),
).run()
"""


def resume_after_crash(work: Path, size_mb: int) -> dict:
    """Kill a copy at half way (controller and gateways, SIGKILL), resume it, count what was re-sent."""
    import signal

    from airflow_skyplane.compute import fleets
    from airflow_skyplane.compute.local import LocalRelayBackend
    from airflow_skyplane.storage.local import LocalStore
    from airflow_skyplane.transfer import resume
    from airflow_skyplane.transfer.job import Overlay, TransferJob

    mib = 1024 * 1024
    src, dst = work / "src", work / "dst"
    (src / "parts").mkdir(parents=True)
    dst.mkdir()
    half = size_mb // 2
    with open(src / "big.bin", "wb") as f:
        for _ in range(0, half, 16):
            f.write(os.urandom(16 * mib))
    for n in range(max(1, (size_mb - half) // 64)):
        (src / "parts" / f"p-{n:03d}.bin").write_bytes(os.urandom(64 * mib))
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    key = resume.state_key(
        resume.DEFAULT_STATE_PREFIX, dag_id="bench", task_id="copy", run_id="r", map_index=-1, destination="b"
    )

    def written() -> int:
        uploads = dst / ".skyplane-uploads"
        return sum(p.stat().st_size for p in uploads.glob("*/part-*")) if uploads.is_dir() else 0

    def recorded() -> int:
        data = resume.load_state(LocalStore(dst), key)
        return sum(r["length"] for r in data["receipts"]) if data else 0

    t0 = time.perf_counter()
    controller = subprocess.Popen(
        [sys.executable, "-c", RESUME_CONTROLLER, str(src), str(dst), str(work / "first"), key],
        start_new_session=True,
    )
    try:
        while written() < total // 2 and controller.poll() is None:
            time.sleep(0.05)
    finally:
        os.kill(controller.pid, signal.SIGKILL)
        controller.wait()
        for raw in fleets.read_gateways(work / "first" / "job").values():
            try:
                os.killpg(raw["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    first_s = time.perf_counter() - t0
    on_disk, at_kill = written(), recorded()
    t0 = time.perf_counter()
    result = TransferJob(
        LocalStore(src), "", LocalStore(dst), "", backend=LocalRelayBackend(work / "retry" / "fleet"),
        workdir=work / "retry" / "job", overlay=Overlay.direct(8), chunk_size=32 * mib, state_key=key,
    ).run()  # fmt: skip
    retry_s = time.perf_counter() - t0
    resent = on_disk - result.resumed_bytes
    return {
        "resume_total_bytes": total,
        "resume_written_before_kill": on_disk,
        "resume_recorded_at_kill": at_kill,
        "resume_reused_bytes": result.resumed_bytes,
        "resume_resent_bytes": resent,
        "resume_resent_share": round(resent / total, 4),
        "resume_retry_sent_share": round(result.gateways["source"]["raw_bytes"] / total, 4),
        "resume_first_try_s": round(first_s, 1),
        "resume_retry_s": round(retry_s, 1),
    }


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
    parser.add_argument("--resume-mb", type=int, default=2048)
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
        shutil.rmtree(work)
        if args.resume_mb:
            on_disk = Path(tempfile.mkdtemp(prefix="skyplane-resume-"))
            try:
                crash = resume_after_crash(on_disk, args.resume_mb)
            finally:
                shutil.rmtree(on_disk, ignore_errors=True)
            print(json.dumps({"run": "resume", **crash}), flush=True)
            result.update(crash)
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
