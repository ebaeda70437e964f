"""The overlay MILP: how many relay VMs where, and how much flow over which hops.

PuLP (a declared dependency) builds the model and drives the solver: CBC, which PuLP bundles, so no
system install is needed. ``solver="auto"`` (the default) uses HiGHS in-process instead when
``highspy`` is importable: same optima, several times faster, no subprocess or temporary files
(measured in docs/planner.md); ``"cbc"`` and ``"highs"`` force one.

Formulation, over regions V (source s, destinations D, relays) and directed edges E:

* ``N[v]``   integer VMs in region v, ``0..max_vms_per_region`` (>= 1 at s and every d), ``sum N <= max_vms``
  (or fixed counts: the VMs a plan rents, when the planner settles its connections);
* ``C[e]``   TCP connections on edge e; ``sum_{e out of v} C[e] <= connections_per_vm * N[v]``;
  continuous while the planner chooses the VMs, or fixed whole numbers when it settles a plan (an
  LP then: only the flows move);
* ``F[e]``   Gbps sent over e, once: ``F[e] <= rate(e) / 64 * C[e]`` (rates are per 64 connections);
* per-VM NIC caps: ``sum_out F <= egress_cap(v) * N[v]``, ``sum_in F <= ingress_cap(v) * N[v]``;
* ``T``      Gbps every destination receives. Unicast: F itself satisfies flow conservation (T out of s,
  T into d). Multicast: one commodity per destination, ``f_d[e]`` conserving T from s to d, and
  ``f_d[e] <= F[e]``: a shared edge carries the data once and its egress is paid on F.

Cost per second: egress ``sum_e F[e] * price(e) / 8`` ($/GB x GB/s) plus VMs ``sum_v N[v] * hourly(v)/3600``.
Both are linear, and so are "fastest" (maximise T), "cheapest at least at T" (minimise the cost rate
with ``T >= t``), a cap c on $/GB (``cost_rate <= c * T / 8``) and a Dinkelbach step
(``cost_rate - lambda * T / 8``). One :class:`OverlayMILP` is built once and re-solved with each.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulp

from airflow_skyplane.exceptions import InvalidInputError, PlannerError
from airflow_skyplane.planner.grid import CONNECTIONS_PER_MEASUREMENT

FLOW_EPS = 1e-6
"""Gbps below which a solver's flow is numerical noise, not a hop to run."""
_COST_SCALE = 8 * 3600.0
"""Cost objectives are solved in $/h x 8 (about $/GB at 1 Gbps), not $/s: differences of a ten-thousandth
of a cent per second would sit below the solvers' optimality tolerances."""


@dataclass(frozen=True)
class OverlayNetwork:
    """What the MILP knows of the network: regions, per-64-connection rates, prices and caps."""

    nodes: list[str]
    src: str
    dsts: list[str]
    rate: Mapping[tuple[str, str], float]
    price: Mapping[tuple[str, str], float]
    vm_price_per_hour: Mapping[str, float]
    egress_cap: Mapping[str, float]
    ingress_cap: Mapping[str, float]

    def edges(self, among: set[str] | None = None) -> list[tuple[str, str]]:
        """Usable edges: nothing enters the source; in a unicast nothing leaves the destination."""
        multicast = len(self.dsts) > 1
        nodes = [n for n in self.nodes if among is None or n in among]
        return [
            (u, v)
            for u in nodes
            for v in nodes
            if u != v
            and v != self.src
            and (multicast or u not in self.dsts)
            and self.rate.get((u, v), 0.0) > 0
        ]


@dataclass
class Solution:
    throughput: float
    vms: dict[str, int]
    flows: dict[tuple[str, str], float]
    conns: dict[tuple[str, str], float]
    egress_rate: float  # $/s
    vm_rate: float  # $/s
    seconds: float

    @property
    def cost_per_gb(self) -> float:
        return (
            (self.egress_rate + self.vm_rate) * 8 / self.throughput if self.throughput > 0 else float("inf")
        )

    def relays(self, net: OverlayNetwork) -> list[str]:
        """Regions that rent VMs only to relay (neither the source nor a destination)."""
        return [v for v, n in self.vms.items() if n > 0 and v != net.src and v not in net.dsts]


