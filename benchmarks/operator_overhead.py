"""Fixed overhead of one transfer: SkyplaneTransferOperator.execute on a single 1 KiB object.

What it costs to inventory, plan (the MILP), provision the fleet (gateway processes, TLS
certificates, programs), move one tiny object, verify it and tear everything down, on the local
relay backend. Two cases: local folders (no emulator in the way) and S3 -> Azure Blob on the
emulated sky (what the connection round trips add). Each is run ``--runs`` times; the last line is
one JSON object: median and max seconds per case, the planner's share, and the target (<= 3 s).

    .venv/bin/python benchmarks/operator_overhead.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="skyplane-overhead-") as tmp:
        work = Path(tmp)
        os.environ["AIRFLOW_HOME"] = str(work / "airflow-home")
        os.environ["AIRFLOW__SKYPLANE__STATE_DIR"] = str(work / "fleets")
        import logging

        logging.disable(logging.INFO)
        from airflow_skyplane.operators.plan_files import read_plans
        from airflow_skyplane.operators.transfer import SkyplaneTransferOperator
        from airflow_skyplane.testing.sky import EmulatedSky, patched_environ

        def measure(source: str, destination: str, n: int) -> tuple[float, float]:
            op = SkyplaneTransferOperator(
                task_id=f"tiny{n}", source=source, destination=destination,
                source_region="aws:us-east-1", destination_region="azure:westeurope",
            )  # fmt: skip
            t0 = time.perf_counter()
            summary = op.execute(context={})
            seconds = time.perf_counter() - t0
            assert summary["objects"] == 1 and summary["bytes"] == 1024, summary
            plan = read_plans(summary)["destinations"][destination]["plan"]  # the plan file, whole
            return seconds, plan["solve_seconds"]

        results = {}
        src_dir = work / "src"
        src_dir.mkdir()
        (src_dir / "tiny.bin").write_bytes(os.urandom(1024))
        local = []
        for n in range(args.runs):
            dst_dir = work / f"dst{n}"
            dst_dir.mkdir()
            local.append(measure(f"file://{src_dir}", f"file://{dst_dir}", n))
        results["local_folders"] = local
        with EmulatedSky(work / "sky") as sky, patched_environ(sky.env()):
            src = sky.make_bucket("s3")
            sky.open(src).put("in/tiny.bin", os.urandom(1024))
            results["s3_to_azure_emulated"] = [
                measure(f"{src}/in/", sky.make_bucket("az"), n) for n in range(args.runs)
            ]
    out = {
        case: {
            "median_s": round(statistics.median(s for s, _ in runs), 3),
            "max_s": round(max(s for s, _ in runs), 3),
            "plan_solve_median_s": round(statistics.median(p for _, p in runs), 3),
            "runs": len(runs),
        }
        for case, runs in results.items()
    }
    out["target_s"] = 3.0
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
