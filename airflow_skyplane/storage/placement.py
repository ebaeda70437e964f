"""Where a bucket is, as its store says, in the planner's region names.

Each store kind's ``region`` asks its store (S3 ``GetBucketLocation``, the GCS bucket's ``location``,
the Azure account's location through the management API) and answers with a :class:`Placement`:
the region, how it was found, or why the store could not tell (then the operator falls back to the
region the task gives, else to the connection's).

The planner's catalog names zones for GCP (``gcp:europe-west4-a``: where relay VMs start), while a GCS
bucket lives in a region (``EUROPE-WEST4``), a dual-region (``EUR4``) or a multi-region (``US``, ``EU``,
``ASIA``). A region maps to the catalog's zone of that region; a dual-region to its first region;
a multi-region to a representative region of its area (:data:`GCS_MULTI_REGIONS`). A task may name
any zone inside the bucket's location (``gcp:us-east1-b`` for a bucket in ``US``): it is then
planned from there. No Airflow here.
"""

from __future__ import annotations

from dataclasses import dataclass

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.planner.regions import REGIONS, resolve_region

#: GCS multi-region -> (representative region, the catalog prefix of the regions it spans)
GCS_MULTI_REGIONS = {
    "us": ("us-central1", "gcp:us-"),
    "eu": ("europe-west1", "gcp:europe-"),
    "asia": ("asia-east1", "gcp:asia-"),
}
#: GCS predefined dual-regions -> their two regions (the first is planned from)
GCS_DUAL_REGIONS = {
    "nam4": ("us-central1", "us-east1"),
    "eur4": ("europe-west4", "europe-north1"),
    "asia1": ("asia-northeast1", "asia-northeast2"),
}


@dataclass(frozen=True)
class Placement:
    """A store's answer to "where are you?"."""

    #: the planner's name of the region (None: the store could not tell)
    region: str | None
    #: how it was found (``GetBucketLocation: eu-west-1``), or why the store could not tell
    how: str
    #: catalog prefixes of the zones a given region may name without contradicting the store (a GCS
    #: region's zones, a multi-region's area); empty: only ``region`` itself
    within: tuple[str, ...] = ()
    #: the region to plan with when the store cannot tell and the task gives none (S3: the
    #: connection's ``region_name``)
    fallback: str | None = None

    def admits(self, given: str) -> bool:
        """Whether ``given`` (a catalog name) agrees with what the store says."""
        if self.region is None or given == self.region:
            return True
        return any(given.startswith(prefix) for prefix in self.within)


def unknown(why: str, fallback: str | None = None) -> Placement:
    return Placement(None, why, fallback=fallback)


def aws_placement(constraint: str | None) -> Placement:
    """An S3 bucket's ``LocationConstraint``: empty means us-east-1, the legacy ``EU`` eu-west-1."""
    name = {"": "us-east-1", "EU": "eu-west-1"}.get(constraint or "", constraint or "")
    region = f"aws:{name}"
    if region not in REGIONS:
        return unknown(f"GetBucketLocation says {name!r}, a region the planner's catalog lacks")
    return Placement(region, f"GetBucketLocation: {name}")


def gcs_placement(location: str | None) -> Placement:
    """A GCS bucket's ``location`` (a region, dual-region or multi-region) in the catalog's names."""
    if not location:
        return unknown("the bucket reports no location")
    low = location.strip().lower()
    how = f"bucket location {location}"
    if low in GCS_MULTI_REGIONS:
        region, area = GCS_MULTI_REGIONS[low]
        return Placement(_gcp_zone(region), f"{how} (multi-region, planned from {region})", (area,))
    if low in GCS_DUAL_REGIONS:
        regions = GCS_DUAL_REGIONS[low]
        within = tuple(f"gcp:{r}-" for r in regions)
        return Placement(_gcp_zone(regions[0]), f"{how} (dual-region, planned from {regions[0]})", within)
    zone = _gcp_zone(low)
    if zone is None:
        return unknown(f"{how}, a location the planner's catalog lacks")
    return Placement(zone, how, (f"gcp:{low}-",))


def _gcp_zone(region: str) -> str | None:
    try:
        return resolve_region(f"gcp:{region}")
    except InvalidInputError:
        return None


def azure_placement(location: str | None) -> Placement:
    """A storage account's location (``westeurope``) in the catalog's names."""
    region = f"azure:{(location or '').strip().lower()}"
    if region not in REGIONS:
        return unknown(f"the account's location {location!r} is not in the planner's catalog")
    return Placement(region, f"storage account location {location}")
