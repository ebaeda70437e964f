"""The planner: which relay regions to rent, and how a transfer flows over them.

It drives the MILP of :mod:`~airflow_skyplane.planner.milp` in a few solves:

* **Fastest, then cheapest** (objective ``"throughput"``): the fastest plan T* (within a $/GB cap, if
  any); then the cheapest plan that stays within ``tolerance`` (default 5%) of T* (minimum cost rate at
  ``T >= (1 - tolerance) * T*``), which picks the VMs to rent; on them, the lowest $/GB at that
  throughput or more. Last, a relay region whose removal costs less than ``tolerance`` of the plan's
  throughput, and does not make it dearer per GB, is dropped, one at a time: no rented relay fails to
  pay for itself, in speed or in price.
* **Cheapest at a throughput** (objective ``"cost"``): the cheapest plan reaching the target; the
  tolerance does not apply (the target is the user's).
* **Whole connections.** The VMs are chosen with continuous connection counts (integer ones made the
  solvers take minutes on multicast, branching on hundreds of near-symmetric counts); the chosen plan
  is then settled on whole connections (:func:`~airflow_skyplane.planner.milp.whole_connections`) and
  its flows re-solved as an LP, so every hop with flow has at least one connection and carries at most
  what its connections allow.
* **Robust to the model's error.** Relay hops count at the network model's conservative rate
  (:meth:`NetworkModel.lower_throughput`: measurements as measured, model predictions at the lower
  quartile of the model's error on such pairs), the direct hops from the source to a destination at
  the best estimate. A route through relays is taken only when it beats the direct path even if its
  hops come in low; the plan's throughput is this conservative figure.

The full graph over 63 regions has ~3900 edges; to keep solves well under a second, only the
``candidate_relays`` best relay regions are offered to the MILP: a quarter each by the cheapest two-hop
egress through them, by the widest first hop from the source and by the widest last hop into a
destination, the rest by the widest (bottleneck) path through them (``None`` offers all allowed
regions; ``benchmarks/planner.py`` checks on a sample that pruning loses nothing).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from airflow_skyplane.exceptions import InfeasiblePlanError, InvalidInputError
from airflow_skyplane.planner.candidates import Candidates
from airflow_skyplane.planner.grid import CONNECTIONS_PER_MEASUREMENT
from airflow_skyplane.planner.milp import (
    MIN_HOP_SHARE,
    OverlayMILP,
    OverlayNetwork,
    Solution,
    available_solvers,
    make_solver,
    whole_connections,
)
from airflow_skyplane.planner.network import NetworkModel
from airflow_skyplane.planner.plan import TransferPlan
from airflow_skyplane.planner.regions import match_regions
from airflow_skyplane.planner.relays import drop_unpaid_relays
from airflow_skyplane.planner.requests import (
    OBJECTIVES,
    cap_limit,
    cap_name,
    cap_value,
    check_int,
    check_tolerance,
    target_limit,
    targets,
)
from airflow_skyplane.planner.result import direct_path, to_plan

DEFAULT_CANDIDATE_RELAYS = 12
DEFAULT_MIP_GAP = 1e-6
DEFAULT_TOLERANCE = 0.05
"""Share of the best throughput the planner gives up for a cheaper plan (and that a relay must earn)."""
BAND_COST_GAP = 0.01
"""Relative gap of the search for the cheapest plan within the tolerance: its price is found to within
1%. Exact, that search took about 4x longer on 6-destination multicasts (many relay sets reach 95% of
the fastest at nearly the same price) for price differences of a few tenths of a percent."""
_EPS = 1e-7


class Planner:
    """Plans transfers over one :class:`NetworkModel` (see :func:`plan_transfer` for the parameters)."""

    def __init__(
        self,
        model: NetworkModel,
        *,
        max_vms_per_region: int = 1,
        max_vms: int | None = None,
        connections_per_vm: int = CONNECTIONS_PER_MEASUREMENT,
        allowed_regions: Sequence[str] | None = None,
        candidate_relays: int | None = DEFAULT_CANDIDATE_RELAYS,
        tolerance: float = DEFAULT_TOLERANCE,
        robust: bool = True,
        solver: str = "auto",
        time_limit_s: float | None = None,
        mip_gap: float = DEFAULT_MIP_GAP,
    ) -> None:
        check_int("--max-vms-per-region", max_vms_per_region, 1)
        if max_vms is not None:
            check_int("--max-vms", max_vms, 1)
        check_int("--connections-per-vm", connections_per_vm, 1)
        if candidate_relays is not None:
            check_int("candidate_relays", candidate_relays, 0)
        self.model = model
        self.max_vms_per_region = max_vms_per_region
        self.max_vms = max_vms
        self.connections_per_vm = connections_per_vm
        self.tolerance = check_tolerance(tolerance)
        self.robust = bool(robust)
        self.allowed_patterns = list(allowed_regions) if allowed_regions else None
        if allowed_regions is not None and not list(allowed_regions):
            raise InvalidInputError(
                "the allowed-region set is empty: pass at least one pattern to --allowed-regions "
                "(e.g. 'aws:*') or drop the option to allow every region"
            )
        self.allowed = (
            match_regions(self.allowed_patterns, model.regions) if self.allowed_patterns else model.regions
        )
        self.candidate_relays = candidate_relays
        self._candidates = Candidates(
            model,
            self.allowed,
            self.allowed_patterns,
            robust=self.robust,
            connections_per_vm=connections_per_vm,
            candidate_relays=candidate_relays,
        )
        self._solver, self.solver_label = make_solver(solver, time_limit_s, mip_gap)
        self._band_solver = (
            make_solver(solver, time_limit_s, max(mip_gap, BAND_COST_GAP))[0] if self.tolerance > 0 else None
        )

    # -- public ---------------------------------------------------------------------------------------
    def plan(
        self,
        source: str,
        destinations: str | Sequence[str],
        *,
        objective: str | None = None,
        min_throughput_gbps: float | None = None,
        size_gb: float | None = None,
        deadline_s: float | None = None,
        budget_usd: float | None = None,
        max_cost_per_gb: float | None = None,
    ) -> TransferPlan:
        started = time.perf_counter()
        src, dsts = self._endpoints(source, destinations)
        target, cost_cap, objective = targets(
            objective, min_throughput_gbps, size_gb, deadline_s, budget_usd, max_cost_per_gb
        )
        if self.max_vms is not None and self.max_vms < 1 + len(dsts):
            raise InfeasiblePlanError(
                f"--max-vms {self.max_vms} is below the {1 + len(dsts)} gateways the source and "
                f"{len(dsts)} destination(s) need: raise --max-vms to at least {1 + len(dsts)}",
                limits=("max_vms",),
            )
        self._candidates.check_paths(src, dsts)
        net = self.network(self.candidates(src, dsts), src, dsts)

        if objective == "cost":
            assert target is not None
            sol = self._cheapest_at(net, target)
            if sol is None:
                raise self._throughput_infeasible(net, target, size_gb, deadline_s)
            if cost_cap is not None and sol.cost_per_gb > cost_cap * (1 + 1e-6):
                raise InfeasiblePlanError(
                    f"the cheapest plan reaching {target:.3g} Gbps costs ${sol.cost_per_gb:.4f}/GB but "
                    f"{cap_name(budget_usd, size_gb, cost_cap)}: raise it to at least "
                    f"{cap_value(budget_usd, size_gb, sol.cost_per_gb)} or lower the throughput target",
                    limits=(cap_limit(budget_usd), target_limit(deadline_s)),
                )
        else:
            found = self._fastest_then_cheapest(net, cost_cap, target)
            if found is None:
                raise self._cost_infeasible(net, cost_cap, budget_usd, size_gb, target)
            sol = found
        plan = to_plan(
            self.model,
            sol,
            net,
            objective=objective,
            size_gb=size_gb,
            connections_per_vm=self.connections_per_vm,
            solver_label=self.solver_label,
            tolerance=self.tolerance,
        )
        plan.solve_seconds = time.perf_counter() - started
        return plan

    def candidates(self, src: str, dsts: list[str]) -> list[str]:
        """Source, destinations and the best-ranked relay regions offered to the MILP."""
        return self._candidates.regions(src, dsts)

    def network(self, nodes: list[str], src: str, dsts: list[str]) -> OverlayNetwork:
        """The MILP's view of ``nodes`` (see :mod:`~airflow_skyplane.planner.candidates`)."""
        return self._candidates.network(nodes, src, dsts)

    def relaxed(
        self,
        source: str,
        destinations: str | Sequence[str],
        *,
        throughput: float | None = None,
        max_cost_per_gb: float | None = None,
    ) -> Solution | None:
        """The MILP's own optimum with fractional connections, on the same candidates and rates as
        :meth:`plan`: the fastest (within ``max_cost_per_gb``) when ``throughput`` is None, else the
        cheapest at ``throughput``. Plans settle on whole connections and may give up the tolerance;
        this is what they are measured against."""
        src, dsts = self._endpoints(source, destinations)
        net = self.network(self.candidates(src, dsts), src, dsts)
        if throughput is None:
            return self._milp(net, cost_cap=max_cost_per_gb).fastest()
        return self._milp(net, fixed_throughput=throughput, cost_cap=max_cost_per_gb).cheapest()

    def max_throughput(self, net: OverlayNetwork) -> Solution | None:
        """The fastest plan, connections continuous (what the VM limits allow at most)."""
        return self._milp(net).fastest()

    def min_cost_per_gb(self, nodes: list[str], src: str, dsts: list[str]) -> float:
        """Lowest $/GB any plan over ``nodes`` reaches (e.g. ``candidates(src, dsts)``)."""
        return self._min_cost_per_gb(self.network(nodes, src, dsts))

    def _min_cost_per_gb(self, net: OverlayNetwork) -> float:
        """Lowest $/GB any plan reaches (Dinkelbach iterations on the MILP: cost - lambda * T / 8)."""
        milp = self._milp(net)
        best = milp.fastest()
        if best is None or best.throughput <= _EPS:
            return math.inf
        cheapest = milp.cheapest_per_gb(best.cost_per_gb, rounds=8)
        return best.cost_per_gb if cheapest is None else min(best.cost_per_gb, cheapest.cost_per_gb)

    # -- the steps ------------------------------------------------------------------------------------
    def _milp(self, net: OverlayNetwork, **kw: object) -> OverlayMILP:
        return OverlayMILP(
            net,
            self._solver,
            max_vms_per_region=self.max_vms_per_region,
            max_vms=self.max_vms,
            connections_per_vm=self.connections_per_vm,
            **kw,  # type: ignore[arg-type]
        )

    def _fastest_then_cheapest(
        self, net: OverlayNetwork, cost_cap: float | None, target: float | None
    ) -> Solution | None:
        milp = self._milp(net, cost_cap=cost_cap, min_throughput=target)
        best = milp.fastest()
        if best is None or best.throughput <= _EPS:
            return None
        floor = max(best.throughput * (1 - self.tolerance), target or 0.0) * (1 - 1e-7)
        settled = self._settle_near(net, milp, best.throughput, floor, cost_cap, target, self._band_solver)
        if settled is None:  # whole connections fall short of the floor: the fastest, settled
            settled = self._settle(net, best, cost_cap, target)
        return None if settled is None else drop_unpaid_relays(self, net, settled, floor, cost_cap, target)

    def _settle_near(
        self,
        net: OverlayNetwork,
        relaxed: OverlayMILP,
        top: float,
        at_least: float,
        cost_cap: float | None,
        target: float | None,
        solver: object = None,
    ) -> Solution | None:
        """The lowest $/GB with whole connections at ``T >= at_least``, settled on the cheapest
        fractional plan at that floor, or (whole connections losing a little to rounding) on one a
        little faster; None when none reaches the floor."""
        for margin in (1.0, 1.02, 1.05):
            aim = min(top, at_least * margin)
            hint = relaxed.cheapest(at_least=aim, solver=solver)
            if hint is not None:
                got = self._settle(net, hint, cost_cap, target, at_least=at_least)
                if got is not None and got.throughput >= at_least * (1 - 1e-6):
                    return got
            if aim >= top:
                break
        return None

    def _cheapest_at(self, net: OverlayNetwork, target: float) -> Solution | None:
        # whole connections can fall a connection's rate short of what fractional ones reach: then
        # settle on the VMs and flows of a slightly faster fractional plan
        for margin in (1.0, 1.01, 1.03, 1.1):
            relaxed = self._milp(net, fixed_throughput=target * margin).cheapest()
            if relaxed is None:
                return None
            exact = self._settle(net, relaxed, None, None, fixed_throughput=target)
            if exact is not None:
                return exact
        return None

    def _settle(
        self,
        net: OverlayNetwork,
        hint: Solution,
        cost_cap: float | None,
        target: float | None,
        fixed_throughput: float | None = None,
        at_least: float | None = None,
    ) -> Solution | None:
        """The plan with whole connections on the VMs and hops of ``hint`` (a fractional solution): the
        lowest $/GB at ``T >= at_least`` (default: as fast as they go), or the cheapest at
        ``fixed_throughput``."""
        rented = {v: n for v, n in hint.vms.items() if n > 0}
        for share in (MIN_HOP_SHARE, 0.0):
            conns = whole_connections(
                net, rented, hint.flows, hint.throughput, self.connections_per_vm, share
            )
            # a relay VM the hint rents but sends nothing through (the fastest plan's solver has no
            # reason to close it) is not rented
            used = {net.src, *net.dsts} | {v for e in conns for v in e}
            vms = {v: n for v, n in rented.items() if v in used}
            lp = self._milp(
                net,
                vms=vms,
                connections=conns,
                cost_cap=cost_cap,
                min_throughput=target,
                fixed_throughput=fixed_throughput,
            )
            if fixed_throughput is not None:
                sol = lp.cheapest()
            elif at_least is None:
                fast = lp.fastest()
                sol = None if fast is None else lp.cheapest(at_least=fast.throughput * (1 - 1e-7)) or fast
            else:
                sol = lp.cheapest_per_gb(hint.cost_per_gb, at_least)
                if sol is None:  # whole connections fall short of the floor: as fast as they go
                    fast = lp.fastest()
                    sol = (
                        None
                        if fast is None
                        else lp.cheapest_per_gb(fast.cost_per_gb, fast.throughput * (1 - 1e-7))
                    )
            if sol is not None and sol.throughput > _EPS:
                sol.conns = {e: conns[e] for e in sol.flows}
                return sol
        return None

    def _reach(self, net: OverlayNetwork) -> Solution | None:
        """The fastest plan the VM limits allow, settled with whole connections."""
        relaxed = self.max_throughput(net)
        return None if relaxed is None else self._settle(net, relaxed, None, None)

    # -- inputs and errors ----------------------------------------------------------------------------
    def _endpoints(self, source: str, destinations: str | Sequence[str]) -> tuple[str, list[str]]:
        src = self.model.resolve(source)
        raw = [destinations] if isinstance(destinations, str) else list(destinations)
        if not raw:
            raise InvalidInputError("no destination region given: name at least one, e.g. 'aws:eu-west-1'")
        dsts: list[str] = []
        for d in raw:
            name = self.model.resolve(d)
            if name == src:
                raise InvalidInputError(
                    f"destination {d!r} is the source region: a transfer within one region needs no "
                    f"overlay; name a different destination"
                )
            if name not in dsts:
                dsts.append(name)
        allowed = set(self.allowed)
        for role, name in [("source", src)] + [("destination", d) for d in dsts]:
            if name not in allowed:
                raise InvalidInputError(
                    f"no region allowed by {self.allowed_patterns} contains the {role} {name!r}: "
                    f"add a pattern matching it to --allowed-regions"
                )
        return src, dsts

    def _limit(self, best: Solution | None) -> tuple[str, str, tuple[str, ...]]:
        """The VM limit that binds a plan, the fix, and the limits' names (the planner's keywords)."""
        used = 0 if best is None else sum(best.vms.values())
        if self.max_vms is not None and used >= self.max_vms:
            return f"at most {self.max_vms} VMs (--max-vms)", "raise --max-vms", ("max_vms",)
        fix = "raise --max-vms-per-region" + ("" if self.max_vms is None else " or --max-vms")
        vms = ("max_vms_per_region",) if self.max_vms is None else ("max_vms_per_region", "max_vms")
        return f"at most {self.max_vms_per_region} VM(s) per region (--max-vms-per-region)", fix, vms

    def _throughput_infeasible(
        self, net: OverlayNetwork, target: float, size_gb: float | None, deadline_s: float | None
    ) -> InfeasiblePlanError:
        best = self._reach(net)
        reach = 0.0 if best is None else best.throughput
        limit, fix, vms = self._limit(best)
        if size_gb is not None and deadline_s is not None:
            return InfeasiblePlanError(
                f"deadline {deadline_s:g} s for {size_gb:g} GB needs {target:.3g} Gbps but {limit} reach "
                f"{reach:.3g} Gbps: {fix} or the deadline (at least {size_gb * 8 / max(reach, _EPS):.0f} s)",
                limits=("deadline_s", *vms),
            )
        return InfeasiblePlanError(
            f"--min-throughput-gbps {target:g} is out of reach: {limit} reach {reach:.3g} Gbps; "
            f"{fix} or lower the target to at most {math.floor(reach * 1000) / 1000:.3f}",
            limits=("min_throughput_gbps", *vms),
        )

    def _cost_infeasible(
        self,
        net: OverlayNetwork,
        cost_cap: float | None,
        budget_usd: float | None,
        size_gb: float | None,
        target: float | None,
    ) -> InfeasiblePlanError:
        if target is not None:
            best = self._reach(net)
            if best is None or best.throughput < target * (1 - 1e-6):
                return self._throughput_infeasible(net, target, None, None)
            if cost_cap is not None:
                cheapest = self._cheapest_at(net, target)
                if cheapest is not None:
                    per_gb = cheapest.cost_per_gb
                    return InfeasiblePlanError(
                        f"the cheapest plan reaching {target:.3g} Gbps costs ${per_gb:.4f}/GB but "
                        f"{cap_name(budget_usd, size_gb, cost_cap)}: raise it to at least "
                        f"{cap_value(budget_usd, size_gb, per_gb)} or lower the throughput target",
                        limits=(cap_limit(budget_usd), "min_throughput_gbps"),
                    )
        if cost_cap is None:
            fix = "raise --max-vms" if self.max_vms is not None else "raise --max-vms-per-region"
            return InfeasiblePlanError(
                f"no route from {net.src!r} to {', '.join(map(repr, net.dsts))} fits the VM limits "
                f"(--max-vms {self.max_vms}, --max-vms-per-region {self.max_vms_per_region}): the routes "
                f"that exist need more relay VMs; {fix} or allow other regions",
                limits=("max_vms" if self.max_vms is not None else "max_vms_per_region", "allowed_regions"),
            )
        floor = self._min_cost_per_gb(net)
        direct = direct_path(self.model, net.src, net.dsts, {}, self.connections_per_vm)
        direct_txt = "" if direct[1] is None else f"the direct path costs ${direct[1]:.4f}/GB and "
        return InfeasiblePlanError(
            f"{direct_txt}the cheapest plan costs ${floor:.4f}/GB but "
            f"{cap_name(budget_usd, size_gb, cost_cap)}: "
            f"raise it to at least {cap_value(budget_usd, size_gb, floor)}",
            limits=(cap_limit(budget_usd),),
        )


