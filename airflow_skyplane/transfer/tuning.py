"""The data plane's settings, derived from the plan, the work and the machines: nothing to tune by hand.

One function, :func:`tune` (:func:`tune_overlay` over an overlay's hops), from

* the overlay's hops: connections (the planner's, up to 64 per edge), planned Gbps, round-trip
  time (from the region catalog when the gateways sit in known regions);
* the work: total bytes, object count, largest object, the destination's minimum part size;
* the machines: how many gateways share this machine's CPUs (local relays), and the user's upper
  bound on a gateway's memory (``max_inflight_mb``),

to the chunk size, the connections per hop, the window of frames in flight per connection, each
gateway's byte budget and worker processes. The reasoning, term by term:

* **Chunk size from the work.** A transfer is whole chunks, and a connection whose last chunk ends
  early idles while the others finish: with ``k`` chunks per connection the last round costs about
  ``1 / (2k)`` of the time. So the chunk size aims at :data:`CHUNKS_PER_CONNECTION` chunks per
  connection of the source's hops, within 1-64 MiB (whole MiB), and never below the destination's
  minimum part size for striped objects (5 MiB on S3; :mod:`.chunks` raises parts to it). Smaller
  chunks also keep each frame's time on a connection, and so the memory in flight, small.
* **Connections from the plan**, but no more than there are chunks to carry.
* **Window**: a connection keeps two frames in flight (one on the wire, the next queued behind it) plus
  as many as the acknowledgement's round trip (RTT and the write at the next hop) lasts in frame
  times, so the connection never waits for an ACK.
* **Budget, each byte counted once**: per hop, what is in flight is (planned bytes/s) x (the time a
  frame spends in flight) = connections x chunk + planned bytes/s x (RTT + write time). A reading
  gateway holds, per connection, the frame on the wire and the next one being read and sealed; a
  relay holds the frames it receives (passed on as they arrive) and those sent but not yet
  acknowledged; a writing gateway holds, per connection, a frame and its decoded copy. The user's
  ``max_inflight_mb`` is an upper bound, as is each gateway's own memory (the gateway caps it at
  half its machine's available memory when it starts).
* **Small objects per batch from the destination's request rate.** The frames in flight into the
  writing gateway (its connections x the window) hold at most about one second of the object writes
  the destination takes on a prefix before it throttles (``ObjectStore.write_rate``: 3,500/s on S3,
  about 1,000/s on a new GCS bucket, 20,000/s on an Azure account), within
  [:data:`MIN_BATCH_OBJECTS`, :data:`MAX_BATCH_OBJECTS`]: a burst the store would answer with
  503 SlowDown or 429 is not sent in the first place, and what throttling remains is absorbed by
  the SDK's retries (adaptive on S3).
* **Workers**: a relay VM runs one worker process per CPU (the gateway's default); gateways that share
  one machine (local relays) get a fair share of its CPUs each.

Pure: no I/O, no Airflow; the unit tests run it over many shapes.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

from airflow_skyplane.transfer.chunks import MAX_PARTS, part_size_for
from airflow_skyplane.transfer.overlay import Overlay

MiB = 1024 * 1024
MIN_CHUNK = 1 * MiB
MAX_CHUNK = 64 * MiB
#: chunks each connection of the source's hops carries, when the data allows
CHUNKS_PER_CONNECTION = 4
#: the largest plaintext of a batch of small objects (chunks.batch_small)
BATCH_BYTES = 4 * MiB
#: the most and fewest small objects in one batch (chunks.batch_small)
MAX_BATCH_OBJECTS, MIN_BATCH_OBJECTS = 256, 16
#: what a write at the next hop adds to an acknowledgement's round trip
WRITE_S = 0.05
#: round trip assumed for a hop whose regions are unknown (loopback, hand-made overlays)
DEFAULT_RTT_S = 0.05
MIN_WINDOW, MAX_WINDOW = 2, 16
#: the program's limits on a gateway's budget
MIN_BUDGET_MB, MAX_BUDGET_MB = 8, 4096


@dataclass(frozen=True)
class HopSpec:
    """One overlay hop as the tuning sees it."""

    src: str
    dst: str
    connections: int
    gbps: float | None = None  # planned rate; None when the overlay was not planned
    rtt_s: float | None = None  # None: unknown (DEFAULT_RTT_S)


@dataclass(frozen=True)
class Work:
    """What is to be sent."""

    bytes: int
    objects: int
    largest: int


@dataclass(frozen=True)
class Tuning:
    chunk_size: int
    connections: dict[tuple[str, str], int]
    window: int
    budget_mb: dict[str, int]
    workers: dict[str, int | None]
    notes: dict[str, float] = field(default_factory=dict)
    #: small objects per batch (:func:`batch_objects_for`)
    batch_objects: int = MAX_BATCH_OBJECTS

    def summary(self) -> dict[str, object]:
        """The figures, for logs and benchmarks."""
        return {
            "chunk_mib": round(self.chunk_size / MiB, 2),
            "connections": {f"{a}->{b}": c for (a, b), c in self.connections.items()},
            "window": self.window,
            "budget_mb": dict(self.budget_mb),
            "workers": dict(self.workers),
            "batch_objects": self.batch_objects,
            **self.notes,
        }


def chunk_size_for(work: Work, streams: int, *, min_part_size: int = 1) -> int:
    """Bytes per chunk: :data:`CHUNKS_PER_CONNECTION` chunks per stream where the data allows,
    within [:data:`MIN_CHUNK`, :data:`MAX_CHUNK`], in whole MiB."""
    streams = max(1, streams)
    ideal = work.bytes / (streams * CHUNKS_PER_CONNECTION)
    size = max(MIN_CHUNK, min(MAX_CHUNK, ideal))
    size = max(MIN_CHUNK, int(size // MiB) * MiB)
    # a striped object's parts are at least the destination's minimum: a chunk just below it would only
    # make objects between the two sizes multipart for nothing
    if min_part_size > size and size * 2 > min_part_size:
        size = int(math.ceil(min_part_size / MiB) * MiB)
    return size


def frames(work: Work, chunk: int, min_part_size: int) -> int:
    """At most how many frames the work makes: one per chunk of its bytes, or per object (small ones
    travel in batches, so there are fewer)."""
    part = max(chunk, min_part_size)
    return max(1, math.ceil(work.bytes / part), work.objects)


def window_for(chunk: int, gbps: float | None, connections: int, rtt_s: float | None) -> int:
    """Frames in flight per connection: two, plus the ACK's round trip in frame times."""
    if not gbps or gbps <= 0:
        return 4
    per_connection = gbps * 1e9 / 8 / max(1, connections)  # bytes/s
    frame_s = chunk / per_connection
    latency = (rtt_s if rtt_s is not None else DEFAULT_RTT_S) + WRITE_S
    return max(MIN_WINDOW, min(MAX_WINDOW, 2 + math.ceil(latency / frame_s)))


