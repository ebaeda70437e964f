"""What the MILP is offered: the candidate relay regions of a request and the rates of its hops.

The full graph over 63 regions has ~3900 edges; to keep solves well under a second, only the
``candidate_relays`` best relay regions are offered to the MILP: a quarter each by the cheapest two-hop
egress through them, by the widest first hop from the source and by the widest last hop into a
destination, the rest by the widest (bottleneck) path through them (``None`` offers all allowed
regions; ``benchmarks/planner.py`` checks on a sample that pruning loses nothing). Bottleneck bounds
tie often (many relays reach the same provider cap), hence the four views.

Rates: direct hops (source to a destination) at the model's best estimate, the other hops at its
conservative rate when ``robust`` (:meth:`NetworkModel.lower_throughput`: measurements as measured,
model predictions at the lower quartile of the model's error on such pairs).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

from airflow_skyplane.exceptions import InfeasiblePlanError
from airflow_skyplane.planner.grid import CONNECTIONS_PER_MEASUREMENT
from airflow_skyplane.planner.milp import OverlayNetwork
from airflow_skyplane.planner.network import NetworkModel


class Candidates:
    """The relay ranking and the MILP's view of the network for one model and set of allowed regions."""

    def __init__(
        self,
        model: NetworkModel,
        allowed: Sequence[str],
        allowed_patterns: Sequence[str] | None,
        *,
        robust: bool,
        connections_per_vm: int,
        candidate_relays: int | None,
    ) -> None:
        self.model = model
        self.allowed = list(allowed)
        self.allowed_patterns = allowed_patterns
        self.robust = robust
        self.connections_per_vm = connections_per_vm
        self.candidate_relays = candidate_relays
        self._wide_cache: dict[tuple[str, bool], dict[str, float]] = {}

    def regions(self, src: str, dsts: list[str]) -> list[str]:
        """Source, destinations and the best-ranked relay regions offered to the MILP."""
        fixed = [src, *dsts]
        others = [r for r in self.allowed if r not in fixed]
        k = self.candidate_relays
        if k is None or len(others) <= k:
            return fixed + others
        wide_from = self.wide(src, True)
        score_tp: dict[str, float] = {}
        score_cost: dict[str, float] = {}
        near_src: dict[str, float] = {}
        near_dst: dict[str, float] = {}
        for r in others:
            best_tp, best_cost = 0.0, math.inf
            near_src[r] = self.edge_cap(src, r)
            near_dst[r] = max(self.edge_cap(r, d) for d in dsts)
            for d in dsts:
                wide_to = self.wide(d, False)
                best_tp = max(best_tp, min(wide_from.get(r, 0.0), wide_to.get(r, 0.0)))
                if self.model.throughput(src, r) > 0 and self.model.throughput(r, d) > 0:
                    best_cost = min(best_cost, self.model.cost_per_gb(src, r) + self.model.cost_per_gb(r, d))
            score_tp[r], score_cost[r] = best_tp, best_cost
        n_side = max(1, k // 4)
        rankings = [
            sorted(others, key=lambda r: (score_cost[r], -score_tp[r], r))[:n_side],
            sorted(others, key=lambda r: (-near_src[r], -score_tp[r], r))[:n_side],
            sorted(others, key=lambda r: (-near_dst[r], -score_tp[r], r))[:n_side],
            sorted(others, key=lambda r: (-score_tp[r], score_cost[r], r)),
        ]
        chosen: list[str] = []
        for r in (r for ranking in rankings for r in ranking):
            if r not in chosen:
                chosen.append(r)
            if len(chosen) >= k:
                break
        return fixed + chosen

    def network(self, nodes: list[str], src: str, dsts: list[str]) -> OverlayNetwork:
        """The MILP's view: direct hops (source to a destination) at the best estimate, the other hops
        at the conservative rate (``robust``) or the best estimate."""
        m = self.model
        rate = {}
        for u in nodes:
            for v in nodes:
                if u != v:
                    direct = u == src and v in dsts
                    rate[(u, v)] = (
                        m.throughput(u, v) if direct or not self.robust else m.lower_throughput(u, v)
                    )
        return OverlayNetwork(
            nodes=list(nodes),
            src=src,
            dsts=list(dsts),
            rate=rate,
            price={e: m.cost_per_gb(*e) for e in rate},
            vm_price_per_hour={v: m.vm_price_per_hour(v) for v in nodes},
            egress_cap={v: m.egress_cap(v) for v in nodes},
            ingress_cap={v: m.ingress_cap(v) for v in nodes},
        )

    def check_paths(self, src: str, dsts: list[str]) -> None:
        """Raise :class:`InfeasiblePlanError` when no route over the allowed regions reaches a destination."""
        wide = self.wide(src, True)
        for d in dsts:
            if wide.get(d, 0.0) <= 0.0:
                where = (
                    f"the regions allowed by {self.allowed_patterns}" if self.allowed_patterns else "the grid"
                )
                raise InfeasiblePlanError(
                    f"no path from {src!r} to {d!r} over {where}: every route has a hop with no measured "
                    f"throughput; allow more relay regions (--allowed-regions) or use a grid that measures "
                    f"these pairs",
                    limits=("allowed_regions",),
                )

    def capacity_matrix(self) -> tuple[dict[str, int], list[list[float]]]:
        """What one VM pair can move between allowed regions (the ranking's and path check's view),
        kept on the model: plans of one model share it."""
        key = ("hop-capacity", self.robust, self.connections_per_vm, tuple(self.allowed))
        got = self.model.memo.get(key)
        if got is None:
            m, scale = self.model, self.connections_per_vm / CONNECTIONS_PER_MEASUREMENT
            rate = m.lower_throughput if self.robust else m.throughput
            rows = [
                [
                    0.0 if u == v else min(rate(u, v) * scale, m.egress_cap(u), m.ingress_cap(v))
                    for v in self.allowed
                ]
                for u in self.allowed
            ]
            got = self.model.memo[key] = ({r: i for i, r in enumerate(self.allowed)}, rows)
        return got  # type: ignore[return-value]

    def edge_cap(self, u: str, v: str) -> float:
        index, rows = self.capacity_matrix()
        return rows[index[u]][index[v]]

    def wide(self, root: str, forward: bool) -> dict[str, float]:
        """Widest-path Gbps from ``root`` (``forward``) or into it, over the allowed regions."""
        if (root, forward) not in self._wide_cache:
            index, rows = self.capacity_matrix()
            width = widest(rows, index[root], forward)
            self._wide_cache[(root, forward)] = {r: width[i] for r, i in index.items() if r != root}
        return self._wide_cache[(root, forward)]


def widest(rows: list[list[float]], root: int, forward: bool) -> list[float]:
    """Bottleneck (widest-path) width from ``root`` to every node (``forward``) or to ``root`` from
    every node, over a capacity matrix (Dijkstra with min instead of +, max instead of min)."""
    n = len(rows)
    adjacent = rows if forward else [list(col) for col in zip(*rows, strict=True)]
    best = [0.0] * n
    best[root] = math.inf
    heap = [(-math.inf, root)]
    done = [False] * n
    while heap:
        neg, u = heapq.heappop(heap)
        if done[u]:
            continue
        done[u] = True
        width = -neg
        out = adjacent[u]
        for v in range(n):
            if not done[v]:
                w = min(width, out[v])
                if w > best[v]:
                    best[v] = w
                    heapq.heappush(heap, (-w, v))
    return best
