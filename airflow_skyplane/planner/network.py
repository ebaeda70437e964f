"""Network model: throughput and price between regions, per-VM caps and VM prices.

A :class:`NetworkModel` answers what the solver asks about the network:

* ``throughput(src, dst)``: Gbps that one VM in ``src`` pushes to one VM in ``dst`` over 64 TCP
  connections (the way the measured grids were taken with iperf3);
* ``cost_per_gb(src, dst)``: egress list price in USD per GB;
* ``egress_cap(r)``, ``ingress_cap(r)``: per-VM NIC limits in Gbps; ``vm_price_per_hour(r)``.

Throughput comes from a measured grid when the caller loads one (:meth:`NetworkModel.from_csv`) and
from the **default model** otherwise, or for pairs the grid lacks. The default model is a small
physical model that needs no measurement::

    rtt_ms   = rtt_offset_ms + 2 * stretch * great_circle_km / 200      (light in fibre: ~200 km/ms)
    path     = scale[src provider, dst provider] * (100 / rtt_ms) ** alpha
    gbps     = softmin(cap[src provider, dst provider], path; sharpness)
             = (cap ** -sharpness + path ** -sharpness) ** (-1 / sharpness)

i.e. 64 window-limited connections whose rate falls with RTT (alpha = 1 is the classic window/RTT,
smaller alpha the softer Mathis-like decline once many connections share a path), capped by what a
VM pair of the two providers reaches. The soft minimum (a p-norm; a hard ``min`` as sharpness grows)
lets long paths lose a little even where the cap binds, as the measurements do. Its few numbers live
in ``_fitted.py`` and are produced by ``benchmarks/fit_network_model.py`` on the calibration grid; the
grid itself is not shipped.

Only the standard library is used (``csv`` to read grids): the planner must import fast and without
Airflow, and read no file but the grid its caller names.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from airflow_skyplane.exceptions import GridError, InvalidInputError
from airflow_skyplane.planner import _fitted
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

CONNECTIONS_PER_MEASUREMENT = 64
"""The grids give Gbps for one VM pair at this many parallel TCP connections."""

PREFERRED_TIER = "PREMIUM"
"""Network tier relays use; a grid row of another tier is only used when the pair has no premium row."""

FIBRE_KM_PER_MS = 200.0

OUR_COLUMNS = ("src_region", "src_tier", "dst_region", "dst_tier", "throughput_gbps", "iperf3_connections")


@dataclass(frozen=True)
class ModelParams:
    """The default model's parameters (see module docstring)."""

    stretch: float
    rtt_offset_ms: float
    alpha: float
    sharpness: float
    scale: Mapping[tuple[str, str], float]
    cap: Mapping[tuple[str, str], float]

    def to_dict(self) -> dict[str, object]:
        return {
            "stretch": self.stretch,
            "rtt_offset_ms": self.rtt_offset_ms,
            "alpha": self.alpha,
            "sharpness": self.sharpness,
            "scale": {f"{a}->{b}": v for (a, b), v in sorted(self.scale.items())},
            "cap": {f"{a}->{b}": v for (a, b), v in sorted(self.cap.items())},
        }


FITTED_PARAMS = ModelParams(
    stretch=_fitted.STRETCH,
    rtt_offset_ms=_fitted.RTT_OFFSET_MS,
    alpha=_fitted.ALPHA,
    sharpness=_fitted.SHARPNESS,
    scale=dict(_fitted.SCALE),
    cap=dict(_fitted.CAP),
)


def great_circle_km(a: Region, b: Region) -> float:
    """Haversine distance on a 6371 km sphere."""
    la1, lo1, la2, lo2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


def model_rtt_ms(a: Region, b: Region, params: ModelParams = FITTED_PARAMS) -> float:
    return max(0.1, params.rtt_offset_ms + 2 * params.stretch * great_circle_km(a, b) / FIBRE_KM_PER_MS)


