"""Emulated WAN: a planned overlay routes around a slow direct link, across shaped namespaces.

Three regions as namespaces; the direct link is 4x slower than each link of the two-hop path. The
planner, given those link rates, routes most of the flow through the relay, and the relay carries
that share of the chunks. Gateways run inside their regions' namespaces, started over SSH by
paramiko from an sshd in each namespace, as on cloud VMs. Needs root, ``ip``, ``tc`` and ``sshd``:
skipped with the reason otherwise.

The speedup is a figure of ``benchmarks/peers.py`` (overlay vs. forced direct, on a quiet machine);
here the times are printed and held to bounds only: the direct run takes at least what its shaped
link allows (load only slows it further), and the planned run takes less than that, which no
transfer over the direct link alone can do.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from airflow_skyplane.planner import NetworkModel, Region, plan_transfer
from airflow_skyplane.storage.local import LocalStore
from airflow_skyplane.testing.digest import tree_digest
from airflow_skyplane.testing.netns import EmulatedWAN, LinkSpec, list_namespaces
from airflow_skyplane.testing.wan_relays import local_relays as LocalRelayBackend
from airflow_skyplane.transfer.job import Hop, Overlay, TransferJob, overlay_from_plan

pytestmark = pytest.mark.root
MiB = 1024 * 1024
SRC, RELAY, DST = "aws:us-east-1", "aws:us-west-2", "aws:eu-west-1"


@pytest.mark.requires("netns", "sshd")
def test_planned_two_hop_transfer_routes_around_the_slow_direct_link(tmp_path: Path) -> None:
    direct_mbit, hop_mbit = 25.0, 100.0
    links = {
        (SRC, DST): LinkSpec(direct_mbit),
        (SRC, RELAY): LinkSpec(hop_mbit),
        (RELAY, DST): LinkSpec(hop_mbit),
    }
    # the planner sees the same network, in Gbps per VM pair
    regions = [
        Region(SRC, 38.9, -77.0, "NA"),
        Region(RELAY, 45.8, -119.7, "NA"),
        Region(DST, 53.3, -6.3, "EU"),
    ]
    gbps = {(SRC, DST): direct_mbit / 1000, (SRC, RELAY): hop_mbit / 1000, (RELAY, DST): hop_mbit / 1000}
    model = NetworkModel.custom(
        regions,
        gbps,
        {pair: 0.02 for pair in gbps},
        {r.name: (10.0, 10.0) for r in regions},
        {r.name: 1.0 for r in regions},
    )
    plan = plan_transfer(model, SRC, DST, objective="throughput", max_vms_per_region=1)
    assert RELAY in plan.relays  # the plan uses the relay
    assert plan.throughput_gbps >= 3.9 * plan.direct_throughput_gbps

    src, dst_direct, dst_planned = (tmp_path / n for n in ("src", "direct", "planned"))
    for d in (src, dst_direct, dst_planned):
        d.mkdir()
    for i in range(6):
        (src / f"part-{i}.bin").write_bytes(os.urandom(4 * MiB))

    planned = overlay_from_plan(plan, max_connections_per_hop=8)
    before = set(list_namespaces())
    with EmulatedWAN([SRC, RELAY, DST], links=links) as wan:
        seconds, chunks = {}, {}
        for name, overlay, out in [
            ("direct", Overlay(SRC, DST, [Hop(SRC, DST, 8)], {SRC: SRC, DST: DST}), dst_direct),
            ("planned", planned, dst_planned),
        ]:
            # bootstrapped as on cloud VMs: sshd in each region, paramiko ships package, program, keys
            backend = LocalRelayBackend(tmp_path / f"fleet-{name}", wan=wan, via_ssh=True)
            job = TransferJob(
                LocalStore(src), "", LocalStore(out), "", backend=backend, workdir=tmp_path / f"job-{name}",
                overlay=overlay, chunk_size=1 * MiB, compress="never", timeout=120,
            )  # fmt: skip
            result = job.run()
            assert backend.running() == []
            assert not list((tmp_path / f"fleet-{name}").glob("remote-*"))  # relays' folders removed
            seconds[name] = result.gateways[SRC]["seconds"]  # the source: from start to the last ACK
            chunks[name] = {gid: s["chunks_received"] for gid, s in result.gateways.items()}
        assert tree_digest(dst_direct) == tree_digest(src) == tree_digest(dst_planned)
    print(f"emulated WAN: direct {seconds['direct']:.2f} s, planned two-hop {seconds['planned']:.2f} s")
    # Bounds, not figures: the direct run cannot beat its shaped link (a busy machine only slows it
    # further), and the planned run does beat that link, which only bytes routed around it can do.
    floor_s = sum(p.stat().st_size for p in src.iterdir()) * 8 / (direct_mbit * 1e6)
    assert seconds["direct"] >= 0.9 * floor_s, (seconds, floor_s)
    assert seconds["planned"] < floor_s, (seconds, floor_s)
    assert set(chunks["direct"]) == {SRC, DST}  # forced direct: no relay started
    # the relay carried the share of the 24 chunks the plan gave its path, give or take two chunks
    relay_share = sum(h.weight for h in planned.hops if h.src == SRC and h.dst == RELAY) / sum(
        h.weight for h in planned.hops if h.src == SRC
    )
    assert relay_share >= 0.75
    assert abs(chunks["planned"][RELAY] - relay_share * 24) <= 2, (chunks, relay_share)
    assert chunks["planned"][DST] == 24 == chunks["direct"][DST]
    assert set(list_namespaces()) == before  # no namespace (and so no veth) left behind
