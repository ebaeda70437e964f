"""Multicast figures: one read of the source through the plan's tree, against a copy per destination.

The planner makes the multicast plan from ``--source`` to ``--destinations`` (default model); the
tree the data plane runs is made from it (``transfer/tree.py``) and run with real gateway processes
on loopback (the local relay backend, every gateway of the tree a process of this machine, named by
its region) between local stores on a tmpfs (``/dev/shm`` when present). The same objects (one large
random object, a large CSV-like text, many small objects: ``--mib`` in all) then go to the same
destinations as one direct transfer per destination, all at once with the same total connections
out of the source, and one after another. Every destination is checked byte for byte.

Figures (last line, JSON):

* ``source_egress_to_data``: bytes that left the source's gateway (every hop out of it, on the wire)
  over the data's bytes; the copies per destination send ``N`` times the data (less what lz4 saves);
* ``source_read_to_data``: bytes read from the source store over the data;
* ``wall_s`` of the tree, of the copies at once and one after another, and ``tree_vs_at_once``;
* ``egress_cost_usd``: the plan's prediction (its egress $/GB times the data), the tree's hops each
  carrying the data once at their prices, and as measured: the bytes each hop carried on the wire
  at its price.

On loopback the CPU of this machine, not a WAN link, bounds every contender, so wall times compare
the work each does (one read and seal per chunk against ``N``), not the network.

    python benchmarks/multicast.py [--mib 256] [--source aws:us-east-1]
        [--destinations aws:eu-west-1,aws:eu-central-1,gcp:asia-east1-a]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

from airflow_skyplane.compute.local import LocalRelayBackend
from airflow_skyplane.planner import NetworkModel, plan_transfer
from airflow_skyplane.planner.regions import REGIONS, egress_price_per_gb
from airflow_skyplane.storage.local import LocalStore
from airflow_skyplane.testing.digest import tree_digest
from airflow_skyplane.transfer.job import Overlay, TransferJob
from airflow_skyplane.transfer.multicast import MulticastJob
from airflow_skyplane.transfer.tree import tree_from_plan

MiB = 1024 * 1024


def fill(root: Path, mib: int) -> int:
    """A quarter random, a quarter CSV-like text, half small objects of 4-64 KiB."""
    rng = random.Random(3)
    (root / "model").mkdir(parents=True)
    (root / "table").mkdir()
    (root / "small").mkdir()
    with (root / "model" / "weights.bin").open("wb") as f:
        for _ in range(mib // 4):
            f.write(os.urandom(MiB))
    rows = "".join(f"{n},2026-11-{1 + n % 28:02d},user{rng.randrange(10**5)},view\n" for n in range(40_000))
    block = rows.encode()[:MiB]
    with (root / "table" / "events.csv").open("wb") as f:
        for _ in range(mib // 4):
            f.write(block)
    left, n = mib // 2 * MiB, 0
    while left > 0:
        size = min(left, rng.randrange(4, 64) * 1024)
        (root / "small" / f"obj-{n:05d}.bin").write_bytes(rng.randbytes(size))
        left, n = left - size, n + 1
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def price(a: str, b: str) -> float:
    return egress_price_per_gb(REGIONS[a], REGIONS[b])


def fresh(base: Path, names: list[str]) -> dict[str, Path]:
    out = {}
    for name in names:
        folder = base / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        out[name] = folder
    return out


def run_tree(src: Path, base: Path, plan_tree: object, work: Path) -> dict[str, object]:
    tree = plan_tree
    dests = fresh(base, list(tree.destinations))  # type: ignore[attr-defined]
    backend = LocalRelayBackend(work / "tree-fleet")
    job = MulticastJob(
        LocalStore(src), "", {gid: (LocalStore(folder), "") for gid, folder in dests.items()},
        backend=backend, workdir=work / "tree-job", overlay=tree,  # type: ignore[arg-type]
    )  # fmt: skip
    started = time.monotonic()
    result = job.run()
    wall = time.monotonic() - started
    exact = all(tree_digest(folder) == tree_digest(src) for folder in dests.values())
    return {"wall_s": wall, "result": result, "byte_exact": exact and not result.failed}


def run_copies(src: Path, base: Path, names: list[str], connections: int, work: Path, at_once: bool) -> dict:
    dests = fresh(base, names)
    jobs = [
        TransferJob(
            LocalStore(src),
            "",
            LocalStore(folder),
            "",
            backend=LocalRelayBackend(work / f"copy-fleet-{n}"),
            workdir=work / f"copy-job-{n}",
            overlay=Overlay.direct(connections),
        )  # fmt: skip
        for n, folder in enumerate(dests.values())
    ]
    results: list[object] = [None] * len(jobs)
    errors: list[BaseException] = []

    def one(n: int) -> None:
        try:
            results[n] = jobs[n].run()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    started = time.monotonic()
    if at_once:
        threads = [threading.Thread(target=one, args=(n,)) for n in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for n in range(len(jobs)):
            one(n)
    wall = time.monotonic() - started
    if errors:
        raise errors[0]
    exact = all(tree_digest(folder) == tree_digest(src) for folder in dests.values())
    egress = sum(r.wire_bytes for r in results)  # type: ignore[attr-defined]
    return {"wall_s": wall, "source_egress_bytes": egress, "byte_exact": exact}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="data in MiB (default 256)")
    parser.add_argument("--source", default="aws:us-east-1")
    parser.add_argument("--destinations", default="aws:eu-west-1,aws:eu-central-1,gcp:asia-east1-a")
    args = parser.parse_args()
    destinations = args.destinations.split(",")
    load_start = [round(x, 2) for x in os.getloadavg()]
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="skyplane-multicast-", dir=shm if shm.is_dir() else None))
    try:
        src = base / "src"
        data = fill(src, args.mib)
        plan = plan_transfer(NetworkModel.default(), args.source, destinations, size_gb=data / 1e9)
        tree = tree_from_plan(plan, max_connections_per_hop=8)
        regions = dict(tree.regions)
        tree.regions = {}  # every gateway a process of this machine, on loopback
        print("\n".join(tree.describe()), flush=True)
        work = base / "work"
        multi = run_tree(src, base / "tree", tree, work)
        result = multi["result"]
        out_conns = sum(h.connections for h in tree.hops_from(tree.source))
        per_copy = max(1, math.ceil(out_conns / len(tree.destinations)))
        names = list(tree.destinations)
        at_once = run_copies(src, base / "copies", names, per_copy, work, at_once=True)
        print(json.dumps({"copies_at_once": {k: v for k, v in at_once.items()}}), flush=True)
        one_by_one = run_copies(src, base / "copies", names, per_copy, work, at_once=False)
        print(json.dumps({"copies_one_after_another": one_by_one}), flush=True)
        edges = result.edge_bytes  # type: ignore[attr-defined]
        measured = sum(
            n / 1e9 * price(a, b) for (a, b), n in edges.items() if regions.get(a) and regions.get(b)
        )
        tree_hops = {(h.src, h.dst) for h in tree.hops}
        summary = {
            "data_bytes": data,
            "destinations": names,
            "tree": tree.describe(),
            "source_read_to_data": round(result.source_read_bytes / data, 4),  # type: ignore[attr-defined]
            "source_egress_to_data": round(result.source_egress_bytes / data, 4),  # type: ignore[attr-defined]
            "copies_source_egress_to_data": round(at_once["source_egress_bytes"] / data, 4),
            "edge_bytes": {f"{a} -> {b}": n for (a, b), n in sorted(edges.items())},
            "wall_s": {
                "tree": round(multi["wall_s"], 2),  # type: ignore[arg-type]
                "copies_at_once": round(at_once["wall_s"], 2),
                "copies_one_after_another": round(one_by_one["wall_s"], 2),
            },
            "tree_vs_at_once": round(multi["wall_s"] / at_once["wall_s"], 3),  # type: ignore[operator]
            "connections_out_of_source": {"tree": out_conns, "copies_at_once": per_copy * len(names)},
            "egress_cost_usd": {
                "plan_predicted": round(plan.egress_cost_per_gb_usd * data / 1e9, 6),
                "tree_hops_at_data": round(sum(data / 1e9 * price(a, b) for a, b in tree_hops), 6),
                "measured_wire": round(measured, 6),
            },
            "byte_exact": bool(multi["byte_exact"] and at_once["byte_exact"] and one_by_one["byte_exact"]),
            "link": "loopback (local relays; the CPU, not a WAN link, is the bound)",
            "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
            "cpus": os.cpu_count(),
        }
        print(json.dumps(summary))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
