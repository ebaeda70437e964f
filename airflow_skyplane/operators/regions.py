"""Where the operator's stores are: the regions a task gives, checked, and what each bucket says.

A region the task gives (``source_region``, ``destination_region``) must be a name of the planner's
catalog (else the error names the parameter and the nearest names) and of the cloud of the store it
describes (an ``az://`` destination is in Azure). Each bucket is then asked where it is, through its
store kind (:mod:`airflow_skyplane.storage.placement`); a given region that contradicts the bucket
is refused. Where the bucket cannot tell (no permission, an emulator, an Azure connection without
an Azure AD identity), the given region is used, else the connection's (S3), and the log says which.
Local files are nowhere in particular: the given region, if any, is used as it is. No Airflow here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.planner.regions import EXAMPLE_NAMES, REGIONS, did_you_mean, resolve_region
from airflow_skyplane.storage.uri import parse_uri

if TYPE_CHECKING:
    from airflow_skyplane.hooks.storage import Location

#: URI scheme -> the cloud of the planner's region names its stores live in
CLOUD_OF_SCHEME = {"s3": "aws", "gs": "gcp", "az": "azure"}


class Logger(Protocol):
    def info(self, event: str, *args: Any) -> object: ...

    def warning(self, event: str, *args: Any) -> object: ...


def given_region(param: str, value: object, uri: str) -> str | None:
    """The catalog name of the region a task gives for the store at ``uri`` (None: not given);
    refuse an unknown name or one of another cloud than the store's, naming ``param``."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(
            f"{param}={value!r}: give a region name like {EXAMPLE_NAMES}, or leave it out"
        )
    try:
        name = resolve_region(value)
    except InvalidInputError:
        hint = did_you_mean(value, REGIONS)
        raise InvalidInputError(
            f"{param}={value!r} is not a region the planner knows{': ' + hint if hint else ''} "
            f"(names look like {EXAMPLE_NAMES}; 'airflow-skyplane regions' lists them all)"
        ) from None
    cloud = CLOUD_OF_SCHEME.get(parse_uri(uri).scheme)
    if cloud is not None and not name.startswith(f"{cloud}:"):
        hint = did_you_mean(
            f"{cloud}:{name.split(':', 1)[1]}", [r for r in REGIONS if r.startswith(f"{cloud}:")]
        )
        raise InvalidInputError(
            f"{param}={value!r} is a region of {name.split(':', 1)[0]}, but {uri} is a store of "
            f"{cloud}: give the {cloud} region its bucket is in{' (' + hint + ')' if hint else ''}, or "
            f"leave {param} out to use the bucket's own"
        )
    return name


def given_destination_regions(value: object, destinations: Sequence[str]) -> list[str | None]:
    """``destination_region`` as one region (or None) per destination, each checked."""
    regions: list[object] = [value] if value is None or isinstance(value, str) else list(value)  # type: ignore[call-overload]
    if len(regions) == 1 and len(destinations) > 1:
        clouds = sorted({c for d in destinations if (c := CLOUD_OF_SCHEME.get(parse_uri(d).scheme))})
        if regions[0] is not None and len(clouds) > 1:
            raise InvalidInputError(
                f"destination_region={regions[0]!r} is one region for destinations in "
                f"{' and '.join(clouds)}: give one region per destination in the same order, or leave "
                "destination_region out to use each bucket's own"
            )
        regions = regions * len(destinations)
    if len(regions) != len(destinations):
        raise InvalidInputError(
            f"destination_region has {len(regions)} regions for {len(destinations)} destinations: give "
            "one region for all, or one per destination in the same order"
        )
    return [given_region("destination_region", r, d) for r, d in zip(regions, destinations, strict=True)]


def locate(param: str, given: str | None, location: Location, uri: str, log: Logger) -> str | None:
    """The region to plan ``uri`` from: the bucket's own (a given region that contradicts it is
    refused; one inside a multi-region is kept), else the given one, else the connection's."""
    from airflow_skyplane.storage.kinds import store_kind

    placement = store_kind(location.store.scheme).region(location.store)
    if placement is None:  # local files: nowhere in particular
        return given
    if placement.region is not None:
        if given is not None and not placement.admits(given):
            raise InvalidInputError(
                f"{param}={given!r} contradicts the bucket: {uri} is in {placement.region} "
                f"({placement.how}); correct {param}, or leave it out to use the bucket's own region"
            )
        if given is None:
            log.info("%s is in %s (%s)", uri, placement.region, placement.how)
        return given or placement.region
    if given is not None:
        log.warning(
            "The region of %s cannot be read (%s): planning with %s=%r", uri, placement.how, param, given
        )
        return given
    if placement.fallback is not None:
        log.warning(
            "The region of %s cannot be read (%s): planning with the connection's region %s; pass %s "
            "if the bucket is elsewhere", uri, placement.how, placement.fallback, param,
        )  # fmt: skip
        return placement.fallback
    log.warning("The region of %s cannot be read (%s) and %s is not given", uri, placement.how, param)
    return None
