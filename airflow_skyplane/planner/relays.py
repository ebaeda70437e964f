"""Relays that pay for themselves: the last step of a "fastest, then cheapest" plan.

A relay region whose removal costs less than the tolerance of the plan's throughput and does not make
the plan dearer per GB is dropped, and the plan settled again on the other VMs. The search passes
over the plan's relays, the one carrying the least first, dropping each that can go; a pass that drops
none ends it, so no relay left could go. (Trying every relay before dropping one made a multicast
whose cheapest plan rents ten relays take tens of seconds.)

Most removals are ruled out by one LP: whole connections only restrict the flows of a plan on given
VMs, so when no plan with fractional connections reaches the floor at the plan's $/GB or less
(``min cost_rate - price * T / 8 > 0`` with ``T >= floor``), no settled plan without the relay
does. A relay that the plan without the removed one leaves idle is taken out of that bound too (a
settled plan does not rent it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_skyplane.planner.milp import FLOW_EPS, OverlayNetwork, Solution

if TYPE_CHECKING:
    from airflow_skyplane.planner.solver import Planner

_EPS = 1e-7
_NO_DEARER = 1 + 1e-9


def drop_unpaid_relays(
    planner: Planner,
    net: OverlayNetwork,
    sol: Solution,
    band: float,
    cost_cap: float | None,
    target: float | None,
) -> Solution:
    """``sol`` without the relays that pay for themselves neither in speed nor in price (a multicast
    hub can be speed-neutral and save egress). ``band`` is the throughput the plan should keep if it
    can (within the tolerance of the fastest)."""
    while True:
        dropped = False
        for r in sorted(sol.relays(net), key=lambda r: (carried(sol, r), r)):
            if sol.vms.get(r, 0) <= 0:  # an earlier drop's plan left it out
                continue
            better = without(planner, net, sol, r, band, cost_cap, target)
            if better is not None:
                sol, dropped = better, True
        if not dropped:
            return sol


def without(
    planner: Planner,
    net: OverlayNetwork,
    sol: Solution,
    relay: str,
    band: float,
    cost_cap: float | None,
    target: float | None,
) -> Solution | None:
    """The plan on ``sol``'s VMs but ``relay``'s, if it stays within the tolerance of ``sol``'s
    throughput and is no dearer per GB; else None."""
    floor = sol.throughput * (1 - planner.tolerance) - _EPS
    rest = {v: n for v, n in sol.vms.items() if v != relay and n > 0}
    while True:
        lp = planner._milp(net, vms=rest, cost_cap=cost_cap, min_throughput=target)
        # some plan at T >= floor costs at most sol's $/GB exactly when min(cost_rate - price * T / 8)
        # <= 0 there: one solve, and its minimiser is that plan (None: the floor is out of reach)
        low = lp.ratio(sol.cost_per_gb, floor)
        if low is None or low.throughput <= 0 or low.cost_per_gb > sol.cost_per_gb * _NO_DEARER:
            return None
        idle = [v for v in low.relays(net) if carried(low, v) <= FLOW_EPS]
        if not idle:
            break
        rest = {v: n for v, n in rest.items() if v not in idle}
    fast = lp.fastest()  # fractional connections: an upper bound of what whole ones reach
    if fast is None:
        return None
    top = fast.throughput
    # keep within the tolerance of the fastest if that is no dearer, else go as low as the
    # tolerance of this plan allows; each from the cheapest fractional flow at that floor
    keep = max(floor, min(band, top * (1 - 1e-7)))
    for at_least in dict.fromkeys((keep, floor)):
        settled = planner._settle_near(net, lp, top, at_least, cost_cap, target)
        if settled is not None and settled.cost_per_gb <= sol.cost_per_gb * _NO_DEARER:
            return settled
    return None


def carried(sol: Solution, region: str) -> float:
    """Gbps a solution sends into ``region``."""
    return sum(f for (_, v), f in sol.flows.items() if v == region)
