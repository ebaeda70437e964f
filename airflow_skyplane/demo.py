"""``make demo``: the ``nightly_replication`` example DAG, run for real by Airflow, on this machine.

1. starts the emulated sky on loopback: moto (S3), gcp-storage-emulator (GCS) and Azurite (Azure
   Blob), with the ``aws_default``, ``google_cloud_default`` and ``wasb_default`` connections
   pointing at them;
2. seeds the source bucket with one day's partition of a realistic dataset: a few hundred objects,
   from a few KiB of JSON lines to large columnar-like files, compressible and not;
3. runs ``airflow dags test nightly_replication <day>`` (Airflow 3 with SQLite in a temporary
   ``AIRFLOW_HOME``): the task inventories the source, plans the overlay to GCS and Azure, starts the
   planned relays as local gateway processes, streams the chunks (lz4, AES-GCM, mutual TLS),
   verifies every object and tears the relays down. The plan uses the default network model plus
   one *scenario* measurement (``grid_path``): today the direct path from ``aws:us-east-1`` to
   ``azure:westeurope`` is congested (0.8 Gbps), so the planner routes the Azure copy through a
   relay in ``aws:us-east-2`` (a third gateway process here), while GCS goes direct;
4. checks both replicas byte for byte against the source, prints the task's XCom summary and
   renders each plan as a PNG under ``demo-output/``;
5. runs the DAG a second time for the same day: ``mode="sync"`` finds everything in place and copies
   nothing.

The last line printed is one JSON object with the figures.
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
from pathlib import Path

MiB = 1024 * 1024
DAY = "2026-11-20"
ROOT = Path(__file__).resolve().parents[1]


MIN_MIB = 8  # the small files of a partition alone take about 4 MiB


def make_dataset(total_mib: int, seed: int = 42) -> dict[str, bytes]:
    """One day's partition of ``total_mib`` MiB: many small JSON-lines files (about 3% of the bytes, 20
    to 240 of them), then CSV tables (compressible, up to 24 MiB each) and incompressible "parquet"
    shards (up to 48 MiB each), half the rest each."""
    rng = random.Random(seed)
    prefix = f"date={DAY}/"
    data: dict[str, bytes] = {}
    small = max(20, min(240, total_mib * MiB * 3 // 100 // (202 * 1024)))  # 202 KiB: their mean size
    for n in range(small):  # event logs: 4-400 KiB of JSON lines each
        data[f"{prefix}events/part-{n:05d}.jsonl"] = _jsonl(rng, rng.randrange(4, 400) * 1024)
    data[f"{prefix}_SUCCESS"] = b""
    data[f"{prefix}events/_temporary/attempt.tmp"] = b"not replicated (excluded)"
    half = max(2 * MiB, total_mib * MiB - sum(map(len, data.values()))) // 2
    tables = max(1, round(half / (24 * MiB)))
    for n in range(tables):  # CSV tables, compressible
        data[f"{prefix}tables/orders-{n:03d}.csv"] = _csv(rng, half // tables)
    blobs = max(1, round(half / (48 * MiB)))
    for n in range(blobs):  # compressed columnar files: incompressible
        data[f"{prefix}features/shard-{n:03d}.parquet"] = rng.randbytes(half // blobs)
    return data


def _mib(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of MiB, e.g. 200") from None
    if value < MIN_MIB:
        raise argparse.ArgumentTypeError(
            f"{value} MiB is too small: the partition's small files alone take about 4 MiB; "
            f"give at least {MIN_MIB}"
        )
    return value


def _jsonl(rng: random.Random, size: int) -> bytes:
    lines = []
    total = 0
    while total < size:
        line = json.dumps(
            {"user": rng.randrange(10**7), "event": rng.choice(["view", "click", "buy"]), "ms": rng.random()}
        ).encode()
        lines.append(line)
        total += len(line) + 1
    return b"\n".join(lines) + b"\n"


def _csv(rng: random.Random, size: int) -> bytes:
    header = b"order_id,customer,amount,currency,status\n"
    row = [b"%d,%d,%.2f,%s,%s\n" % (i, rng.randrange(10**6), rng.random() * 500, b"EUR", b"shipped")
           for i in range(2000)]  # fmt: skip
    block = b"".join(row)
    return (header + block * (size // len(block) + 1))[:size]


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mib",
        type=_mib,
        default=1536,
        help="size of the day's partition in MiB (default 1536; `make demo MIB=200` passes it)",
    )
    parser.add_argument("--output", default=str(ROOT / "demo-output"), help="where the plan pictures go")
    args = parser.parse_args(argv)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="skyplane-demo-") as tmp:
        work = Path(tmp)
        home = work / "airflow-home"
        os.environ["AIRFLOW_HOME"] = str(home)  # never touch ~/airflow
        from airflow_skyplane.testing.dagrun import airflow_cli, migrate, xcom_return_values
        from airflow_skyplane.testing.sky import EmulatedSky, patched_environ

        t_start = time.monotonic()
        sky = EmulatedSky(work / "sky")
        with sky, patched_environ(sky.env()):
            missing = [s for s in ("s3", "gs", "az") if s in sky.missing]
            if missing:
                for s in missing:
                    print(f"cannot run the demo without {s}: {sky.missing[s]}")
                return 2
            print("emulated sky up: " + ", ".join(f"{s} at {sky.endpoint(s)}" for s in sky.services))
            source = sky.make_bucket("s3", "skyplane-demo-events")
            gcs = sky.make_bucket("gs", "skyplane-demo-replica")
            azure = sky.make_bucket("az", "skyplane-demo-replica")
            t0 = time.monotonic()
            data = make_dataset(args.mib)
            store = sky.open(source)
            for key, body in data.items():
                store.put("events/" + key, body)
            total = sum(map(len, data.values()))
            print(f"seeded {source}/events/date={DAY}/: {len(data)} objects, {total / MiB:,.0f} MiB "
                  f"in {time.monotonic() - t0:.1f} s")  # fmt: skip

            scenario = output / "scenario-grid.csv"
            scenario.write_text(
                "src_region,src_tier,dst_region,dst_tier,throughput_gbps,iperf3_connections\n"
                "aws:us-east-1,PREMIUM,azure:westeurope,PREMIUM,0.8,64\n"
            )
            print(
                "scenario: the direct path aws:us-east-1 -> azure:westeurope is congested "
                f"(0.8 Gbps, {scenario})"
            )
            env = dict(os.environ)
            env.update(
                AIRFLOW__SKYPLANE__GRID_PATH=str(scenario),
                AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags_examples"),
                AIRFLOW__CORE__LOAD_EXAMPLES="False",
                AIRFLOW__SKYPLANE__STATE_DIR=str(work / "fleets"),
                SKYPLANE_EXAMPLE_SOURCE=f"{source}/events",
                SKYPLANE_EXAMPLE_GCS=f"{gcs}/events",
                SKYPLANE_EXAMPLE_AZURE=f"{azure}/events",
            )
            try:
                migrate(env["AIRFLOW_HOME"], env)
            except RuntimeError as err:
                print(err)
                return 1
            runs = []
            for attempt in ("first run", "second run"):
                t0 = time.monotonic()
                run = airflow_cli(["dags", "test", "nightly_replication", DAY], env)
                seconds = time.monotonic() - t0
                if run.returncode:
                    print(run.stdout[-4000:], run.stderr[-6000:])
                    return 1
                summary = xcom_return_values(home, "nightly_replication", "sync_day")[0]
                runs.append({**summary, "dags_test_s": round(seconds, 1)})
                print(
                    f"{attempt}: airflow dags test took {seconds:.1f} s; the task sent "
                    f"{summary['objects']} objects, {summary['bytes'] / MiB:,.1f} MiB in "
                    f"{summary['seconds']:.1f} s ({summary['gbps']:.2f} Gbps), {summary.get('sync')}"
                )

            # the replicas, byte for byte
            wanted = {k: _md5(v) for k, v in data.items() if "_temporary/" not in k}
            exact = {}
            for uri in (gcs, azure):
                replica = sky.open(uri)
                got = {i.key[len("events/") :]: _md5(replica.read(i.key)) for i in replica.list("events/")}
                exact[uri] = got == wanted
                verdict = "byte-identical to the source" if exact[uri] else "DIFFERENT"
                print(f"{uri}: {len(got)} objects, {verdict}")

            from airflow_skyplane.planner.render import write_plan_pictures

            pictures = [
                str(p)
                for p in write_plan_pictures(runs[0].get("plans") or [], output, "nightly_replication-plan")
            ]

        first = runs[0]
        print("\nXCom summary of the first run (plans left out):")
        print(json.dumps({k: v for k, v in first.items() if k not in ("plans", "multicast_plan")}, indent=1))
        print("plan pictures: " + ", ".join(pictures))
        for raw in first.get("plans") or []:
            if raw:
                hops = [
                    f"{e['src']} -> {e['dst']} ({e['gbps']:.2f} Gbps)" for e in raw["edges"] if e["gbps"] > 0
                ]
                print(f"planned route to {raw['destinations'][0]}: " + "; ".join(hops))
        result = {
            "objects": len(data),
            "mib": round(total / MiB, 1),
            "first_run_s": first["dags_test_s"],
            "transfer_s": first["seconds"],
            "gbps": first["gbps"],
            "predicted_gbps": first.get("predicted_gbps"),
            "second_run_objects": runs[1]["objects"],
            "byte_identical": all(exact.values()),
            "wall_s": round(time.monotonic() - t_start, 1),
            "emulators_stopped": sky.pids() == [],
        }
        print(json.dumps(result))
        return 0 if result["byte_identical"] and result["second_run_objects"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