# -- solvers --------------------------------------------------------------------------------------


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


def make_solver(name: str, time_limit_s: float | None, gap: float) -> tuple[Any, str]:
    """The PuLP solver object and its label. 'auto' is HiGHS when highspy is installed (measured
    several times faster than CBC, same optima), else the CBC binary PuLP bundles."""
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


# -- the model ------------------------------------------------------------------------------------


class OverlayMILP:
    """The MILP over one network, built once and re-solved for each objective.

    ``vms`` fixes the VM counts (only regions with VMs take part); ``connections`` fixes C (only edges
    with connections take part); ``fixed_throughput`` makes T a constant; ``cost_cap`` ($/GB) and
    ``min_throughput`` (Gbps) are constraints on every solve.
    """

    def __init__(
        self,
        net: OverlayNetwork,
        solver: Any,
        *,
        max_vms_per_region: int,
        max_vms: int | None,
        connections_per_vm: int,
        vms: Mapping[str, int] | None = None,
        connections: Mapping[tuple[str, str], int] | None = None,
        fixed_throughput: float | None = None,
        cost_cap: float | None = None,
        min_throughput: float | None = None,
    ) -> None:
        self.net = net
        self.solver = solver
        nodes = [v for v in net.nodes if vms is None or vms.get(v, 0) > 0]
        self.nodes = nodes
        self.edges = [e for e in net.edges(set(nodes)) if connections is None or connections.get(e, 0) > 0]
        idx = {n: i for i, n in enumerate(net.nodes)}
        prob = pulp.LpProblem("overlay", pulp.LpMaximize)
        if vms is None:
            n_var: dict[str, Any] = {
                v: pulp.LpVariable(
                    f"N{idx[v]}",
                    lowBound=1 if v == net.src or v in net.dsts else 0,
                    upBound=max_vms_per_region,
                    cat="Integer",
                )
                for v in nodes
            }
        else:
            n_var = {v: int(vms[v]) for v in nodes}
        c_var: dict[tuple[str, str], Any] = (
            {e: int(connections[e]) for e in self.edges}
            if connections is not None
            else {
                e: pulp.LpVariable(f"C{idx[e[0]]}_{idx[e[1]]}", 0, connections_per_vm * max_vms_per_region)
                for e in self.edges
            }
        )
        f_var = {e: pulp.LpVariable(f"F{idx[e[0]]}_{idx[e[1]]}", 0) for e in self.edges}
        t_var: Any = fixed_throughput if fixed_throughput is not None else pulp.LpVariable("T", 0)
        out_e: dict[str, list[tuple[str, str]]] = {v: [] for v in nodes}
        in_e: dict[str, list[tuple[str, str]]] = {v: [] for v in nodes}
        for e in self.edges:
            out_e[e[0]].append(e)
            in_e[e[1]].append(e)
        for e in self.edges:
            prob += f_var[e] <= net.rate[e] / CONNECTIONS_PER_MEASUREMENT * c_var[e]
            if vms is None:
                # implied by the per-region sums, but per edge they tighten the LP relaxation a lot
                # (the solver proves "no VM, no flow" without branching)
                u, v = e
                per_vm = min(
                    net.rate[e] * connections_per_vm / CONNECTIONS_PER_MEASUREMENT, net.egress_cap[u]
                )
                prob += f_var[e] <= per_vm * n_var[u]
                prob += f_var[e] <= net.ingress_cap[v] * n_var[v]
        for v in nodes:
            if out_e[v]:
                if connections is None:
                    prob += pulp.lpSum(c_var[e] for e in out_e[v]) <= connections_per_vm * n_var[v]
                prob += pulp.lpSum(f_var[e] for e in out_e[v]) <= net.egress_cap[v] * n_var[v]
            if in_e[v]:
                prob += pulp.lpSum(f_var[e] for e in in_e[v]) <= net.ingress_cap[v] * n_var[v]
        if max_vms is not None and vms is None:
            prob += pulp.lpSum(n_var.values()) <= max_vms
        if len(net.dsts) > 1:
            for j, d in enumerate(net.dsts):
                # a destination never forwards its own copy: no commodity-d variable leaves d
                fd = {e: pulp.LpVariable(f"f{j}_{idx[e[0]]}_{idx[e[1]]}", 0) for e in self.edges if e[0] != d}
                for e, var in fd.items():
                    prob += var <= f_var[e]
                for v in nodes:
                    net_out = pulp.lpSum(fd[e] for e in out_e[v] if e in fd) - pulp.lpSum(
                        fd[e] for e in in_e[v] if e in fd
                    )
                    prob += net_out == (t_var if v == net.src else (-t_var if v == d else 0))
        else:
            for v in nodes:
                net_out = pulp.lpSum(f_var[e] for e in out_e[v]) - pulp.lpSum(f_var[e] for e in in_e[v])
                prob += net_out == (t_var if v == net.src else (-t_var if v == net.dsts[0] else 0))
        self.egress_rate = pulp.lpSum(f_var[e] * (net.price[e] / 8.0) for e in self.edges)
        self.vm_rate = pulp.lpSum(n_var[v] * (net.vm_price_per_hour[v] / 3600.0) for v in nodes)
        if cost_cap is not None:
            prob += _COST_SCALE * (self.egress_rate + self.vm_rate) <= _COST_SCALE * cost_cap * t_var / 8.0
        if min_throughput is not None and fixed_throughput is None:
            prob += t_var >= min_throughput
        self._floor: Any = None
        self.prob, self.n_var, self.c_var, self.f_var, self.t_var = prob, n_var, c_var, f_var, t_var
        self.fixed_throughput = fixed_throughput

    # -- objectives ---------------------------------------------------------------------------------
    def fastest(self) -> Solution | None:
        """Maximise T (with the constraints given at construction)."""
        if self.fixed_throughput is not None:
            raise PlannerError("fastest() needs a variable throughput")
        self._set_floor(None)
        self.prob.sense = pulp.LpMaximize
        self.prob.setObjective(self.t_var)
        return self._run()

    def cheapest_per_gb(
        self, start: float, at_least: float | None = None, rounds: int = 6
    ) -> Solution | None:
        """Lowest $/GB with ``T >= at_least``: Dinkelbach iterations from the ratio ``start`` (the $/GB
        of a known solution), each a solve of ``cost_rate - lambda * T / 8``."""
        lam, best = start, None
        for _ in range(rounds):
            # a hair above lambda: between plans of one price per GB, the faster wins
            sol = self.ratio(lam * (1 + 1e-6), at_least)
            if sol is None or sol.throughput <= 0:
                break
            if best is not None and sol.cost_per_gb >= lam * (1 - 1e-6):
                break
            best, lam = sol, sol.cost_per_gb
        return best

    def cheapest(self, at_least: float | None = None, solver: Any = None) -> Solution | None:
        """Minimise the cost rate, with ``T >= at_least`` (T is fixed when the model was built so);
        ``solver`` overrides the model's (another gap)."""
        self._set_floor(at_least)
        self.prob.sense = pulp.LpMinimize
        self.prob.setObjective(_COST_SCALE * (self.egress_rate + self.vm_rate))
        return self._run(solver)

    def ratio(self, lam: float, at_least: float | None = None) -> Solution | None:
        """Minimise ``cost_rate - lam * T / 8`` (one Dinkelbach step towards the lowest $/GB), with
        ``T >= at_least``."""
        self._set_floor(at_least)
        self.prob.sense = pulp.LpMinimize
        self.prob.setObjective(_COST_SCALE * (self.egress_rate + self.vm_rate - lam * self.t_var / 8.0))
        return self._run()

    def _set_floor(self, at_least: float | None) -> None:
        if self.fixed_throughput is not None or at_least is None:
            if self._floor is not None:
                self._floor.changeRHS(0.0)
            return
        at_least = max(0.0, at_least)
        if self._floor is None:
            self._floor = self.t_var >= at_least
            self.prob += self._floor, "throughput_floor"
        else:
            self._floor.changeRHS(at_least)

    def _run(self, solver: Any = None) -> Solution | None:
        started = time.perf_counter()
        try:
            status = self.prob.solve(solver or self.solver)
        except pulp.PulpSolverError as exc:
            raise PlannerError(f"the MILP solver failed ({exc}); try --solver cbc") from None
        seconds = time.perf_counter() - started
        if pulp.LpStatus[status] != "Optimal":
            return None
        net = self.net
        vms = {v: int(round(_value(self.n_var[v]))) for v in self.nodes}
        conns = {e: max(0.0, _value(self.c_var[e])) for e in self.edges}
        flows = {e: max(0.0, _value(self.f_var[e])) for e in self.edges}
        flows = {e: f for e, f in flows.items() if f > FLOW_EPS}  # below that: solver noise, no hop
        t_val = float(self.fixed_throughput if self.fixed_throughput is not None else _value(self.t_var))
        e_rate = sum(f * net.price[e] / 8.0 for e, f in flows.items())
        v_rate = sum(vms[v] * net.vm_price_per_hour[v] / 3600.0 for v in self.nodes)
        return Solution(t_val, vms, flows, {e: conns[e] for e in flows}, e_rate, v_rate, seconds)


