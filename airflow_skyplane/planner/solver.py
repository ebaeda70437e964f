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

import heapq
import math
import time
from collections.abc import Sequence

from airflow_skyplane.exceptions import InfeasiblePlanError, InvalidInputError
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
from airflow_skyplane.planner.plan import PlanEdge, TransferPlan
from airflow_skyplane.planner.regions import match_regions
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
        self._wide_cache: dict[tuple[str, bool], dict[str, float]] = {}
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
        self._check_paths(src, dsts)
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
        plan = self._to_plan(sol, net, objective, size_gb)
        plan.solve_seconds = time.perf_counter() - started
        return plan

    def candidates(self, src: str, dsts: list[str]) -> list[str]:
        """Source, destinations and the best-ranked relay regions offered to the MILP."""
        fixed = [src, *dsts]
        others = [r for r in self.allowed if r not in fixed]
        k = self.candidate_relays
        if k is None or len(others) <= k:
            return fixed + others
        wide_from = self._wide(src, True)
        score_tp: dict[str, float] = {}
        score_cost: dict[str, float] = {}
        near_src: dict[str, float] = {}
        near_dst: dict[str, float] = {}
        for r in others:
            best_tp, best_cost = 0.0, math.inf
            near_src[r] = self._edge_cap(src, r)
            near_dst[r] = max(self._edge_cap(r, d) for d in dsts)
            for d in dsts:
                wide_to = self._wide(d, False)
                best_tp = max(best_tp, min(wide_from.get(r, 0.0), wide_to.get(r, 0.0)))
                if self.model.throughput(src, r) > 0 and self.model.throughput(r, d) > 0:
                    best_cost = min(best_cost, self.model.cost_per_gb(src, r) + self.model.cost_per_gb(r, d))
            score_tp[r], score_cost[r] = best_tp, best_cost
        # Bottleneck bounds tie often (many relays reach the same provider cap), so the ranking mixes
        # four views: cheapest two-hop egress, widest first hop, widest last hop, widest path overall.
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

    def min_cost_per_gb(self, net: OverlayNetwork) -> float:
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
        return None if settled is None else self._drop_idle_relays(net, settled, floor, cost_cap, target)

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
        vms = {v: n for v, n in hint.vms.items() if n > 0}
        for share in (MIN_HOP_SHARE, 0.0):
            conns = whole_connections(net, vms, hint.flows, hint.throughput, self.connections_per_vm, share)
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

    def _drop_idle_relays(
        self,
        net: OverlayNetwork,
        sol: Solution,
        band: float,
        cost_cap: float | None,
        target: float | None,
    ) -> Solution:
        """Drop, one at a time, a relay region whose removal costs less than the tolerance of the plan's
        throughput and makes the plan no dearer per GB: a relay that pays for itself neither in speed
        nor in price (multicast hubs can save egress) is not rented. ``band`` is the throughput the
        plan should keep if it can (within the tolerance of the fastest)."""
        while True:
            floor = sol.throughput * (1 - self.tolerance) - _EPS
            options = []
            for r in sol.relays(net):
                rest = {v: n for v, n in sol.vms.items() if v != r and n > 0}
                lp = self._milp(net, vms=rest, cost_cap=cost_cap, min_throughput=target)
                fast = lp.fastest()  # fractional connections: an upper bound of what whole ones reach
                if fast is not None and fast.throughput >= floor:
                    options.append((fast.throughput, lp))
            better = None
            for top, lp in sorted(options, key=lambda o: -o[0]):
                # keep within the tolerance of the fastest if that is no dearer, else go as low as the
                # tolerance of this plan allows; each from the cheapest fractional flow at that floor
                keep = max(floor, min(band, top * (1 - 1e-7)))
                for at_least in dict.fromkeys((keep, floor)):
                    settled = self._settle_near(net, lp, top, at_least, cost_cap, target)
                    if settled is not None and settled.cost_per_gb <= sol.cost_per_gb * (1 + 1e-9):
                        better = settled
                        break
                if better is not None:
                    break
            if better is None:
                return sol
            sol = better

    # -- inputs and errors ----------------------------------------------------------------------------
    def _capacity_matrix(self) -> tuple[dict[str, int], list[list[float]]]:
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

    def _edge_cap(self, u: str, v: str) -> float:
        index, rows = self._capacity_matrix()
        return rows[index[u]][index[v]]

    def _wide(self, root: str, forward: bool) -> dict[str, float]:
        """Widest-path Gbps from ``root`` (``forward``) or into it, over the allowed regions."""
        if (root, forward) not in self._wide_cache:
            index, rows = self._capacity_matrix()
            width = _widest(rows, index[root], forward)
            self._wide_cache[(root, forward)] = {r: width[i] for r, i in index.items() if r != root}
        return self._wide_cache[(root, forward)]

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

    def _check_paths(self, src: str, dsts: list[str]) -> None:
        wide = self._wide(src, True)
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
        floor = self.min_cost_per_gb(net)
        direct = _direct(self.model, net.src, net.dsts, {}, self.connections_per_vm)
        direct_txt = "" if direct[1] is None else f"the direct path costs ${direct[1]:.4f}/GB and "
        return InfeasiblePlanError(
            f"{direct_txt}the cheapest plan costs ${floor:.4f}/GB but "
            f"{cap_name(budget_usd, size_gb, cost_cap)}: "
            f"raise it to at least {cap_value(budget_usd, size_gb, floor)}",
            limits=(cap_limit(budget_usd),),
        )

    def _to_plan(
        self, sol: Solution, net: OverlayNetwork, objective: str, size_gb: float | None
    ) -> TransferPlan:
        m = self.model
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
        d_tp, d_cost = _direct(m, net.src, net.dsts, relays, self.connections_per_vm)
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
            solver=self.solver_label,
            solve_seconds=0.0,
            size_gb=size_gb,
            model=m.source,
            candidate_regions=list(net.nodes),
            tolerance=self.tolerance if objective == "throughput" else None,
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


# -- helpers --------------------------------------------------------------------------------------------


def _widest(rows: list[list[float]], root: int, forward: bool) -> list[float]:
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


def _direct(
    model: NetworkModel, src: str, dsts: list[str], vms: dict[str, int], connections_per_vm: int
) -> tuple[float, float | None]:
    """Throughput and $/GB of sending straight from src to every destination with the given VM counts."""
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


__all__ = [
    "DEFAULT_CANDIDATE_RELAYS",
    "DEFAULT_TOLERANCE",
    "OBJECTIVES",
    "Planner",
    "available_solvers",
    "plan_transfer",
]
