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
  much longer here; ``rclone copy``
  with its defaults and with ``--transfers 32``, from the source region to the S3-compatible
  destinations (Debian's rclone 1.60 cannot talk to Azurite 3.37).
* **workloads**: (a) 200 objects of 1-50 MiB, 3 GiB in all, half compressible text and half random;
  (b) one 4 GiB random object; (c) 20,000 objects of 16 KiB; object counts and sizes times
  ``--scale``.
* **slices**: each run gets at most ``--run-budget-s`` seconds by prediction (from the shaped links
  and the emulators' ceilings); a contender predicted to need more is given a proportional slice of
  the workload (1/2, 1/4, ... of the objects, or of the one object's size), reported as ``slice``.
* **ceilings**: before the WAN is built, each emulator is measured unshaped on loopback (parallel
  writes; reads from moto), and reported beside the results.

Output: progress lines on stderr, then one JSON object on stdout (wall time, GB/s, ratio to ours per
contender and workload, the plans, the ceilings, every target met or missed); ``--out`` also gets
``peers.json``, ``peers.png`` (bar chart) and ``peers.md`` (the table of ``docs/benchmarks.md``).
Needs root, ``ip``, ``tc``, ``rclone`` and Azurite (``make install``); always set
``SKYPLANE_WAN_SUBNET`` when other emulated WANs may run on the machine. A full run::

    sudo SKYPLANE_WAN_SUBNET=10.221.0.0/16 .venv/bin/python benchmarks/peers.py --scale 1 --out .cache/peers

A quick check of the machinery::

    sudo SKYPLANE_WAN_SUBNET=10.221.0.0/16 nice -n 10 .venv/bin/python benchmarks/peers.py \
        --scale 0.02 --mbit-per-gbps 20 --out .cache/peers-small
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow_skyplane.testing.sky import azure_connection_string

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT.parent / "shared" / "data" / "throughput_grid_calibration.csv"
MiB = 1024 * 1024
GiB = 1024 * MiB

SRC, RELAY, FAR, NEAR = "aws:eu-west-2", "gcp:us-west4-a", "gcp:us-west1-a", "azure:germanywestcentral"
REGIONS = (SRC, RELAY, FAR, NEAR)
PORTS = {"s3": 5000, "gs": 9023, "az": 10000}
BUCKET = "skyplane-peers-source"
# moto accepts any key: these are placeholders, not credentials
ACCESS_KEY, SECRET_KEY = "emulated-access-key", "emulated-secret-key"  # noqa: S105
AWS_REGION = "us-east-1"
MAX_CONNECTIONS_PER_HOP = 16
# what one object costs a copier beyond its bytes, for predicting small-object runs only: rclone (a
# GET and a PUT per transfer slot), Airflow's operators (hooks, a temporary file, a head check; about
# 1 s per object was seen on a busy 2-core machine)
RCLONE_PER_OBJECT_S = 0.05
AIRFLOW_PER_OBJECT_S = 0.5


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the grid slice ------------------------------------------------------------------------------
def read_grid(path: Path) -> dict[tuple[str, str], float]:
    wanted = set(REGIONS)
    grid: dict[tuple[str, str], float] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            if row["src_region"] in wanted and row["dst_region"] in wanted:
                grid[(row["src_region"], row["dst_region"])] = float(row["throughput_gbps"])
    return grid


def link_gbps(grid: dict[tuple[str, str], float], a: str, b: str) -> float:
    """One rate per link (a veth pair is shaped the same both ways): the measured direction from the
    source side when there is one, else the other."""
    if (a, b) in grid:
        return grid[(a, b)]
    if (b, a) in grid:
        return grid[(b, a)]
    raise SystemExit(f"{GRID} has no measurement between {a} and {b}")


# -- servers inside namespaces -------------------------------------------------------------------
def client(kind: str, url: str, pool: int = 32) -> Any:
    if kind == "s3":
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=url, region_name=AWS_REGION, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(max_pool_connections=pool, retries={"max_attempts": 5}),
        )  # fmt: skip
    if kind == "gs":
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        from airflow_skyplane.testing.sky import GCP_PROJECT

        return storage.Client(
            project=GCP_PROJECT,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": url},
        )
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(azure_connection_string(url))


def make_bucket(kind: str, cli: Any, name: str) -> None:
    if kind == "s3":
        cli.create_bucket(Bucket=name)
    elif kind == "gs":
        cli.create_bucket(name)
    else:
        cli.create_container(name)


def listing(kind: str, cli: Any, bucket: str) -> tuple[int, int]:
    """(objects, bytes) in a bucket."""
    n = total = 0
    if kind == "s3":
        for page in cli.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                n, total = n + 1, total + obj["Size"]
    elif kind == "gs":
        for blob in cli.list_blobs(bucket):
            n, total = n + 1, total + (blob.size or 0)
    else:
        for blob in cli.get_container_client(bucket).list_blobs():
            n, total = n + 1, total + blob.size
    return n, total


# -- workloads -----------------------------------------------------------------------------------
@dataclass
class Workload:
    name: str
    label: str
    sizes: list[int]  # bytes per object
    text: list[bool]  # compressible text (True) or random (False)

    @property
    def bytes(self) -> int:
        return sum(self.sizes)

    def slice(self, fraction: float) -> Workload:
        if fraction >= 1:
            return self
        if len(self.sizes) == 1:
            return Workload(self.name, self.label, [max(1, int(self.sizes[0] * fraction))], self.text)
        step = round(1 / fraction)
        return Workload(self.name, self.label, self.sizes[::step], self.text[::step])


def workloads(scale: float) -> list[Workload]:
    rng = random.Random(8)
    n_a = max(2, round(200 * scale))
    total_a = int(3 * GiB * n_a / 200)
    # sizes 1 + 49 u^p MiB with u spread evenly over (0, 1): p = 2.41 gives a mean of 15.36 MiB, so
    # that 200 objects make 3 GiB; the last object absorbs the rounding
    raw = [1 + 49 * ((i + 0.5) / n_a) ** 2.41 for i in range(n_a)]
    factor = total_a / (sum(raw) * MiB)
    sizes = [min(50 * MiB, max(MiB, int(s * factor * MiB))) for s in raw]
    sizes[-1] = max(MiB, min(50 * MiB, sizes[-1] + total_a - sum(sizes)))
    rng.shuffle(sizes)
    n_c = max(10, round(20_000 * scale))
    return [
        Workload("a", "200 objects of 1-50 MiB, half text", sizes, [i % 2 == 0 for i in range(n_a)]),
        Workload("b", "one 4 GiB object", [max(MiB, int(4 * GiB * scale))], [False]),
        Workload("c", "20,000 objects of 16 KiB", [16 * 1024] * n_c, [False] * n_c),
    ]


_TEXT_BLOCK: bytes = b""


def text_block() -> bytes:
    global _TEXT_BLOCK
    if not _TEXT_BLOCK:
        rng = random.Random(1)
        words = ["view", "click", "buy", "search", "cart", "share"]
        rows = (
            f"{n},2026-11-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:00Z,user{rng.randrange(10**6)},"
            f"{rng.choice(words)},/p/{rng.randrange(10**4)},{rng.random():.6f}\n"
            for n in range(200_000)
        )
        _TEXT_BLOCK = "".join(rows).encode()[: 4 * MiB]
    return _TEXT_BLOCK


class Body(io.RawIOBase):
    """``size`` bytes made on the fly: random, or CSV rows (compressible about 3:1 by lz4)."""

    def __init__(self, size: int, text: bool, seed: int) -> None:
        self.left, self.text, self.seed = size, text, seed
        self.offset = seed * 7919

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left, 8 * MiB)
        if n <= 0:
            return 0
        if self.text:
            block = text_block()
            start = self.offset % len(block)
            data = (block[start:] + block)[:n] if start + n > len(block) else block[start : start + n]
            self.offset += n
        else:
            data = os.urandom(n)
        buffer[:n] = data
        self.left -= n
        return n


def seed(s3: Any, prefix: str, workload: Workload) -> None:
    from boto3.s3.transfer import TransferConfig

    text_block()  # built once, before the threads: eight threads building it at once crashed CPython 3.11

    config = TransferConfig(multipart_chunksize=16 * MiB, max_concurrency=4)

    def put(i: int) -> None:
        key = f"{prefix}{i:05d}-{'text' if workload.text[i] else 'random'}.bin"
        if workload.sizes[i] <= 8 * MiB:
            body = Body(workload.sizes[i], workload.text[i], i).read()
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        else:
            s3.upload_fileobj(Body(workload.sizes[i], workload.text[i], i), BUCKET, key, Config=config)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(len(workload.sizes))))


