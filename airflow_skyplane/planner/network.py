"""Network model: throughput and price between regions, per-VM caps and VM prices.

A :class:`NetworkModel` answers what the solver asks about the network:

* ``throughput(src, dst)``: Gbps that one VM in ``src`` pushes to one VM in ``dst`` over 64 TCP
  connections (the way the measured grids were taken with iperf3), the best estimate;
* ``lower_throughput(src, dst)``: the conservative rate the planner gives relay hops: a measurement as
  it is, a model prediction at the lower quartile of the model's error on such pairs;
* ``basis(src, dst)``: what the rate rests on: ``"measured"`` (a grid the caller loaded, or a custom
  network), ``"history"`` (throughput past transfers measured on the hop) or ``"model"``;
* ``cost_per_gb(src, dst)``: egress list price in USD per GB;
* ``egress_cap(r)``, ``ingress_cap(r)``: per-VM NIC limits in Gbps; ``vm_price_per_hour(r)``.

Throughput comes from a measured grid when the caller loads one (:meth:`NetworkModel.from_csv`) and
from the default model (:mod:`~airflow_skyplane.planner.model`) otherwise, or for pairs the grid
lacks. **Measurement history** (:meth:`NetworkModel.with_history`: per-hop Gbps that finished
transfers measured, with their age) is preferred over both: a fresh measurement is taken as it is, and
as it ages its weight halves every ``history_half_life_s`` (30 days) in favour of the grid or the
model, in log space; its uncertainty grows back the same way.

The caller reads files (a grid, the history of :mod:`airflow_skyplane.measurements`); this module only
holds what they gave it. Standard library only: the planner must import fast and without Airflow.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.planner.grid import (
    CONNECTIONS_PER_MEASUREMENT,
    export_rows,
    read_grid_csv,
)
from airflow_skyplane.planner.model import (
    FITTED_PARAMS,
    ModelParams,
    great_circle_km,
    lower_factor,
    model_gbps,
)
from airflow_skyplane.planner.regions import (
    DEFAULT_LIMITS,
    PROVIDERS,
    REGIONS,
    ProviderLimits,
    Region,
    egress_price_per_gb,
    resolve_region,
    unknown_region_message,
)

HISTORY_HALF_LIFE_S = 30 * 86400.0
"""Age at which a history measurement weighs as much as the grid or model value it replaces."""

BASES = ("measured", "history", "model")


@dataclass(frozen=True)
class Observation:
    """Gbps past transfers measured on one hop, scaled to 64 connections, and how old it is."""

    gbps: float
    age_s: float
    samples: int = 1


@dataclass
class NetworkModel:
    """Throughput, prices and per-VM limits over a set of regions.

    Build one with :meth:`default`, :meth:`from_csv` or :meth:`custom` (arbitrary small networks, as the
    tests use), and add measurement history with :meth:`with_history`. ``measured`` holds grid Gbps by
    ordered pair; pairs it lacks use the default model.
    """

    region_info: dict[str, Region]
    measured: dict[tuple[str, str], float] = field(default_factory=dict)
    limits: dict[str, ProviderLimits] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    params: ModelParams = FITTED_PARAMS
    spot: bool = False
    price_override: dict[tuple[str, str], float] = field(default_factory=dict)
    cap_override: dict[str, tuple[float, float]] = field(default_factory=dict)
    vm_price_override: dict[str, float] = field(default_factory=dict)
    fallback_to_model: bool = True
    source: str = "default model"
    observed: dict[tuple[str, str], Observation] = field(default_factory=dict)
    history_half_life_s: float = HISTORY_HALF_LIFE_S
    # caches (a model is built once and queried for every pair of every plan; treat it as immutable)
    _model_cache: dict[tuple[str, str], tuple[float, float]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _estimate_cache: dict[tuple[str, str], tuple[float, float]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _cap_cache: dict[str, tuple[float, float]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    memo: dict[object, object] = field(default_factory=dict, init=False, repr=False, compare=False)
    """Tables derived from the model by its users (the planner keeps its hop-capacity matrices here)."""

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def default(cls, limits: Mapping[str, ProviderLimits] | None = None, spot: bool = False) -> NetworkModel:
        """The catalog's regions with the fitted default model: needs no measurement."""
        return cls(dict(REGIONS), limits=dict(limits or DEFAULT_LIMITS), spot=spot)

    @classmethod
    def from_csv(
        cls, path: str | Path, limits: Mapping[str, ProviderLimits] | None = None, spot: bool = False
    ) -> NetworkModel:
        """Load a measured grid; pairs it lacks fall back to the default model."""
        measured = read_grid_csv(path)
        return cls(
            dict(REGIONS),
            measured=measured,
            limits=dict(limits or DEFAULT_LIMITS),
            spot=spot,
            source=f"grid {Path(path).name} ({len(measured)} measured pairs) + default model",
        )

    @classmethod
    def custom(
        cls,
        regions: Iterable[Region],
        throughput: Mapping[tuple[str, str], float],
        cost_per_gb: Mapping[tuple[str, str], float],
        caps: Mapping[str, tuple[float, float]],
        vm_price_per_hour: Mapping[str, float],
    ) -> NetworkModel:
        """A fully specified network (no model fallback: a pair without throughput has none)."""
        info = {r.name: r for r in regions}
        return cls(
            info,
            measured=dict(throughput),
            price_override=dict(cost_per_gb),
            cap_override=dict(caps),
            vm_price_override=dict(vm_price_per_hour),
            fallback_to_model=False,
            source="custom network",
        )

    def with_measured(self, measured: Mapping[tuple[str, str], float], source: str) -> NetworkModel:
        """A copy with another measured grid (same regions, prices, limits and history)."""
        return dataclasses.replace(self, measured=dict(measured), source=source)

    def with_history(
        self, observed: Mapping[tuple[str, str], Observation], half_life_s: float | None = None
    ) -> NetworkModel:
        """A copy that prefers these per-hop measurements of past transfers (pairs of unknown regions
        are left out: the history may hold regions another catalog knew)."""
        if half_life_s is not None and not (math.isfinite(half_life_s) and half_life_s > 0):
            raise InvalidInputError(
                f"history half-life must be a positive number of seconds, got {half_life_s!r}"
            )
        kept = {p: o for p, o in observed.items() if p[0] in self.region_info and p[1] in self.region_info}
        if not kept:
            return self
        return dataclasses.replace(
            self,
            observed={**self.observed, **kept},
            history_half_life_s=half_life_s or self.history_half_life_s,
            source=f"{self.source} + history of {len(kept)} hops",
        )

    # -- queries ------------------------------------------------------------------------------------
    @property
    def regions(self) -> list[str]:
        return sorted(self.region_info)

    def region(self, name: str) -> Region:
        return self.region_info[self.resolve(name)]

    def resolve(self, name: str) -> str:
        """Canonical name of ``name`` or :class:`InvalidInputError` naming it and how to find names."""
        if name in self.region_info:
            return name
        try:
            return resolve_region(name, self.region_info)
        except InvalidInputError:
            raise InvalidInputError(unknown_region_message(name)) from None

    def is_measured(self, src: str, dst: str) -> bool:
        """Whether a loaded grid (or a custom network) gives this pair's rate."""
        return (src, dst) in self.measured

    def basis(self, src: str, dst: str) -> str:
        """What the pair's rate rests on: "history", "measured", "model" (or "none": no link)."""
        if (src, dst) in self.observed:
            return "history"
        if (src, dst) in self.measured:
            return "measured"
        return "model" if self.fallback_to_model else "none"

    def _model(self, src: str, dst: str) -> tuple[float, float]:
        """Default-model Gbps and its lower-quartile factor."""
        got = self._model_cache.get((src, dst))
        if got is None:
            a, b = self.region_info[src], self.region_info[dst]
            gbps = model_gbps(a, b, self.params)
            got = self._model_cache[(src, dst)] = (gbps, lower_factor(a, b, gbps, self.params))
        return got

    def model_throughput(self, src: str, dst: str) -> float:
        return 0.0 if src == dst else self._model(src, dst)[0]

    def _base(self, src: str, dst: str) -> tuple[float, float]:
        """Rate and lower-quartile factor before history: the grid's, else the model's (or none)."""
        got = self.measured.get((src, dst))
        if got is not None:
            return got, 1.0
        if not self.fallback_to_model:
            return 0.0, 1.0
        return self._model(src, dst)

    def history_weight(self, src: str, dst: str) -> float:
        """Weight of the pair's history measurement (1 when fresh, 0.5 at the half-life, 0: none)."""
        seen = self.observed.get((src, dst))
        if seen is None:
            return 0.0
        return float(0.5 ** (max(0.0, seen.age_s) / self.history_half_life_s))

    def _estimate(self, src: str, dst: str) -> tuple[float, float]:
        """Best estimate and its lower-quartile factor."""
        got = self._estimate_cache.get((src, dst))
        if got is None:
            got = self._estimate_cache[(src, dst)] = self._combine(src, dst)
        return got

    def _combine(self, src: str, dst: str) -> tuple[float, float]:
        if src == dst:
            return 0.0, 1.0
        base, factor = self._base(src, dst)
        seen = self.observed.get((src, dst))
        if seen is None or seen.gbps <= 0:
            return base, factor
        if base <= 0:
            return seen.gbps, 1.0
        w = self.history_weight(src, dst)
        return math.exp(w * math.log(seen.gbps) + (1 - w) * math.log(base)), factor ** (1 - w)

    def throughput(self, src: str, dst: str) -> float:
        """Gbps from one VM in ``src`` to one VM in ``dst`` at 64 connections (0: no usable link)."""
        return self._estimate(src, dst)[0]

    def lower_throughput(self, src: str, dst: str) -> float:
        """The conservative rate: measurements as they are, model predictions at the lower quartile of
        the model's error on pairs of their type (see :mod:`~airflow_skyplane.planner.model`)."""
        gbps, factor = self._estimate(src, dst)
        return gbps * factor

    def cost_per_gb(self, src: str, dst: str) -> float:
        got = self.price_override.get((src, dst))
        if got is not None:
            return got
        return egress_price_per_gb(self.region_info[src], self.region_info[dst])

    def _caps(self, region: str) -> tuple[float, float]:
        got = self._cap_cache.get(region)
        if got is None:
            if region in self.cap_override:
                got = self.cap_override[region]
            else:
                lim = self.limits[self.region_info[region].provider]
                got = (lim.egress_gbps, lim.ingress_gbps)
            self._cap_cache[region] = got
        return got

    def egress_cap(self, region: str) -> float:
        return self._caps(region)[0]

    def ingress_cap(self, region: str) -> float:
        return self._caps(region)[1]

    def vm_price_per_hour(self, region: str) -> float:
        if region in self.vm_price_override:
            return self.vm_price_override[region]
        lim = self.limits[self.region_info[region].provider]
        return lim.spot_usd_per_hour if self.spot else lim.on_demand_usd_per_hour


__all__ = [
    "BASES",
    "CONNECTIONS_PER_MEASUREMENT",
    "FITTED_PARAMS",
    "HISTORY_HALF_LIFE_S",
    "ModelParams",
    "NetworkModel",
    "Observation",
    "PROVIDERS",
    "export_rows",
    "great_circle_km",
    "model_gbps",
    "read_grid_csv",
]
