"""The overlay MILP: how many relay VMs where, and how much flow over which hops.

PuLP (a declared dependency) builds the model and drives the solver: CBC, which PuLP bundles, so no
system install is needed. ``solver="auto"`` (the default) uses HiGHS in-process instead when
``highspy`` is importable: same optima, about 3x faster on multicast, no subprocess or temporary
files (measured in docs/planner.md); ``"cbc"`` and ``"highs"`` force one.

Formulation, over candidate regions V (source s, destinations D, relays) and directed edges E:

* ``N[v]``   integer VMs in region v, ``0..max_vms_per_region`` (>= 1 at s and every d), ``sum N <= max_vms``;
* ``C[e]``   TCP connections on edge e; ``sum_{e out of v} C[e] <= connections_per_vm * N[v]``;
* ``F[e]``   Gbps sent over e, once: ``F[e] <= grid_gbps(e) / 64 * C[e]`` (the grid is per 64 connections);
* per-VM NIC caps: ``sum_out F <= egress_cap(v) * N[v]``, ``sum_in F <= ingress_cap(v) * N[v]``;
* ``T``      Gbps every destination receives. Unicast: F itself satisfies flow conservation (T out of s,
  T into d). Multicast: one commodity per destination, ``f_d[e]`` conserving T from s to d, and
  ``f_d[e] <= F[e]``: a shared edge carries the data once and its egress is paid on F.

Connections are continuous in the MILP: with them integer, CBC needed minutes instead of a fraction
of a second on multicast (branching on hundreds of near-symmetric connection counts), for at most one
connection's worth (1/64 of a VM pair's Gbps) per edge. The plan turns them into integers per sending
region by largest-remainder rounding, which keeps every region's total within its connection limit
exactly; an edge may then carry up to one connection's rate more than ``grid / 64 * connections``.

Cost per second: egress ``sum_e F[e] * price(e) / 8`` ($/GB x GB/s) plus VMs ``sum_v N[v] * hourly(v)/3600``.
Both are linear. For a fixed T the VM cost per GB is ``(sum N * hourly / 3600) / (T / 8)``: linear in N,
so "cheapest plan at T" is one MILP. A cap c on $/GB is ``cost_rate <= c * T / 8``, linear in T too,
so "fastest plan within c" is also one MILP (maximise T), followed by a second solve at that T for the
cheapest plan among the fastest. A total budget B for G GB is the cap c = B / G.

The full graph over 63 regions has ~3900 edges; to keep solves well under a second, only the
``candidate_relays`` best relay regions are offered to the MILP: a quarter each by the cheapest two-hop
egress through them, by the widest first hop from the source and by the widest last hop into a
destination, the rest by the widest (bottleneck) path through them (``None`` offers all allowed
regions; ``benchmarks/planner.py`` checks on a sample that pruning loses nothing).
"""

from __future__ import annotations

import heapq
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulp

from airflow_skyplane.exceptions import InfeasiblePlanError, InvalidInputError, PlannerError
from airflow_skyplane.planner.network import CONNECTIONS_PER_MEASUREMENT, NetworkModel
from airflow_skyplane.planner.plan import PlanEdge, TransferPlan
from airflow_skyplane.planner.regions import match_regions

OBJECTIVES = ("throughput", "cost")
DEFAULT_CANDIDATE_RELAYS = 12
DEFAULT_MIP_GAP = 1e-6
_EPS = 1e-7


@dataclass
class _Solution:
    throughput: float
    vms: dict[str, int]
    flows: dict[tuple[str, str], float]
    conns: dict[tuple[str, str], int]
    egress_rate: float  # $/s
    vm_rate: float  # $/s
    seconds: float


def available_solvers() -> list[str]:
    """Solvers usable here: 'cbc' (bundled with PuLP) and 'highs' when highspy is installed."""
    names = []
    if pulp.PULP_CBC_CMD(msg=False).available():
        names.append("cbc")
    if _highs_available():
        names.append("highs")
    return names


