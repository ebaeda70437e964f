"""The overlay of a multicast transfer: a tree from one source to several destinations.

The planner's multicast plan (:mod:`airflow_skyplane.planner.milp`) is a set of edges whose flow is
paid once: a shared edge carries the data once for every destination behind it. The data plane
needs more than edges: each gateway must know which destinations the frames it receives serve, and
down which next hops to copy them. :func:`tree_from_plan` settles that, gateway by gateway from the
source:

* every gateway *serves* a set of destinations (the source serves all; a destination serves itself,
  and those it forwards to);
* at each gateway, the destinations it serves (but itself) are split into **branches**: a branch is
  led by the next hop that reaches most of them (ties: the faster edge), and it takes every
  destination that hop reaches; other next hops that reach all of the branch's destinations join it
  as alternatives when they are relays (the frames split between them by their planned Gbps, as in
  a unicast overlay);
* a gateway fed by several upstream gateways serves one set, the same from each of them.

So each frame is read once at the source, crosses each edge of the tree once, and is copied where
the tree branches. A planned edge the tree cannot use without sending a destination the same bytes
twice is left out (its flow then goes over the branch's other hops). Pure: no I/O, no Airflow.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.transfer.overlay import Hop, Overlay, planned_connections

if TYPE_CHECKING:
    from airflow_skyplane.planner.plan import PlanEdge, TransferPlan


@dataclass
class MulticastOverlay(Overlay):
    """An overlay with several writing gateways; each hop is in the branch named by the destinations
    it leads to. ``destination`` is the first of ``targets``, for what reads one."""

    targets: list[str] = field(default_factory=list)
    #: gateway -> the destinations the frames it receives serve
    serves: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def destinations(self) -> list[str]:
        return list(self.targets)

    def downstream(self, gateway_id: str) -> tuple[str, ...]:
        """The destinations a failure of ``gateway_id`` fails."""
        return self.serves.get(gateway_id, ())

    def branch_destinations(self, branch: str) -> tuple[str, ...]:
        return tuple(branch.split(",")) if branch else ()

    def describe(self) -> list[str]:
        """The tree as lines of text, each gateway with its branches (for logs and the dry run)."""
        lines = []
        for gid in reversed(self.gateways()):
            out = self.hops_from(gid)
            if not out:
                continue
            branches: dict[str, list[Hop]] = {}
            for hop in out:
                branches.setdefault(hop.branch, []).append(hop)
            fork = " (copies each chunk)" if len(branches) > 1 else ""
            lines.append(f"{gid}{fork}")
            for branch, hops in branches.items():
                via = ", ".join(f"{h.dst} ({h.connections} conns)" for h in hops)
                lines.append(f"  -> {via}  for {branch.replace(',', ', ')}")
        return lines


def branch_name(destinations: set[str] | tuple[str, ...]) -> str:
    return ",".join(sorted(destinations))


def tree(
    source: str,
    branches: dict[str, list[tuple[str, str, int]]],
    regions: dict[str, str | None] | None = None,
) -> MulticastOverlay:
    """A tree given by hand: ``branches[gateway]`` lists ``(next hop, branch, connections)``; the
    destinations are the gateways that send nowhere or are named in a branch. For tests and the
    benchmarks; plans go through :func:`tree_from_plan`."""
    hops = [
        Hop(src, dst, conns, 1.0, None, branch) for src, out in branches.items() for dst, branch, conns in out
    ]
    named = {d for out in branches.values() for _, b, _ in out for d in b.split(",")}
    targets = sorted(named)
    return _finish(source, targets, hops, regions or {})


def tree_from_plan(plan: TransferPlan, *, max_connections_per_hop: int | None = None) -> MulticastOverlay:
    """The multicast tree of ``plan`` (see the module's docs)."""
    edges: dict[tuple[str, str], PlanEdge] = {(e.src, e.dst): e for e in plan.edges if e.gbps > 0}
    out: dict[str, list[str]] = {}
    for src, dst in edges:
        out.setdefault(src, []).append(dst)
    targets = list(plan.destinations)

    def reach(start: str) -> set[str]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in out.get(todo.pop(), []):
                if nxt not in seen and nxt != plan.source:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen & set(targets)

    serves: dict[str, set[str]] = {plan.source: set(targets)}
    hops: list[Hop] = []
    todo = deque([plan.source])
    while todo:
        gid = todo.popleft()
        need = serves[gid] - {gid}
        # what each next hop could serve: what it reaches, or exactly what it already serves
        cover: dict[str, set[str]] = {}
        for nxt in out.get(gid, []):
            can = set(serves[nxt]) if nxt in serves and serves[nxt] <= need else reach(nxt) & need
            if nxt in serves and not serves[nxt] <= need:
                can = set()
            if can:
                cover[nxt] = can
        used: set[str] = set()
        while need:
            choices = [n for n in cover if n not in used and cover[n] & need]
            if not choices:
                raise InvalidInputError(
                    f"the multicast plan has no path from {gid} to {sorted(need)}: pass a plan made by "
                    "the planner for these destinations"
                )
            lead = max(choices, key=lambda n: (len(cover[n] & need), edges[(gid, n)].gbps, n))
            group = cover[lead] & need
            # alternatives are relays only: a destination of the group fed as an alternative would
            # have to forward to the others, and they to it (a cycle, or bytes sent twice)
            members = [lead] + sorted(
                n for n in choices if n != lead and group <= cover[n] and n not in serves and n not in targets
            )
            for member in members:
                if member in serves and serves[member] != group:
                    continue
                if member not in serves:
                    serves[member] = set(group)
                    todo.append(member)
                edge = edges[(gid, member)]
                conns = planned_connections(edge, max_connections_per_hop)
                hops.append(Hop(gid, member, conns, edge.gbps, edge.gbps, branch_name(group)))
                used.add(member)
            need -= group
    regions: dict[str, str | None] = {name: name for name in plan.relays}
    return _finish(plan.source, targets, hops, regions)


def _finish(
    source: str, targets: list[str], hops: list[Hop], regions: dict[str, str | None]
) -> MulticastOverlay:
    serves: dict[str, set[str]] = {d: {d} for d in targets}
    for hop in hops:
        serves.setdefault(hop.src, set()).update(hop.branch.split(","))
        serves.setdefault(hop.dst, set()).update(hop.branch.split(","))
    overlay = MulticastOverlay(
        source, targets[0], hops, regions, targets=targets,
        serves={g: tuple(sorted(d)) for g, d in serves.items()},
    )  # fmt: skip
    overlay.gateways()  # every destination reached, no cycle
    return overlay
