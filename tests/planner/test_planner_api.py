"""The planner on the real catalog: objectives, bad inputs and their messages, the plan's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_skyplane.exceptions import InfeasiblePlanError, InvalidInputError
from airflow_skyplane.planner import NetworkModel, Region, TransferPlan, plan_transfer
from airflow_skyplane.testing.plugin import require


@pytest.fixture(scope="module")
def model() -> NetworkModel:
    return NetworkModel.default()


@pytest.fixture(scope="module")
def overlay_plan(model: NetworkModel) -> TransferPlan:
    return plan_transfer(model, "azure:eastus", "aws:ap-northeast-1", max_vms_per_region=2, size_gb=500)


def test_fastest_plan_beats_or_matches_direct(overlay_plan: TransferPlan) -> None:
    p = overlay_plan
    assert p.throughput_gbps >= p.direct_throughput_gbps * (1 - 1e-6)
    assert p.relays["azure:eastus"] >= 1 and p.relays["aws:ap-northeast-1"] >= 1
    assert p.duration_s == pytest.approx(500 * 8 / p.throughput_gbps)
    assert p.total_cost_usd == pytest.approx(500 * p.cost_per_gb_usd)
    assert p.solver.startswith(("CBC", "HiGHS"))


def test_cheapest_plan_meets_deadline(model: NetworkModel) -> None:
    p = plan_transfer(
        model, "aws:us-east-1", "aws:eu-west-1", size_gb=100, deadline_s=400, max_vms_per_region=4
    )
    assert p.objective == "cheapest"
    assert p.throughput_gbps == pytest.approx(100 * 8 / 400, rel=1e-5)
    assert p.duration_s == pytest.approx(400, rel=1e-5)


def test_cost_cap_is_respected(model: NetworkModel) -> None:
    free = plan_transfer(model, "azure:eastus", "aws:ap-northeast-1", max_vms_per_region=2)
    cap = free.direct_cost_per_gb_usd
    assert cap is not None
    capped = plan_transfer(
        model, "azure:eastus", "aws:ap-northeast-1", max_vms_per_region=2, max_cost_per_gb=cap
    )
    assert capped.cost_per_gb_usd <= cap * (1 + 1e-5)
    assert capped.throughput_gbps <= free.throughput_gbps * (1 + 1e-6)


def test_allowed_regions_confine_relays(model: NetworkModel) -> None:
    p = plan_transfer(
        model, "aws:eu-west-1", "aws:eu-central-1", allowed_regions=["aws:eu-*"], max_vms_per_region=2
    )
    assert all(r.startswith("aws:eu-") for r in p.relays)


def test_unknown_region(model: NetworkModel) -> None:
    with pytest.raises(InvalidInputError) as info:
        plan_transfer(model, "aws:moon-1", "gcp:us-central1-a")
    msg = str(info.value)
    assert "unknown region 'aws:moon-1'" in msg
    assert "'aws:us-east-1', 'gcp:us-central1-a', 'azure:eastus'" in msg
    assert "airflow-skyplane regions" in msg


def test_source_outside_allowed_regions(model: NetworkModel) -> None:
    with pytest.raises(
        InvalidInputError,
        match=r"no region allowed by \['aws:eu-\*'\] contains the source 'gcp:us-central1-a'",
    ):
        plan_transfer(model, "gcp:us-central1-a", "aws:eu-west-1", allowed_regions=["aws:eu-*"])


def test_empty_allowed_region_set(model: NetworkModel) -> None:
    with pytest.raises(InvalidInputError, match=r"allowed-region set is empty.*--allowed-regions"):
        plan_transfer(model, "aws:us-east-1", "aws:eu-west-1", allowed_regions=[])


def test_budget_below_direct_cost(model: NetworkModel) -> None:
    with pytest.raises(InfeasiblePlanError) as info:
        plan_transfer(model, "aws:us-east-1", "aws:eu-west-1", max_cost_per_gb=0.005)
    msg = str(info.value)
    assert "the direct path costs $0.02" in msg
    assert "--max-cost-per-gb is 0.005: raise it to at least 0.02" in msg


def test_total_budget_too_small(model: NetworkModel) -> None:
    with pytest.raises(
        InfeasiblePlanError, match=r"--budget-usd 1 for 1000 GB .* raise it to at least --budget-usd 2[0-9.]+"
    ):
        plan_transfer(model, "aws:us-east-1", "aws:eu-west-1", budget_usd=1, size_gb=1000)


def test_deadline_unreachable(model: NetworkModel) -> None:
    with pytest.raises(InfeasiblePlanError) as info:
        plan_transfer(
            model,
            "aws:us-east-1",
            "aws:eu-west-1",
            size_gb=1000,
            deadline_s=10,
            max_vms=6,
            max_vms_per_region=8,
        )
    msg = str(info.value)
    assert "deadline 10 s for 1000 GB needs 800 Gbps but at most 6 VMs (--max-vms) reach" in msg
    assert "raise --max-vms or the deadline" in msg


def test_no_path() -> None:
    regions = [
        Region("aws:a", 0, 0, "europe"),
        Region("aws:b", 0, 1, "europe"),
        Region("aws:c", 0, 2, "europe"),
    ]
    model = NetworkModel.custom(
        regions,
        {("aws:a", "aws:c"): 5.0, ("aws:c", "aws:a"): 5.0},
        {},
        {r.name: (5.0, 10.0) for r in regions},
        {r.name: 1.0 for r in regions},
    )
    with pytest.raises(InfeasiblePlanError, match=r"no path from 'aws:a' to 'aws:b'"):
        plan_transfer(model, "aws:a", "aws:b")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"objective": "cost"}, r"objective 'cost' needs a throughput target"),
        ({"objective": "speed"}, r"unknown objective 'speed'"),
        ({"budget_usd": 10.0}, r"--budget-usd needs --size-gb"),
        ({"deadline_s": 10.0}, r"--deadline-s needs --size-gb"),
        ({"max_cost_per_gb": -1.0}, r"--max-cost-per-gb must be a positive number"),
        ({"max_vms_per_region": 0}, r"--max-vms-per-region must be an integer >= 1"),
    ],
)
def test_bad_parameters(model: NetworkModel, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        plan_transfer(model, "aws:us-east-1", "aws:eu-west-1", **kwargs)


def test_max_vms_below_gateways(model: NetworkModel) -> None:
    with pytest.raises(InfeasiblePlanError, match=r"--max-vms 2 is below the 3 gateways.*at least 3"):
        plan_transfer(model, "aws:us-east-1", ["aws:eu-west-1", "gcp:us-central1-a"], max_vms=2)


def test_json_round_trip(overlay_plan: TransferPlan) -> None:
    text = overlay_plan.to_json()
    again = TransferPlan.from_json(text)
    assert again == overlay_plan
    data = json.loads(text)
    for key in (
        "predicted_throughput_gbps",
        "predicted_cost_per_gb_usd",
        "direct_throughput_gbps",
        "direct_cost_per_gb_usd",
        "relays",
        "edges",
        "solve_seconds",
    ):
        assert key in data
    assert data["edges"][0].keys() == {"src", "dst", "gbps", "connections"}
    with pytest.raises(InvalidInputError, match="not a TransferPlan JSON document"):
        TransferPlan.from_json('{"source": "aws:us-east-1"}')


def test_table_names_the_regions(overlay_plan: TransferPlan) -> None:
    table = overlay_plan.to_table()
    for region in overlay_plan.relays:
        assert region in table
    assert "Gbps" in table and "$" in table


def test_png_is_written(overlay_plan: TransferPlan, tmp_path: Path) -> None:
    require("matplotlib")  # it draws the overlay picture
    out = tmp_path / "plan.png"
    overlay_plan.to_png(str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 5000
