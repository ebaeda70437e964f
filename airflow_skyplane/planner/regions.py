"""Region catalog: where each cloud region is, what one relay VM can push, and what data and VMs cost.

Names follow the measured grid: ``aws:us-east-1``, ``gcp:us-central1-a`` (GCP names carry the zone the
relay VMs run in) and ``azure:eastus``. Coordinates are the approximate location of the metro area
that hosts the region (public provider pages; good to a few tens of km, which is all the default
network model needs).

Prices are list prices, first paid tier, USD, as published on the providers' pricing pages and checked
in 2024-2025 (AWS EC2 "Data Transfer" section, Google Cloud "Network pricing" premium tier, Azure
"Bandwidth pricing" Microsoft premium network). They change; the planner only needs them to be right
relative to each other, and callers can override them through :class:`ProviderLimits`.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from airflow_skyplane.exceptions import InvalidInputError

PROVIDERS = ("aws", "gcp", "azure")

# Continents used by the price lists (the Middle East and Africa are priced apart by every cloud).
NORTH_AMERICA = "north-america"
SOUTH_AMERICA = "south-america"
EUROPE = "europe"
ASIA = "asia"
OCEANIA = "oceania"
MIDDLE_EAST = "middle-east"
AFRICA = "africa"


@dataclass(frozen=True)
class Region:
    """One cloud region (for GCP: the zone relays are started in)."""

    name: str  # "aws:us-east-1"
    lat: float
    lon: float
    continent: str

    @property
    def provider(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def short(self) -> str:
        """The provider's own name of the region, without the ``aws:`` prefix."""
        return self.name.split(":", 1)[1]


@dataclass(frozen=True)
class ProviderLimits:
    """Per-VM network caps (Gbps) and hourly prices (USD) of the default relay instance of a provider.

    The caps are the ones Skyplane plans with for large instances at 64 connections (AWS 5/10, GCP 7/16,
    Azure 16/16 Gbps egress/ingress). Prices: on-demand list price in the provider's cheapest US region
    and a typical spot price there, checked 2024-2025 (AWS m5.8xlarge $1.536/h, spot about $0.60/h;
    GCP n2-standard-32 $1.554/h, spot about $0.38/h; Azure Standard_D32_v5 Linux $1.536/h, spot about
    $0.31/h). Regional price differences (10-40% in some regions) are ignored.
    """

    instance_type: str
    egress_gbps: float
    ingress_gbps: float
    on_demand_usd_per_hour: float
    spot_usd_per_hour: float


DEFAULT_LIMITS: dict[str, ProviderLimits] = {
    "aws": ProviderLimits("m5.8xlarge", 5.0, 10.0, 1.536, 0.60),
    "gcp": ProviderLimits("n2-standard-32", 7.0, 16.0, 1.554, 0.38),
    "azure": ProviderLimits("Standard_D32_v5", 16.0, 16.0, 1.536, 0.31),
}

_NA, _SA, _EU, _AS, _OC, _ME, _AF = NORTH_AMERICA, SOUTH_AMERICA, EUROPE, ASIA, OCEANIA, MIDDLE_EAST, AFRICA

