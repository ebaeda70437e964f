"""Fit the default network model on the calibration grid; write ``_fitted.py``; print JSON.

    python benchmarks/fit_network_model.py [--grid ../shared/data/throughput_grid_calibration.csv] [--write]

The model's form is in ``airflow_skyplane/planner/model.py``. The fit sees only the pairs of the "fit"
split (:func:`split_of`, a hash of the pair's names); ``benchmarks/planner.py`` reports on the
"holdout" rest. Steps, all on the fit split:

1. the shrinkage of the per-region factors is chosen by 5-fold cross-validation (folds by another
   hash of the pair) among a few values;
2. the out-of-fold residuals at that shrinkage give the uncertainty table: per provider pair and band
   (on the cap or below it), the lower quartile of measured / predicted;
3. the final fit uses every fit pair; the quartiles of the same model without its region factors
   serve regions the fit never saw.

Robust non-linear least squares on log Gbps (``scipy.optimize.least_squares`` with a soft-L1 loss: a
handful of measurements are failed runs, 0.1-0.3 Gbps where the pair's other tier reached 5, and must
not drag the fit), ridge penalties on the log region factors. scipy is a development dependency; the
package evaluates the fitted formula with the standard library, and this script checks that both
agree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import lil_matrix

from airflow_skyplane.planner.model import (
    FIBRE_KM_PER_MS,
    PATH_LIMITED_BELOW,
    ModelParams,
    great_circle_km,
    model_gbps,
)
from airflow_skyplane.planner.network import read_grid_csv
from airflow_skyplane.planner.regions import PROVIDERS, REGIONS

DEFAULT_GRID = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "throughput_grid_calibration.csv"
)
FITTED_PY = Path(__file__).resolve().parents[1] / "airflow_skyplane" / "planner" / "_fitted.py"
HOLDOUT_PERCENT = 20
FOLDS = 5
SHRINKAGE = (1.0, 3.0, 10.0, 30.0)
LOSS_SCALE = 0.2  # soft-L1 turns from squares to absolute values at a 20% error
LOWER_QUANTILE = 0.25
PAIRS = [(a, b) for a in PROVIDERS for b in PROVIDERS]
BANDS = ("cap", "path")


def split_of(src: str, dst: str) -> str:
    """'holdout' for a fixed ~20% of ordered pairs (by a hash of the pair's names), else 'fit'."""
    digest = hashlib.sha256(f"{src}->{dst}".encode()).digest()
    return "holdout" if int.from_bytes(digest[:4], "big") % 100 < HOLDOUT_PERCENT else "fit"


def fold_of(src: str, dst: str) -> int:
    """Cross-validation fold of a fit pair (another hash, independent of the split)."""
    digest = hashlib.sha256(f"fold:{src}->{dst}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % FOLDS


class Design:
    """The pairs as arrays, and the parameter vector's layout."""

    def __init__(self, pairs: list[tuple[str, str]], regions: list[str]) -> None:
        self.pairs = pairs
        self.regions = regions
        index = {r: i for i, r in enumerate(regions)}
        a = [REGIONS[s] for s, _ in pairs]
        b = [REGIONS[d] for _, d in pairs]
        self.pp = np.array([PAIRS.index((x.provider, y.provider)) for x, y in zip(a, b, strict=True)])
        self.km = np.array([great_circle_km(x, y) for x, y in zip(a, b, strict=True)])
        self.cross = np.array([x.continent != y.continent for x, y in zip(a, b, strict=True)], float)
        n = len(PROVIDERS)
        # region factor slots: egress of the source towards the destination's provider, ingress of
        # the destination from the source's provider (-1: a region without factors)
        self.eg = np.array(
            [
                index[x.name] * n + PROVIDERS.index(y.provider) if x.name in index else -1
                for x, y in zip(a, b, strict=True)
            ]
        )
        self.ig = np.array(
            [
                index[y.name] * n + PROVIDERS.index(x.provider) if y.name in index else -1
                for x, y in zip(a, b, strict=True)
            ]
        )
        self.n_reg = len(regions) * n
        # layout: stretch, rtt offset, sharpness | log scale, alpha, log cross, log cap per pair |
        # log egress, log ingress per region and provider
        self.o_pair = 3
        self.o_eg = self.o_pair + 4 * len(PAIRS)
        self.o_ig = self.o_eg + self.n_reg
        self.size = self.o_ig + self.n_reg

    def log_predict(self, th: np.ndarray, regional: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """log Gbps and log cap per pair."""
        stretch, offset, sharp = th[0], th[1], th[2]
        k = len(PAIRS)
        p = self.o_pair
        log_scale, alpha, log_cross, log_cap = (th[p + i * k : p + (i + 1) * k][self.pp] for i in range(4))
        rtt = offset + 2 * stretch * self.km / FIBRE_KM_PER_MS
        lp = log_scale - alpha * np.log(rtt / 100.0) + log_cross * self.cross
        if regional:
            eg = np.where(self.eg >= 0, th[self.o_eg + np.maximum(self.eg, 0)], 0.0)
            ig = np.where(self.ig >= 0, th[self.o_ig + np.maximum(self.ig, 0)], 0.0)
            lp = lp + eg + ig
        return np.logaddexp(-sharp * log_cap, -sharp * lp) / -sharp, log_cap

    def sparsity(self) -> lil_matrix:
        m = len(self.pairs)
        jac = lil_matrix((m + 2 * self.n_reg, self.size), dtype=int)
        rows = np.arange(m)
        jac[:m, 0:3] = 1
        for i in range(4):
            jac[rows, self.o_pair + i * len(PAIRS) + self.pp] = 1
        has_eg, has_ig = self.eg >= 0, self.ig >= 0
        jac[rows[has_eg], self.o_eg + self.eg[has_eg]] = 1
        jac[rows[has_ig], self.o_ig + self.ig[has_ig]] = 1
        for j in range(2 * self.n_reg):
            jac[m + j, self.o_eg + j] = 1
        return jac


def fit(design: Design, y: np.ndarray, shrinkage: float) -> np.ndarray:
    """Robust least squares of log Gbps; the region factors' logs pay ``shrinkage * x**2``."""
    k = len(PAIRS)
    th = np.zeros(design.size)
    th[0:3] = (2.0, 30.0, 4.0)
    p = design.o_pair
    th[p : p + k] = math.log(20.0)
    th[p + k : p + 2 * k] = 0.8
    th[p + 2 * k : p + 3 * k] = math.log(0.9)
    th[p + 3 * k : p + 4 * k] = math.log(7.0)
    lo = np.full(design.size, -np.inf)
    hi = np.full(design.size, np.inf)
    # physical bounds: routes a little longer than great circles, at most a soft min of 10 (the
    # provider pair's cap and the path blend near their crossing), throughput that falls with the
    # round trip and on crossing a continent; unbounded, the fit trades these terms against each other
    # where the data cannot tell them apart (all pairs of a provider pair on its cap, say)
    lo[0:3], hi[0:3] = (1.0, 0.0, 1.0), (2.5, 60.0, 10.0)
    lo[p + k : p + 2 * k], hi[p + k : p + 2 * k] = 0.0, 1.5
    lo[p + 2 * k : p + 3 * k], hi[p + 2 * k : p + 3 * k] = math.log(0.2), 0.0
    lo[p + 3 * k : p + 4 * k], hi[p + 3 * k : p + 4 * k] = math.log(1.0), math.log(40.0)
    log_y = np.log(np.maximum(y, 0.05))
    weight = math.sqrt(shrinkage)

    def residuals(t: np.ndarray) -> np.ndarray:
        pred, _ = design.log_predict(t)
        return np.concatenate([pred - log_y, weight * t[design.o_eg :]])

    out = least_squares(
        residuals,
        th,
        bounds=(lo, hi),
        loss="soft_l1",
        f_scale=LOSS_SCALE,
        jac_sparsity=design.sparsity(),
        max_nfev=1500,
    )
    return np.asarray(out.x)


def robust_loss(residual: np.ndarray) -> float:
    z = (residual / LOSS_SCALE) ** 2
    return float(np.mean(2 * (np.sqrt(1 + z) - 1)))


def lower_table(residual: np.ndarray, design: Design, band: np.ndarray) -> dict[tuple[str, str, str], float]:
    """Lower quartile of exp(residual) per provider pair and band (the pair's quartile when a band
    has fewer than 20 pairs)."""
    table = {}
    for i, (a, b) in enumerate(PAIRS):
        mine = design.pp == i
        for name in BANDS:
            sel = mine & (band == name)
            use = residual[sel] if sel.sum() >= 20 else residual[mine]
            table[(a, b, name)] = round(float(np.exp(np.quantile(use, LOWER_QUANTILE))), 4)
    return table


def bands(design: Design, th: np.ndarray, regional: bool = True) -> np.ndarray:
    pred, log_cap = design.log_predict(th, regional)
    return np.where(pred < np.log(PATH_LIMITED_BELOW) + log_cap, "path", "cap")


def to_params(design: Design, th: np.ndarray, lower: dict, lower_unseen: dict) -> ModelParams:
    k, p, n = len(PAIRS), design.o_pair, len(PROVIDERS)

    def per_pair(i: int, log: bool) -> dict[tuple[str, str], float]:
        vals = th[p + i * k : p + (i + 1) * k]
        return {pp: round(float(math.exp(v) if log else v), 4) for pp, v in zip(PAIRS, vals, strict=True)}

    def per_region(offset: int) -> dict[str, tuple[float, float, float]]:
        return {
            r: tuple(round(float(math.exp(th[offset + j * n + q])), 4) for q in range(n))  # type: ignore[misc]
            for j, r in enumerate(design.regions)
        }

    return ModelParams(
        stretch=round(float(th[0]), 4),
        rtt_offset_ms=round(float(th[1]), 3),
        sharpness=round(float(th[2]), 4),
        scale=per_pair(0, True),
        alpha=per_pair(1, False),
        cross=per_pair(2, True),
        cap=per_pair(3, True),
        egress=per_region(design.o_eg),
        ingress=per_region(design.o_ig),
        lower=lower,
        lower_unseen=lower_unseen,
    )


def python_source(params: ModelParams, fit_pairs: int, shrinkage: float) -> str:
    def lit(x: object) -> str:  # a Python literal as ruff formats it (double quotes)
        if isinstance(x, str):
            return json.dumps(x)
        if isinstance(x, tuple):
            return "(" + ", ".join(lit(v) for v in x) + ")"
        return repr(x)

    def pairs(d: object) -> str:
        return "{\n" + "".join(f"    {lit(k)}: {lit(v)},\n" for k, v in d.items()) + "}"  # type: ignore[attr-defined]

    return (
        '"""Fitted parameters of the default network model (the formula is in ``model.py``).\n\n'
        'Written by ``python benchmarks/fit_network_model.py --write`` from the "fit" split of the\n'
        f"calibration grid ({fit_pairs} pairs; 64 iperf3 connections between large VMs); the grid itself is\n"
        "not shipped. Region factors are shrunk towards 1 (a ridge penalty of "
        f"{shrinkage:g} on their logs, chosen by\n5-fold cross-validation). ``LOWER`` is the lower quartile "
        "of measured / predicted over out-of-fold\npairs, by provider pair and band; ``LOWER_UNSEEN`` the "
        "same for the model without region factors\n(regions the fit never saw). Region factors are "
        "ordered towards / from (aws, gcp, azure).\n"
        '"""\n\n'
        f"STRETCH = {params.stretch!r}\nRTT_OFFSET_MS = {params.rtt_offset_ms!r}\n"
        f"SHARPNESS = {params.sharpness!r}\n"
        f"SCALE: dict[tuple[str, str], float] = {pairs(params.scale)}\n"
        f"ALPHA: dict[tuple[str, str], float] = {pairs(params.alpha)}\n"
        f"CROSS: dict[tuple[str, str], float] = {pairs(params.cross)}\n"
        f"CAP: dict[tuple[str, str], float] = {pairs(params.cap)}\n"
        f"EGRESS: dict[str, tuple[float, float, float]] = {pairs(params.egress)}\n"
        f"INGRESS: dict[str, tuple[float, float, float]] = {pairs(params.ingress)}\n"
        f"LOWER: dict[tuple[str, str, str], float] = {pairs(params.lower)}\n"
        f"LOWER_UNSEEN: dict[tuple[str, str, str], float] = {pairs(params.lower_unseen)}\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default=str(DEFAULT_GRID))
    ap.add_argument("--write", action="store_true", help=f"write {FITTED_PY.name}")
    args = ap.parse_args(argv)
    grid = read_grid_csv(args.grid)
    pairs = [p for p in sorted(grid) if split_of(*p) == "fit"]
    y = np.array([grid[p] for p in pairs])
    regions = sorted({r for p in pairs for r in p})
    folds = np.array([fold_of(*p) for p in pairs])
    design = Design(pairs, regions)

    # 1-2. shrinkage by cross-validation; out-of-fold residuals at the chosen one
    cv: dict[float, float] = {}
    out_of_fold: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    for shrinkage in SHRINKAGE:
        residual = np.zeros(len(pairs))
        band = np.empty(len(pairs), dtype=object)
        for f in range(FOLDS):
            train, test = folds != f, folds == f
            part = Design([p for p, t in zip(pairs, train, strict=True) if t], regions)
            th = fit(part, y[train], shrinkage)
            held = Design([p for p, t in zip(pairs, test, strict=True) if t], regions)
            pred, _ = held.log_predict(th)
            residual[test] = np.log(np.maximum(y[test], 0.05)) - pred
            band[test] = bands(held, th)
        cv[shrinkage] = robust_loss(residual)
        out_of_fold[shrinkage] = (residual, band)
        print(f"shrinkage {shrinkage:g}: out-of-fold loss {cv[shrinkage]:.5f}", file=sys.stderr)
    shrinkage = min(cv, key=cv.__getitem__)
    residual, band = out_of_fold[shrinkage]
    lower = lower_table(residual, design, band)

    # 3. final fit on every fit pair; the region-free quartiles for unseen regions
    th = fit(design, y, shrinkage)
    pred_flat, _ = design.log_predict(th, regional=False)
    lower_unseen = lower_table(np.log(np.maximum(y, 0.05)) - pred_flat, design, bands(design, th, False))
    params = to_params(design, th, lower, lower_unseen)

    # the package's formula (standard library, rounded numbers) must give what was fitted
    pred, _ = design.log_predict(th)
    ours = np.array([model_gbps(REGIONS[s], REGIONS[d], params) for s, d in pairs])
    drift = float(np.max(np.abs(np.log(ours) - pred)))
    if drift > 1e-3:
        raise SystemExit(f"model.py and this fit disagree by {drift:.2g} in log Gbps: fix one of them")
    if args.write:
        FITTED_PY.write_text(python_source(params, len(pairs), shrinkage), encoding="utf-8")
    out = {
        "grid": str(args.grid),
        "fit_pairs": len(pairs),
        "regions_with_factors": len(regions),
        "cross_validation_loss": {f"{k:g}": round(v, 5) for k, v in cv.items()},
        "shrinkage": shrinkage,
        "fit_loss": round(robust_loss(np.log(np.maximum(y, 0.05)) - pred), 5),
        "max_log_drift_vs_package": round(drift, 6),
        "params": params.to_dict(),
        "lower": {"->".join(k): v for k, v in lower.items()},
        "lower_unseen": {"->".join(k): v for k, v in lower_unseen.items()},
        "written": str(FITTED_PY) if args.write else None,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
