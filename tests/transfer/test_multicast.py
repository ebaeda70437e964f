"""Multicast in the data plane: one read of the source, copied where the tree branches.

Real gateway processes on loopback (the local relay backend), mutual TLS, real local stores: the
source gateway forks (one branch through a relay that forks again, one straight to a destination).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from airflow_skyplane.compute.local import LocalRelayBackend
from airflow_skyplane.storage.local import LocalStore
from airflow_skyplane.testing.digest import tree_digest
from airflow_skyplane.transfer.multicast import MulticastJob
from airflow_skyplane.transfer.overlay import overlay_from_plan
from airflow_skyplane.transfer.tree import tree

MiB = 1024 * 1024
#: the source sends each chunk once to the relay (for d1 and d2) and once to d3; the relay copies it
TREE = tree(
    "source",
    {
        "source": [("relay", "d1,d2", 4), ("d3", "d3", 4)],
        "relay": [("d1", "d1", 2), ("d2", "d2", 2)],
    },
)


def _fill(root: Path) -> int:
    rng = random.Random(7)
    (root / "big").mkdir(parents=True)
    (root / "small").mkdir()
    (root / "big" / "model.bin").write_bytes(os.urandom(18 * MiB))  # striped: a multipart upload
    text = "".join(f"{n},user{rng.randrange(10**5)},view\n" for n in range(60_000)).encode()
    (root / "big" / "table.csv").write_bytes(text)
    for i in range(30):
        (root / "small" / f"s-{i:02d}.txt").write_bytes(f"small {i} ".encode() * rng.randrange(1, 900))
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _job(tmp_path: Path, **kwargs) -> tuple[MulticastJob, LocalRelayBackend, dict[str, Path]]:
    src = tmp_path / "src"
    dests = {gid: tmp_path / gid for gid in ("d1", "d2", "d3")}
    for folder in dests.values():
        folder.mkdir()
    backend = LocalRelayBackend(tmp_path / "fleet")
    job = MulticastJob(
        LocalStore(src), "", {gid: (LocalStore(folder), "") for gid, folder in dests.items()},
        backend=backend, workdir=tmp_path / "job", overlay=TREE, chunk_size=2 * MiB, timeout=120,
        **kwargs,
    )  # fmt: skip
    return job, backend, dests


def test_three_destinations_through_a_fork_read_the_source_once(tmp_path: Path) -> None:
    total = _fill(tmp_path / "src")
    job, backend, dests = _job(tmp_path)
    result = job.run()
    assert backend.running() == []
    for gid, folder in dests.items():
        assert tree_digest(folder) == tree_digest(tmp_path / "src"), gid
        assert result.results[gid].objects == 32 and result.results[gid].bytes == total
        # every object verified (the striped one by size: a local store keeps no checksum of it)
        assert result.results[gid].checksums_verified + result.results[gid].unverified.count == 32
    assert result.failed == {}
    assert result.source_read_bytes == total  # every byte read once, for three destinations
    # the source sent each chunk once per branch (2 branches), the relay once per destination (2)
    to_relay, to_d3 = result.edge_bytes[("source", "relay")], result.edge_bytes[("source", "d3")]
    assert to_relay == to_d3 > 0
    assert result.edge_bytes[("relay", "d1")] == result.edge_bytes[("relay", "d2")] == to_relay
    assert result.source_egress_bytes == 2 * to_relay
    assert not (tmp_path / "job" / "transfer.key").exists()


def test_a_destination_whose_store_fails_fails_alone(tmp_path: Path) -> None:
    total = _fill(tmp_path / "src")
    broken = tmp_path / "not-a-folder"
    broken.write_bytes(b"a file where the store's root should be: every write fails")
    job, backend, dests = _job(tmp_path, destination_specs={"d2": {"scheme": "file", "root": str(broken)}})
    result = job.run()
    assert backend.running() == []
    assert sorted(result.failed) == ["d2"]
    assert "cannot open the store" in result.failed["d2"]
    assert list(result.gateways["relay"]["failed_branches"]) == ["d2"]  # the fork dropped d2 alone
    for gid in ("d1", "d3"):
        assert tree_digest(dests[gid]) == tree_digest(tmp_path / "src"), gid
        assert result.results[gid].bytes == total
    # nothing partial at the failed destination: no object, no upload left open
    assert [p for p in dests["d2"].rglob("*") if p.is_file()] == []
    assert list(LocalStore(dests["d2"]).list_multipart_uploads()) == []
    assert set(result.summary()["failed"]) == {LocalStore(dests["d2"]).uri}


def test_a_plan_whose_destinations_relay_for_each_other_becomes_a_tree() -> None:
    from airflow_skyplane.planner.plan import PlanEdge, TransferPlan

    # the planner's flows may cross between destinations both ways (asia -> europe and back)
    edges = [("us", "west", 4.9), ("west", "asia", 4.0), ("asia", "europe", 4.0), ("west", "europe", 0.9),
             ("europe", "asia", 0.9)]  # fmt: skip
    plan = TransferPlan(
        "us", ["europe", "asia", "west"], dict.fromkeys(["us", "west", "asia", "europe"], 1),
        [PlanEdge(a, b, g, 8) for a, b, g in edges], 4.9, 0.2, 0.01, 1.7, 0.3, "fastest", "highs", 0.1,
    )  # fmt: skip
    overlay = overlay_from_plan(plan)
    assert [(h.src, h.dst, h.branch) for h in overlay.hops] == [
        ("us", "west", "asia,europe,west"), ("west", "asia", "asia,europe"), ("asia", "europe", "europe"),
    ]  # fmt: skip


def test_overlay_from_a_multicast_plan_is_a_tree_that_shares_edges() -> None:
    from airflow_skyplane.planner import NetworkModel, plan_transfer

    destinations = ["aws:eu-west-1", "aws:eu-central-1", "gcp:asia-east1"]
    plan = plan_transfer(NetworkModel.default(), "aws:us-east-1", destinations, max_vms_per_region=2)
    overlay = overlay_from_plan(plan)
    assert sorted(overlay.destinations) == sorted(plan.destinations)
    overlay.gateways()  # a path to every destination, no cycle
    for hop in overlay.hops:  # every hop leads to the destinations of its branch, and to no other
        assert set(hop.branch.split(",")) == set(overlay.downstream(hop.dst))
    # each destination is fed by exactly one branch (it gets every chunk once)
    for gid in overlay.gateways():
        named = [d for b in {h.branch for h in overlay.hops_from(gid)} for d in b.split(",")]
        assert len(named) == len(set(named))
    planned = {(e.src, e.dst) for e in plan.edges if e.gbps > 0}
    assert {(h.src, h.dst) for h in overlay.hops} <= planned


def test_a_destination_region_lost_mid_transfer_fails_alone(tmp_path: Path) -> None:
    total = _fill(tmp_path / "src")
    # d3's gateway vanishes after its third chunk, as a relay VM whose region is lost
    job, backend, dests = _job(tmp_path, test_faults={"d3": {"exit_after_chunks": 3}})
    result = job.run()
    assert backend.running() == []
    assert sorted(result.failed) == ["d3"]
    assert list(result.gateways["source"]["failed_branches"]) == ["d3"]  # dropped at the source's fork
    for gid in ("d1", "d2"):
        assert tree_digest(dests[gid]) == tree_digest(tmp_path / "src"), gid
        assert result.results[gid].bytes == total
    # at d3: only whole objects (those completed before it was lost), and no upload left open
    for path in (p for p in dests["d3"].rglob("*") if p.is_file()):
        assert path.read_bytes() == (tmp_path / "src" / path.relative_to(dests["d3"])).read_bytes()
    assert list(LocalStore(dests["d3"]).list_multipart_uploads()) == []