# (name, lat, lon, continent)
_CATALOG: tuple[tuple[str, float, float, str], ...] = (
    # -- AWS (commercial regions; GovCloud and China are separate partitions and not listed)
    ("aws:us-east-1", 38.9, -77.4, _NA),
    ("aws:us-east-2", 40.0, -83.0, _NA),
    ("aws:us-west-1", 37.4, -121.9, _NA),
    ("aws:us-west-2", 45.8, -119.7, _NA),
    ("aws:ca-central-1", 45.5, -73.6, _NA),
    ("aws:ca-west-1", 51.0, -114.1, _NA),
    ("aws:mx-central-1", 20.6, -100.4, _NA),
    ("aws:sa-east-1", -23.5, -46.6, _SA),
    ("aws:eu-west-1", 53.3, -6.3, _EU),
    ("aws:eu-west-2", 51.5, -0.1, _EU),
    ("aws:eu-west-3", 48.9, 2.35, _EU),
    ("aws:eu-central-1", 50.1, 8.7, _EU),
    ("aws:eu-central-2", 47.4, 8.5, _EU),
    ("aws:eu-north-1", 59.3, 18.1, _EU),
    ("aws:eu-south-1", 45.5, 9.2, _EU),
    ("aws:eu-south-2", 41.6, -0.9, _EU),
    ("aws:il-central-1", 32.1, 34.8, _ME),
    ("aws:me-south-1", 26.1, 50.6, _ME),
    ("aws:me-central-1", 24.5, 54.4, _ME),
    ("aws:af-south-1", -33.9, 18.4, _AF),
    ("aws:ap-east-1", 22.3, 114.2, _AS),
    ("aws:ap-south-1", 19.1, 72.9, _AS),
    ("aws:ap-south-2", 17.4, 78.5, _AS),
    ("aws:ap-northeast-1", 35.7, 139.7, _AS),
    ("aws:ap-northeast-2", 37.6, 127.0, _AS),
    ("aws:ap-northeast-3", 34.7, 135.5, _AS),
    ("aws:ap-southeast-1", 1.35, 103.8, _AS),
    ("aws:ap-southeast-2", -33.9, 151.2, _OC),
    ("aws:ap-southeast-3", -6.2, 106.8, _AS),
    ("aws:ap-southeast-4", -37.8, 145.0, _OC),
    ("aws:ap-southeast-5", 3.1, 101.7, _AS),
    ("aws:ap-southeast-7", 13.8, 100.5, _AS),
    # -- GCP (one zone per region: "-a" unless the region has no zone a)
    ("gcp:us-central1-a", 41.3, -95.9, _NA),
    ("gcp:us-east1-b", 33.2, -80.0, _NA),
    ("gcp:us-east4-a", 39.0, -77.5, _NA),
    ("gcp:us-east5-a", 40.0, -83.0, _NA),
    ("gcp:us-south1-a", 32.8, -96.8, _NA),
    ("gcp:us-west1-a", 45.6, -121.2, _NA),
    ("gcp:us-west2-a", 34.1, -118.2, _NA),
    ("gcp:us-west3-a", 40.8, -111.9, _NA),
    ("gcp:us-west4-a", 36.2, -115.1, _NA),
    ("gcp:northamerica-northeast1-a", 45.5, -73.6, _NA),
    ("gcp:northamerica-northeast2-a", 43.7, -79.4, _NA),
    ("gcp:northamerica-south1-a", 20.6, -100.4, _NA),
    ("gcp:southamerica-east1-a", -23.5, -46.6, _SA),
    ("gcp:southamerica-west1-a", -33.4, -70.6, _SA),
    ("gcp:europe-west1-b", 50.4, 3.8, _EU),
    ("gcp:europe-west2-a", 51.5, -0.1, _EU),
    ("gcp:europe-west3-a", 50.1, 8.7, _EU),
    ("gcp:europe-west4-a", 53.4, 6.8, _EU),
    ("gcp:europe-west6-a", 47.4, 8.5, _EU),
    ("gcp:europe-west8-a", 45.5, 9.2, _EU),
    ("gcp:europe-west9-a", 48.9, 2.35, _EU),
    ("gcp:europe-west10-a", 52.5, 13.4, _EU),
    ("gcp:europe-west12-a", 45.1, 7.7, _EU),
    ("gcp:europe-central2-a", 52.2, 21.0, _EU),
    ("gcp:europe-north1-a", 60.6, 27.0, _EU),
    ("gcp:europe-southwest1-a", 40.4, -3.7, _EU),
    ("gcp:me-west1-a", 32.1, 34.8, _ME),
    ("gcp:me-central1-a", 25.3, 51.5, _ME),
    ("gcp:me-central2-a", 26.4, 50.1, _ME),
    ("gcp:africa-south1-a", -26.2, 28.0, _AF),
    ("gcp:asia-east1-a", 24.1, 120.5, _AS),
    ("gcp:asia-east2-a", 22.3, 114.2, _AS),
    ("gcp:asia-northeast1-a", 35.7, 139.7, _AS),
    ("gcp:asia-northeast2-a", 34.7, 135.5, _AS),
    ("gcp:asia-northeast3-a", 37.6, 127.0, _AS),
    ("gcp:asia-south1-a", 19.1, 72.9, _AS),
    ("gcp:asia-south2-a", 28.6, 77.2, _AS),
    ("gcp:asia-southeast1-a", 1.35, 103.8, _AS),
    ("gcp:asia-southeast2-a", -6.2, 106.8, _AS),
    ("gcp:australia-southeast1-a", -33.9, 151.2, _OC),
    ("gcp:australia-southeast2-a", -37.8, 145.0, _OC),
    # -- Azure
    ("azure:eastus", 37.4, -79.4, _NA),
    ("azure:eastus2", 36.7, -78.4, _NA),
    ("azure:centralus", 41.6, -93.6, _NA),
    ("azure:northcentralus", 41.9, -87.6, _NA),
    ("azure:southcentralus", 29.4, -98.5, _NA),
    ("azure:westcentralus", 41.1, -104.8, _NA),
    ("azure:westus", 37.8, -122.4, _NA),
    ("azure:westus2", 47.2, -119.9, _NA),
    ("azure:westus3", 33.4, -112.1, _NA),
    ("azure:canadacentral", 43.7, -79.4, _NA),
    ("azure:canadaeast", 46.8, -71.2, _NA),
    ("azure:mexicocentral", 20.6, -100.4, _NA),
    ("azure:brazilsouth", -23.5, -46.6, _SA),
    ("azure:northeurope", 53.3, -6.3, _EU),
    ("azure:westeurope", 52.4, 4.9, _EU),
    ("azure:uksouth", 51.5, -0.1, _EU),
    ("azure:ukwest", 51.5, -3.2, _EU),
    ("azure:francecentral", 48.9, 2.35, _EU),
    ("azure:germanywestcentral", 50.1, 8.7, _EU),
    ("azure:switzerlandnorth", 47.4, 8.5, _EU),
    ("azure:norwayeast", 59.9, 10.8, _EU),
    ("azure:swedencentral", 60.7, 17.1, _EU),
    ("azure:polandcentral", 52.2, 21.0, _EU),
    ("azure:italynorth", 45.5, 9.2, _EU),
    ("azure:spaincentral", 40.4, -3.7, _EU),
    ("azure:uaenorth", 25.3, 55.3, _ME),
    ("azure:qatarcentral", 25.3, 51.5, _ME),
    ("azure:israelcentral", 32.1, 34.8, _ME),
    ("azure:southafricanorth", -26.2, 28.0, _AF),
    ("azure:centralindia", 18.5, 73.9, _AS),
    ("azure:southindia", 13.1, 80.3, _AS),
    ("azure:westindia", 19.1, 72.9, _AS),
    ("azure:eastasia", 22.3, 114.2, _AS),
    ("azure:southeastasia", 1.35, 103.8, _AS),
    ("azure:japaneast", 35.7, 139.7, _AS),
    ("azure:japanwest", 34.7, 135.5, _AS),
    ("azure:koreacentral", 37.6, 127.0, _AS),
    ("azure:koreasouth", 35.2, 129.1, _AS),
    ("azure:australiaeast", -33.9, 151.2, _OC),
    ("azure:australiasoutheast", -37.8, 145.0, _OC),
    ("azure:australiacentral", -35.3, 149.1, _OC),
    ("azure:newzealandnorth", -36.8, 174.8, _OC),
)

