"""The testbed: four regions of an emulated WAN shaped from the measured grid, the stores inside
them, the plans made on the shaped links, the emulators' own ceilings, and the check of what
arrived (a digest of every destination object against its source)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import hashlib
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_skyplane.testing.sky import azure_connection_string

from .workloads import BUCKET, MiB

ROOT = Path(__file__).resolve().parents[2]
GRID = ROOT.parent / "shared" / "data" / "throughput_grid_calibration.csv"

SRC, RELAY, FAR, NEAR = "aws:eu-west-2", "gcp:us-west4-a", "gcp:us-west1-a", "azure:germanywestcentral"
REGIONS = (SRC, RELAY, FAR, NEAR)
PORTS = {"s3": 5000, "gs": 9023, "az": 10000}
# moto accepts any key: these are placeholders, not credentials
ACCESS_KEY, SECRET_KEY = "emulated-access-key", "emulated-secret-key"  # noqa: S105
AWS_REGION = "us-east-1"


def rclone_env(work: Path, endpoints: dict[str, str]) -> dict[str, str]:
    """The environment rclone runs in: none of the user's configuration, and one S3 remote per name
    of ``endpoints`` (its URL), with the emulators' keys."""
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE" and not k.startswith("RCLONE_")}
    conf = work / "rclone.conf"
    conf.write_text("")
    env["RCLONE_CONFIG"] = str(conf)
    for remote, url in endpoints.items():
        env.update({
            f"RCLONE_CONFIG_{remote}_TYPE": "s3", f"RCLONE_CONFIG_{remote}_PROVIDER": "Other",
            f"RCLONE_CONFIG_{remote}_ENDPOINT": url, f"RCLONE_CONFIG_{remote}_REGION": AWS_REGION,
            f"RCLONE_CONFIG_{remote}_ACCESS_KEY_ID": ACCESS_KEY,
            f"RCLONE_CONFIG_{remote}_SECRET_ACCESS_KEY": SECRET_KEY,
        })  # fmt: skip
    return env


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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
    fraction: float  # of the workload, the same for every contender of the destination
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


# -- the stores ----------------------------------------------------------------------------------
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


def digests(kind: str, cli: Any, bucket: str, prefix: str = "") -> dict[str, tuple[int, str]]:
    """Every object of a bucket (under ``prefix``), by the last part of its name: its bytes and the
    SHA-256 of its content, read back whole. Keyed by the name's last part because Airflow's
    operators place the source folder under their own destination prefix."""

    def one(name: str) -> tuple[str, tuple[int, str]]:
        digest, size = hashlib.sha256(), 0
        if kind == "s3":
            parts = cli.get_object(Bucket=bucket, Key=name)["Body"].iter_chunks(MiB)
        elif kind == "gs":
            parts = iter([cli.bucket(bucket).blob(name).download_as_bytes()])
        else:
            parts = cli.get_blob_client(bucket, name).download_blob().chunks()
        for part in parts:
            digest.update(part)
            size += len(part)
        return name.rsplit("/", 1)[-1], (size, digest.hexdigest())

    if kind == "s3":
        pages = cli.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        names = [o["Key"] for page in pages for o in page.get("Contents", [])]
    elif kind == "gs":
        names = [b.name for b in cli.list_blobs(bucket, prefix=prefix or None)]
    else:
        names = [b.name for b in cli.get_container_client(bucket).list_blobs(name_starts_with=prefix or None)]
    # the GCS emulator serves one request at a time: more threads would only queue
    with ThreadPoolExecutor(1 if kind == "gs" else 8) as pool:
        found = dict(pool.map(one, names))
    if len(found) != len(names):
        raise RuntimeError(f"{bucket} holds two objects of the same name under different folders")
    return found


def compare(source: dict[str, tuple[int, str]], got: dict[str, tuple[int, str]]) -> None:
    """Raise unless ``got`` holds exactly the objects of ``source``, byte for byte."""
    missing = sorted(set(source) - set(got))
    extra = sorted(set(got) - set(source))
    differ = sorted(n for n in set(source) & set(got) if source[n] != got[n])
    if missing or extra or differ:
        raise RuntimeError(
            f"destination differs from the source: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(extra)} not in the source (e.g. {extra[:2]}), {len(differ)} with other bytes "
            f"(e.g. {differ[:2]})"
        )


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


# -- the testbed ---------------------------------------------------------------------------------
class Testbed:
    """The shaped links, the plans on them, and the stores served inside the regions."""

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
        self.counter = 0
        self.src_s3: Any = None

    def rate(self, a: str, b: str) -> float:
        return self.rates.get((a, b)) or self.rates[(b, a)]

    def cap(self, a: str, b: str) -> float:
        return self.flow_cap.get((a, b)) or self.flow_cap[(b, a)]

    def plan(self, dst: str) -> Any:
        """The planner's plan on a network model equal to the shaped links."""
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

    def start(self) -> None:
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

    def stop(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        if self.wan is not None:
            self.wan.close()

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

    def check(self, dest: Destination, bucket: str, source: dict[str, tuple[int, str]]) -> None:
        """Raise unless ``bucket`` holds the source objects byte for byte (read over the control link)."""
        compare(source, digests(dest.kind, client(dest.kind, dest.server.url), bucket))
