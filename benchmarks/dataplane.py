"""Data-plane figures: relay-pair throughput against iperf3, lz4, small objects, gateway memory.

Runs real gateway processes (the local relay backend) between two local stores on a tmpfs
(``/dev/shm`` when present), so the disk stays out of the measurement. Prints one JSON object per
measurement and, last, one JSON object with the keys ``iperf3_gbps``, ``ratio_plain``,
``ratio_aesgcm``, ``lz4_gain``, ``wire_to_raw``, ``small_objects_per_s``,
``small_objects_per_s_end_to_end``, ``gateway_peak_rss_mb``.

``small_objects_per_s`` is the source gateway's rate, from its start to the last acknowledged chunk:
the listing, the gateways' start and the controller's verification of every object are not in it.
``small_objects_per_s_end_to_end`` is over the whole ``TransferJob.run()``, those included.

    python benchmarks/dataplane.py [--gib 2] [--rss-gib 4] [--streams 8]

``lz4_gain`` is measured over a shaped link (an emulated WAN of two namespaces at ``--wan-mbit``)
when running as root with ``ip``/``tc``, where bandwidth is the bottleneck as between regions; on
plain loopback the CPU is the bottleneck and compression cannot gain, so it is reported as measured
there with ``"lz4_link": "loopback"``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from airflow_skyplane.storage.local import LocalStore
from airflow_skyplane.testing.wan_relays import local_relays as LocalRelayBackend
from airflow_skyplane.transfer.job import Hop, Overlay, TransferJob

MiB = 1024 * 1024


def iperf3_gbps(streams: int, seconds: int = 5) -> float:
    port = 5299
    server = subprocess.Popen(["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = subprocess.run(
            ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-P", str(streams), "-J"],
            capture_output=True, text=True, check=True, timeout=seconds + 30,
        )  # fmt: skip
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        server.wait(timeout=10)


def write_random(root: Path, gib: float, object_mib: int = 256) -> None:
    remaining = int(gib * 1024 * MiB)
    n = 0
    while remaining > 0:
        size = min(object_mib * MiB, remaining)
        with (root / f"random-{n:04d}.bin").open("wb") as f:
            for _ in range(size // (16 * MiB)):
                f.write(os.urandom(16 * MiB))
            f.write(os.urandom(size % (16 * MiB)))
        remaining -= size
        n += 1


def write_text(root: Path, gib: float) -> None:
    rng = random.Random(1)
    rows = "".join(
        f"{n},2026-11-{1 + n % 28:02d},user{rng.randrange(10**5)},{rng.choice(['view', 'click', 'buy'])}\n"
        for n in range(300_000)
    ).encode()[: 8 * MiB]
    with (root / "table.csv").open("wb") as f:
        for _ in range(int(gib * 128)):
            f.write(rows)


def transfer(
    work: Path, src: Path, name: str, *, streams: int, wan: object | None = None, **options: object
) -> dict:
    dst = work / f"dst-{name}"
    dst.mkdir()
    regions = {"source": "a", "destination": "b"} if wan is not None else {}
    overlay = Overlay("source", "destination", [Hop("source", "destination", streams)], regions)
    backend = LocalRelayBackend(work / f"fleet-{name}", wan=wan)
    job = TransferJob(
        LocalStore(src), "", LocalStore(dst), "", backend=backend, workdir=work / f"job-{name}",
        overlay=overlay, **options,  # type: ignore[arg-type]
    )  # fmt: skip
    result = job.run()
    shutil.rmtree(dst)
    source = result.gateways["source"]
    figures = {
        "run": name,
        "objects": result.objects,
        "bytes": result.bytes,
        "wire_to_raw": round(result.wire_bytes / result.bytes, 4),
        "source_seconds": source["seconds"],
        "gbps": round(result.bytes * 8 / source["seconds"] / 1e9, 4),
        "peak_rss_mb": {gid: s["peak_rss_mb"] for gid, s in result.gateways.items()},
    }
    print(json.dumps(figures), flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="random data for the throughput runs")
    parser.add_argument("--rss-gib", type=float, default=4.0, help="size of the memory run")
    parser.add_argument("--streams", type=int, default=8, help="TCP connections, for iperf3 and gateways")
    parser.add_argument("--wan-mbit", type=float, default=200.0, help="link rate for the lz4 run")
    args = parser.parse_args()
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="skyplane-bench-", dir=base))
    try:
        iperf = iperf3_gbps(args.streams)
        print(json.dumps({"run": "iperf3", "streams": args.streams, "gbps": round(iperf, 3)}), flush=True)
        rand = work / "random"
        rand.mkdir()
        write_random(rand, args.gib)
        opts = {"streams": args.streams}
        plain = transfer(work, rand, "plain", compress="never", encrypt=False, **opts)  # type: ignore[arg-type]
        sealed = transfer(work, rand, "aesgcm", compress="auto", encrypt=True, **opts)  # type: ignore[arg-type]
        shutil.rmtree(rand)

        text = work / "text"
        text.mkdir()
        write_text(text, 1.0)
        wan = None
        link = "loopback"
        if os.geteuid() == 0:
            from airflow_skyplane.testing.netns import EmulatedWAN, LinkSpec, missing_requirements

            if missing_requirements() is None:
                wan = EmulatedWAN(["a", "b"], links={("a", "b"): LinkSpec(args.wan_mbit)}).start()
                link = f"emulated WAN {args.wan_mbit:g} Mbit/s"
        try:
            without = transfer(work, text, "text-raw", compress="never", wan=wan, **opts)  # type: ignore[arg-type]
            with_lz4 = transfer(work, text, "text-lz4", compress="auto", wan=wan, **opts)  # type: ignore[arg-type]
        finally:
            if wan is not None:
                wan.close()
        shutil.rmtree(text)

        small = work / "small"
        small.mkdir()
        for i in range(10_000):
            (small / f"obj-{i:05d}.bin").write_bytes(os.urandom(16 * 1024))
        t0 = time.monotonic()
        many = transfer(work, small, "small-objects", **opts)  # type: ignore[arg-type]
        many["end_to_end_seconds"] = round(time.monotonic() - t0, 3)
        shutil.rmtree(small)

        big = work / "rss"
        big.mkdir()
        write_random(big, args.rss_gib, object_mib=1024)
        memory = transfer(work, big, "rss", **opts)  # type: ignore[arg-type]
        shutil.rmtree(big)

        runs = (plain, sealed, without, with_lz4, many, memory)
        peak = max(v for run in runs for v in run["peak_rss_mb"].values())
        print(json.dumps({
            "iperf3_gbps": round(iperf, 3),
            "ratio_plain": round(plain["gbps"] / iperf, 4),
            "ratio_aesgcm": round(sealed["gbps"] / iperf, 4),
            "lz4_gain": round(with_lz4["gbps"] / without["gbps"], 3),
            "lz4_link": link,
            "wire_to_raw": with_lz4["wire_to_raw"],
            "small_objects_per_s": round(10_000 / many["source_seconds"], 1),  # sending only
            "small_objects_per_s_end_to_end": round(10_000 / many["end_to_end_seconds"], 1),
            # the highest peak of any gateway in any run, and the one of the large transfer
            "gateway_peak_rss_mb": peak,
            "gateway_peak_rss_mb_large_run": memory["peak_rss_mb"],
            "rss_run_gib": args.rss_gib,
        }))  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
