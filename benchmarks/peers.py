"""End to end against peers: our overlay vs. Airflow's transfer operators and rclone, on an emulated WAN.

One invocation builds one testbed and runs every contender on it, on the same data:

* **network**: four regions as network namespaces (:class:`~airflow_skyplane.testing.netns.EmulatedWAN`),
  every pair joined by a veth link shaped with ``tc`` htb to a scaled-down slice of the measured grid
  ``../shared/data/throughput_grid_calibration.csv`` (read at run time): ``--mbit-per-gbps`` Mbit/s
  of link per measured Gbps, and a cap on each TCP flow of 1/``--flows-to-fill`` of the link (a single
  flow does not fill a wide-area path). ``aws:eu-west-2 -> gcp:us-west1-a`` is the pair where the
  direct path is poor and a relay (``gcp:us-west4-a``) is good; ``aws:eu-west-2 ->
  azure:germanywestcentral`` the pair where direct is already best (the source VM's egress is the
  bound, so no relay can add to it).
* **stores**: moto S3 (the source) inside the source region's namespace; in the far region the GCS
  emulator and a second moto server (an S3-compatible endpoint there, as GCS's XML interoperability
  API is); in the near region Azurite and a third moto server. Every server listens inside its own
  namespace, so every byte of every contender crosses the shaped links.
* **contenders**, in alternating order from one workload to the next: our data plane with the planned
  overlay (gateways inside the regions' namespaces, from the planner's plan on a grid equal to the
  shaped links); the same forced to the direct path; ``S3ToGCSOperator`` and
  ``S3ToAzureBlobStorageOperator`` (S3 to wasb; no class is named ``S3ToWasbOperator``) through
  ``airflow dags test`` run inside the source region's namespace (SQLite in a temporary
  ``AIRFLOW_HOME``), with the 60 s per-request timeout of ``GCSHook.upload`` stretched by the links'
  slow-down (1000 / ``--mbit-per-gbps``), as a request that fits in 60 s on a real link takes that
  much longer here; ``rclone copy`` with its defaults and with the flags rclone's documentation gives
  for the workload (``rclone-tuned``, by the rule in :mod:`peerbench.contenders`: as many flows as
  ours opens on a hop, or as many requests in flight for small objects), from the source region to
  the S3-compatible destinations (Debian's rclone 1.60 cannot talk to Azurite 3.37).
* **workloads**: (a) 200 objects of 1-50 MiB, 3 GiB in all, half compressible text and half random;
  (b) one 4 GiB random object; (c) 20,000 objects of 16 KiB; object counts and sizes times
  ``--scale``.
* **one size per destination**: every contender of a destination runs on exactly the same objects.
  The workload is made smaller (every 2nd, 4th, ... object, or 1/2, 1/4, ... of the one object's
  size; ``fraction`` in the output) until the *slowest* contender of that destination is predicted
  (from the shaped links, the flow caps, its parallelism and the emulators' ceilings) to finish
  within ``--run-budget-s``; the faster ones then finish sooner on the same objects. Not a time box
  at equal wall time: objects land whole or not at all, so a stopped run's bytes would count whole
  objects only (all or nothing on the one object of (b), and the objects in flight at the stop lost
  by every parallel tool), and a run stopped half-way would not be checked against its source.
* **check**: after every run, each destination object is read back and its SHA-256 compared with the
  source object's; a run counts only if the destination holds exactly the source's objects, byte
  for byte.
* **ceilings**: before the WAN is built, each emulator is measured unshaped on loopback (parallel
  writes; reads from moto), and reported beside the results.

Output: progress lines on stderr, then one JSON object on stdout (wall time, GB/s, ratio to ours per
contender and workload, the plans, the ceilings, every target met or missed); ``--out`` also gets
``peers.json``, ``peers.png`` (bar chart) and ``peers.md`` (the table of ``docs/benchmarks.md``).
Needs root, ``ip``, ``tc``, ``rclone`` and Azurite (``make install``); always set
``SKYPLANE_WAN_SUBNET`` when other emulated WANs may run on the machine. The pieces live in
``benchmarks/peerbench/`` (workloads, testbed, contenders, report); this file runs them. A full run::

    sudo SKYPLANE_WAN_SUBNET=10.221.0.0/16 .venv/bin/python benchmarks/peers.py --scale 1 --out .cache/peers

A quick check of the machinery::

    sudo SKYPLANE_WAN_SUBNET=10.221.0.0/16 nice -n 10 .venv/bin/python benchmarks/peers.py \
        --scale 0.02 --mbit-per-gbps 20 --out .cache/peers-small
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from peerbench.contenders import CONTENDERS, Contenders
from peerbench.report import chart, result, table
from peerbench.testbed import BUCKET, FAR, GRID, NEAR, SRC, Run, Testbed, ceilings, digests, log
from peerbench.workloads import MiB, fraction_for, seed, workloads


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="objects and sizes of every workload")
    parser.add_argument("--mbit-per-gbps", type=float, default=60.0, help="link Mbit/s per measured Gbps")
    parser.add_argument("--flows-to-fill", type=float, default=8.0, help="a TCP flow gets 1/N of a link")
    parser.add_argument("--chunk-mib", type=int, default=8, help="our chunk size (S3 parts are >= 5 MiB)")
    parser.add_argument("--contenders", default="", help="comma-separated subset, e.g. 'ours,rclone-tuned'")
    parser.add_argument(
        "--run-budget-s", type=float, default=36.0,
        help="predicted seconds of the slowest contender of a destination, at most",
    )  # fmt: skip
    parser.add_argument("--workloads", default="abc", help="which workloads to run, e.g. 'ab'")
    parser.add_argument("--grid", default=str(GRID), help="the measured grid to take the links from")
    parser.add_argument("--out", default=None, help="folder for peers.json, peers.png and peers.md")
    parser.add_argument("--deadline-s", type=float, default=1800.0, help="stop starting runs after this")
    return parser.parse_args()


def main() -> int:
    args = parse()
    from airflow_skyplane.testing.netns import missing_requirements

    why = missing_requirements()
    if why or shutil.which("rclone") is None:
        print(json.dumps({"skipped": why or "rclone is not installed (apt-get install rclone)"}))
        return 2
    if args.run_budget_s > 600:
        raise SystemExit("--run-budget-s is at most 600: no contender runs for more than 10 minutes")
    # a SIGTERM (a timeout wrapper, a kill) unwinds like Ctrl-C, so the finally below stops every
    # server and deletes the namespaces
    signal.signal(signal.SIGTERM, _interrupt)
    t_start, load_start = time.monotonic(), round(os.getloadavg()[0], 2)
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="skyplane-peers-", dir=base))
    os.chmod(work, 0o700)
    os.environ.pop("AWS_CA_BUNDLE", None)
    bed = Testbed(args, work)
    players = Contenders(bed, work)
    wanted = [c for c in CONTENDERS if not args.contenders or c[0] in args.contenders.split(",")]
    runs: list[Run] = []
    sources: dict[str, dict[str, tuple[int, str]]] = {}  # prefix -> name -> (bytes, sha256)
    try:
        log("measuring the emulators' ceilings on loopback, unshaped")
        bed.ceiling = ceilings(work, args.scale)
        log(f"ceilings: {bed.ceiling}")
        bed.plans = {dst: bed.plan(dst) for dst in (FAR, NEAR)}
        for dst, plan in bed.plans.items():
            log(f"plan {SRC} -> {dst}: {plan.throughput_gbps * 1000:.1f} Mbit/s planned, "
                f"{plan.direct_throughput_gbps * 1000:.1f} direct, relays {sorted(plan.relays)}")  # fmt: skip
        log("building the emulated WAN and starting the stores inside it")
        bed.start()
        players.migrate_airflow()
        chosen = [w for w in workloads(args.scale) if w.name in args.workloads]
        n_runs = len(chosen) * len(wanted)
        for wi, w in enumerate(chosen):
            # one size per destination: the slowest contender of it is predicted to fit the budget
            fraction: dict[str, float] = {}
            for dest_key in dict.fromkeys(d for _, d in wanted):
                dest = bed.destinations[dest_key]
                slowest = max(players.predict_s(c, dest, w) for c, d in wanted if d == dest_key)
                fraction[dest_key] = fraction_for(slowest, args.run_budget_s, w)
            for contender, dest_key in wanted if wi % 2 == 0 else wanted[::-1]:
                dest, f = bed.destinations[dest_key], fraction[dest_key]
                part = w.sized(f)
                run = Run(w.name, contender, dest_key, f, len(part.sizes), part.bytes,
                          predicted_s=round(players.predict_s(contender, dest, part), 1))  # fmt: skip
                runs.append(run)
                if time.monotonic() - t_start > args.deadline_s:
                    run.error = "not run: --deadline-s reached"
                    continue
                prefix = f"{w.name}/f{round(1 / f)}/"
                if prefix not in sources:
                    t0 = time.monotonic()
                    seed(bed.src_s3, prefix, part)
                    sources[prefix] = digests("s3", bed.src_s3, BUCKET, prefix)
                    log(f"seeded {prefix}: {len(part.sizes)} objects, {part.bytes / MiB:,.1f} MiB in "
                        f"{time.monotonic() - t0:.1f} s (with their digests)")  # fmt: skip
                players.run_timeout = max(120.0, 4 * run.predicted_s + 60)
                try:
                    bucket = players.run(contender, prefix, dest, part, run)
                    bed.check(dest, bucket, sources[prefix])
                    run.extra["checked"] = "every object's SHA-256 equals its source's"
                    run.ok = True
                    run.gbytes_per_s = run.bytes / run.measured_s / 1e9
                except Exception as err:  # noqa: BLE001 - a failed contender is reported, not fatal
                    message = f"{type(err).__name__}: {err}"
                    run.error = message if len(message) <= 2000 else message[:200] + " ... " + message[-1800:]
                log(f"({w.name}) {contender:>28} -> {dest_key:<8} fraction {f:<7g} "
                    + (f"{run.measured_s:7.1f} s {run.gbytes_per_s * 1000:8.2f} MB/s" if run.ok
                       else f"FAILED {run.error[:120] + ' ... ' + run.error[-300:] if run.error else ''}")
                    + f"  [{len(runs)}/{n_runs}]")  # fmt: skip
    finally:
        bed.stop()
        shutil.rmtree(work, ignore_errors=True)
    out = result(args, bed, runs, time.monotonic() - t_start, [load_start, round(os.getloadavg()[0], 2)])
    if args.out:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "peers.json").write_text(json.dumps(out, indent=1))
        (out_dir / "peers.md").write_text(table(runs))
        chart(runs, out_dir / "peers.png", f"peers on an emulated WAN, --scale {args.scale:g}, "
              f"{args.mbit_per_gbps:g} Mbit/s per measured Gbps")  # fmt: skip
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