def _highs_available() -> bool:
    try:
        return bool(pulp.HiGHS(msg=False).available())
    except (AttributeError, pulp.PulpSolverError):
        return False


_HIGHS_BANNER_SILENCED = False


def _silence_highs_banner() -> None:
    """highspy prints a banner to the process's stdout (fd 1) when its first model is created, even
    with output off; create that first model with fd 1 pointed away so ``plan --json`` stays JSON."""
    global _HIGHS_BANNER_SILENCED
    if _HIGHS_BANNER_SILENCED:
        return
    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    _HIGHS_BANNER_SILENCED = True


def _make_solver(name: str, time_limit_s: float | None, gap: float) -> tuple[Any, str]:
    """The PuLP solver object and its label. 'auto' is HiGHS when highspy is installed (measured about
    4x faster than CBC on multicast, same optima), else the CBC binary PuLP bundles."""
    if name == "auto":
        name = "highs" if _highs_available() else "cbc"
    if name == "cbc":
        solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=gap, threads=1, warmStart=True)
        return solver, f"CBC (bundled with PuLP {pulp.__version__})"
    if name == "highs":
        if not _highs_available():
            raise InvalidInputError(
                "solver 'highs' needs the highspy package: pip install highspy, or use --solver cbc"
            )
        _silence_highs_banner()
        return pulp.HiGHS(msg=False, timeLimit=time_limit_s, gapRel=gap), "HiGHS (highspy, in-process)"
    raise InvalidInputError(f"unknown solver {name!r}: use 'auto', 'cbc' or 'highs'")


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
        solver: str = "auto",
        time_limit_s: float | None = None,
        mip_gap: float = DEFAULT_MIP_GAP,
    ) -> None:
        _check_int("--max-vms-per-region", max_vms_per_region, 1)
        if max_vms is not None:
            _check_int("--max-vms", max_vms, 1)
        _check_int("--connections-per-vm", connections_per_vm, 1)
        if candidate_relays is not None:
            _check_int("candidate_relays", candidate_relays, 0)
        self.model = model
        self.max_vms_per_region = max_vms_per_region
        self.max_vms = max_vms
        self.connections_per_vm = connections_per_vm
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
        self._wide_cache: dict[str, dict[str, float]] = {}
        self._solver, self.solver_label = _make_solver(solver, time_limit_s, mip_gap)

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
        target, cost_cap, objective = _targets(
            objective, min_throughput_gbps, size_gb, deadline_s, budget_usd, max_cost_per_gb
        )
        if self.max_vms is not None and self.max_vms < 1 + len(dsts):
            raise InfeasiblePlanError(
                f"--max-vms {self.max_vms} is below the {1 + len(dsts)} gateways the source and "
                f"{len(dsts)} destination(s) need: raise --max-vms to at least {1 + len(dsts)}",
                limits=("max_vms",),
            )
        self._check_paths(src, dsts)
        nodes = self.candidates(src, dsts)

        if objective == "cost":
            assert target is not None
            sol = self._solve(nodes, src, dsts, fixed_throughput=target)
            if sol is None:
                raise self._throughput_infeasible(nodes, src, dsts, target, size_gb, deadline_s)
            per_gb = (sol.egress_rate + sol.vm_rate) * 8 / target
            if cost_cap is not None and per_gb > cost_cap * (1 + 1e-6):
                raise InfeasiblePlanError(
                    f"the cheapest plan reaching {target:.3g} Gbps costs ${per_gb:.4f}/GB but "
                    f"{_cap_name(budget_usd, size_gb, cost_cap)}: raise it to at least "
                    f"{_cap_value(budget_usd, size_gb, per_gb)} or lower the throughput target",
                    limits=(_cap_limit(budget_usd), _target_limit(deadline_s)),
                )
        else:
            best = self._solve(nodes, src, dsts, cost_cap=cost_cap, min_throughput=target, then_cheapest=True)
            if best is None or best.throughput <= _EPS:
                raise self._cost_infeasible(nodes, src, dsts, cost_cap, budget_usd, size_gb, target)
            sol = best
        plan = self._to_plan(sol, src, dsts, objective, size_gb, nodes)
        plan.solve_seconds = time.perf_counter() - started
        return plan

    def candidates(self, src: str, dsts: list[str]) -> list[str]:
        """Source, destinations and the best-ranked relay regions offered to the MILP."""
        fixed = [src, *dsts]
        others = [r for r in self.allowed if r not in fixed]
        k = self.candidate_relays
        if k is None or len(others) <= k:
            return fixed + others
        wide_from = _widest(self.model, self.allowed, src, forward=True, cap=self._edge_cap)
        score_tp: dict[str, float] = {}
        score_cost: dict[str, float] = {}
        near_src: dict[str, float] = {}
        near_dst: dict[str, float] = {}
        for r in others:
            best_tp, best_cost = 0.0, math.inf
            near_src[r] = self._edge_cap(src, r)
            near_dst[r] = max(self._edge_cap(r, d) for d in dsts)
            for d in dsts:
                wide_to = self._wide_to(d)
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

    # -- internals ------------------------------------------------------------------------------------
    def _edge_cap(self, u: str, v: str) -> float:
        g = self.model.throughput(u, v) * self.connections_per_vm / CONNECTIONS_PER_MEASUREMENT
        return min(g, self.model.egress_cap(u), self.model.ingress_cap(v))

    def _wide_to(self, d: str) -> dict[str, float]:
        if d not in self._wide_cache:
            self._wide_cache[d] = _widest(self.model, self.allowed, d, forward=False, cap=self._edge_cap)
        return self._wide_cache[d]

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
        wide = _widest(self.model, self.allowed, src, forward=True, cap=self._edge_cap)
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

    def _solve(
        self,
        nodes: list[str],
        src: str,
        dsts: list[str],
        *,
        fixed_throughput: float | None = None,
        cost_cap: float | None = None,
        min_throughput: float | None = None,
        dinkelbach_lambda: float | None = None,
        then_cheapest: bool = False,
    ) -> _Solution | None:
        """One MILP. ``fixed_throughput``: cheapest plan at that T; else the fastest (within
        ``cost_cap``, at least ``min_throughput``), and with ``then_cheapest`` a second solve of the same
        model, warm-started, for the cheapest plan among the fastest (ties are common: spare relays)."""
        m = self.model
        multicast = len(dsts) > 1
        maxpr = self.max_vms_per_region
        edges = [
            (u, v)
            for u in nodes
            for v in nodes
            if u != v and v != src and (multicast or u not in dsts) and m.throughput(u, v) > 0
        ]
        prob = pulp.LpProblem("overlay", pulp.LpMaximize if fixed_throughput is None else pulp.LpMinimize)
        idx = {n: i for i, n in enumerate(nodes)}
        n_var = {
            v: pulp.LpVariable(
                f"N{idx[v]}", lowBound=1 if v == src or v in dsts else 0, upBound=maxpr, cat="Integer"
            )
            for v in nodes
        }
        c_var = {
            e: pulp.LpVariable(f"C{idx[e[0]]}_{idx[e[1]]}", 0, self.connections_per_vm * maxpr) for e in edges
        }
        f_var = {e: pulp.LpVariable(f"F{idx[e[0]]}_{idx[e[1]]}", 0) for e in edges}
        t_var: Any = fixed_throughput if fixed_throughput is not None else pulp.LpVariable("T", 0)
        out_e: dict[str, list[tuple[str, str]]] = {v: [] for v in nodes}
        in_e: dict[str, list[tuple[str, str]]] = {v: [] for v in nodes}
        for e in edges:
            out_e[e[0]].append(e)
            in_e[e[1]].append(e)
        per_conn = {e: m.throughput(*e) / CONNECTIONS_PER_MEASUREMENT for e in edges}
        for e in edges:
            prob += f_var[e] <= per_conn[e] * c_var[e]
        for v in nodes:
            prob += pulp.lpSum(c_var[e] for e in out_e[v]) <= self.connections_per_vm * n_var[v]
            prob += pulp.lpSum(f_var[e] for e in out_e[v]) <= m.egress_cap(v) * n_var[v]
            prob += pulp.lpSum(f_var[e] for e in in_e[v]) <= m.ingress_cap(v) * n_var[v]
        if self.max_vms is not None:
            prob += pulp.lpSum(n_var.values()) <= self.max_vms
        if multicast:
            for j, d in enumerate(dsts):
                # a destination never forwards its own copy: no commodity-d variable leaves d
                fd = {e: pulp.LpVariable(f"f{j}_{idx[e[0]]}_{idx[e[1]]}", 0) for e in edges if e[0] != d}
                for e, var in fd.items():
                    prob += var <= f_var[e]
                for v in nodes:
                    net = pulp.lpSum(fd[e] for e in out_e[v] if e in fd) - pulp.lpSum(
                        fd[e] for e in in_e[v] if e in fd
                    )
                    prob += net == (t_var if v == src else (-t_var if v == d else 0))
        else:
            for v in nodes:
                net = pulp.lpSum(f_var[e] for e in out_e[v]) - pulp.lpSum(f_var[e] for e in in_e[v])
                prob += net == (t_var if v == src else (-t_var if v == dsts[0] else 0))
        egress_rate = pulp.lpSum(f_var[e] * (m.cost_per_gb(*e) / 8.0) for e in edges)
        vm_rate = pulp.lpSum(n_var[v] * (m.vm_price_per_hour(v) / 3600.0) for v in nodes)
        if cost_cap is not None:
            prob += egress_rate + vm_rate <= cost_cap * t_var / 8.0
        if min_throughput is not None and fixed_throughput is None:
            prob += t_var >= min_throughput
        if dinkelbach_lambda is not None:
            prob.sense = pulp.LpMinimize
            prob += (egress_rate + vm_rate) - dinkelbach_lambda * t_var / 8.0
        elif fixed_throughput is None:
            prob += t_var
        else:
            prob += egress_rate + vm_rate
        started = time.perf_counter()
        try:
            status = prob.solve(self._solver)
        except pulp.PulpSolverError as exc:
            raise PlannerError(f"the MILP solver failed ({exc}); try --solver cbc") from None
        if then_cheapest and pulp.LpStatus[status] == "Optimal" and (t_var.value() or 0.0) > _EPS:
            prob += t_var >= float(t_var.value()) * (1 - 1e-6)
            prob.sense = pulp.LpMinimize
            prob.setObjective(egress_rate + vm_rate)
            try:
                status = prob.solve(self._solver)
            except pulp.PulpSolverError as exc:
                raise PlannerError(f"the MILP solver failed ({exc}); try --solver cbc") from None
        seconds = time.perf_counter() - started
        if pulp.LpStatus[status] != "Optimal":
            return None
        vms = {v: int(round(n_var[v].value() or 0)) for v in nodes}
        flows = {e: max(0.0, float(f_var[e].value() or 0.0)) for e in edges}
        flows = {e: f for e, f in flows.items() if f > 1e-6}
        conns = _integer_connections(
            {e: max(0.0, float(c_var[e].value() or 0.0)) for e in flows}, vms, self.connections_per_vm
        )
        t_val = float(fixed_throughput if fixed_throughput is not None else (t_var.value() or 0.0))
        e_rate = sum(f * m.cost_per_gb(*e) / 8.0 for e, f in flows.items())
        v_rate = sum(vms[v] * m.vm_price_per_hour(v) / 3600.0 for v in nodes)
        return _Solution(t_val, vms, flows, conns, e_rate, v_rate, seconds)

    def max_throughput(self, nodes: list[str], src: str, dsts: list[str]) -> _Solution | None:
        return self._solve(nodes, src, dsts)

    def min_cost_per_gb(self, nodes: list[str], src: str, dsts: list[str]) -> float:
        """Lowest $/GB any plan reaches (Dinkelbach iterations on the MILP: cost - lambda * T / 8)."""
        best = self._solve(nodes, src, dsts)
        if best is None or best.throughput <= _EPS:
            return math.inf
        lam = (best.egress_rate + best.vm_rate) * 8 / best.throughput
        for _ in range(8):
            sol = self._solve(nodes, src, dsts, dinkelbach_lambda=lam)
            if sol is None or sol.throughput <= _EPS:
                break
            ratio = (sol.egress_rate + sol.vm_rate) * 8 / sol.throughput
            if ratio >= lam * (1 - 1e-9):
                break
            lam = ratio
        return lam

    def _throughput_infeasible(
        self,
        nodes: list[str],
        src: str,
        dsts: list[str],
        target: float,
        size_gb: float | None,
        deadline_s: float | None,
    ) -> InfeasiblePlanError:
        best = self.max_throughput(nodes, src, dsts)
        reach = 0.0 if best is None else best.throughput
        used = 0 if best is None else sum(best.vms.values())
        if self.max_vms is not None and used >= self.max_vms:
            limit = f"at most {self.max_vms} VMs (--max-vms)"
            fix = "raise --max-vms"
            vms: tuple[str, ...] = ("max_vms",)
        else:
            limit = f"at most {self.max_vms_per_region} VM(s) per region (--max-vms-per-region)"
            fix = "raise --max-vms-per-region" + ("" if self.max_vms is None else " or --max-vms")
            vms = ("max_vms_per_region",) if self.max_vms is None else ("max_vms_per_region", "max_vms")
        if size_gb is not None and deadline_s is not None:
            return InfeasiblePlanError(
                f"deadline {deadline_s:g} s for {size_gb:g} GB needs {target:.3g} Gbps but {limit} reach "
                f"{reach:.3g} Gbps: {fix} or the deadline (at least {size_gb * 8 / max(reach, _EPS):.0f} s)",
                limits=("deadline_s", *vms),
            )
        return InfeasiblePlanError(
            f"--min-throughput-gbps {target:g} is out of reach: {limit} reach {reach:.3g} Gbps; "
            f"{fix} or lower the target to at most {reach:.3g}",
            limits=("min_throughput_gbps", *vms),
        )

    def _cost_infeasible(
        self,
        nodes: list[str],
        src: str,
        dsts: list[str],
        cost_cap: float | None,
        budget_usd: float | None,
        size_gb: float | None,
        target: float | None,
    ) -> InfeasiblePlanError:
        if target is not None:
            best = self.max_throughput(nodes, src, dsts)
            if best is None or best.throughput < target * (1 - 1e-6):
                return self._throughput_infeasible(nodes, src, dsts, target, None, None)
            if cost_cap is not None:
                cheapest = self._solve(nodes, src, dsts, fixed_throughput=target)
                if cheapest is not None:
                    per_gb = (cheapest.egress_rate + cheapest.vm_rate) * 8 / target
                    return InfeasiblePlanError(
                        f"the cheapest plan reaching {target:.3g} Gbps costs ${per_gb:.4f}/GB but "
                        f"{_cap_name(budget_usd, size_gb, cost_cap)}: raise it to at least "
                        f"{_cap_value(budget_usd, size_gb, per_gb)} or lower the throughput target",
                        limits=(_cap_limit(budget_usd), "min_throughput_gbps"),
                    )
        if cost_cap is None:
            fix = "raise --max-vms" if self.max_vms is not None else "raise --max-vms-per-region"
            return InfeasiblePlanError(
                f"no route from {src!r} to {', '.join(map(repr, dsts))} fits the VM limits "
                f"(--max-vms {self.max_vms}, --max-vms-per-region {self.max_vms_per_region}): the routes "
                f"that exist need more relay VMs; {fix} or allow other regions",
                limits=("max_vms" if self.max_vms is not None else "max_vms_per_region", "allowed_regions"),
            )
        floor = self.min_cost_per_gb(nodes, src, dsts)
        direct = _direct(self.model, src, dsts, {src: 1, **dict.fromkeys(dsts, 1)}, self.connections_per_vm)
        direct_txt = "" if direct[1] is None else f"the direct path costs ${direct[1]:.4f}/GB and "
        return InfeasiblePlanError(
            f"{direct_txt}the cheapest plan costs ${floor:.4f}/GB but "
            f"{_cap_name(budget_usd, size_gb, cost_cap)}: "
            f"raise it to at least {_cap_value(budget_usd, size_gb, floor)}",
            limits=(_cap_limit(budget_usd),),
        )

    def _to_plan(
        self,
        sol: _Solution,
        src: str,
        dsts: list[str],
        objective: str,
        size_gb: float | None,
        nodes: list[str],
    ) -> TransferPlan:
        edges = [PlanEdge(u, v, f, sol.conns[(u, v)]) for (u, v), f in sorted(sol.flows.items())]
        used = {e.src for e in edges} | {e.dst for e in edges} | {src, *dsts}
        relays = {v: n for v, n in sorted(sol.vms.items()) if n > 0 and v in used}
        vm_rate = sum(n * self.model.vm_price_per_hour(v) / 3600.0 for v, n in relays.items())
        egress_rate = sum(e.gbps * self.model.cost_per_gb(e.src, e.dst) / 8.0 for e in edges)
        t = sol.throughput
        d_tp, d_cost = _direct(self.model, src, dsts, relays, self.connections_per_vm)
        return TransferPlan(
            source=src,
            destinations=list(dsts),
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
            model=self.model.source,
            candidate_regions=list(nodes),
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
    solver: str = "auto",
    time_limit_s: float | None = None,
    mip_gap: float = DEFAULT_MIP_GAP,
) -> TransferPlan:
    """Plan a unicast (one destination) or multicast transfer.

    Objectives: ``"cost"`` — the cheapest plan that reaches ``min_throughput_gbps`` (or moves ``size_gb``
    within ``deadline_s``); ``"throughput"`` — the fastest plan within ``max_cost_per_gb`` (or
    ``budget_usd`` for ``size_gb``), if any. Left out, the objective is "cost" when a throughput target
    is given without a cost limit, else "throughput". Raises :class:`InvalidInputError` on bad input and
    :class:`InfeasiblePlanError` naming the binding limit and the fix.
    """
    planner = Planner(
        model,
        max_vms_per_region=max_vms_per_region,
        max_vms=max_vms,
        connections_per_vm=connections_per_vm,
        allowed_regions=allowed_regions,
        candidate_relays=candidate_relays,
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


def _integer_connections(
    conns: dict[tuple[str, str], float], vms: dict[str, int], per_vm: int
) -> dict[tuple[str, str], int]:
    """Round fractional connection counts per sending region, keeping each region within its limit.

    Largest-remainder rounding: every edge gets the floor or the ceiling of its count and a region's
    total becomes the rounded total, which cannot exceed the (integer) limit the fractional total obeyed.
    Edges that carry flow get at least one connection while the region has connections left.
    """
    out: dict[tuple[str, str], int] = {}
    by_src: dict[str, list[tuple[str, str]]] = {}
    for e in conns:
        by_src.setdefault(e[0], []).append(e)
    for u, edges in by_src.items():
        limit = per_vm * vms.get(u, 0)
        total = min(limit, int(round(sum(conns[e] for e in edges))))
        base = {e: int(math.floor(conns[e] + 1e-9)) for e in edges}
        for e in edges:
            if base[e] == 0 and sum(base.values()) < total:
                base[e] = 1
        spare = total - sum(base.values())
        for e in sorted(edges, key=lambda e: -(conns[e] - math.floor(conns[e] + 1e-9))):
            if spare <= 0:
                break
            if base[e] < math.ceil(conns[e] - 1e-9):
                base[e] += 1
                spare -= 1
        out.update(base)
    return out


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_pos(name: str, value: float | None) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidInputError(f"{name} must be a positive number, got {value!r}")


def _targets(
    objective: str | None,
    min_throughput_gbps: float | None,
    size_gb: float | None,
    deadline_s: float | None,
    budget_usd: float | None,
    max_cost_per_gb: float | None,
) -> tuple[float | None, float | None, str]:
    for name, value in (
        ("--min-throughput-gbps", min_throughput_gbps),
        ("--size-gb", size_gb),
        ("--deadline-s", deadline_s),
        ("--budget-usd", budget_usd),
        ("--max-cost-per-gb", max_cost_per_gb),
    ):
        _check_pos(name, value)
    if objective is not None and objective not in OBJECTIVES:
        raise InvalidInputError(
            f"unknown objective {objective!r}: use 'throughput' (fastest) or 'cost' (cheapest)"
        )
    if budget_usd is not None and max_cost_per_gb is not None:
        raise InvalidInputError("give either --budget-usd or --max-cost-per-gb, not both")
    if budget_usd is not None and size_gb is None:
        raise InvalidInputError(
            "--budget-usd needs --size-gb (the budget is for that much data); or use --max-cost-per-gb"
        )
    if deadline_s is not None and size_gb is None:
        raise InvalidInputError("--deadline-s needs --size-gb (the deadline is for that much data)")
    if deadline_s is not None and min_throughput_gbps is not None:
        raise InvalidInputError("give either --min-throughput-gbps or --size-gb with --deadline-s, not both")
    target = min_throughput_gbps
    if deadline_s is not None and size_gb is not None:
        target = size_gb * 8.0 / deadline_s
    cost_cap = max_cost_per_gb
    if budget_usd is not None and size_gb is not None:
        cost_cap = budget_usd / size_gb
    if objective is None:
        objective = "cost" if target is not None and cost_cap is None else "throughput"
    if objective == "cost" and target is None:
        raise InvalidInputError(
            "objective 'cost' needs a throughput target: "
            "add --min-throughput-gbps or --size-gb with --deadline-s"
        )
    return target, cost_cap, objective


def _cap_name(budget_usd: float | None, size_gb: float | None, cost_cap: float) -> str:
    if budget_usd is not None and size_gb is not None:
        return f"--budget-usd {budget_usd:g} for {size_gb:g} GB allows ${cost_cap:.4f}/GB"
    return f"--max-cost-per-gb is {cost_cap:g}"


def _cap_limit(budget_usd: float | None) -> str:
    """The name of the cost cap a plan is held to (the planner's keyword)."""
    return "budget_usd" if budget_usd is not None else "max_cost_per_gb"


def _target_limit(deadline_s: float | None) -> str:
    """The name of the throughput target a plan must reach (the planner's keyword)."""
    return "deadline_s" if deadline_s is not None else "min_throughput_gbps"


def _cap_value(budget_usd: float | None, size_gb: float | None, per_gb: float) -> str:
    if budget_usd is not None and size_gb is not None:
        return f"--budget-usd {math.ceil(per_gb * size_gb * 100) / 100:.2f}"
    return f"{math.ceil(per_gb * 1e4) / 1e4:.4f}"


def _widest(
    model: NetworkModel, nodes: Sequence[str], root: str, *, forward: bool, cap: Any
) -> dict[str, float]:
    """Bottleneck (widest-path) Gbps from ``root`` to every node (``forward``) or to ``root`` from it."""
    best = {root: math.inf}
    heap = [(-math.inf, root)]
    done: set[str] = set()
    while heap:
        neg, u = heapq.heappop(heap)
        if u in done:
            continue
        done.add(u)
        width = -neg
        for v in nodes:
            if v in done or v == u:
                continue
            c = cap(u, v) if forward else cap(v, u)
            w = min(width, c)
            if w > best.get(v, 0.0):
                best[v] = w
                heapq.heappush(heap, (-w, v))
    best.pop(root, None)
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
