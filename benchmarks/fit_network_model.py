"""Fit the default network model's parameters on the calibration grid; print them as JSON.

    python benchmarks/fit_network_model.py [--grid ../shared/data/throughput_grid_calibration.csv]

The fit uses only the pairs of the "fit" split (see :func:`split_of`); ``benchmarks/planner.py``
reports the model's error on the "holdout" split the fit never saw. The printed ``python`` block is
what ``airflow_skyplane/planner/_fitted.py`` holds. Pure standard library: coordinate descent with a
golden-section line search on a clipped mean squared log error (a handful of parameters, a few thousand
pairs: no optimiser library needed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

from airflow_skyplane.planner.network import ModelParams, model_gbps, read_grid_csv
from airflow_skyplane.planner.regions import PROVIDERS, REGIONS

DEFAULT_GRID = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "throughput_grid_calibration.csv"
)
HOLDOUT_PERCENT = 20


def split_of(src: str, dst: str) -> str:
    """'holdout' for a fixed ~20% of ordered pairs (by a hash of the pair's names), else 'fit'."""
    digest = hashlib.sha256(f"{src}->{dst}".encode()).digest()
    return "holdout" if int.from_bytes(digest[:4], "big") % 100 < HOLDOUT_PERCENT else "fit"


PAIRS = [(a, b) for a in PROVIDERS for b in PROVIDERS]
N_GLOBAL = 4  # stretch, rtt offset, alpha, sharpness; then log scale x 9, log cap x 9


def _params(vec: list[float]) -> ModelParams:
    return ModelParams(
        stretch=vec[0],
        rtt_offset_ms=vec[1],
        alpha=vec[2],
        sharpness=vec[3],
        scale={pp: math.exp(vec[N_GLOBAL + i]) for i, pp in enumerate(PAIRS)},
        cap={pp: math.exp(vec[N_GLOBAL + len(PAIRS) + i]) for i, pp in enumerate(PAIRS)},
    )


def _loss(vec: list[float], data: list[tuple[str, str, float]]) -> float:
    """Mean squared log error, each term clipped at 1 (a factor e): a handful of measurements are
    failed runs (0.1-0.3 Gbps where the other tier of the same pair reached 5), and they must not
    drag the fit."""
    params = _params(vec)
    total = 0.0
    for src, dst, y in data:
        pred = model_gbps(REGIONS[src], REGIONS[dst], params)
        total += min(1.0, (math.log(max(pred, 1e-6)) - math.log(max(y, 0.05))) ** 2)
    return total / len(data)


def _golden(f, lo: float, hi: float, iters: int = 28) -> float:  # type: ignore[no-untyped-def]
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (a + b) / 2


def fit(data: list[tuple[str, str, float]], sweeps: int = 8) -> tuple[list[float], float]:
    """Coordinate descent: each parameter in turn, golden-section search within its bounds."""
    bounds = [(1.0, 3.5), (0.0, 60.0), (0.0, 1.5), (1.0, 30.0)]
    bounds += [(math.log(0.5), math.log(200.0))] * len(PAIRS)  # log scale
    bounds += [(math.log(1.0), math.log(40.0))] * len(PAIRS)  # log cap
    # Start with caps a little above each provider pair's 95th percentile and scales high enough that
    # the RTT term matters on long paths, so that no coordinate starts where it has no effect.
    caps = []
    for pp in PAIRS:
        ys = sorted(y for s, d, y in data if (REGIONS[s].provider, REGIONS[d].provider) == pp) or [5.0]
        caps.append(math.log(min(39.0, 1.2 * ys[int(0.95 * (len(ys) - 1))])))
    vec = [2.0, 20.0, 0.6, 8.0] + [c + math.log(2.0) for c in caps] + caps
    best = _loss(vec, data)
    for _ in range(sweeps):
        for i, (lo, hi) in enumerate(bounds):

            def f(x: float, i: int = i) -> float:
                trial = list(vec)
                trial[i] = x
                return _loss(trial, data)

            x = _golden(f, lo, hi)
            val = f(x)
            if val < best:
                vec[i], best = x, val
    return vec, best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default=str(DEFAULT_GRID))
    ap.add_argument("--sweeps", type=int, default=8)
    args = ap.parse_args(argv)
    grid = read_grid_csv(args.grid)
    data = [(s, d, g) for (s, d), g in sorted(grid.items()) if split_of(s, d) == "fit"]
    vec, loss = fit(data, args.sweeps)
    p = _params(vec)
    out = {
        "grid": str(args.grid),
        "fit_pairs": len(data),
        "holdout_pairs": len(grid) - len(data),
        "mean_clipped_squared_log_error": round(loss, 5),
        "params": {
            "stretch": round(p.stretch, 4),
            "rtt_offset_ms": round(p.rtt_offset_ms, 3),
            "alpha": round(p.alpha, 4),
            "sharpness": round(p.sharpness, 4),
            "scale": {f"{a}->{b}": round(v, 4) for (a, b), v in p.scale.items()},
            "cap": {f"{a}->{b}": round(v, 4) for (a, b), v in p.cap.items()},
        },
        "python": (
            f"STRETCH = {p.stretch:.4f}\nRTT_OFFSET_MS = {p.rtt_offset_ms:.3f}\nALPHA = {p.alpha:.4f}\n"
            f"SHARPNESS = {p.sharpness:.4f}\n"
            + "SCALE = {"
            + ", ".join(f"({a!r}, {b!r}): {v:.4f}" for (a, b), v in p.scale.items())
            + "}\nCAP = {"
            + ", ".join(f"({a!r}, {b!r}): {v:.4f}" for (a, b), v in p.cap.items())
            + "}\n"
        ),
    }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