def _value(x: Any) -> float:
    if isinstance(x, (int, float)):
        return float(x)
    return float(x.value() or 0.0)


MIN_HOP_SHARE = 0.01
"""A hop carrying less than this share of the throughput gets no connections when a plan is settled:
the LP routes its trickle over the other hops (a relay VM is not opened for it)."""


def whole_connections(
    net: OverlayNetwork,
    vms: Mapping[str, int],
    flows: Mapping[tuple[str, str], float],
    throughput: float,
    connections_per_vm: int,
    min_share: float = MIN_HOP_SHARE,
) -> dict[tuple[str, str], int]:
    """Whole connections per hop from a solution with fractional ones.

    Each sending region's whole budget (``connections_per_vm`` x its VMs) is split over the hops it
    sends on in proportion to the connections their flows need (64 x flow / rate), largest remainders
    first, every hop at least one: a hop with flow always has a connection, and spare connections
    only add headroom.
    """
    by_src: dict[str, list[tuple[str, str]]] = {}
    for e, f in flows.items():
        if f >= min_share * throughput and net.rate.get(e, 0.0) > 0:
            by_src.setdefault(e[0], []).append(e)
    out: dict[tuple[str, str], int] = {}
    for u, edges in by_src.items():
        budget = connections_per_vm * vms.get(u, 0)
        need = {e: CONNECTIONS_PER_MEASUREMENT * flows[e] / net.rate[e] for e in edges}
        edges = sorted(edges, key=lambda e: -need[e])[:budget]
        if not edges:
            continue
        total = sum(need[e] for e in edges)
        share = {e: need[e] * budget / total for e in edges}
        base = {e: max(1, int(share[e])) for e in edges}
        while sum(base.values()) > budget:  # the at-least-one floor overshot: take from the largest
            top = max(base, key=lambda e: base[e])
            base[top] -= 1
        spare = budget - sum(base.values())
        for e in sorted(edges, key=lambda e: -(share[e] - base[e])):
            if spare <= 0:
                break
            base[e] += 1
            spare -= 1
        out.update(base)
    return out
