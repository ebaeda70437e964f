"""The "did you mean" of an unknown region name: the nearest catalog names, or nothing."""

from __future__ import annotations

import pytest

from airflow_skyplane.planner.regions import REGIONS, did_you_mean, nearest_names


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("gcp:europe-west4-z", "gcp:europe-west4-a"),  # a zone that does not exist
        ("azure:europe-west4-a", "gcp:europe-west4-a"),  # the wrong cloud
        ("europe-west4", "gcp:europe-west4-a"),  # no cloud, no zone
        ("azure:west-europe", "azure:westeurope"),  # the portal's spelling
        ("AWS:US-EAST-1x", "aws:us-east-1"),
    ],
)
def test_the_meant_name_comes_first(typed: str, meant: str) -> None:
    assert nearest_names(typed, REGIONS)[0] == meant
    assert did_you_mean(typed, REGIONS).startswith(f"did you mean {meant}")


def test_several_close_names_are_listed_and_far_ones_are_not() -> None:
    names = nearest_names("aws:eu-west-9", REGIONS)
    assert sorted(names) == ["aws:eu-west-1", "aws:eu-west-2", "aws:eu-west-3"]
    assert did_you_mean("aws:eu-west-9", REGIONS) == (
        "did you mean aws:eu-west-1, aws:eu-west-2 or aws:eu-west-3?"
    )
    assert nearest_names("xyz", REGIONS) == [] and did_you_mean("xyz", REGIONS) == ""


def test_any_list_of_names_will_do() -> None:
    assert did_you_mean("f-0a1b2c3e", ["f-0a1b2c3d", "f-99999999"]) == "did you mean f-0a1b2c3d?"
    assert did_you_mean("anything", []) == ""