REGIONS: dict[str, Region] = {name: Region(name, lat, lon, cont) for name, lat, lon, cont in _CATALOG}

EXAMPLE_NAMES = "'aws:us-east-1', 'gcp:us-central1-a', 'azure:eastus'"


def unknown_region_message(name: str, hint: str = "check --allowed-regions") -> str:
    return (
        f"unknown region {name!r}: known regions look like {EXAMPLE_NAMES}; "
        f"run 'airflow-skyplane regions' or {hint}"
    )


def resolve_region(name: str, known: dict[str, Region] | None = None) -> str:
    """Return the catalog name of ``name``; a GCP region without a zone maps to the catalog's zone.

    Raises :class:`InvalidInputError` naming the input and how to find valid names.
    """
    catalog = REGIONS if known is None else known
    if not isinstance(name, str) or not name:
        raise InvalidInputError(unknown_region_message(str(name)))
    key = name.strip()
    if key in catalog:
        return key
    lowered = key.lower()
    if lowered in catalog:
        return lowered
    if lowered.startswith("gcp:"):
        zoned = [r for r in catalog if r.startswith(lowered + "-") and r[len(lowered) + 1 :].isalpha()]
        if len(zoned) == 1:
            return zoned[0]
    raise InvalidInputError(unknown_region_message(name))


