"""The overlay of one transfer: named gateways and the hops between them.

:func:`overlay_from_plan` makes it from a :class:`~airflow_skyplane.planner.plan.TransferPlan`: a unicast
plan gives an :class:`Overlay`, a multicast plan a tree (:class:`~.tree.MulticastOverlay`, made by
:mod:`.tree`); :meth:`Overlay.direct` is the plain path from the source's gateway to the
destination's. Pure: no I/O, no Airflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_skyplane.exceptions import InvalidInputError

if TYPE_CHECKING:
    from airflow_skyplane.planner.plan import PlanEdge, TransferPlan


@dataclass(frozen=True)
class Hop:
    """One overlay edge between two gateways, with its TCP connections and share of the flow."""

    src: str
    dst: str
    connections: int = 8
    weight: float = 1.0
    #: the planned rate (None: not planned); the data plane's buffers and windows are sized from it
    gbps: float | None = None
    #: the branch of a multicast tree the hop belongs to (its destinations; "" in a unicast overlay):
    #: a gateway sends every frame once down each branch, to one hop of the branch
    branch: str = ""


@dataclass
class Overlay:
    """Gateways (id -> region, ``None`` on plain loopback) and the hops between them."""

    source: str
    destination: str
    hops: list[Hop]
    regions: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def direct(cls, connections: int = 8) -> Overlay:
        return cls("source", "destination", [Hop("source", "destination", connections)])

    @property
    def destinations(self) -> list[str]:
        """The writing gateways (one in a unicast overlay)."""
        return [self.destination]

    def gateways(self) -> list[str]:
        """Gateway ids, each after every gateway it sends to (the order to start them in)."""
        nodes = set(self.destinations) | {h.src for h in self.hops} | {h.dst for h in self.hops}
        order: list[str] = []
        while len(order) < len(nodes):
            ready = sorted(
                n for n in nodes - set(order) if all(h.dst in order for h in self.hops if h.src == n)
            )
            if not ready:
                raise InvalidInputError(f"overlay hops form a cycle among {sorted(nodes - set(order))}")
            order.extend(ready)
        for destination in self.destinations:
            if self.source not in order or not self._reaches(self.source, destination):
                raise InvalidInputError(f"overlay has no path from {self.source!r} to {destination!r}")
        return order

    def forks(self) -> list[str]:
        """The gateways that copy each frame down several branches (none in a unicast overlay)."""
        return sorted(g for g in {h.src for h in self.hops} if len({h.branch for h in self.hops_from(g)}) > 1)

    def region(self, gateway_id: str) -> str | None:
        return self.regions.get(gateway_id)

    def hops_from(self, gateway_id: str) -> list[Hop]:
        return [h for h in self.hops if h.src == gateway_id]

    def senders_to(self, gateway_id: str) -> list[str]:
        """The gateways that dial ``gateway_id``."""
        return [h.src for h in self.hops if h.dst == gateway_id]

    def _reaches(self, a: str, b: str) -> bool:
        seen, todo = {a}, [a]
        while todo:
            n = todo.pop()
            for h in self.hops_from(n):
                if h.dst not in seen:
                    seen.add(h.dst)
                    todo.append(h.dst)
        return b in seen


def overlay_from_plan(plan: TransferPlan, *, max_connections_per_hop: int | None = None) -> Overlay:
    """The overlay of a :class:`~airflow_skyplane.planner.plan.TransferPlan`.

    One gateway per region of the plan (named by the region); each planned edge becomes a hop whose
    share of the flow is the edge's planned Gbps and whose connections are the planned ones (up to
    64 per edge; ``max_connections_per_hop`` caps them when given). Several VMs in a region are
    served by one gateway with their connections added up. A plan with several destinations gives
    the multicast tree of :func:`~.tree.tree_from_plan`.
    """
    if len(plan.destinations) > 1:
        from airflow_skyplane.transfer.tree import tree_from_plan

        return tree_from_plan(plan, max_connections_per_hop=max_connections_per_hop)
    hops = [
        Hop(edge.src, edge.dst, planned_connections(edge, max_connections_per_hop), edge.gbps, edge.gbps)
        for edge in plan.edges
        if edge.gbps > 0
    ]
    regions: dict[str, str | None] = {name: name for name in plan.relays}
    return Overlay(plan.source, plan.destinations[0], hops, regions)


def planned_connections(edge: PlanEdge, cap: int | None) -> int:
    """The connections of a planned edge, at least one, at most ``cap`` when given."""
    connections = max(1, edge.connections)
    return min(connections, cap) if cap else connections
