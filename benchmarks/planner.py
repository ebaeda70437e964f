"""Planner figures: the defaults a user gets, on the catalog and against the measured grid; prints JSON.

    python benchmarks/planner.py --grid ../shared/data/throughput_grid_calibration.csv \
        [--sample 500] [--multicast-sample 30] [--regret-sample 100] [--pruning-sample 20] \
        [--speedup-sample 200] [--seed 7] [--solver auto]

Sections (the JSON document is the last line):

* ``catalog``: ``plan_transfer`` with every default (objective "throughput", tolerance 5%, the default
  model, 1 VM per region) on random ordered pairs of the full catalog: solve times, plans that rent a
  relay for less than the tolerance's gain over the direct path, relay regions whose removal (a
  re-plan over the plan's other regions, fastest and cheapest within the tolerance) costs less than
  the tolerance, and of those the ones the plan without would not make dearer either (a relay that
  pays neither in speed nor in price), relay regions carrying < 1% of the flow, hops with flow and no
  connection, $/GB and speed against the direct path; and the solve time of multicasts to 6 random
  destinations.
* ``model``: the default model against the held-out split of the grid (pairs the fit never saw,
  ``fit_network_model.split_of``): median relative error on pairs measured below 70% of the source's
  VM cap, Spearman (with bootstrap 90% intervals), how often a measurement is at least the
  conservative rate the planner gives relay hops, the same model without its region factors, and what
  is left for any region-level model (GCP to GCP pairs against distance, their reverse direction and
  additive region effects; the Spearman if all pairs but GCP-sourced ones were exact).
* ``measured``: on random held-out pairs, plans made on the default model (relays limited to the
  grid's regions) run on the measured network: regret against the plan made on the measured network,
  speed against the measured direct path (< 0.95x, >= 1.5x), $/GB against it. The same for two
  contenders that switch one default off (relay hops at the best estimate; tolerance 0), to show what
  each does.
* ``pruning``: the default candidate relays against the MILP over every region (measured grid).
* ``speedup``: plans on the measured grid against its direct path, 1 and 4 VMs per region, free and
  with a cap of 1.25x the direct $/GB.

"Run on the measured network" keeps the plan's VMs, hops and connections and gives each hop the
grid's Gbps x connections / 64 (a hop the grid lacks: the default model's estimate), each VM its caps;
the throughput is then a max-flow. Standard library only besides the package.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from fit_network_model import DEFAULT_GRID, split_of

from airflow_skyplane.exceptions import PlannerError
from airflow_skyplane.planner import REGIONS, NetworkModel, TransferPlan, plan_transfer
from airflow_skyplane.planner.accuracy import spearman
from airflow_skyplane.planner.model import great_circle_km, model_gbps
from airflow_skyplane.planner.network import read_grid_csv
from airflow_skyplane.planner.result import direct_path
from airflow_skyplane.planner.solver import DEFAULT_CANDIDATE_RELAYS, DEFAULT_TOLERANCE


def quantiles(
    values: Sequence[float], qs: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)
    out = {}
    for q in qs:
        pos = q * (len(v) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        out[f"p{round(q * 100):g}"] = round(v[lo] + (v[hi] - v[lo]) * (pos - lo), 4)
    return out


def share(values: Sequence[bool]) -> float:
    return round(sum(values) / max(1, len(values)), 4)


def evaluate_on(plan: TransferPlan, model: NetworkModel) -> float:
    """Throughput ``plan`` reaches when the network is ``model``: its VMs, edges and connections fixed,
    each edge's capacity = model Gbps x connections / 64, each VM's caps as planned. Max-flow with
    node splitting (unicast)."""
    cap: dict[tuple[str, str], float] = {}
    for r, n in plan.relays.items():
        if r == plan.source:
            c = model.egress_cap(r) * n
        elif r in plan.destinations:
            c = model.ingress_cap(r) * n
        else:
            c = min(model.egress_cap(r), model.ingress_cap(r)) * n
        cap[(r + "#in", r + "#out")] = c
    for e in plan.edges:
        key = (e.src + "#out", e.dst + "#in")
        cap[key] = cap.get(key, 0.0) + model.throughput(e.src, e.dst) * e.connections / 64
    return min(_max_flow(cap, plan.source + "#in", d + "#out") for d in plan.destinations)


def _max_flow(cap: dict[tuple[str, str], float], s: str, t: str) -> float:
    res: dict[str, dict[str, float]] = {}
    for (u, v), c in cap.items():
        res.setdefault(u, {})[v] = res.get(u, {}).get(v, 0.0) + c
        res.setdefault(v, {}).setdefault(u, 0.0)
    total = 0.0
    while True:
        parent: dict[str, str] = {s: s}
        queue = deque([s])
        while queue and t not in parent:
            u = queue.popleft()
            for v, c in res.get(u, {}).items():
                if c > 1e-12 and v not in parent:
                    parent[v] = u
                    queue.append(v)
        if t not in parent:
            return total
        path, v = [], t
        while v != s:
            path.append((parent[v], v))
            v = parent[v]
        push = min(res[u][v] for u, v in path)
        for u, v in path:
            res[u][v] -= push
            res[v][u] += push
        total += push


CPU_SECONDS: list[float] = []
"""CPU seconds of each :func:`timed` call, in order: the work a plan takes whatever the machine's load
(HiGHS solves in this process; CBC's subprocess is not counted, so with CBC this is a lower bound)."""


def timed(fn: Callable[[], TransferPlan]) -> tuple[TransferPlan, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    plan = fn()
    CPU_SECONDS.append(time.process_time() - c0)
    return plan, time.perf_counter() - t0


def relay_regions(plan: TransferPlan) -> list[str]:
    return [r for r in plan.relays if r != plan.source and r not in plan.destinations]


# -- sections ---------------------------------------------------------------------------------------


def catalog_section(args: argparse.Namespace, rng: random.Random) -> dict[str, object]:
    """Every default, the full catalog: solve times and whether each rented relay pays for itself."""
    model = NetworkModel.default()
    names = model.regions
    pairs = rng.sample([(a, b) for a in names for b in names if a != b], args.sample)
    tol = DEFAULT_TOLERANCE
    times, cpu, speed, cost, plans = [], [], [], [], []
    for s, d in pairs:
        plan, seconds = timed(lambda s=s, d=d: plan_transfer(model, s, d, solver=args.solver))
        plans.append(plan)
        times.append(seconds)
        cpu.append(CPU_SECONDS[-1])
        speed.append(plan.throughput_gbps / plan.direct_throughput_gbps)
        assert plan.direct_cost_per_gb_usd is not None
        cost.append(plan.cost_per_gb_usd / plan.direct_cost_per_gb_usd)
    with_relays = [p for p in plans if relay_regions(p)]
    small_gain = [p for p in with_relays if p.throughput_gbps < (1 + tol) * p.direct_throughput_gbps]
    idle, removable, unpaid = [], [], []
    for p in with_relays:
        for r in relay_regions(p):
            name = f"{p.source}->{p.destinations[0]} via {r}"
            carried = sum(e.gbps for e in p.edges if e.dst == r)
            if carried < 0.01 * p.throughput_gbps:
                idle.append(name)
            rest = [x for x in p.relays if x != r]
            # the fastest plan over the plan's other regions (what removing r costs at least), and the
            # cheapest within the tolerance of it
            others = []
            for tolerance in (0.0, tol):
                try:
                    others.append(
                        plan_transfer(
                            model, p.source, p.destinations, allowed_regions=rest, tolerance=tolerance
                        )
                    )
                except PlannerError:
                    pass
            close = [o for o in others if o.throughput_gbps >= (1 - tol) * p.throughput_gbps]
            if close:
                removable.append(name)
                if any(o.cost_per_gb_usd <= p.cost_per_gb_usd for o in close):
                    unpaid.append(name)
    zero_conn = sum(1 for p in plans for e in p.edges if e.connections < 1 and e.gbps > 0)

    mc_times, mc_cpu = [], []
    for _ in range(args.multicast_sample):
        src = rng.choice(names)
        dsts = rng.sample([n for n in names if n != src], 6)
        _, seconds = timed(lambda src=src, dsts=dsts: plan_transfer(model, src, dsts, solver=args.solver))
        mc_times.append(seconds)
        mc_cpu.append(CPU_SECONDS[-1])
    return {
        "regions": len(names),
        "pairs": len(pairs),
        "solver": plans[0].solver if plans else None,
        "solve_time_unicast": {
            "median_s": round(statistics.median(times), 4),
            **quantiles(times),
            "cpu_median_s": round(statistics.median(cpu), 4),
            "cpu": quantiles(cpu, (0.5, 0.9, 0.99)),
        },
        "solve_time_multicast_6": {
            "transfers": len(mc_times),
            "median_s": round(statistics.median(mc_times), 4) if mc_times else None,
            **quantiles(mc_times),
            "cpu_median_s": round(statistics.median(mc_cpu), 4) if mc_cpu else None,
            "cpu": quantiles(mc_cpu, (0.5, 0.9, 0.99)),
        },
        "plans_with_relays": len(with_relays),
        "relay_plans_gaining_less_than_tolerance_over_direct": len(small_gain),
        "relays_whose_removal_costs_less_than_tolerance": len(removable),
        "relays_paying_neither_in_speed_nor_in_price": len(unpaid),
        "removable_but_dearer_without_examples": [x for x in removable if x not in unpaid][:5],
        "unpaid_examples": unpaid[:5],
        "relay_regions_carrying_under_1pct": len(idle),
        "edges_with_flow_and_0_connections": zero_conn,
        "speed_vs_direct": quantiles(speed),
        "cost_per_gb_vs_direct": quantiles(cost),
        "cost_per_gb_vs_direct_of_relay_plans": quantiles(
            [p.cost_per_gb_usd / (p.direct_cost_per_gb_usd or math.inf) for p in with_relays]
        ),
    }


def model_section(grid: dict[tuple[str, str], float], rng: random.Random) -> dict[str, object]:
    """The default model on the held-out pairs."""
    model = NetworkModel.default()
    hold = [p for p in sorted(grid) if split_of(*p) == "holdout"]
    hard = [p for p in hold if grid[p] < 0.7 * model.egress_cap(p[0])]

    def hard_error(ps: Sequence[tuple[str, str]]) -> float:
        return statistics.median(abs(model.throughput(*p) - grid[p]) / grid[p] for p in ps)

    def rho(ps: Sequence[tuple[str, str]]) -> float:
        return spearman([model.throughput(*p) for p in ps], [grid[p] for p in ps])

    flat = {p: model_gbps(REGIONS[p[0]], REGIONS[p[1]], regional=False) for p in hold}
    boot_err = sorted(hard_error(rng.choices(hard, k=len(hard))) for _ in range(300))
    boot_rho = sorted(rho(rng.choices(hold, k=len(hold))) for _ in range(300))
    return {
        "holdout_pairs": len(hold),
        "below_70pct_cap_pairs": len(hard),
        "median_abs_rel_error_below_70pct_cap": round(hard_error(hard), 4),
        "median_abs_rel_error_below_70pct_cap_90pct_interval": [
            round(boot_err[15], 4),
            round(boot_err[284], 4),
        ],
        "median_abs_rel_error_all_holdout": round(hard_error(hold), 4),
        "spearman_holdout": round(rho(hold), 4),
        "spearman_holdout_90pct_interval": [round(boot_rho[15], 4), round(boot_rho[284], 4)],
        "share_measured_at_least_conservative_rate": share(
            [grid[p] >= model.lower_throughput(*p) for p in hold]
        ),
        "without_region_factors": {
            "median_abs_rel_error_below_70pct_cap": round(
                statistics.median(abs(flat[p] - grid[p]) / grid[p] for p in hard), 4
            ),
            "spearman_holdout": round(spearman([flat[p] for p in hold], [grid[p] for p in hold]), 4),
        },
        "what_is_left": residual_diagnostics(grid, model, hold),
    }


def residual_diagnostics(
    grid: dict[tuple[str, str], float], model: NetworkModel, hold: list[tuple[str, str]]
) -> dict[str, object]:
    """Whether any region-level feature could explain what the model misses: GCP to GCP pairs (all
    measured ones) against distance, their own reverse direction and additive region effects; and the
    held-out Spearman if every pair but the GCP-sourced ones were predicted exactly."""
    gg = [p for p in sorted(grid) if p[0].startswith("gcp:") and p[1].startswith("gcp:")]
    back = [p for p in gg if (p[1], p[0]) in grid]
    logs = {p: math.log(grid[p]) for p in gg}
    mean = statistics.fmean(logs.values())
    src_eff: dict[str, float] = {}
    dst_eff: dict[str, float] = {}
    for _ in range(30):  # additive source and destination effects in logs, by alternating means
        src_eff = _group_means(logs, mean, dst_eff, 0)
        dst_eff = _group_means(logs, mean, src_eff, 1)
    left = [v - mean - src_eff[p[0]] - dst_eff[p[1]] for p, v in logs.items()]
    guess = [grid[p] if not p[0].startswith("gcp:") else model.throughput(*p) for p in hold]
    return {
        "gcp_to_gcp_pairs": len(gg),
        "gcp_to_gcp_spearman_with_distance": round(
            spearman([great_circle_km(REGIONS[a], REGIONS[b]) for a, b in gg], [grid[p] for p in gg]), 4
        ),
        "gcp_to_gcp_spearman_with_reverse_direction": round(
            spearman([grid[p] for p in back], [grid[(p[1], p[0])] for p in back]), 4
        ),
        "gcp_to_gcp_variance_explained_by_source_and_destination": round(
            1 - statistics.pvariance(left) / statistics.pvariance(list(logs.values())), 4
        ),
        "spearman_holdout_if_all_but_gcp_sourced_pairs_were_exact": round(
            spearman(guess, [grid[p] for p in hold]), 4
        ),
    }


def _group_means(
    logs: dict[tuple[str, str], float], mean: float, other: dict[str, float], side: int
) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for p, v in logs.items():
        sums.setdefault(p[side], []).append(v - mean - other.get(p[1 - side], 0.0))
    return {k: statistics.fmean(v) for k, v in sums.items()}


def measured_section(
    args: argparse.Namespace, grid: dict[tuple[str, str], float], rng: random.Random
) -> dict[str, object]:
    """Plans made on the model, run on the measured network."""
    names = sorted({s for s, _ in grid} | {d for _, d in grid})
    info = {r: REGIONS[r] for r in names}
    measured = NetworkModel(info, measured=dict(grid), source="measured grid (+ model for unmeasured pairs)")
    modelled = NetworkModel(info, source="default model")
    hold = [p for p in sorted(grid) if split_of(*p) == "holdout"]
    pairs = rng.sample(hold, min(args.regret_sample, len(hold)))
    contenders: dict[str, dict[str, object]] = {
        "default": {},
        "best_estimate_relay_hops": {"robust": False},
        "tolerance_0": {"tolerance": 0.0},
    }
    oracle = {p: plan_transfer(measured, *p, solver=args.solver) for p in pairs}
    reach = {p: evaluate_on(oracle[p], measured) for p in pairs}
    direct = {p: direct_path(measured, p[0], [p[1]], {p[0]: 1, p[1]: 1}, 64) for p in pairs}
    out: dict[str, object] = {
        "pairs": len(pairs),
        "measured_plan_vs_direct": {
            "share_ge_1.5x": share([reach[p] / direct[p][0] >= 1.5 for p in pairs]),
            **quantiles([reach[p] / direct[p][0] for p in pairs], (0.1, 0.5, 0.9)),
        },
    }
    for name, options in contenders.items():
        regrets, vs_direct, cost, unmeasured, relayed = [], [], [], 0, 0
        for p in pairs:
            plan = plan_transfer(modelled, *p, solver=args.solver, **options)  # type: ignore[arg-type]
            got = evaluate_on(plan, measured)
            regrets.append(max(0.0, 1 - got / reach[p]))
            vs_direct.append(got / direct[p][0])
            # $/GB at the throughput the plan reaches (the VMs run longer when it is slower)
            rate = (
                plan.egress_cost_per_gb_usd * plan.throughput_gbps
                + plan.vm_cost_per_gb_usd * plan.throughput_gbps
            )
            cost.append(rate / got / (direct[p][1] or math.inf))
            unmeasured += any(not measured.is_measured(e.src, e.dst) for e in plan.edges)
            relayed += bool(relay_regions(plan))
        out[name] = {
            "options": options,
            "regret_median": round(statistics.median(regrets), 4),
            "regret_p90": quantiles(regrets, (0.9,))["p90"],
            "regret_mean": round(statistics.fmean(regrets), 4),
            "share_slower_than_direct_0.95x": share([x < 0.95 for x in vs_direct]),
            "share_ge_1.5x_direct": share([x >= 1.5 for x in vs_direct]),
            "vs_direct": quantiles(vs_direct, (0.1, 0.5, 0.9)),
            "cost_per_gb_vs_direct": quantiles(cost, (0.1, 0.5, 0.9)),
            "plans_with_relays": relayed,
            "plans_with_an_unmeasured_hop": unmeasured,
        }
    return out


def pruning_section(args: argparse.Namespace, grid: dict[tuple[str, str], float], rng: random.Random) -> dict:  # type: ignore[type-arg]
    names = sorted({s for s, _ in grid} | {d for _, d in grid})
    measured = NetworkModel({r: REGIONS[r] for r in names}, measured=dict(grid), source="measured grid")
    pairs = rng.sample([(a, b) for a in names for b in names if a != b], args.pruning_sample)
    losses, full_times = [], []
    for s, d in pairs:
        pruned = plan_transfer(measured, s, d, tolerance=0.0, solver=args.solver)
        full, seconds = timed(
            lambda s=s, d=d: plan_transfer(
                measured, s, d, candidate_relays=None, tolerance=0.0, solver=args.solver
            )
        )
        full_times.append(seconds)
        losses.append(1 - pruned.throughput_gbps / full.throughput_gbps)
    return {
        "pairs": len(losses),
        "pairs_with_loss_over_0.1pct": sum(1 for x in losses if x > 1e-3),
        "max_throughput_loss": round(max(losses), 5) if losses else None,
        "full_milp_median_s": round(statistics.median(full_times), 3) if full_times else None,
    }


def speedup_section(args: argparse.Namespace, grid: dict[tuple[str, str], float], rng: random.Random) -> dict:  # type: ignore[type-arg]
    names = sorted({s for s, _ in grid} | {d for _, d in grid})
    measured = NetworkModel({r: REGIONS[r] for r in names}, measured=dict(grid), source="measured grid")
    pairs = rng.sample([(a, b) for a in names for b in names if a != b], args.speedup_sample)
    out = {}
    for k in (1, 4):
        for capped in (False, True):
            ratios = []
            for s, d in pairs:
                d_tp, d_cost = direct_path(measured, s, [d], {s: k, d: k}, 64)
                if d_tp <= 0 or d_cost is None:
                    continue
                try:
                    p = plan_transfer(
                        measured,
                        s,
                        d,
                        max_vms_per_region=k,
                        max_cost_per_gb=1.25 * d_cost if capped else None,
                        solver=args.solver,
                    )
                except PlannerError:
                    continue
                ratios.append(p.throughput_gbps / d_tp)
            key = f"vms_per_region_{k}" + ("_cost_cap_1.25x_direct" if capped else "")
            out[key] = {
                "pairs": len(ratios),
                "share_ge_1.5x": share([r >= 1.5 for r in ratios]),
                **quantiles(ratios),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default=str(DEFAULT_GRID))
    ap.add_argument("--sample", type=int, default=500, help="random catalog pairs (defaults, full catalog)")
    ap.add_argument("--multicast-sample", type=int, default=30)
    ap.add_argument("--regret-sample", type=int, default=100)
    ap.add_argument("--pruning-sample", type=int, default=20)
    ap.add_argument("--speedup-sample", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--solver", default="auto", choices=("auto", "cbc", "highs"))
    ap.add_argument(
        "--sections",
        default="catalog,model,measured,pruning,speedup",
        help="comma-separated subset of the sections to run",
    )
    args = ap.parse_args(argv)
    if not Path(args.grid).exists():
        print(json.dumps({"error": f"grid {args.grid} not found; pass --grid"}))
        return 2
    started = time.perf_counter()
    grid = read_grid_csv(args.grid)
    out: dict[str, object] = {
        "grid": args.grid,
        "measured_pairs": len(grid),
        "defaults": {"tolerance": DEFAULT_TOLERANCE, "candidate_relays": DEFAULT_CANDIDATE_RELAYS},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    for name, section in (
        ("catalog", lambda rng: catalog_section(args, rng)),
        ("model", lambda rng: model_section(grid, rng)),
        ("measured", lambda rng: measured_section(args, grid, rng)),
        ("pruning", lambda rng: pruning_section(args, grid, rng)),
        ("speedup", lambda rng: speedup_section(args, grid, rng)),
    ):
        if name not in args.sections.split(","):
            continue
        t0 = time.perf_counter()
        out[name] = section(random.Random(f"{args.seed}:{name}"))
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