def match_regions(patterns: list[str] | tuple[str, ...], regions: list[str] | tuple[str, ...]) -> list[str]:
    """Regions matching any glob pattern (``aws:eu-*``, ``gcp:*``, ``azure:eastus``).

    A pattern that matches nothing is an error: it is almost always a typo.
    """
    chosen: set[str] = set()
    for pattern in patterns:
        pat = pattern.strip().lower()
        if ":" not in pat and pat in PROVIDERS:
            pat += ":*"
        hits = [r for r in regions if fnmatch.fnmatchcase(r, pat)]
        if not hits:
            raise InvalidInputError(
                f"allowed-region pattern {pattern!r} matches no known region: patterns are globs over "
                f"names like {EXAMPLE_NAMES} (e.g. 'aws:eu-*', 'gcp:*'); run 'airflow-skyplane regions'"
            )
        chosen.update(hits)
    return sorted(chosen)


def nearest_names(name: str, known: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` names of ``known`` spelled most like ``name``, best first (none below ``cutoff``).

    A name is compared whole and without its provider prefix, so ``azure:europe-west4-a`` (the wrong
    cloud) and ``europe-west4`` (no cloud, no zone) both find ``gcp:europe-west4-a``.
    """
    query = str(name).strip().lower()
    bare = query.split(":", 1)[-1]
    scored = []
    for candidate in known:
        low = candidate.lower()
        score = max(
            difflib.SequenceMatcher(None, query, low).ratio(),
            difflib.SequenceMatcher(None, bare, low.split(":", 1)[-1]).ratio(),
        )
        if score >= cutoff:
            scored.append((-score, candidate))
    scored.sort()
    # names much further than the best one only add noise
    return [c for neg, c in scored[:n] if neg <= scored[0][0] + 0.05]


def did_you_mean(name: str, known: Iterable[str], n: int = 3) -> str:
    """``"did you mean gcp:europe-west4-a?"`` (or ``"... a or b?"``), or ``""`` when nothing is close."""
    names = nearest_names(name, known, n)
    if not names:
        return ""
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return f"did you mean {listed}?"


# -- egress prices, USD per GB ------------------------------------------------------------------

# AWS: inter-region price depends only on the source region (EC2 "Data Transfer OUT to another AWS
# region"); us-east-1 <-> us-east-2 is discounted. Internet egress is the first 10 TB tier, which is also
# what leaves AWS towards another cloud.
_AWS_INTER_REGION = {
    "af-south-1": 0.147,
    "ap-east-1": 0.09,
    "ap-northeast-1": 0.09,
    "ap-northeast-2": 0.08,
    "ap-northeast-3": 0.09,
    "ap-south-1": 0.086,
    "ap-south-2": 0.086,
    "ap-southeast-1": 0.09,
    "ap-southeast-2": 0.098,
    "ap-southeast-3": 0.10,
    "ap-southeast-4": 0.098,
    "ap-southeast-5": 0.09,
    "ap-southeast-7": 0.09,
    "me-south-1": 0.1105,
    "me-central-1": 0.085,
    "il-central-1": 0.08,
    "sa-east-1": 0.138,
    "mx-central-1": 0.02,
}
_AWS_INTER_REGION_DEFAULT = 0.02  # US, Canada, Europe
_AWS_INTERNET = {
    "af-south-1": 0.154,
    "ap-east-1": 0.12,
    "ap-northeast-1": 0.114,
    "ap-northeast-2": 0.126,
    "ap-northeast-3": 0.114,
    "ap-south-1": 0.1093,
    "ap-south-2": 0.1093,
    "ap-southeast-1": 0.12,
    "ap-southeast-2": 0.114,
    "ap-southeast-3": 0.132,
    "ap-southeast-4": 0.114,
    "ap-southeast-5": 0.12,
    "ap-southeast-7": 0.12,
    "me-south-1": 0.117,
    "me-central-1": 0.11,
    "il-central-1": 0.11,
    "sa-east-1": 0.15,
}
_AWS_INTERNET_DEFAULT = 0.09
_AWS_DISCOUNTED_PAIRS = {frozenset({"us-east-1", "us-east-2"}): 0.01}

# GCP premium tier: inter-region by (source continent, destination continent); internet egress
# (0-1 TB tier) towards another cloud by source continent.
_GCP_SAME_CONTINENT = {_NA: 0.02, _EU: 0.02, _AS: 0.05, _OC: 0.08, _SA: 0.08, _ME: 0.08, _AF: 0.08}
_GCP_INTERCONTINENTAL = {_NA: 0.08, _EU: 0.08, _AS: 0.08, _OC: 0.15, _SA: 0.14, _ME: 0.11, _AF: 0.11}
_GCP_INTERNET = {_NA: 0.12, _EU: 0.12, _AS: 0.12, _OC: 0.19, _SA: 0.12, _ME: 0.12, _AF: 0.12}

# Azure: inter-region within a continent and between continents by source continent; internet egress
# over the Microsoft network by zone (zone 1 North America/Europe, zone 2 Asia/Oceania/Middle East,
# zone 3 South America/Africa).
_AZURE_SAME_CONTINENT = {_NA: 0.02, _EU: 0.02, _AS: 0.08, _OC: 0.08, _SA: 0.16, _ME: 0.08, _AF: 0.16}
_AZURE_INTERCONTINENTAL = {_NA: 0.05, _EU: 0.05, _AS: 0.08, _OC: 0.08, _SA: 0.16, _ME: 0.08, _AF: 0.16}
_AZURE_INTERNET = {_NA: 0.087, _EU: 0.087, _AS: 0.12, _OC: 0.12, _ME: 0.12, _SA: 0.181, _AF: 0.181}


def egress_price_per_gb(src: Region, dst: Region) -> float:
    """List price in USD of moving one GB from a VM in ``src`` to a VM in ``dst`` (0 within a region)."""
    if src.name == dst.name:
        return 0.0
    provider = src.provider
    if provider == "aws":
        if dst.provider != "aws":
            return _AWS_INTERNET.get(src.short, _AWS_INTERNET_DEFAULT)
        pair = frozenset({src.short, dst.short})
        if pair in _AWS_DISCOUNTED_PAIRS:
            return _AWS_DISCOUNTED_PAIRS[pair]
        return _AWS_INTER_REGION.get(src.short, _AWS_INTER_REGION_DEFAULT)
    if provider == "gcp":
        if dst.provider != "gcp":
            return _GCP_INTERNET[src.continent]
        table = _GCP_SAME_CONTINENT if src.continent == dst.continent else _GCP_INTERCONTINENTAL
        return table[src.continent]
    if dst.provider != "azure":
        return _AZURE_INTERNET[src.continent]
    table = _AZURE_SAME_CONTINENT if src.continent == dst.continent else _AZURE_INTERCONTINENTAL
    return table[src.continent]


def internet_price_per_gb(src: Region) -> float:
    """List price of one GB leaving ``src`` to the internet (or another cloud)."""
    if src.provider == "aws":
        return _AWS_INTERNET.get(src.short, _AWS_INTERNET_DEFAULT)
    if src.provider == "gcp":
        return _GCP_INTERNET[src.continent]
    return _AZURE_INTERNET[src.continent]
