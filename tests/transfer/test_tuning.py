"""The data plane's settings derived from the plan, the work and the machines (transfer/tuning.py).

Pure functions: checked over many shapes of overlay and work, property by property.
"""

from __future__ import annotations

import math

import pytest

from airflow_skyplane.transfer import tuning
from airflow_skyplane.transfer.chunks import plan_chunks
from airflow_skyplane.transfer.tuning import HopSpec, Work, tune

MiB = 1024 * 1024
GiB = 1024 * MiB
S3_MIN_PART = 5 * MiB

DIRECT = [HopSpec("src", "dst", 64, 5.0, 0.08)]
RELAYED = [HopSpec("src", "relay", 64, 5.0, 0.06), HopSpec("relay", "dst", 64, 5.0, 0.04)]
TWO_RELAYS = [
    HopSpec("src", "r1", 32, 2.0, 0.05),
    HopSpec("r1", "r2", 32, 2.0, 0.05),
    HopSpec("r2", "dst", 32, 2.0, 0.05),
]
SPLIT = [
    HopSpec("src", "dst", 16, 1.0, 0.1),
    HopSpec("src", "relay", 48, 3.0, 0.03),
    HopSpec("relay", "dst", 48, 3.0, 0.05),
]
UNPLANNED = [HopSpec("src", "relay", 8), HopSpec("relay", "dst", 8)]
OVERLAYS = {
    "direct": DIRECT,
    "relayed": RELAYED,
    "two_relays": TWO_RELAYS,
    "split": SPLIT,
    "unplanned": UNPLANNED,
}
WORKS = {
    "one small object": Work(10_000, 1, 10_000),
    "10,000 small objects": Work(10_000 * 16 * 1024, 10_000, 16 * 1024),
    "1 GiB of mixed objects": Work(GiB, 70, 64 * MiB),
    "one 4 GiB object": Work(4 * GiB, 1, 4 * GiB),
    "100 GiB of 1 GiB objects": Work(100 * GiB, 100, GiB),
    "an empty object": Work(0, 1, 0),
    "2 TiB in one object": Work(2 * 1024 * GiB, 1, 2 * 1024 * GiB),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("work", WORKS)
@pytest.mark.parametrize("min_part", [1, S3_MIN_PART])
def test_every_setting_stays_within_its_bounds(overlay: str, work: str, min_part: int) -> None:
    hops, shape = OVERLAYS[overlay], WORKS[work]
    t = tune(hops, "src", "dst", shape, min_part_size=min_part)
    assert tuning.MIN_CHUNK <= t.chunk_size <= tuning.MAX_CHUNK and t.chunk_size % MiB == 0
    assert set(t.connections) == {(h.src, h.dst) for h in hops}
    for hop in hops:
        assert 1 <= t.connections[(hop.src, hop.dst)] <= hop.connections  # never more than planned
    assert tuning.MIN_WINDOW <= t.window <= tuning.MAX_WINDOW or (t.window == 4 and overlay == "unplanned")
    gateways = {h.src for h in hops} | {h.dst for h in hops}
    assert set(t.budget_mb) == gateways
    for gateway, mb in t.budget_mb.items():
        assert tuning.MIN_BUDGET_MB <= mb <= tuning.MAX_BUDGET_MB, (gateway, mb)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_large_transfer_gets_several_chunks_per_connection(overlay: str) -> None:
    hops = OVERLAYS[overlay]
    work = Work(8 * GiB, 500, 100 * MiB)  # 8 GiB over 64 streams: chunks of 32 MiB, under the 64 MiB cap
    t = tune(hops, "src", "dst", work)
    streams = sum(c for (src, _), c in t.connections.items() if src == "src")
    per_connection = work.bytes / t.chunk_size / streams
    assert per_connection >= tuning.CHUNKS_PER_CONNECTION
    if t.chunk_size < tuning.MAX_CHUNK:  # not more than needed, unless chunks reached their largest
        assert per_connection < 2 * tuning.CHUNKS_PER_CONNECTION + 1


def test_chunk_size_grows_with_the_work_and_stops_at_its_bounds() -> None:
    sizes = [tune(DIRECT, "src", "dst", Work(n * GiB, 100, GiB)).chunk_size for n in (1, 4, 16, 64, 256)]
    assert sizes == sorted(sizes) and sizes[-1] == tuning.MAX_CHUNK
    assert tune(DIRECT, "src", "dst", Work(MiB, 3, MiB)).chunk_size == tuning.MIN_CHUNK


def test_parts_are_never_below_the_destinations_minimum() -> None:
    for gib in (0.25, 0.5, 1, 2, 8):
        work = Work(int(gib * GiB), 64, 64 * MiB)
        t = tune(RELAYED, "src", "dst", work, min_part_size=S3_MIN_PART)
        parts = [c for c in plan_chunks([("big", 64 * MiB)], t.chunk_size, min_part_size=S3_MIN_PART)]
        assert all(c.length >= S3_MIN_PART for c in parts[:-1]), (gib, t.chunk_size)


def test_a_given_chunk_size_is_kept() -> None:
    assert (
        tune(RELAYED, "src", "dst", WORKS["1 GiB of mixed objects"], chunk_size=32 * MiB).chunk_size
        == 32 * MiB
    )


def test_connections_follow_the_plan_but_not_beyond_the_work() -> None:
    t = tune(RELAYED, "src", "dst", WORKS["1 GiB of mixed objects"])
    assert set(t.connections.values()) == {64}  # the planner's count, no cap of 16
    tiny = tune(RELAYED, "src", "dst", Work(3 * MiB, 3, MiB))
    assert set(tiny.connections.values()) == {3}  # three objects: three frames, three connections


def test_the_budget_follows_the_planned_rate_and_the_round_trip() -> None:
    work = Work(512 * MiB, 8, 64 * MiB)

    def relay_budget(gbps: float, rtt: float) -> int:
        hops = [HopSpec("src", "relay", 8, gbps, rtt), HopSpec("relay", "dst", 8, gbps, rtt)]
        return tune(hops, "src", "dst", work).budget_mb["relay"]

    assert relay_budget(1.0, 0.05) < relay_budget(10.0, 0.05) < relay_budget(10.0, 0.3)


def test_each_byte_is_counted_once_per_gateway() -> None:
    """The reader holds a frame and its sealed copy per connection, the writer a frame and its
    decoded copy, the relay what its upstream windows and downstream connections hold."""
    work = WORKS["100 GiB of 1 GiB objects"]
    t = tune(UNPLANNED, "src", "dst", work)
    frame = t.chunk_size
    assert t.budget_mb["src"] == math.ceil(2 * frame * 8 / MiB)
    assert t.budget_mb["dst"] == math.ceil(2 * frame * 8 / MiB)
    assert t.budget_mb["relay"] == math.ceil(frame * (t.window * 8 + 8) / MiB)


def test_max_inflight_mb_is_an_upper_bound() -> None:
    work = WORKS["100 GiB of 1 GiB objects"]
    free = tune(RELAYED, "src", "dst", work)
    capped = tune(RELAYED, "src", "dst", work, max_inflight_mb=256)
    assert max(free.budget_mb.values()) > 256
    assert all(mb <= 256 for mb in capped.budget_mb.values())
    assert capped.chunk_size == free.chunk_size


def test_the_window_covers_the_acknowledgements_round_trip() -> None:
    near = tuning.window_for(2 * MiB, 5.0, 64, 0.01)
    far = tuning.window_for(2 * MiB, 5.0, 64, 0.3)
    quick_frames = tuning.window_for(MiB, 40.0, 8, 0.3)
    assert near == tuning.MIN_WINDOW + 1 and near < far < quick_frames <= tuning.MAX_WINDOW
    assert tuning.window_for(8 * MiB, None, 64, 0.1) == 4  # unplanned: a fixed, modest window


def test_gateways_sharing_a_machine_share_its_cores() -> None:
    t = tune(RELAYED, "src", "dst", WORKS["1 GiB of mixed objects"], shared_cpus=8)
    assert t.workers == {"src": 2, "relay": 2, "dst": 2}
    assert tune(RELAYED, "src", "dst", WORKS["1 GiB of mixed objects"], shared_cpus=2).workers == {
        "src": 1, "relay": 1, "dst": 1,
    }  # fmt: skip
    assert set(tune(RELAYED, "src", "dst", WORKS["1 GiB of mixed objects"]).workers.values()) == {None}


def test_round_trips_come_from_the_region_catalog() -> None:
    regions = {"a": "aws:us-east-1", "b": "aws:eu-west-1", "c": None}
    rtt = tuning.rtt_between(regions, "a", "b")
    assert rtt is not None and 0.03 < rtt < 0.3  # an ocean between them
    assert tuning.rtt_between(regions, "a", "c") is None  # loopback: unknown
    assert tuning.rtt_between({"a": "nowhere:1", "b": "aws:eu-west-1"}, "a", "b") is None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_small_object_batches_hold_about_a_second_of_the_destinations_writes(overlay: str) -> None:
    hops = OVERLAYS[overlay]
    work = WORKS["10,000 small objects"]
    for rate in (1000.0, 3500.0, 20000.0):
        t = tune(hops, "src", "dst", work, write_rate=rate)
        frames_in = t.window * sum(c for (_, b), c in t.connections.items() if b == "dst")
        assert tuning.MIN_BATCH_OBJECTS <= t.batch_objects <= tuning.MAX_BATCH_OBJECTS
        # at most a second of writes in flight, unless the floor of a batch size holds more
        assert t.batch_objects * frames_in <= rate or t.batch_objects == tuning.MIN_BATCH_OBJECTS
        # and no smaller than that allows
        assert (t.batch_objects + 1) * frames_in > rate or t.batch_objects == tuning.MAX_BATCH_OBJECTS
    slower = tune(hops, "src", "dst", work, write_rate=1000.0).batch_objects
    assert slower <= tune(hops, "src", "dst", work, write_rate=20000.0).batch_objects
    # no known limit (local files): the largest batches
    assert tune(hops, "src", "dst", work).batch_objects == tuning.MAX_BATCH_OBJECTS


def test_the_batch_size_follows_the_connections_into_the_destination() -> None:
    few = tune([HopSpec("src", "dst", 4)], "src", "dst", WORKS["10,000 small objects"], write_rate=3500.0)
    many = tune([HopSpec("src", "dst", 32)], "src", "dst", WORKS["10,000 small objects"], write_rate=3500.0)
    assert few.window == many.window == 4  # unplanned hops: the default window
    assert few.batch_objects == 3500 // (4 * 4) and many.batch_objects == 3500 // (32 * 4)
