"""How each contender is run on the testbed, and what each is predicted to need.

Every contender of a destination gets the same objects under the same source prefix; each run
writes into a fresh bucket, which is then checked byte for byte against the source.

rclone runs twice: with its defaults (what a user gets), and with the flags its own documentation
gives for the case, chosen by one rule from the workload (never tried against this network):

* objects no larger than one of our chunks (workload (c)) are bound by requests, not bytes: as many
  copies in flight as a gateway of ours has store requests (``--transfers 32 --checkers 32``);
* otherwise as many TCP flows as our data plane opens on a hop (16): across objects while there are
  at least 16 (``--transfers 16 --checkers 16``, each object one request below rclone's multipart
  cut-off); with fewer objects, each is cut into parts of our chunk size (``--s3-chunk-size``,
  ``--s3-upload-cutoff``) uploaded ``--s3-upload-concurrency`` at a time, so that transfers times
  concurrency is 16 (one object: ``--transfers 1 --s3-upload-concurrency 16``).

``--multi-thread-streams`` is not passed: rclone 1.60 (Debian's) uses it only for destinations that
can be written at an offset (a local disk), not for an S3 upload, which ``--s3-upload-concurrency``
parallelises instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow_skyplane.testing.sky import azure_connection_string

from .testbed import ACCESS_KEY, AWS_REGION, PORTS, SECRET_KEY, SRC, Destination, Run, Testbed, rclone_env
from .workloads import BUCKET, MiB, Workload

MAX_CONNECTIONS_PER_HOP = 16
# a gateway of ours keeps this many store requests in flight for small objects
# (STORE_THREADS of airflow_skyplane/gateway/daemon.py)
OUR_STORE_REQUESTS = 32
# what one object costs a copier beyond its bytes, for predicting small-object runs only: rclone (a
# GET and a PUT per transfer slot), Airflow's operators (hooks, a temporary file, a head check; about
# 1 s per object was seen on a busy 2-core machine)
RCLONE_PER_OBJECT_S = 0.05
AIRFLOW_PER_OBJECT_S = 0.5
# rclone 1.60's own defaults (rclone help flags)
RCLONE_DEFAULTS = {"transfers": 4, "concurrency": 4, "cutoff": 200 * MiB}

CONTENDERS = [
    ("ours", "far-s3"), ("ours-direct", "far-s3"), ("rclone-default", "far-s3"), ("rclone-tuned", "far-s3"),
    ("ours", "far-gs"), ("S3ToGCSOperator", "far-gs"),
    ("ours", "near-s3"), ("rclone-default", "near-s3"), ("rclone-tuned", "near-s3"),
    ("ours", "near-az"), ("S3ToAzureBlobStorageOperator", "near-az"),
]  # fmt: skip


def rclone_tuned(w: Workload, chunk: int) -> tuple[dict[str, int], list[str]]:
    """rclone's flags for ``w`` by the rule of this module's docstring: its settings, and the flags."""
    n = len(w.sizes)
    if max(w.sizes) <= chunk:
        transfers = min(OUR_STORE_REQUESTS, n)
        settings = {"transfers": transfers, "concurrency": 1, "cutoff": RCLONE_DEFAULTS["cutoff"]}
        return settings, ["--transfers", str(transfers), "--checkers", str(transfers)]
    flows = MAX_CONNECTIONS_PER_HOP
    transfers = min(flows, n)
    flags = ["--transfers", str(transfers), "--checkers", str(transfers)]
    if transfers >= flows:
        return {"transfers": transfers, "concurrency": 1, "cutoff": RCLONE_DEFAULTS["cutoff"]}, flags
    concurrency = math.ceil(flows / transfers)
    size = f"{chunk // MiB}M"
    flags += [
        "--s3-upload-concurrency",
        str(concurrency),
        "--s3-chunk-size",
        size,
        "--s3-upload-cutoff",
        size,
    ]
    return {"transfers": transfers, "concurrency": concurrency, "cutoff": chunk}, flags


class Contenders:
    def __init__(self, bed: Testbed, work: Path) -> None:
        self.bed = bed
        self.work = work
        self.chunk = bed.args.chunk_mib * MiB
        self.airflow_home = work / "airflow-home"
        self.run_timeout = 0.0

    def run(self, contender: str, prefix: str, dest: Destination, w: Workload, run: Run) -> str:
        """Run one contender; returns the bucket it wrote."""
        from airflow_skyplane.transfer.job import Hop, Overlay, overlay_from_plan

        if contender == "ours":
            overlay = overlay_from_plan(
                self.bed.plans[dest.region], max_connections_per_hop=MAX_CONNECTIONS_PER_HOP
            )
            return self.run_ours(prefix, dest, overlay, run)
        if contender == "ours-direct":
            overlay = Overlay(SRC, dest.region, [Hop(SRC, dest.region, MAX_CONNECTIONS_PER_HOP)],
                              {SRC: SRC, dest.region: dest.region})  # fmt: skip
            return self.run_ours(prefix, dest, overlay, run)
        if contender == "rclone-default":
            return self.run_rclone(prefix, dest, run, [])
        if contender == "rclone-tuned":
            return self.run_rclone(prefix, dest, run, rclone_tuned(w, self.chunk)[1])
        return self.run_airflow(prefix, dest, run)

    # -- ours ------------------------------------------------------------------------------------
    def run_ours(self, prefix: str, dest: Destination, overlay: Any, run: Run) -> str:
        from airflow_skyplane.storage.azure_blob import AzureBlobStore
        from airflow_skyplane.storage.gcs import GCSStore
        from airflow_skyplane.storage.s3 import S3Store
        from airflow_skyplane.testing.sky import GCP_PROJECT
        from airflow_skyplane.testing.wan_relays import local_relays as LocalRelayBackend
        from airflow_skyplane.transfer.job import TransferJob

        from .testbed import client

        bucket = self.bed.new_bucket(dest, run.contender)
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
        backend = LocalRelayBackend(self.work / f"fleet-{tag}", wan=self.bed.wan)
        job = TransferJob(
            S3Store(self.bed.src_s3, BUCKET), prefix, dst_store, prefix, backend=backend,
            workdir=self.work / f"job-{tag}", overlay=overlay, source_spec=src_spec,
            destination_spec=dst_spec, timeout=self.run_timeout, chunk_size=self.chunk,
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
        return bucket

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

    def run_airflow(self, prefix: str, dest: Destination, run: Run) -> str:
        bucket = self.bed.new_bucket(dest, run.contender)
        url = self.bed.url_from(SRC, dest)
        dag_id = f"peers_{self.bed.counter:03d}"
        folder = prefix.rstrip("/")  # the operator strips f"{s3_prefix}/" from every key it lists
        if dest.kind == "gs":
            # GCSHook.upload gives each request 60 s, sized for real links; ours run at
            # --mbit-per-gbps / 1000 of the measured rates, so a request is given that much longer
            # (the same request on the real link would take the same share of its 60 s)
            timeout = round(60 * 1000 / self.bed.k)
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
            self.bed.wan.command(SRC, [airflow, "dags", "test", dag_id]), env=env, capture_output=True,
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
        return bucket

    # -- rclone ------------------------------------------------------------------------------------
    def run_rclone(self, prefix: str, dest: Destination, run: Run, flags: list[str]) -> str:
        bucket = self.bed.new_bucket(dest, run.contender)
        env = rclone_env(
            self.work, {"SRC": f"http://127.0.0.1:{PORTS['s3']}", "DST": self.bed.url_from(SRC, dest)}
        )
        argv = ["rclone", "copy", f"SRC:{BUCKET}/{prefix}", f"DST:{bucket}/{prefix}", *flags]
        t0 = time.monotonic()
        done = subprocess.run(
            self.bed.wan.command(SRC, argv), env=env, capture_output=True, text=True,
            timeout=self.run_timeout, check=False,
        )  # fmt: skip
        run.wall_s = time.monotonic() - t0
        if done.returncode:
            raise RuntimeError(f"rclone failed ({done.returncode}): {done.stderr[-1500:]}")
        run.measured_s, run.timed = run.wall_s, "rclone copy wall time"
        run.extra = {"argv": argv[:2] + flags}
        return bucket

    # -- prediction, for sizing --------------------------------------------------------------------
    def predict_s(self, contender: str, dest: Destination, w: Workload) -> float:
        """Seconds a contender should need on ``w``, from the shaped links and the measured ceilings."""
        bed = self.bed
        direct = bed.rate(SRC, dest.region)
        cap = bed.cap(SRC, dest.region)
        write_ceiling = bed.ceiling.get(f"{dest.kind}_write_mbit") or 1e9
        n, size = len(w.sizes), w.bytes
        if contender == "ours":
            mbit, streams, per = bed.plans[dest.region].throughput_gbps * 1000, 64, 0.0
        elif contender == "ours-direct":
            mbit, streams, per = direct, 64, 0.0
        elif contender.startswith("rclone"):
            s = rclone_tuned(w, self.chunk)[0] if contender == "rclone-tuned" else RCLONE_DEFAULTS
            parts = s["concurrency"] if max(w.sizes) >= s["cutoff"] else 1
            streams = min(s["transfers"], n) * parts
            mbit, per = min(direct, streams * cap), RCLONE_PER_OBJECT_S * streams / min(s["transfers"], n)
        else:  # Airflow's operators copy one object after the other, over one connection
            mbit, streams, per = cap, 1, AIRFLOW_PER_OBJECT_S
        mbit = min(mbit, write_ceiling)
        # a parallel copier of small objects is bound by the stores' requests per second, not bytes
        per_s = [
            bed.ceiling.get(f"{dest.kind}_small_write_per_s") or 0.0,
            bed.ceiling.get("s3_small_read_per_s") or 0.0,
        ]
        requests_s = n / min(per_s) if streams > 1 and min(per_s) > 0 else 0.0
        return max(size * 8 / (mbit * 1e6), requests_s) + n * per / streams + 3.0


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
