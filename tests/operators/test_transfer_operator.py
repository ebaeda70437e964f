"""SkyplaneTransferOperator.execute against the emulated sky, with local relays."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.hooks.storage import open_store
from airflow_skyplane.operators.plan_files import read_plans
from airflow_skyplane.operators.transfer import SkyplaneTransferOperator
from airflow_skyplane.testing.sky import AZURITE_KEY, EmulatedSky


def _seed(emulated_sky: EmulatedSky, uri: str) -> dict[str, bytes]:
    store = emulated_sky.open(uri)
    rng = random.Random(9)
    data = {
        f"day=2026-11-{d:02d}/part-{n}.csv": rng.randbytes(rng.randrange(0, 300_000))
        for d in (1, 2)
        for n in range(5)
    }
    data["model/weights.bin"] = rng.randbytes(20 * 1024 * 1024)
    for key, body in data.items():
        store.put("in/" + key, body)
    return data


def test_copy_s3_to_azure_through_planned_local_relays(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str], capfd: pytest.CaptureFixture[str]
) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("az")
    data = _seed(emulated_sky, src)
    op = SkyplaneTransferOperator(
        task_id="replicate",
        source=f"{src}/in/",
        destination=f"{dst}/copy/",
        destination_region="azure:westeurope",  # the source's region comes from the aws connection
        chunk_size_mb=4,
    )
    summary = op.execute(context={})
    logged = "".join(capfd.readouterr())
    copied = open_store(dst).store
    for key, body in data.items():
        assert copied.read("copy/" + key) == body
    assert summary["objects"] == len(data) and summary["bytes"] == sum(map(len, data.values()))
    assert read_plans(summary)["source_region"] == "aws:us-east-1" and summary["predicted_gbps"] > 0
    # what was not checked by the store's checksum is said, with the reason and the keys
    entry = summary["destinations"][f"{dst}/copy/"]
    unverified = entry.get("size_only", {"objects": 0, "first": []})
    assert summary["checksums_verified"] + unverified["objects"] == len(data)
    assert len(unverified["first"]) == min(unverified["objects"], 5)
    if unverified["objects"]:
        assert (
            list(unverified["why"])
            == [
                "written in parts: Azure keeps no Content-MD5 for a blob whose blocks did not arrive in order"
            ]
            and "checked by size only" in logged
        )
    assert "Planned overlay" in logged and "100.0%" in logged  # plan table and progress
    shown = json.dumps(summary) + logged
    assert "emulated-secret-key" not in shown and AZURITE_KEY not in shown


def test_dry_run_plans_and_moves_nothing(emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str]) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("gs")
    _seed(emulated_sky, src)
    summary = SkyplaneTransferOperator(
        task_id="estimate",
        source=f"{src}/in/",
        destination=dst,
        destination_region="gcp:europe-west4-a",
        dry_run=True,
    ).execute(context={})
    assert summary["dry_run"] is True and read_plans(summary)["destinations"][dst]["plan"][
        "destinations"
    ] == ["gcp:europe-west4-a"]
    assert list(open_store(dst).store.list()) == []


def test_dry_run_to_several_regions_shows_the_multicast_tree_and_both_costs(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str]
) -> None:
    src = sky_bucket("s3")
    _seed(emulated_sky, f"{src}/in/")
    dsts = [sky_bucket("gs"), sky_bucket("gs"), sky_bucket("az")]
    summary = SkyplaneTransferOperator(
        task_id="estimate_multicast",
        source=f"{src}/in/",
        source_region="aws:us-east-1",
        destination=dsts,
        destination_region=["gcp:europe-west4-a", "gcp:asia-east1-a", "azure:westeurope"],
        dry_run=True,
    ).execute(context={})
    assert summary["dry_run"] is True
    assert summary["estimated_cost_usd"] > 0 and summary["multicast_cost_usd"] > 0
    tree = summary["multicast_tree"]
    assert tree[0].startswith("aws:us-east-1")  # the source first, then where the tree branches
    for region in ("gcp:europe-west4-a", "gcp:asia-east1-a", "azure:westeurope"):
        assert any(region in line for line in tree[1:])
    assert isinstance(summary["multicast_shares_edges"], bool)
    for dst in dsts:
        assert list(open_store(dst).store.list()) == []


def test_three_destinations_through_the_multicast_tree_read_the_source_once(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str]
) -> None:
    src = sky_bucket("s3")
    data = _seed(emulated_sky, src)
    dsts = [f"{sky_bucket('gs')}/a/", f"{sky_bucket('gs')}/b/", f"{sky_bucket('az')}/c/"]
    regions = ["gcp:europe-west4-a", "gcp:asia-east1-a", "azure:westeurope"]

    summary = SkyplaneTransferOperator(
        task_id="distribute", source=f"{src}/in/", destination=dsts, destination_region=regions,
        chunk_size_mb=4,
    ).execute(context={})  # fmt: skip
    total = sum(map(len, data.values()))
    assert summary["multicast"]["used"] is True, summary["multicast"]
    assert summary["multicast"]["source_read_bytes"] == total  # read once for three destinations
    for dst in dsts:
        copied = open_store(dst)
        for key, body in data.items():
            assert copied.store.read(copied.prefix + key) == body
        assert summary["destinations"][dst]["objects"] == len(data)


def test_destination_inside_the_source_is_refused_before_anything(sky_bucket: Callable[[str], str]) -> None:
    src = sky_bucket("s3")
    op = SkyplaneTransferOperator(task_id="loop", source=f"{src}/data/", destination=f"{src}/data/copy/")
    with pytest.raises(InvalidInputError, match="destination=.* overlaps source="):
        op.execute(context={})


def test_cost_objective_needs_a_throughput_target(sky_bucket: Callable[[str], str]) -> None:
    op = SkyplaneTransferOperator(
        task_id="cheap", source=sky_bucket("s3"), destination=sky_bucket("az"),
        destination_region="azure:eastus", objective="cost",
    )  # fmt: skip
    with pytest.raises(InvalidInputError, match="objective='cost' needs deadline or min_throughput_gbps"):
        op.execute(context={})


def test_cloud_relays_need_the_workers_address_an_attached_task_and_their_cloud(
    sky_bucket: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__SKYPLANE__RELAY_BACKEND", "aws")
    src, dst = sky_bucket("s3"), sky_bucket("gs")
    op = SkyplaneTransferOperator(task_id="aws", source=src, destination=dst)
    with pytest.raises(InvalidInputError, match="relay_backend='aws' rents relay VMs.*set worker_cidr"):
        op.execute(context={})
    monkeypatch.setenv("AIRFLOW__SKYPLANE__WORKER_CIDR", "198.51.100.7/32")
    op = SkyplaneTransferOperator(task_id="aws", source=src, destination=dst, wait_for_completion=False)
    with pytest.raises(InvalidInputError, match="cannot detach or defer yet"):
        op.execute(context={})
    op = SkyplaneTransferOperator(
        task_id="aws", source=src, destination=dst, destination_region="gcp:us-central1-a"
    )
    with pytest.raises(InvalidInputError, match="'gcp:us-central1-a' is elsewhere: use relay_backend='auto'"):
        op.execute(context={})