def model_gbps(a: Region, b: Region, params: ModelParams = FITTED_PARAMS) -> float:
    """Default-model Gbps between one VM in ``a`` and one in ``b`` at 64 connections."""
    key = (a.provider, b.provider)
    rtt = model_rtt_ms(a, b, params)
    path = params.scale.get(key, 5.0) * (100.0 / rtt) ** params.alpha
    cap = params.cap.get(key, 5.0)
    p = params.sharpness
    return float((cap**-p + path**-p) ** (-1.0 / p))


@dataclass
class NetworkModel:
    """Throughput, prices and per-VM limits over a set of regions.

    Build one with :meth:`default`, :meth:`from_csv` or :meth:`custom` (arbitrary small networks, as the
    tests use). ``measured`` holds grid Gbps by ordered pair; pairs it lacks use the default model.
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
    _model_cache: dict[tuple[str, str], float] = field(default_factory=dict, repr=False, compare=False)

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
        return (src, dst) in self.measured

    def model_throughput(self, src: str, dst: str) -> float:
        if src == dst:
            return 0.0
        got = self._model_cache.get((src, dst))
        if got is None:
            got = self._model_cache[(src, dst)] = model_gbps(
                self.region_info[src], self.region_info[dst], self.params
            )
        return got

    def throughput(self, src: str, dst: str) -> float:
        """Gbps from one VM in ``src`` to one VM in ``dst`` at 64 connections (0: no usable link)."""
        if src == dst:
            return 0.0
        got = self.measured.get((src, dst))
        if got is not None:
            return got
        if not self.fallback_to_model:
            return 0.0
        return self.model_throughput(src, dst)

    def cost_per_gb(self, src: str, dst: str) -> float:
        got = self.price_override.get((src, dst))
        if got is not None:
            return got
        return egress_price_per_gb(self.region_info[src], self.region_info[dst])

    def egress_cap(self, region: str) -> float:
        if region in self.cap_override:
            return self.cap_override[region][0]
        return self.limits[self.region_info[region].provider].egress_gbps

    def ingress_cap(self, region: str) -> float:
        if region in self.cap_override:
            return self.cap_override[region][1]
        return self.limits[self.region_info[region].provider].ingress_gbps

    def vm_price_per_hour(self, region: str) -> float:
        if region in self.vm_price_override:
            return self.vm_price_override[region]
        lim = self.limits[self.region_info[region].provider]
        return lim.spot_usd_per_hour if self.spot else lim.on_demand_usd_per_hour

    def with_measured(self, measured: Mapping[tuple[str, str], float], source: str) -> NetworkModel:
        """A copy with another measured grid (same regions, prices and limits)."""
        return NetworkModel(
            dict(self.region_info),
            measured=dict(measured),
            limits=dict(self.limits),
            params=self.params,
            spot=self.spot,
            price_override=dict(self.price_override),
            cap_override=dict(self.cap_override),
            vm_price_override=dict(self.vm_price_override),
            fallback_to_model=self.fallback_to_model,
            source=source,
        )


# -- grid files ---------------------------------------------------------------------------------


def _grid_error(path: Path, line: int, what: str) -> GridError:
    return GridError(
        f"grid {str(path)!r} line {line}: {what}; expected CSV with header "
        f"'{','.join(OUR_COLUMNS)}' (or Skyplane's throughput.csv with 'src_region,dst_region,"
        f"throughput_sent' in bits/s): fix the file or drop --grid to use the default model"
    )


def read_grid_csv(path: str | Path) -> dict[tuple[str, str], float]:
    """Read a throughput grid; returns Gbps by (src, dst) catalog names.

    Accepts this project's columns (``src_region,src_tier,dst_region,dst_tier,throughput_gbps,...``) or
    Skyplane's raw ``throughput.csv`` (``src_region,dst_region,...,throughput_sent,...`` in bits per
    second), detected from the header. Rows of the premium tier win over other tiers for the same pair;
    duplicate rows of one tier are averaged.
    """
    p = Path(path)
    try:
        handle = p.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise GridError(
            f"cannot read grid {str(p)!r}: {exc.strerror or exc}; pass an existing CSV to --grid "
            f"or drop --grid to use the default model"
        ) from None
    sums: dict[tuple[str, str], dict[str, list[float]]] = {}
    with handle:
        try:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise _grid_error(p, 1, "the file is empty")
            cols = [h.strip().lower() for h in header]
            src_col = _find(cols, ("src_region", "source_region", "src"))
            dst_col = _find(cols, ("dst_region", "dest_region", "destination_region", "dst"))
            tp_col: int | None
            if "throughput_gbps" in cols:
                tp_col, unit = cols.index("throughput_gbps"), 1.0
            else:
                found = _find(cols, ("throughput_sent", "throughput_received"))
                tp_col, unit = found, 1e-9
            if src_col is None or dst_col is None or tp_col is None:
                raise _grid_error(
                    p, 1, f"header {','.join(header)!r} lacks a source, destination or throughput"
                )
            src_tier_col = _find(cols, ("src_tier",))
            dst_tier_col = _find(cols, ("dst_tier", "dest_tier"))
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(cols):
                    raise _grid_error(p, line, f"{len(row)} fields where the header has {len(cols)}")
                src, dst = row[src_col].strip(), row[dst_col].strip()
                try:
                    src, dst = resolve_region(src), resolve_region(dst)
                except InvalidInputError:
                    bad = src if not _known(src) else dst
                    raise _grid_error(
                        p, line, f"unknown region {bad!r} (run 'airflow-skyplane regions' for names)"
                    ) from None
                try:
                    value = float(row[tp_col]) * unit
                except ValueError:
                    raise _grid_error(p, line, f"throughput {row[tp_col]!r} is not a number") from None
                if not math.isfinite(value) or value < 0:
                    raise _grid_error(p, line, f"throughput {row[tp_col]!r} must be a finite number >= 0")
                if src == dst:
                    continue
                premium = all(
                    c is None or row[c].strip().upper() in ("", PREFERRED_TIER)
                    for c in (src_tier_col, dst_tier_col)
                )
                slot = sums.setdefault((src, dst), {"premium": [], "other": []})
                slot["premium" if premium else "other"].append(value)
        except csv.Error as exc:
            raise _grid_error(p, getattr(reader, "line_num", 0), f"not valid CSV ({exc})") from None
        except UnicodeDecodeError:
            raise _grid_error(p, 0, "not UTF-8 text") from None
    if not sums:
        raise _grid_error(p, 2, "no data rows")
    grid: dict[tuple[str, str], float] = {}
    for pair, slot in sums.items():
        vals = slot["premium"] or slot["other"]
        grid[pair] = sum(vals) / len(vals)
    return grid


def _find(cols: list[str], names: tuple[str, ...]) -> int | None:
    for n in names:
        if n in cols:
            return cols.index(n)
    return None


def _known(name: str) -> bool:
    try:
        resolve_region(name)
    except InvalidInputError:
        return False
    return True


def export_rows(model: NetworkModel) -> Iterable[dict[str, object]]:
    """Every ordered pair of the model's regions in the grid's columns plus ``cost_per_gb_usd``."""
    for src in model.regions:
        for dst in model.regions:
            if src == dst:
                continue
            yield {
                "src_region": src,
                "src_tier": PREFERRED_TIER,
                "dst_region": dst,
                "dst_tier": PREFERRED_TIER,
                "throughput_gbps": round(model.throughput(src, dst), 4),
                "iperf3_connections": CONNECTIONS_PER_MEASUREMENT,
                "cost_per_gb_usd": round(model.cost_per_gb(src, dst), 6),
            }


__all__ = [
    "CONNECTIONS_PER_MEASUREMENT",
    "FITTED_PARAMS",
    "ModelParams",
    "NetworkModel",
    "PROVIDERS",
    "export_rows",
    "great_circle_km",
    "model_gbps",
    "model_rtt_ms",
    "read_grid_csv",
]
