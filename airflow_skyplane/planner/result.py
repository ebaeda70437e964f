"""A solved MILP as a :class:`TransferPlan`, and the direct path it is compared with.

A plan names its rented VMs (gateways included), its hops with whole connections and what each hop's
rate rests on (``basis``: a grid, the measurement history with its age, or the model), its predicted
throughput and $/GB split into egress and VMs, and the direct path's throughput and $/GB on the same
VM counts.
"""

from __future__ import annotations

from airflow_skyplane.planner.grid import CONNECTIONS_PER_MEASUREMENT
from airflow_skyplane.planner.milp import OverlayNetwork, Solution
from airflow_skyplane.planner.network import NetworkModel
from airflow_skyplane.planner.plan import PlanEdge, TransferPlan


def to_plan(
    model: NetworkModel,
    sol: Solution,
    net: OverlayNetwork,
    *,
    objective: str,
    size_gb: float | None,
    connections_per_vm: int,
    solver_label: str,
    tolerance: float,
) -> TransferPlan:
    """The plan of ``sol`` (``objective`` "throughput" or "cost"); its solve time is left at 0."""
    m = model
    edges = []
    for (u, v), f in sorted(sol.flows.items()):
        seen = m.observed.get((u, v))
        edges.append(
            PlanEdge(
                u,
                v,
                f,
                int(round(sol.conns[(u, v)])),
                basis=m.basis(u, v),
                measured_age_s=None if seen is None else round(seen.age_s, 1),
            )
        )
    used = {e.src for e in edges} | {e.dst for e in edges} | {net.src, *net.dsts}
    relays = {v: n for v, n in sorted(sol.vms.items()) if n > 0 and v in used}
    vm_rate = sum(n * m.vm_price_per_hour(v) / 3600.0 for v, n in relays.items())
    egress_rate = sum(e.gbps * m.cost_per_gb(e.src, e.dst) / 8.0 for e in edges)
    t = sol.throughput
    d_tp, d_cost = direct_path(m, net.src, net.dsts, relays, connections_per_vm)
    return TransferPlan(
        source=net.src,
        destinations=list(net.dsts),
        relays=relays,
        edges=edges,
        throughput_gbps=t,
        egress_cost_per_gb_usd=egress_rate * 8 / t,
        vm_cost_per_gb_usd=vm_rate * 8 / t,
        direct_throughput_gbps=d_tp,
        direct_cost_per_gb_usd=d_cost,
        objective="fastest" if objective == "throughput" else "cheapest",
        solver=solver_label,
        solve_seconds=0.0,
        size_gb=size_gb,
        model=m.source,
        candidate_regions=list(net.nodes),
        tolerance=tolerance if objective == "throughput" else None,
    )


def direct_path(
    model: NetworkModel, src: str, dsts: list[str], vms: dict[str, int], connections_per_vm: int
) -> tuple[float, float | None]:
    """Throughput and $/GB of sending straight from src to every destination with the given VM counts
    ($/GB None when a destination is unreachable directly)."""
    n_src = max(1, vms.get(src, 1))
    grids = [model.throughput(src, d) for d in dsts]
    if min(grids) <= 0:
        return 0.0, None
    per_conn_inv = sum(CONNECTIONS_PER_MEASUREMENT / g for g in grids)  # connections per Gbps, summed
    t = min(
        n_src * connections_per_vm / per_conn_inv,
        n_src * model.egress_cap(src) / len(dsts),
        min(max(1, vms.get(d, 1)) * model.ingress_cap(d) for d in dsts),
    )
    vm_rate = (
        n_src * model.vm_price_per_hour(src)
        + sum(max(1, vms.get(d, 1)) * model.vm_price_per_hour(d) for d in dsts)
    ) / 3600
    egress = sum(model.cost_per_gb(src, d) for d in dsts)
    return t, egress + vm_rate * 8 / t
