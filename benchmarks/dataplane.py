"""Data-plane figures: relay-pair throughput against iperf3, lz4, small objects, gateway memory.

Runs real gateway processes (the local relay backend) between two local stores on a tmpfs
(``/dev/shm`` when present), so the disk stays out of the measurement, with the settings a user gets
(chunk size, window and budget derived by ``transfer/tuning.py``). The throughput runs are made with
one and with two worker processes per gateway. Prints one JSON object per measurement and, last, one
JSON object with the keys ``iperf3_gbps``, ``ratio_plain_workers_1``, ``ratio_aesgcm_workers_1``,
``ratio_plain_workers_2``, ``ratio_aesgcm_workers_2``, ``lz4_gain``, ``wire_to_raw``,
``small_objects_per_s``, ``small_objects_per_s_end_to_end``, ``gateway_peak_rss_mb`` and
``rss_within_budget`` (every gateway's peak RSS, its processes summed, at most its byte budget +
150 MB).

``small_objects_per_s`` is the data plane's rate, from the first byte read at the source to the last
chunk written at the destination: the listing, the gateways' start and the controller's verification
of every object are not in it. ``small_objects_per_s_end_to_end`` is over the whole
``TransferJob.run()``, those included.

    python benchmarks/dataplane.py [--gib 2] [--rss-gib 4] [--streams 8] [--only-relay]

``relay_cpu_workers_1`` and ``relay_cpu_workers_2`` move the same random data source -> relay ->
destination on loopback with the defaults (AES-GCM on) and give each gateway's CPU-seconds per GB
(``cpu_s_per_gb``, its processes' utime + stime read from ``/proc``; ``kernel_cpu_s_per_gb`` the
kernel's part; ``cpu_s_per_gb_after_start`` without what each spent before it was ready, its
imports and TLS identities) and the data plane's rate.

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


#: what a gateway may hold beyond its byte budget: the interpreter, the SDKs, TLS and socket buffers
RSS_OVERHEAD_MB = 150


def transfer(
    work: Path, src: Path, name: str, *, streams: int, wan: object | None = None, workers: int | None = None,
    **options: object,
) -> dict:  # fmt: skip
    dst = work / f"dst-{name}"
    dst.mkdir()
    regions = {"source": "a", "destination": "b"} if wan is not None else {}
    overlay = Overlay("source", "destination", [Hop("source", "destination", streams)], regions)
    backend = LocalRelayBackend(work / f"fleet-{name}", wan=wan)
    backend.gateway_workers = workers  # None: a fair share of this machine's CPUs each
    job = TransferJob(
        LocalStore(src), "", LocalStore(dst), "", backend=backend, workdir=work / f"job-{name}",
        overlay=overlay, **options,  # type: ignore[arg-type]
    )  # fmt: skip
    result = job.run()
    shutil.rmtree(dst)
    source = result.gateways["source"]
    # the data plane: from the first byte read at the source to the last chunk written
    seconds = result.gateways["destination"]["last_write_at"] - source["first_read_at"]
    figures = {
        "run": name,
        "objects": result.objects,
        "bytes": result.bytes,
        "wire_to_raw": round(result.wire_bytes / result.bytes, 4),
        "dataplane_seconds": round(seconds, 3),
        "gbps": round(result.bytes * 8 / seconds / 1e9, 4),
        "workers": {gid: s["workers"] for gid, s in result.gateways.items()},
        "chunk_mib": job.tuning.chunk_size / MiB,
        # per gateway: its processes' peak RSS summed (an upper bound of what it held at once), and its
        # byte budget
        "peak_rss_mb": {gid: s["peak_rss_mb"] for gid, s in result.gateways.items()},
        "budget_mb": dict(job.tuning.budget_mb),
    }
    print(json.dumps(figures), flush=True)
    return figures


def relayed_cpu(work: Path, src: Path, name: str, *, streams: int, workers: int | None) -> dict:
    """Source -> relay -> destination on loopback with the defaults (AES-GCM on): every gateway's
    CPU-seconds per GB moved (its main process and workers, utime + stime from ``/proc``, kernel time
    apart), and the data plane's rate."""
    from wan import Sampler  # the same /proc sampler as the WAN benchmark

    dst = work / f"dst-{name}"
    dst.mkdir()
    hops = [Hop("source", "relay", streams), Hop("relay", "destination", streams)]
    backend = LocalRelayBackend(work / f"fleet-{name}")
    backend.gateway_workers = workers
    job = TransferJob(
        LocalStore(src), "", LocalStore(dst), "", backend=backend, workdir=work / f"job-{name}",
        overlay=Overlay("source", "destination", hops),
    )  # fmt: skip

    def pids() -> dict[str, list[int]]:
        return {
            gid: [gw.process.pid, *gw.info.get("workers", [])] for gid, gw in list(backend.gateways.items())
        }

    try:
        with Sampler(pids) as sampler:
            job.start()  # the gateways are up: what they spent starting is not the data's
            sampler.sample()
            started = sampler.totals()
            while not job.poll():
                time.sleep(0.05)
            sampler.sample()  # the gateways' last figures, before they stop
            result = job.finish()
    finally:
        job.close()
        backend.teardown()
    shutil.rmtree(dst)
    statuses = result.gateways
    seconds = statuses["destination"]["last_write_at"] - statuses["source"]["first_read_at"]
    gb = result.bytes / 1e9
    totals = sampler.totals()
    figures = {
        "run": name,
        "bytes": result.bytes,
        "dataplane_seconds": round(seconds, 3),
        "gbps": round(result.bytes * 8 / seconds / 1e9, 4),
        "workers": {gid: s["workers"] for gid, s in statuses.items()},
        "cpu_s_per_gb": {gid: round(t["cpu_s"] / gb, 3) for gid, t in totals.items()},
        "kernel_cpu_s_per_gb": {gid: round(t["kernel_cpu_s"] / gb, 3) for gid, t in totals.items()},
        "cpu_s_per_gb_after_start": {
            gid: round((t["cpu_s"] - started.get(gid, {}).get("cpu_s", 0.0)) / gb, 3)
            for gid, t in totals.items()
        },
    }
    print(json.dumps(figures), flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="random data for the throughput runs")
    parser.add_argument("--rss-gib", type=float, default=4.0, help="size of the memory run")
    parser.add_argument("--streams", type=int, default=8, help="TCP connections, for iperf3 and gateways")
    parser.add_argument("--wan-mbit", type=float, default=200.0, help="link rate for the lz4 run")
    parser.add_argument(
        "--only-relay", action="store_true", help="only the relayed CPU-per-GB runs (workers 1 and 2)"
    )
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
        relayed = {
            f"relay_cpu_workers_{w}": relayed_cpu(
                work, rand, f"relayed-w{w}", streams=args.streams, workers=w
            )
            for w in (1, 2)
        }
        relay_figures = {
            key: {
                k: run[k] for k in ("gbps", "cpu_s_per_gb", "cpu_s_per_gb_after_start", "kernel_cpu_s_per_gb")
            }
            for key, run in relayed.items()
        }
        if args.only_relay:
            load = round(os.getloadavg()[0], 2)
            print(json.dumps({**relay_figures, "machine": {"cpus": os.cpu_count(), "load_1m": load}}))
            return
        ratios = {}
        throughput_runs = []
        for workers in (1, 2):
            each = {"workers": workers, **opts}
            plain = transfer(work, rand, f"plain-w{workers}", compress="never", encrypt=False, **each)  # type: ignore[arg-type]
            sealed = transfer(work, rand, f"aesgcm-w{workers}", compress="auto", encrypt=True, **each)  # type: ignore[arg-type]
            ratios[f"ratio_plain_workers_{workers}"] = round(plain["gbps"] / iperf, 4)
            ratios[f"ratio_aesgcm_workers_{workers}"] = round(sealed["gbps"] / iperf, 4)
            throughput_runs += [plain, sealed]
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

        runs = (*throughput_runs, without, with_lz4, many, memory)
        peak = max(v for run in runs for v in run["peak_rss_mb"].values())
        over = [
            f"{run['run']} {gid}: {rss} MB > {run['budget_mb'][gid]} + {RSS_OVERHEAD_MB}"
            for run in runs for gid, rss in run["peak_rss_mb"].items()
            if rss > run["budget_mb"][gid] + RSS_OVERHEAD_MB
        ]  # fmt: skip
        print(json.dumps({
            "iperf3_gbps": round(iperf, 3),
            **ratios,
            "lz4_gain": round(with_lz4["gbps"] / without["gbps"], 3),
            "lz4_link": link,
            "wire_to_raw": with_lz4["wire_to_raw"],
            "small_objects_per_s": round(10_000 / many["dataplane_seconds"], 1),  # the data plane only
            "small_objects_per_s_end_to_end": round(10_000 / many["end_to_end_seconds"], 1),
            # the highest peak of any gateway in any run, and the one of the large transfer
            "gateway_peak_rss_mb": peak,
            "gateway_peak_rss_mb_large_run": memory["peak_rss_mb"],
            "gateway_budget_mb_large_run": memory["budget_mb"],
            "rss_run_gib": args.rss_gib,
            "rss_within_budget": not over,
            "rss_over_budget": over,
            **relay_figures,
            "machine": {"cpus": os.cpu_count(), "load_1m": round(os.getloadavg()[0], 2)},
        }))  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
