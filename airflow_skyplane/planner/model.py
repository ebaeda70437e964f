"""The default network model: Gbps between two regions from where they are and who runs them.

For one VM in region ``a`` sending to one VM in region ``b`` over 64 TCP connections (the way the
calibration grid was measured with iperf3)::

    rtt_ms   = rtt_offset_ms + 2 * stretch * great_circle_km(a, b) / 200      (light in fibre ~200 km/ms)
    path     = scale[pp] * (100 / rtt_ms) ** alpha[pp]                         (pp: the provider pair)
               * cross[pp]            if a and b are on different continents
               * egress[a][b's provider] * ingress[b][a's provider]
    gbps     = (cap[pp] ** -sharpness + path ** -sharpness) ** (-1 / sharpness)  (a soft min(cap, path))

The path term is 64 window-limited connections whose rate falls with the round trip; each provider
pair has its own RTT band (``scale``, ``alpha``) because the pair decides whether traffic stays on one
backbone or crosses the internet, and its own continent-crossing factor. ``egress`` and ``ingress``
are per-region factors towards (from) each provider, shrunk towards 1 (the provider pair's mean) in
the fit: a region's peering with another cloud is what the distance terms miss most. A region the fit
never saw has factors 1. ``cap`` is what a VM pair of the two providers reaches on short paths.

**Uncertainty.** The model is wrong by tens of percent on pairs whose paths limit them. The fit keeps,
per pair type (provider pair, and whether the model puts the pair on its cap or below it), the lower
quartile of measured / predicted over out-of-fold pairs (pairs each fold's model did not see);
:func:`model_lower_gbps` is the prediction times that factor: three pairs in four of that type
measure at least this much. Pairs with a region the fit never saw use the quartiles of the model
without region factors.

The numbers live in ``_fitted.py``, written by ``benchmarks/fit_network_model.py``; the grid they were
fitted on is not shipped. Pure standard library: the planner must import fast and without Airflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from airflow_skyplane.planner import _fitted
from airflow_skyplane.planner.regions import PROVIDERS, Region

FIBRE_KM_PER_MS = 200.0
PATH_LIMITED_BELOW = 0.7
"""A pair whose prediction is below this share of its provider pair's cap is "path-limited"."""

_NEUTRAL = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class ModelParams:
    """The default model's parameters (see the module docstring)."""

    stretch: float
    rtt_offset_ms: float
    sharpness: float
    scale: Mapping[tuple[str, str], float]
    alpha: Mapping[tuple[str, str], float]
    cross: Mapping[tuple[str, str], float]
    cap: Mapping[tuple[str, str], float]
    egress: Mapping[str, tuple[float, float, float]]
    ingress: Mapping[str, tuple[float, float, float]]
    lower: Mapping[tuple[str, str, str], float]
    lower_unseen: Mapping[tuple[str, str, str], float]

    def to_dict(self) -> dict[str, object]:
        """The provider-pair numbers (the per-region factors are left out: there are hundreds)."""
        per_pair = {
            f"{a}->{b}": {
                "scale": self.scale[(a, b)],
                "alpha": self.alpha[(a, b)],
                "cross": self.cross[(a, b)],
                "cap": self.cap[(a, b)],
            }
            for a in PROVIDERS
            for b in PROVIDERS
        }
        return {
            "stretch": self.stretch,
            "rtt_offset_ms": self.rtt_offset_ms,
            "sharpness": self.sharpness,
            "provider_pairs": per_pair,
            "regions_with_factors": len(self.egress),
        }


FITTED_PARAMS = ModelParams(
    stretch=_fitted.STRETCH,
    rtt_offset_ms=_fitted.RTT_OFFSET_MS,
    sharpness=_fitted.SHARPNESS,
    scale=dict(_fitted.SCALE),
    alpha=dict(_fitted.ALPHA),
    cross=dict(_fitted.CROSS),
    cap=dict(_fitted.CAP),
    egress=dict(_fitted.EGRESS),
    ingress=dict(_fitted.INGRESS),
    lower=dict(_fitted.LOWER),
    lower_unseen=dict(_fitted.LOWER_UNSEEN),
)


def great_circle_km(a: Region, b: Region) -> float:
    """Haversine distance on a 6371 km sphere."""
    la1, lo1, la2, lo2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


def model_rtt_ms(a: Region, b: Region, params: ModelParams = FITTED_PARAMS) -> float:
    return max(0.1, params.rtt_offset_ms + 2 * params.stretch * great_circle_km(a, b) / FIBRE_KM_PER_MS)


def _soft_min(cap: float, path: float, sharpness: float) -> float:
    # in logs, so that a huge path term or sharpness cannot overflow
    x, y = -sharpness * math.log(cap), -sharpness * math.log(path)
    top = max(x, y)
    return math.exp(-(top + math.log(math.exp(x - top) + math.exp(y - top))) / sharpness)


def path_gbps(a: Region, b: Region, params: ModelParams = FITTED_PARAMS, *, regional: bool = True) -> float:
    """The path term alone (what the RTT and the regions allow, before the VM pair's cap)."""
    key = (a.provider, b.provider)
    path = params.scale[key] * (100.0 / model_rtt_ms(a, b, params)) ** params.alpha[key]
    if a.continent != b.continent:
        path *= params.cross[key]
    if regional:
        path *= params.egress.get(a.name, _NEUTRAL)[PROVIDERS.index(b.provider)]
        path *= params.ingress.get(b.name, _NEUTRAL)[PROVIDERS.index(a.provider)]
    return path


def model_gbps(a: Region, b: Region, params: ModelParams = FITTED_PARAMS, *, regional: bool = True) -> float:
    """Default-model Gbps between one VM in ``a`` and one in ``b`` at 64 connections."""
    return _soft_min(
        params.cap[(a.provider, b.provider)], path_gbps(a, b, params, regional=regional), params.sharpness
    )


def pair_band(a: Region, b: Region, gbps: float, params: ModelParams = FITTED_PARAMS) -> str:
    """``"path"`` when the prediction is well below the provider pair's cap, else ``"cap"``."""
    return "path" if gbps < PATH_LIMITED_BELOW * params.cap[(a.provider, b.provider)] else "cap"


def seen(region: Region, params: ModelParams = FITTED_PARAMS) -> bool:
    """Whether the fit had measurements of this region (and so fitted its factors)."""
    return region.name in params.egress


def lower_factor(a: Region, b: Region, gbps: float, params: ModelParams = FITTED_PARAMS) -> float:
    """Lower quartile of measured / predicted for pairs of this type (<= 1)."""
    table = params.lower if seen(a, params) and seen(b, params) else params.lower_unseen
    return min(1.0, table[(a.provider, b.provider, pair_band(a, b, gbps, params))])


def model_lower_gbps(a: Region, b: Region, params: ModelParams = FITTED_PARAMS) -> float:
    """The conservative prediction: three pairs in four of this type measure at least this much."""
    gbps = model_gbps(a, b, params)
    return gbps * lower_factor(a, b, gbps, params)


__all__ = [
    "FITTED_PARAMS",
    "ModelParams",
    "great_circle_km",
    "lower_factor",
    "model_gbps",
    "model_lower_gbps",
    "model_rtt_ms",
    "pair_band",
    "path_gbps",
]
