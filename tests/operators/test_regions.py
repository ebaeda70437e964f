"""Regions that tell the truth: given regions checked by name and cloud, each bucket asked where it
is (moto keeps an S3 bucket's LocationConstraint; the GCS emulator and Azurite cannot tell, so the
given region is used and the log says so), a contradiction refused before anything starts."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_skyplane.compute import fleets
from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.hooks.storage import open_store
from airflow_skyplane.operators.plan_files import read_plans
from airflow_skyplane.operators.transfer import SkyplaneTransferOperator
from airflow_skyplane.storage.placement import gcs_placement
from airflow_skyplane.testing.sky import EmulatedSky

MiB = 1024 * 1024


def _source(emulated_sky: EmulatedSky, sky_bucket: Callable[..., str], region: str | None = None) -> str:
    src = sky_bucket("s3", region)
    emulated_sky.open(src).put("d/x.bin", random.Random(0).randbytes(MiB))
    return f"{src}/d/"


@pytest.mark.parametrize(
    ("kwargs", "dsts", "match"),
    [
        (
            {"source_region": "aws:us-east-42"},
            ["gs"],
            r"source_region='aws:us-east-42' is not a region the planner knows: did you mean aws:us-east-",
        ),
        (
            {"destination_region": "gcp:europe-west4-z"},
            ["gs"],
            r"destination_region='gcp:europe-west4-z' is not a region .*did you mean gcp:europe-west4-a",
        ),
        (
            {"destination_region": "gcp:europe-west4-a"},
            ["az"],
            r"destination_region='gcp:europe-west4-a' is a region of gcp, but az://\S+ is a store of azure",
        ),
        (
            {"destination_region": "gcp:europe-west4-a"},
            ["gs", "az"],
            r"destination_region='gcp:europe-west4-a' is one region for destinations in azure and gcp",
        ),
        (
            {"source_region": "gcp:us-central1-a"},
            ["gs"],
            r"source_region='gcp:us-central1-a' is a region of gcp, but s3://\S+ is a store of aws",
        ),
    ],
)
def test_a_region_unknown_or_of_another_cloud_is_refused_naming_the_parameter(
    emulated_sky: EmulatedSky, sky_bucket: Callable[..., str], state_dir: Path,
    kwargs: dict[str, Any], dsts: list[str], match: str,
) -> None:  # fmt: skip
    src = _source(emulated_sky, sky_bucket)
    destinations = [sky_bucket(kind) for kind in dsts]
    op = SkyplaneTransferOperator(task_id="where", source=src, destination=destinations, **kwargs)
    with pytest.raises(InvalidInputError, match=match):
        op.execute(context={})
    assert fleets.fleet_ids(state_dir) == []
    assert all(list(open_store(d).store.list()) == [] for d in destinations)


def test_an_s3_bucket_is_planned_from_its_own_region_whatever_the_connection_says(
    emulated_sky: EmulatedSky, sky_bucket: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    src = _source(emulated_sky, sky_bucket, "aws:eu-west-1")  # the aws connection says us-east-1
    dst = sky_bucket("s3", "aws:ap-northeast-1")
    summary = SkyplaneTransferOperator(task_id="own", source=src, destination=dst, dry_run=True).execute(
        context={}
    )
    assert summary["source_region"] == "aws:eu-west-1"
    assert summary["destinations"][dst]["region"] == "aws:ap-northeast-1"
    plan = read_plans(summary)["destinations"][dst]["plan"]
    assert plan["source"] == "aws:eu-west-1" and plan["destinations"] == ["aws:ap-northeast-1"]
    assert f"{src} is in aws:eu-west-1 (GetBucketLocation: eu-west-1)" in "".join(capsys.readouterr())

    same = SkyplaneTransferOperator(
        task_id="agrees", source=src, destination=dst, dry_run=True, source_region="aws:eu-west-1"
    ).execute(context={})
    assert same["source_region"] == "aws:eu-west-1"


def test_a_given_region_that_contradicts_the_bucket_is_refused(
    emulated_sky: EmulatedSky, sky_bucket: Callable[..., str], state_dir: Path
) -> None:
    src = _source(emulated_sky, sky_bucket, "aws:eu-west-1")
    dst = sky_bucket("gs")
    op = SkyplaneTransferOperator(task_id="wrong", source=src, destination=dst, source_region="aws:us-east-1")
    with pytest.raises(
        InvalidInputError,
        match=r"source_region='aws:us-east-1' contradicts the bucket: s3://\S+ is in aws:eu-west-1 "
        r"\(GetBucketLocation: eu-west-1\); correct source_region, or leave it out",
    ):
        op.execute(context={})
    assert fleets.fleet_ids(state_dir) == [] and list(open_store(dst).store.list()) == []


def test_where_the_emulators_cannot_tell_the_given_region_is_used_and_logged(
    emulated_sky: EmulatedSky, sky_bucket: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    src = _source(emulated_sky, sky_bucket)
    gcs, azure = sky_bucket("gs"), sky_bucket("az")
    summary = SkyplaneTransferOperator(
        task_id="told", source=src, destination=[gcs, azure], dry_run=True,
        destination_region=["gcp:europe-west4-a", None],
    ).execute(context={})  # fmt: skip
    logged = "".join(capsys.readouterr())
    assert summary["destinations"][gcs]["region"] == "gcp:europe-west4-a"
    assert summary["destinations"][gcs]["plan"] is not None
    # Azurite's account tells no location, and none was given: sent directly
    assert summary["destinations"][azure] == {"region": None, "bytes_to_send": MiB, "plan": None}
    assert (
        f"The region of {gcs} cannot be read (the GCS emulator reports every bucket in 'US', whatever "
        "it was created in): planning with destination_region='gcp:europe-west4-a'"
    ) in logged
    assert (
        f"The region of {azure} cannot be read (the connection signs in with a shared key, SAS or "
        "connection string"
    ) in logged and "and destination_region is not given" in logged


@pytest.mark.parametrize(
    ("location", "region", "admitted", "refused"),
    [
        ("EUROPE-WEST4", "gcp:europe-west4-a", ["gcp:europe-west4-a"], ["gcp:europe-west1-b"]),
        ("US", "gcp:us-central1-a", ["gcp:us-east1-b", "gcp:us-west1-a"], ["gcp:europe-west4-a"]),
        ("EU", "gcp:europe-west1-b", ["gcp:europe-west4-a"], ["gcp:us-central1-a"]),
        ("NAM4", "gcp:us-central1-a", ["gcp:us-east1-b"], ["gcp:us-west1-a"]),
        ("europe-west1", "gcp:europe-west1-b", [], ["gcp:europe-west10-a"]),
    ],
)
def test_a_gcs_location_maps_to_the_catalogs_zones(
    location: str, region: str, admitted: list[str], refused: list[str]
) -> None:
    placement = gcs_placement(location)
    assert placement.region == region
    assert all(placement.admits(r) for r in [region, *admitted])
    assert not any(placement.admits(r) for r in refused)


def test_a_gcs_location_the_catalog_lacks_tells_nothing() -> None:
    placement = gcs_placement("MARS-NORTH1")
    assert placement.region is None and "MARS-NORTH1" in placement.how
    assert placement.admits("gcp:us-central1-a")  # nothing to contradict