def plan_transfer(
    model: NetworkModel,
    source: str,
    destinations: str | Sequence[str],
    *,
    objective: str | None = None,
    min_throughput_gbps: float | None = None,
    size_gb: float | None = None,
    deadline_s: float | None = None,
    budget_usd: float | None = None,
    max_cost_per_gb: float | None = None,
    max_vms_per_region: int = 1,
    max_vms: int | None = None,
    connections_per_vm: int = CONNECTIONS_PER_MEASUREMENT,
    allowed_regions: Sequence[str] | None = None,
    candidate_relays: int | None = DEFAULT_CANDIDATE_RELAYS,
    tolerance: float = DEFAULT_TOLERANCE,
    robust: bool = True,
    solver: str = "auto",
    time_limit_s: float | None = None,
    mip_gap: float = DEFAULT_MIP_GAP,
) -> TransferPlan:
    """Plan a unicast (one destination) or multicast transfer.

    Objectives: ``"cost"`` — the cheapest plan that reaches ``min_throughput_gbps`` (or moves ``size_gb``
    within ``deadline_s``); ``"throughput"`` — the fastest plan within ``max_cost_per_gb`` (or
    ``budget_usd`` for ``size_gb``), or rather the cheapest within ``tolerance`` (a share, default 0.05)
    of the fastest. Left out, the objective is "cost" when a throughput target is given without a cost
    limit, else "throughput". ``robust`` counts relay hops at the model's conservative rate (see
    :mod:`~airflow_skyplane.planner.solver`). Raises :class:`InvalidInputError` on bad input and
    :class:`InfeasiblePlanError` naming the binding limit and the fix.
    """
    planner = Planner(
        model,
        max_vms_per_region=max_vms_per_region,
        max_vms=max_vms,
        connections_per_vm=connections_per_vm,
        allowed_regions=allowed_regions,
        candidate_relays=candidate_relays,
        tolerance=tolerance,
        robust=robust,
        solver=solver,
        time_limit_s=time_limit_s,
        mip_gap=mip_gap,
    )
    return planner.plan(
        source,
        destinations,
        objective=objective,
        min_throughput_gbps=min_throughput_gbps,
        size_gb=size_gb,
        deadline_s=deadline_s,
        budget_usd=budget_usd,
        max_cost_per_gb=max_cost_per_gb,
    )


__all__ = [
    "DEFAULT_CANDIDATE_RELAYS",
    "DEFAULT_TOLERANCE",
    "OBJECTIVES",
    "Planner",
    "available_solvers",
    "plan_transfer",
]
