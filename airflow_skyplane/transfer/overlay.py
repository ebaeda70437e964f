"""The overlay of one transfer: named gateways and the hops between them.

:func:`overlay_from_plan` makes it from a unicast
:class:`~airflow_skyplane.planner.plan.TransferPlan`; :meth:`Overlay.direct` is the plain path from
the source's gateway to the destination's. Pure: no I/O, no Airflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_skyplane.exceptions import InvalidInputError

if TYPE_CHECKING:
    from airflow_skyplane.planner.plan import TransferPlan


@dataclass(frozen=True)
class Hop:
    """One overlay edge between two gateways, with its TCP connections and share of the flow."""

    src: str
    dst: str
    connections: int = 8
    weight: float = 1.0
    #: the planned rate (None: not planned); the data plane's buffers and windows are sized from it
    gbps: float | None = None


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

    def gateways(self) -> list[str]:
        """Gateway ids, each after every gateway it sends to (the order to start them in)."""
        nodes = {self.destination} | {h.src for h in self.hops} | {h.dst for h in self.hops}
        order: list[str] = []
        while len(order) < len(nodes):
            ready = sorted(
                n for n in nodes - set(order) if all(h.dst in order for h in self.hops if h.src == n)
            )
            if not ready:
                raise InvalidInputError(f"overlay hops form a cycle among {sorted(nodes - set(order))}")
            order.extend(ready)
        if self.source not in order or not self._reaches(self.source, self.destination):
            raise InvalidInputError(f"overlay has no path from {self.source!r} to {self.destination!r}")
        return order

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
    """The overlay of a unicast :class:`~airflow_skyplane.planner.plan.TransferPlan`.

    One gateway per region of the plan (named by the region); each planned edge becomes a hop whose
    share of the flow is the edge's planned Gbps and whose connections are the planned ones (up to
    64 per edge; ``max_connections_per_hop`` caps them when given). Several VMs in a region are
    served by one gateway with their connections added up.
    """
    if len(plan.destinations) != 1:
        raise InvalidInputError(
            f"the plan has {len(plan.destinations)} destinations: run one transfer per destination "
            "(multicast through shared relays is not wired into the data plane yet)"
        )
    hops = []
    for edge in plan.edges:
        if edge.gbps <= 0:
            continue
        connections = max(1, edge.connections)
        if max_connections_per_hop:
            connections = min(connections, max_connections_per_hop)
        hops.append(Hop(edge.src, edge.dst, connections, edge.gbps, edge.gbps))
    regions: dict[str, str | None] = {name: name for name in plan.relays}
    return Overlay(plan.source, plan.destinations[0], hops, regions)