def batch_objects_for(write_rate: float | None, frames_in_flight: int) -> int:
    """Small objects per batch, so that ``frames_in_flight`` batches into the writing gateway hold
    about one second of the destination's ``write_rate`` (object writes per second; None: no known
    limit)."""
    if not write_rate:
        return MAX_BATCH_OBJECTS
    return max(MIN_BATCH_OBJECTS, min(MAX_BATCH_OBJECTS, int(write_rate // max(1, frames_in_flight))))


def _in_flight(hop: HopSpec) -> float:
    """Bytes a hop has in flight beyond one frame per connection: planned bytes/s x (RTT + write)."""
    if not hop.gbps:
        return 0.0
    rtt = hop.rtt_s if hop.rtt_s is not None else DEFAULT_RTT_S
    return hop.gbps * 1e9 / 8 * (rtt + WRITE_S)


def budget_for(
    gateway: str,
    hops: Sequence[HopSpec],
    source: str,
    destination: str | Collection[str],
    frame: int,
    window: int,
    forks: Collection[str] = (),
) -> float:
    """Bytes a gateway holds at most while every connection is busy (see the module's reasoning)."""
    into = [h for h in hops if h.dst == gateway]
    out = [h for h in hops if h.src == gateway]
    held = 0.0
    if gateway == source:
        held += 2 * frame * sum(h.connections for h in out)
        if gateway in forks:  # a forking source holds each frame until every branch has it
            held += frame * window * sum(h.connections for h in out) + sum(_in_flight(h) for h in out)
    elif out:
        # what every upstream connection may have in flight (its window), and one frame per
        # downstream connection being passed on, plus what the next hop has not acknowledged yet
        held += frame * (window * sum(h.connections for h in into) + sum(h.connections for h in out))
        held += sum(_in_flight(h) for h in out)
    if gateway == destination or (not isinstance(destination, str) and gateway in destination):
        held += 2 * max(frame, BATCH_BYTES) * sum(h.connections for h in into)
    return held


def workers_for(shared_cpus: int | None, gateways: int) -> int | None:
    """Worker processes per gateway: a fair share of a machine the gateways share, else the gateway's
    own default (None: one per CPU of its machine)."""
    if shared_cpus is None:
        return None
    return max(1, shared_cpus // max(1, gateways))


def tune(
    hops: Sequence[HopSpec],
    source: str,
    destination: str | Collection[str],
    work: Work,
    *,
    chunk_size: int | None = None,
    min_part_size: int = 1,
    max_parts: int = MAX_PARTS,
    max_inflight_mb: int | None = None,
    shared_cpus: int | None = None,
    workers: int | None = None,
    write_rate: float | None = None,
    forks: Collection[str] = (),
) -> Tuning:
    """Every setting of the data plane for one transfer; ``chunk_size`` and ``workers`` given are kept
    as they are. ``write_rate``: the destination's object writes per second (``ObjectStore.write_rate``)."""
    streams = sum(h.connections for h in hops if h.src == source)
    chunk = chunk_size or chunk_size_for(work, streams, min_part_size=min_part_size)
    # the largest frame: a whole object up to the chunk size, else a part of the largest object (raised
    # to the minimum part size, and to fit max_parts)
    if work.largest <= chunk:
        frame = max(1, work.largest)
    else:
        frame = part_size_for(work.largest, chunk, min_part_size, max_parts)
    count = frames(work, chunk, min_part_size)
    connections = {(h.src, h.dst): max(1, min(h.connections, count)) for h in hops}
    tuned = [HopSpec(h.src, h.dst, connections[(h.src, h.dst)], h.gbps, h.rtt_s) for h in hops]
    windows = [window_for(frame, h.gbps, h.connections, h.rtt_s) for h in tuned]
    window = max(windows) if windows else 4
    gateways = sorted({h.src for h in hops} | {h.dst for h in hops})
    cap = min(MAX_BUDGET_MB, max_inflight_mb) if max_inflight_mb else MAX_BUDGET_MB
    budget = {}
    for gateway in gateways:
        wanted = math.ceil(budget_for(gateway, tuned, source, destination, frame, window, forks) / MiB)
        budget[gateway] = max(MIN_BUDGET_MB, min(cap, max(wanted, math.ceil(2 * frame / MiB))))
    worker_counts = {g: workers or workers_for(shared_cpus, len(gateways)) for g in gateways}
    # batches sized for the destination fed by the fewest connections (each of a multicast's writes alike)
    ends = {destination} if isinstance(destination, str) else set(destination)
    into_destination = min(sum(c for (_, b), c in connections.items() if b == end) for end in ends)
    return Tuning(
        batch_objects=batch_objects_for(write_rate, into_destination * window),
        chunk_size=chunk,
        connections=connections,
        window=window,
        budget_mb=budget,
        workers=worker_counts,
        notes={"frames": count, "largest_frame_mib": round(frame / MiB, 2)},
    )


def tune_overlay(
    overlay: Overlay,
    work: Work,
    *,
    chunk_size: int | None = None,
    min_part_size: int = 1,
    max_inflight_mb: int | None = None,
    shared_cpus: int | None = None,
    workers: int | None = None,
    write_rate: float | None = None,
) -> Tuning:
    """:func:`tune` for the hops of ``overlay``, each with the round trip between its gateways' regions."""
    hops = [
        HopSpec(h.src, h.dst, h.connections, h.gbps, rtt_between(overlay.regions, h.src, h.dst))
        for h in overlay.hops
    ]
    return tune(
        hops, overlay.source, overlay.destinations, work, chunk_size=chunk_size,
        min_part_size=min_part_size, max_inflight_mb=max_inflight_mb, shared_cpus=shared_cpus,
        workers=workers, write_rate=write_rate, forks=overlay.forks(),
    )  # fmt: skip


def tuned_overlay(overlay: Overlay, tuning: Tuning) -> Overlay:
    """``overlay`` with the connections ``tuning`` chose for each hop."""
    hops = [replace(h, connections=tuning.connections[(h.src, h.dst)]) for h in overlay.hops]
    return replace(overlay, hops=hops)


def rtt_between(regions: Mapping[str, str | None], src: str, dst: str) -> float | None:
    """The modelled round trip between two gateways' regions, in seconds; None when unknown."""
    from airflow_skyplane.planner.model import model_rtt_ms
    from airflow_skyplane.planner.regions import REGIONS

    a, b = regions.get(src), regions.get(dst)
    if not a or not b or a not in REGIONS or b not in REGIONS:
        return None
    return model_rtt_ms(REGIONS[a], REGIONS[b]) / 1000
