"""Planner figures on the measured 63-region grid; prints one JSON document.

    python benchmarks/planner.py --grid ../shared/data/throughput_grid_calibration.csv \
        [--sample 500] [--speedup-sample 200] [--multicast-sample 30] [--regret-sample 100] \
        [--pruning-sample 20] [--seed 7]

Sections:
* ``solve_time``: wall time of ``plan_transfer`` (fastest plan, 1 VM per region) over a fixed random
  sample of ordered pairs, and of multicast to 6 random destinations;
* ``pruning``: on a sample, the pruned MILP (default candidate relays) vs the MILP over every region;
* ``speedup``: fastest plan vs the direct path with the same VM count at source and destination
  (limit 1 then 4 VMs per region), free and with a cap of 1.25x the direct $/GB;
* ``model``: the default model vs the grid on the held-out split (``fit_network_model.split_of``),
  and plan regret: plans made on the model, evaluated on the measured grid, vs plans made on it.

The MILP runs only on PuLP/CBC; the statistics use only the standard library.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections import deque
from pathlib import Path

from fit_network_model import DEFAULT_GRID, split_of

from airflow_skyplane.exceptions import PlannerError
from airflow_skyplane.planner import REGIONS, NetworkModel, TransferPlan, plan_transfer
from airflow_skyplane.planner.accuracy import spearman
from airflow_skyplane.planner.network import read_grid_csv
from airflow_skyplane.planner.solver import DEFAULT_CANDIDATE_RELAYS, _direct


def quantiles(
    values: list[float], qs: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default=str(DEFAULT_GRID))
    ap.add_argument("--sample", type=int, default=500, help="ordered pairs for unicast solve times")
    ap.add_argument("--speedup-sample", type=int, default=200)
    ap.add_argument("--multicast-sample", type=int, default=30)
    ap.add_argument("--regret-sample", type=int, default=100)
    ap.add_argument("--pruning-sample", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    if not Path(args.grid).exists():
        print(json.dumps({"error": f"grid {args.grid} not found; pass --grid"}))
        return 2

    started = time.perf_counter()
    grid = read_grid_csv(args.grid)
    names = sorted({s for s, _ in grid} | {d for _, d in grid})
    info = {r: REGIONS[r] for r in names}
    measured = NetworkModel(info, measured=dict(grid), source="measured grid (+ model for unmeasured pairs)")
    modelled = NetworkModel(info, source="default model")
    rng = random.Random(args.seed)
    pairs = [(a, b) for a in names for b in names if a != b]
    sample = rng.sample(pairs, min(args.sample, len(pairs)))
    out: dict[str, object] = {
        "grid": args.grid,
        "regions": len(names),
        "measured_pairs": len(grid),
        "candidate_relays": DEFAULT_CANDIDATE_RELAYS,
    }

    # -- unicast solve time (fastest plan, 1 VM per region) -------------------------------------------
    times, plans1 = [], {}
    for s, d in sample:
        t0 = time.perf_counter()
        plans1[(s, d)] = plan_transfer(measured, s, d, max_vms_per_region=1)
        times.append(time.perf_counter() - t0)
    out["solver"] = next(iter(plans1.values())).solver if plans1 else None
    mc_times = []
    for _ in range(args.multicast_sample):
        src = rng.choice(names)
        dsts = rng.sample([n for n in names if n != src], 6)
        t0 = time.perf_counter()
        plan_transfer(measured, src, dsts, max_vms_per_region=1)
        mc_times.append(time.perf_counter() - t0)
    out["solve_time"] = {
        "unicast": {"pairs": len(times), "median_s": round(statistics.median(times), 4), **_q(times)},
        "multicast_6": {
            "transfers": len(mc_times),
            "median_s": round(statistics.median(mc_times), 4) if mc_times else None,
            **_q(mc_times),
        },
    }

    # -- pruning vs full MILP -------------------------------------------------------------------------
    losses, full_times = [], []
    for s, d in sample[: args.pruning_sample]:
        t0 = time.perf_counter()
        full = plan_transfer(measured, s, d, max_vms_per_region=1, candidate_relays=None)
        full_times.append(time.perf_counter() - t0)
        losses.append(1 - plans1[(s, d)].throughput_gbps / full.throughput_gbps)
    out["pruning"] = {
        "pairs": len(losses),
        "pairs_with_loss_over_0.1pct": sum(1 for x in losses if x > 1e-3),
        "max_throughput_loss": round(max(losses), 5) if losses else None,
        "full_milp_median_s": round(statistics.median(full_times), 3) if full_times else None,
    }

    # -- speedup over direct at the same VM count -----------------------------------------------------
    speed: dict[str, object] = {}
    sp_pairs = sample[: args.speedup_sample]
    for k in (1, 4):
        for capped in (False, True):
            ratios = []
            for s, d in sp_pairs:
                d_tp, d_cost = _direct(measured, s, [d], {s: k, d: k}, 64)
                if d_tp <= 0 or d_cost is None:
                    continue
                try:
                    if k == 1 and not capped:
                        p = plans1[(s, d)]
                    else:
                        p = plan_transfer(
                            measured,
                            s,
                            d,
                            max_vms_per_region=k,
                            max_cost_per_gb=1.25 * d_cost if capped else None,
                        )
                except PlannerError:
                    continue
                ratios.append(p.throughput_gbps / d_tp)
            key = f"vms_per_region_{k}" + ("_cost_cap_1.25x_direct" if capped else "")
            speed[key] = {
                "pairs": len(ratios),
                "share_ge_1.5x": round(sum(1 for r in ratios if r >= 1.5) / max(1, len(ratios)), 4),
                **_q(ratios),
            }
    out["speedup"] = speed

    # -- default model vs measured grid on the held-out split ----------------------------------------
    hold = [p for p in sorted(grid) if split_of(*p) == "holdout"]
    errors = []
    for s, d in hold:
        cap = measured.egress_cap(s)
        if grid[(s, d)] < 0.7 * cap:
            errors.append(abs(modelled.throughput(s, d) - grid[(s, d)]) / grid[(s, d)])
    rho = spearman([modelled.throughput(*p) for p in hold], [grid[p] for p in hold])
    rho_all = spearman([modelled.throughput(*p) for p in sorted(grid)], [grid[p] for p in sorted(grid)])
    regrets = []
    holdout_pairs = [p for p in hold if p[0] != p[1]]
    for s, d in rng.sample(holdout_pairs, min(args.regret_sample, len(holdout_pairs))):
        on_model = plan_transfer(modelled, s, d, max_vms_per_region=1)
        on_grid = plan_transfer(measured, s, d, max_vms_per_region=1)
        achieved = evaluate_on(on_model, measured)
        best = evaluate_on(on_grid, measured)
        regrets.append(max(0.0, 1 - achieved / best))
    out["model"] = {
        "holdout_pairs": len(hold),
        "below_70pct_cap_pairs": len(errors),
        "median_abs_rel_error_below_70pct_cap": round(statistics.median(errors), 4) if errors else None,
        "median_abs_rel_error_all_holdout": round(
            statistics.median(abs(modelled.throughput(*p) - grid[p]) / grid[p] for p in hold), 4
        ),
        "spearman_holdout": round(rho, 4),
        "spearman_all_measured_pairs": round(rho_all, 4),
        "plan_regret": {
            "pairs": len(regrets),
            "median": round(statistics.median(regrets), 4) if regrets else None,
            "p90": quantiles(regrets, (0.9,)).get("p90"),
            "mean": round(statistics.fmean(regrets), 4) if regrets else None,
        },
    }
    out["wall_seconds"] = round(time.perf_counter() - started, 1)
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


def _q(values: list[float]) -> dict[str, float]:
    return quantiles(values)


if __name__ == "__main__":
    raise SystemExit(main())