# -- emulator ceilings (unshaped, loopback) ------------------------------------------------------
def timed(threads: int, n: int, call: Callable[[int], Any]) -> float:
    """Seconds ``threads`` threads take to make ``n`` calls ``call(0) ... call(n - 1)``."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(call, range(n)))
    return time.monotonic() - t0


def ceilings(work: Path, scale: float) -> dict[str, Any]:
    from airflow_skyplane.testing.sky import EmulatedSky

    mib = max(32, min(512, int(512 * scale)))
    objects, threads = 16, 8
    size = mib * MiB // objects
    body = os.urandom(size)
    small, small_threads, small_body = max(50, int(1000 * scale)), 32, os.urandom(16 * 1024)
    out: dict[str, Any] = {"bytes_per_probe": mib * MiB, "threads": threads,
                           "small_objects_per_probe": small, "small_threads": small_threads}  # fmt: skip
    with EmulatedSky(work / "ceiling-sky") as sky:
        for kind in sky.services:
            cli = client(kind, sky.endpoint(kind))
            make_bucket(kind, cli, "ceiling")

            def put(prefix: str, data: bytes, i: int, kind: str = kind, cli: Any = cli) -> None:
                key = f"{prefix}{i}"
                if kind == "s3":
                    cli.put_object(Bucket="ceiling", Key=key, Body=data)
                elif kind == "gs":
                    cli.bucket("ceiling").blob(key).upload_from_string(data)
                else:
                    cli.get_blob_client("ceiling", key).upload_blob(data, overwrite=True)

            def get(prefix: str, i: int, cli: Any = cli) -> bytes:
                return cli.get_object(Bucket="ceiling", Key=f"{prefix}{i}")["Body"].read()

            seconds = timed(threads, objects, functools.partial(put, "o", body))
            out[f"{kind}_write_mbit"] = round(mib * MiB * 8 / seconds / 1e6, 1)
            # requests, not bytes, bound a workload of small objects: writes (and reads) per second
            seconds = timed(small_threads, small, functools.partial(put, "s", small_body))
            out[f"{kind}_small_write_per_s"] = round(small / seconds, 1)
            if kind == "s3":
                seconds = timed(threads, objects, functools.partial(get, "o"))
                out["s3_read_mbit"] = round(mib * MiB * 8 / seconds / 1e6, 1)
                seconds = timed(small_threads, small, functools.partial(get, "s"))
                out["s3_small_read_per_s"] = round(small / seconds, 1)
        out["missing"] = dict(sky.missing)
    return out


# -- the contenders ------------------------------------------------------------------------------
@dataclass
class Destination:
    key: str  # "far-s3"
    kind: str
    region: str
    server: Any  # airflow_skyplane.testing.sky.EmulatorServer, served inside its region


@dataclass
class Run:
    workload: str
    contender: str
    destination: str
    slice: float
    objects: int = 0
    bytes: int = 0
    wall_s: float = 0.0
    measured_s: float = 0.0  # the seconds throughput is computed from (see "timed")
    timed: str = ""
    gbytes_per_s: float = 0.0
    ok: bool = False
    error: str | None = None
    predicted_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.grid = read_grid(Path(args.grid))
        self.k = args.mbit_per_gbps
        self.rates = {
            (a, b): link_gbps(self.grid, a, b) * self.k
            for i, a in enumerate(REGIONS)
            for b in REGIONS[i + 1 :]
        }
        self.flow_cap = {pair: rate / args.flows_to_fill for pair, rate in self.rates.items()}
        self.servers: list[Any] = []
        self.destinations: dict[str, Destination] = {}
        self.wan: Any = None
        self.plans: dict[str, Any] = {}
        self.ceiling: dict[str, Any] = {}
        self.airflow_home = work / "airflow-home"
        self.run_timeout = 0.0
        self.counter = 0

    def rate(self, a: str, b: str) -> float:
        return self.rates.get((a, b)) or self.rates[(b, a)]

    def cap(self, a: str, b: str) -> float:
        return self.flow_cap.get((a, b)) or self.flow_cap[(b, a)]

    # -- planning on the shaped links --------------------------------------------------------------
    def plan(self, dst: str) -> Any:
        from airflow_skyplane.planner import NetworkModel, plan_transfer
        from airflow_skyplane.planner.regions import REGIONS as CATALOG

        gbps = {}
        for (a, b), mbit in self.rates.items():
            gbps[(a, b)] = gbps[(b, a)] = mbit / 1000
        # the source VM's egress is capped at its best direct link, as the grid's 64-connection
        # figures top out at a VM's network limit: a relay can then add nothing to the near pair
        vm_cap = max(self.rate(SRC, FAR), self.rate(SRC, NEAR)) / 1000
        model = NetworkModel.custom(
            [CATALOG[r] for r in REGIONS], gbps, dict.fromkeys(gbps, 0.02),
            {r: (vm_cap, vm_cap) for r in REGIONS}, dict.fromkeys(REGIONS, 1.0),
        )  # fmt: skip
        # one candidate relay: the slice of the grid has one relay path by design
        return plan_transfer(
            model, SRC, dst, objective="throughput", max_vms_per_region=1, allowed_regions=[SRC, RELAY, dst]
        )

    # -- testbed -----------------------------------------------------------------------------------
    def start_testbed(self) -> None:
        from airflow_skyplane.testing.netns import EmulatedWAN, LinkSpec
        from airflow_skyplane.testing.sky import EmulatorServer, emulator_argv, find_azurite

        azurite = find_azurite()
        if azurite is None:
            raise SystemExit("Azurite not found: run `make install` (needs npm)")
        links = {pair: LinkSpec(rate, self.flow_cap[pair]) for pair, rate in self.rates.items()}
        self.wan = EmulatedWAN(list(REGIONS), links=links).start()
        layout = [("src-s3", "s3", SRC), ("far-s3", "s3", FAR), ("far-gs", "gs", FAR),
                  ("near-s3", "s3", NEAR), ("near-az", "az", NEAR)]  # fmt: skip
        for key, kind, region in layout:
            argv, ready = emulator_argv(kind, "0.0.0.0", PORTS[kind], azurite)  # noqa: S104 - inside a namespace
            server = EmulatorServer(
                key, argv, PORTS[kind], ready, self.work / f"{key}.log",
                host=self.wan.control_address(region), launcher=functools.partial(self.wan.popen, region),
            )  # fmt: skip
            server.spawn()
            self.servers.append(server)
            if key != "src-s3":
                self.destinations[key] = Destination(key, kind, region, server)
        deadline = time.monotonic() + 90
        for server in self.servers:
            server.wait_ready(deadline)
        self.src_s3 = client("s3", self.servers[0].url)
        self.src_s3.create_bucket(Bucket=BUCKET)
        self.migrate_airflow()

    def stop_testbed(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        if self.wan is not None:
            self.wan.close()

    # -- what a contender sees -----------------------------------------------------------------------
    def url_from(self, region: str, dest: Destination) -> str:
        """The destination's endpoint as seen from ``region`` (over the shaped link), or from its
        own namespace."""
        if region == dest.region:
            return f"http://127.0.0.1:{dest.server.port}"
        return f"http://{self.wan.address(region, dest.region)}:{dest.server.port}"

    def new_bucket(self, dest: Destination, run: str) -> str:
        self.counter += 1
        name = f"peers-{self.counter:03d}-{run.lower()}"[:60].rstrip("-")
        make_bucket(dest.kind, client(dest.kind, dest.server.url), name)
        return name

    # -- ours ------------------------------------------------------------------------------------
    def run_ours(self, prefix: str, dest: Destination, overlay: Any, run: Run) -> None:
        from airflow_skyplane.storage.azure_blob import AzureBlobStore
        from airflow_skyplane.storage.gcs import GCSStore
        from airflow_skyplane.storage.s3 import S3Store
        from airflow_skyplane.testing.sky import GCP_PROJECT
        from airflow_skyplane.testing.wan_relays import local_relays as LocalRelayBackend
        from airflow_skyplane.transfer.job import TransferJob

        bucket = self.new_bucket(dest, run.contender)
        host_cli = client(dest.kind, dest.server.url)
        inside = f"http://127.0.0.1:{dest.server.port}"  # the gateway runs in the store's namespace
        if dest.kind == "s3":
            dst_store: Any = S3Store(host_cli, bucket)
            dst_spec = {"scheme": "s3", "bucket": bucket, "region": AWS_REGION, "endpoint_url": inside,
                        "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}  # fmt: skip
        elif dest.kind == "gs":
            dst_store = GCSStore(host_cli, bucket)
            dst_spec = {"scheme": "gs", "bucket": bucket, "project": GCP_PROJECT, "emulator_host": inside}
        else:
            dst_store = AzureBlobStore(host_cli, bucket)
            dst_spec = {
                "scheme": "az",
                "container": bucket,
                "connection_string": azure_connection_string(inside),
            }
        src_spec = {"scheme": "s3", "bucket": BUCKET, "region": AWS_REGION,
                    "endpoint_url": f"http://127.0.0.1:{PORTS['s3']}",
                    "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}  # fmt: skip
        tag = f"{run.workload}-{run.contender}-{run.destination}"
        backend = LocalRelayBackend(self.work / f"fleet-{tag}", wan=self.wan)
        job = TransferJob(
            S3Store(self.src_s3, BUCKET), prefix, dst_store, prefix, backend=backend,
            workdir=self.work / f"job-{tag}", overlay=overlay, source_spec=src_spec,
            destination_spec=dst_spec, timeout=self.run_timeout, chunk_size=self.args.chunk_mib * MiB,
        )  # fmt: skip
        t0 = time.monotonic()
        try:
            result = job.run()
        finally:
            backend.teardown()
        run.wall_s = time.monotonic() - t0
        run.measured_s, run.timed = run.wall_s, "job.run() wall time: inventory, gateways, transfer, verify"
        run.extra = {
            "dataplane_s": round(result.gateways[overlay.source]["seconds"], 3),
            "wire_to_raw": round(result.wire_bytes / result.bytes, 4) if result.bytes else None,
            "hops": [[h.src, h.dst, h.connections, round(h.weight, 4)] for h in overlay.hops],
        }
        run.extra["checked"] = listing(dest.kind, host_cli, bucket)

    # -- Airflow's operators ------------------------------------------------------------------------
    def airflow_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
        env.update(
            AIRFLOW_HOME=str(self.airflow_home),
            AIRFLOW__CORE__DAGS_FOLDER=str(self.airflow_home / "dags"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        )
        return env

    def migrate_airflow(self) -> None:
        from airflow_skyplane.testing.dagrun import migrate

        (self.airflow_home / "dags").mkdir(parents=True, exist_ok=True)
        migrate(self.airflow_home, self.airflow_env())

    def run_airflow(self, prefix: str, dest: Destination, run: Run) -> None:
        bucket = self.new_bucket(dest, run.contender)
        url = self.url_from(SRC, dest)
        dag_id = f"peers_{self.counter:03d}"
        folder = prefix.rstrip("/")  # the operator strips f"{s3_prefix}/" from every key it lists
        if dest.kind == "gs":
            # GCSHook.upload gives each request 60 s, sized for real links; ours run at
            # --mbit-per-gbps / 1000 of the measured rates, so a request is given that much longer
            # (the same request on the real link would take the same share of its 60 s)
            timeout = round(60 * 1000 / self.k)
            task = (
                "import functools; from airflow.providers.google.cloud.hooks.gcs import GCSHook; "
                f"GCSHook.upload = functools.partialmethod(GCSHook.upload, timeout={timeout}); "
                "from airflow.providers.google.cloud.transfers.s3_to_gcs import S3ToGCSOperator\n"
                f"    S3ToGCSOperator(task_id='copy', bucket={BUCKET!r}, prefix={prefix!r}, "
                f"dest_gcs='gs://{bucket}/', replace=True)\n"
            )
            run.extra["gcs_request_timeout_s"] = timeout
        else:
            task = (
                "from airflow.providers.microsoft.azure.transfers.s3_to_wasb import "
                "S3ToAzureBlobStorageOperator\n"
                f"    S3ToAzureBlobStorageOperator(task_id='copy', s3_bucket={BUCKET!r}, "
                f"container_name={bucket!r}, s3_prefix={folder!r}, blob_prefix={folder!r}, replace=True)\n"
            )
        imports, body = task.split("\n", 1)
        dags = self.airflow_home / "dags"
        for old in dags.glob("*.py"):
            old.unlink()
        (dags / f"{dag_id}.py").write_text(
            "from datetime import datetime\n\nfrom airflow.sdk import DAG\n" + imports + "\n\n"
            f"with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False):\n" + body
        )
        env = self.airflow_env()
        env["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps({
            "conn_type": "aws", "login": ACCESS_KEY, "password": SECRET_KEY,
            "extra": {"endpoint_url": f"http://127.0.0.1:{PORTS['s3']}", "region_name": AWS_REGION},
        })  # fmt: skip
        if dest.kind == "gs":
            from airflow_skyplane.testing.sky import GCP_PROJECT

            env["AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT"] = json.dumps(
                {
                    "conn_type": "google_cloud_platform",
                    "extra": {"is_anonymous": True, "project": GCP_PROJECT},
                }
            )
            env["STORAGE_EMULATOR_HOST"] = url
        else:
            env["AIRFLOW_CONN_WASB_DEFAULT"] = json.dumps(
                {"conn_type": "wasb", "extra": {"connection_string": azure_connection_string(url)}}
            )
        airflow = str(Path(sys.executable).parent / "airflow")
        t0 = time.monotonic()
        done = subprocess.run(
            self.wan.command(SRC, [airflow, "dags", "test", dag_id]), env=env, capture_output=True,
            text=True, timeout=self.run_timeout, check=False,
        )  # fmt: skip
        run.wall_s = time.monotonic() - t0
        if done.returncode:
            raise RuntimeError(
                f"airflow dags test failed ({done.returncode}): {(done.stdout + done.stderr)[-3000:]}"
            )
        task_s = task_seconds(self.airflow_home, dag_id)
        run.extra.update(dags_test_wall_s=round(run.wall_s, 3), task_s=task_s)
        if task_s:
            run.measured_s, run.timed = (
                task_s,
                "the task's own duration (airflow dags test start-up excluded)",
            )
        else:
            run.measured_s, run.timed = run.wall_s, "airflow dags test wall time"
        run.extra["checked"] = listing(dest.kind, client(dest.kind, dest.server.url), bucket)

    # -- rclone ------------------------------------------------------------------------------------
    def run_rclone(self, prefix: str, dest: Destination, run: Run, transfers: int | None) -> None:
        bucket = self.new_bucket(dest, run.contender)
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE" and not k.startswith("RCLONE_")}
        conf = self.work / "rclone.conf"
        conf.write_text("")
        env["RCLONE_CONFIG"] = str(conf)
        for remote, url in (("SRC", f"http://127.0.0.1:{PORTS['s3']}"), ("DST", self.url_from(SRC, dest))):
            env.update({
                f"RCLONE_CONFIG_{remote}_TYPE": "s3", f"RCLONE_CONFIG_{remote}_PROVIDER": "Other",
                f"RCLONE_CONFIG_{remote}_ENDPOINT": url, f"RCLONE_CONFIG_{remote}_REGION": AWS_REGION,
                f"RCLONE_CONFIG_{remote}_ACCESS_KEY_ID": ACCESS_KEY,
                f"RCLONE_CONFIG_{remote}_SECRET_ACCESS_KEY": SECRET_KEY,
            })  # fmt: skip
        argv = ["rclone", "copy", f"SRC:{BUCKET}/{prefix}", f"DST:{bucket}/{prefix}"]
        if transfers:
            argv += ["--transfers", str(transfers)]
        t0 = time.monotonic()
        done = subprocess.run(
            self.wan.command(SRC, argv), env=env, capture_output=True, text=True,
            timeout=self.run_timeout, check=False,
        )  # fmt: skip
        run.wall_s = time.monotonic() - t0
        if done.returncode:
            raise RuntimeError(f"rclone failed ({done.returncode}): {done.stderr[-1500:]}")
        run.measured_s, run.timed = run.wall_s, "rclone copy wall time"
        run.extra = {
            "argv": argv[:2] + argv[4:],
            "checked": listing(dest.kind, client(dest.kind, dest.server.url), bucket),
        }

    # -- prediction, for slicing -------------------------------------------------------------------
    def predict_s(self, contender: str, dest: Destination, w: Workload) -> float:
        """Seconds a contender should need on ``w``, from the shaped links and the measured ceilings."""
        direct = self.rate(SRC, dest.region)
        cap = self.cap(SRC, dest.region)
        write_ceiling = self.ceiling.get(f"{dest.kind}_write_mbit") or 1e9
        n, size = len(w.sizes), w.bytes
        big = max(w.sizes) > 64 * MiB
        if contender == "ours":
            mbit = self.plans[dest.region].throughput_gbps * 1000
            streams, per = 64, 0.0
        elif contender == "ours-direct":
            mbit, streams, per = direct, 64, 0.0
        elif contender.startswith("rclone"):
            transfers = 32 if contender.endswith("32") else 4
            # one big object: rclone uploads 4 parts at a time (--s3-upload-concurrency) whatever --transfers
            streams = 4 if big else min(transfers, n)
            mbit, per = min(direct, streams * cap), RCLONE_PER_OBJECT_S
        else:  # Airflow's operators copy one object after the other, over one connection
            mbit, streams, per = cap, 1, AIRFLOW_PER_OBJECT_S
        mbit = min(mbit, write_ceiling)
        # a parallel copier of small objects is bound by the stores' requests per second, not bytes
        per_s = [
            self.ceiling.get(f"{dest.kind}_small_write_per_s") or 0.0,
            self.ceiling.get("s3_small_read_per_s") or 0.0,
        ]
        requests_s = n / min(per_s) if streams > 1 and min(per_s) > 0 else 0.0
        return max(size * 8 / (mbit * 1e6), requests_s) + n * per / streams + 3.0

    def fraction(self, predicted: float, w: Workload) -> float:
        fraction = 1.0
        while predicted * fraction > self.args.run_budget_s and fraction * len(w.sizes) > 1:
            fraction /= 2
        if len(w.sizes) == 1:
            while predicted * fraction > self.args.run_budget_s and fraction > 1 / 1024:
                fraction /= 2
        return fraction


def task_seconds(home: Path, dag_id: str) -> float | None:
    import sqlite3

    with contextlib.suppress(Exception), sqlite3.connect(home / "airflow.db") as db:
        row = db.execute(
            "SELECT start_date, end_date FROM task_instance WHERE dag_id=? ORDER BY end_date DESC LIMIT 1",
            (dag_id,),
        ).fetchone()
        if row and row[0] and row[1]:
            start, end = (datetime.fromisoformat(str(v)) for v in row)
            return round((end - start).total_seconds(), 3)
    return None


# -- targets, chart, table -----------------------------------------------------------------------
def find(runs: list[Run], w: str, contender: str, dest: str) -> Run | None:
    for r in runs:
        if r.workload == w and r.contender == contender and r.destination == dest and r.ok:
            return r
    return None


def targets(runs: list[Run], plans: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def ratio(w: str, peer: str, dest: str) -> float | None:
        ours, other = find(runs, w, "ours", dest), find(runs, w, peer, dest)
        if ours is None or other is None or not other.gbytes_per_s:
            return None
        return ours.gbytes_per_s / other.gbytes_per_s

    def add(name: str, value: float | None, ok: Callable[[float], bool], want: str) -> None:
        out.append({"target": name, "want": want, "measured": None if value is None else round(value, 3),
                    "met": None if value is None else bool(ok(value))})  # fmt: skip

    for w, x in (("a", 10.0), ("b", 5.0), ("c", 5.0)):
        add(
            f"ours / S3ToGCSOperator on ({w})",
            ratio(w, "S3ToGCSOperator", "far-gs"),
            lambda v, x=x: v >= x,
            f">= {x}",
        )
    for w in ("a", "b"):
        add(f"ours / rclone --transfers 32 on ({w}), overlay helps", ratio(w, "rclone-32", "far-s3"),
            lambda v: v >= 1.5, ">= 1.5")  # fmt: skip
    for w in ("a", "b", "c"):
        add(f"ours / rclone --transfers 32 on ({w}), direct is best", ratio(w, "rclone-32", "near-s3"),
            lambda v: v >= 0.9, ">= 0.9")  # fmt: skip
    predicted = plans[FAR].throughput_gbps / plans[FAR].direct_throughput_gbps
    for w in ("a", "b", "c"):
        ours, direct = find(runs, w, "ours", "far-s3"), find(runs, w, "ours-direct", "far-s3")
        value = None
        if ours and direct:
            # the data plane's own seconds, per byte (a slice may differ between the two)
            value = (direct.extra["dataplane_s"] / direct.bytes) / (ours.extra["dataplane_s"] / ours.bytes)
        add(f"overlay / forced direct on ({w}) vs predicted {predicted:.2f}x",
            None if value is None else value / predicted, lambda v: abs(v - 1) <= 0.2,
            "measured / predicted within 1 +- 0.2")  # fmt: skip
    return out


def chart(runs: list[Run], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({(r.contender, r.destination) for r in runs}, key=lambda cd: (cd[1], cd[0]))
    ran = [w for w in ("a", "b", "c") if any(r.workload == w for r in runs)]  # --workloads may pick some
    fig, axes = plt.subplots(1, len(ran), figsize=(max(8, 5 * len(ran)), 5), sharey=False, squeeze=False)
    for ax, w in zip(axes[0], ran, strict=True):
        labels, values, colours = [], [], []
        for contender, dest in names:
            r = find(runs, w, contender, dest)
            labels.append(f"{contender}\n-> {dest}")
            values.append(r.gbytes_per_s * 1000 if r else 0.0)
            colours.append("tab:blue" if contender.startswith("ours") else "tab:grey")
        ax.barh(labels, values, color=colours)
        ax.set_title(f"workload ({w})")
        ax.set_xlabel("MB/s")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(runs: list[Run]) -> str:
    lines = ["| workload | contender | destination | slice | objects | MiB | seconds | MB/s | ours / it |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in runs:
        ours = find(runs, r.workload, "ours", r.destination)
        ratio = f"{ours.gbytes_per_s / r.gbytes_per_s:.2f}x" if ours and r.ok and r.gbytes_per_s else "-"
        last = [line.strip() for line in (r.error or "").splitlines() if line.strip()][-1:] or [""]
        seconds = f"{r.measured_s:.1f}" if r.ok else "failed: " + last[0].replace("|", "/")[:90]
        lines.append(
            f"| ({r.workload}) | {r.contender} | {r.destination} | {r.slice:g} | {r.objects} | "
            f"{r.bytes / MiB:,.1f} | {seconds} | {r.gbytes_per_s * 1000:.1f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


# -- main ----------------------------------------------------------------------------------------
CONTENDERS = [
    ("ours", "far-s3"), ("ours-direct", "far-s3"), ("rclone-default", "far-s3"), ("rclone-32", "far-s3"),
    ("ours", "far-gs"), ("S3ToGCSOperator", "far-gs"),
    ("ours", "near-s3"), ("rclone-default", "near-s3"), ("rclone-32", "near-s3"),
    ("ours", "near-az"), ("S3ToAzureBlobStorageOperator", "near-az"),
]  # fmt: skip


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="objects and sizes of every workload")
    parser.add_argument("--mbit-per-gbps", type=float, default=60.0, help="link Mbit/s per measured Gbps")
    parser.add_argument("--flows-to-fill", type=float, default=8.0, help="a TCP flow gets 1/N of a link")
    parser.add_argument("--chunk-mib", type=int, default=8, help="our chunk size (S3 parts are >= 5 MiB)")
    parser.add_argument("--contenders", default="", help="comma-separated subset, e.g. 'ours,rclone-32'")
    parser.add_argument("--run-budget-s", type=float, default=36.0, help="predicted seconds per run, at most")
    parser.add_argument("--workloads", default="abc", help="which workloads to run, e.g. 'ab'")
    parser.add_argument("--grid", default=str(GRID), help="the measured grid to take the links from")
    parser.add_argument("--out", default=None, help="folder for peers.json, peers.png and peers.md")
    parser.add_argument("--deadline-s", type=float, default=1800.0, help="stop starting runs after this")
    args = parser.parse_args()
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
    t_start = time.monotonic()
    out_dir = Path(args.out) if args.out else None
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="skyplane-peers-", dir=base))
    os.chmod(work, 0o700)
    os.environ.pop("AWS_CA_BUNDLE", None)
    bench = Bench(args, work)
    runs: list[Run] = []
    seeded: dict[tuple[str, float], str] = {}
    try:
        log("measuring the emulators' ceilings on loopback, unshaped")
        bench.ceiling = ceilings(work, args.scale)
        log(f"ceilings: {bench.ceiling}")
        bench.plans = {dst: bench.plan(dst) for dst in (FAR, NEAR)}
        for dst, plan in bench.plans.items():
            log(f"plan {SRC} -> {dst}: {plan.throughput_gbps * 1000:.1f} Mbit/s planned, "
                f"{plan.direct_throughput_gbps * 1000:.1f} direct, relays {sorted(plan.relays)}")  # fmt: skip
        log("building the emulated WAN and starting the stores inside it")
        bench.start_testbed()
        from airflow_skyplane.transfer.job import Hop, Overlay, overlay_from_plan

        chosen = [w for w in workloads(args.scale) if w.name in args.workloads]
        n_runs = len(chosen) * len([c for c in CONTENDERS if not args.contenders or c[0] in args.contenders])
        for wi, w in enumerate(chosen):
            wanted = [c for c in CONTENDERS if not args.contenders or c[0] in args.contenders.split(",")]
            order = wanted if wi % 2 == 0 else wanted[::-1]
            for contender, dest_key in order:
                dest = bench.destinations[dest_key]
                predicted = bench.predict_s(contender, dest, w)
                fraction = bench.fraction(predicted, w)
                part = w.slice(fraction)
                run = Run(w.name, contender, dest_key, fraction, len(part.sizes), part.bytes,
                          predicted_s=round(predicted * fraction, 1))  # fmt: skip
                runs.append(run)
                if time.monotonic() - t_start > args.deadline_s:
                    run.error = "not run: --deadline-s reached"
                    continue
                prefix = f"{w.name}/f{round(1 / fraction)}/"
                if (w.name, fraction) not in seeded:
                    t0 = time.monotonic()
                    seed(bench.src_s3, prefix, part)
                    seeded[(w.name, fraction)] = prefix
                    log(f"seeded {prefix}: {len(part.sizes)} objects, {part.bytes / MiB:,.1f} MiB in "
                        f"{time.monotonic() - t0:.1f} s")  # fmt: skip
                bench.run_timeout = max(120.0, 4 * run.predicted_s + 60)
                try:
                    if contender == "ours":
                        overlay = overlay_from_plan(
                            bench.plans[dest.region], max_connections_per_hop=MAX_CONNECTIONS_PER_HOP
                        )
                        bench.run_ours(prefix, dest, overlay, run)
                    elif contender == "ours-direct":
                        overlay = Overlay(SRC, dest.region, [Hop(SRC, dest.region, MAX_CONNECTIONS_PER_HOP)],
                                          {SRC: SRC, dest.region: dest.region})  # fmt: skip
                        bench.run_ours(prefix, dest, overlay, run)
                    elif contender.startswith("rclone"):
                        bench.run_rclone(prefix, dest, run, 32 if contender.endswith("32") else None)
                    else:
                        bench.run_airflow(prefix, dest, run)
                    got = tuple(run.extra.get("checked", (0, 0)))
                    if got != (run.objects, run.bytes):
                        raise RuntimeError(f"destination holds {got[0]} objects, {got[1]} bytes; "
                                           f"wanted {run.objects}, {run.bytes}")  # fmt: skip
                    run.ok = True
                    run.gbytes_per_s = run.bytes / run.measured_s / 1e9
                except Exception as err:  # noqa: BLE001 - a failed contender is reported, not fatal
                    message = f"{type(err).__name__}: {err}"
                    run.error = message if len(message) <= 2000 else message[:200] + " ... " + message[-1800:]
                log(f"({w.name}) {contender:>28} -> {dest_key:<8} slice {fraction:<7g} "
                    + (f"{run.measured_s:7.1f} s {run.gbytes_per_s * 1000:8.2f} MB/s" if run.ok
                       else f"FAILED {run.error[:120] + ' ... ' + run.error[-300:] if run.error else ''}")
                    + f"  [{len(runs)}/{n_runs}]")  # fmt: skip
    finally:
        bench.stop_testbed()
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "peers",
        "scale": args.scale,
        "machine": {"cpus": os.cpu_count(), "load_1m": round(os.getloadavg()[0], 2)},
        "links_mbit": {
            f"{a} <-> {b}": {"rate": round(r, 2), "flow_cap": round(bench.cap(a, b), 2)}
            for (a, b), r in bench.rates.items()
        },  # fmt: skip
        "plans": {
            dst: {
                "relays": sorted(p.relays),
                "throughput_mbit": round(p.throughput_gbps * 1000, 2),
                "direct_mbit": round(p.direct_throughput_gbps * 1000, 2),
                "predicted_speedup": round(p.throughput_gbps / p.direct_throughput_gbps, 3),
            }
            for dst, p in bench.plans.items()
        },  # fmt: skip
        "emulator_ceilings_loopback": bench.ceiling,
        "runs": [
            {
                **{k: v for k, v in r.__dict__.items() if k != "extra"},
                "wall_s": round(r.wall_s, 3),
                "measured_s": round(r.measured_s, 3),
                "gbytes_per_s": round(r.gbytes_per_s, 5),
                "ratio_ours_to_it": (
                    round(o.gbytes_per_s / r.gbytes_per_s, 3)
                    if (o := find(runs, r.workload, "ours", r.destination)) and r.ok and r.gbytes_per_s
                    else None
                ),
                **{k: v for k, v in r.extra.items() if k != "checked"},
            }
            for r in runs
        ],  # fmt: skip
        "sliced": [
            f"({r.workload}) {r.contender} -> {r.destination}: {r.slice:g} of the workload"
            for r in runs
            if r.slice < 1
        ],  # fmt: skip
        "targets": targets(runs, bench.plans) if bench.plans else [],
        "total_s": round(time.monotonic() - t_start, 1),
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "peers.json").write_text(json.dumps(result, indent=1))
        (out_dir / "peers.md").write_text(table(runs))
        chart(runs, out_dir / "peers.png", f"peers on an emulated WAN, --scale {args.scale:g}, "
              f"{args.mbit_per_gbps:g} Mbit/s per measured Gbps")  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
