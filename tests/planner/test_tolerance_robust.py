"""Fastest then cheapest within the tolerance, relays that pay for themselves, conservative relay hops,
measured hops trusted as measured, and what a plan says each hop's rate rests on."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_skyplane.exceptions import InfeasiblePlanError, InvalidInputError
from airflow_skyplane.planner import NetworkModel, Observation, Region, TransferPlan, plan_transfer
from airflow_skyplane.planner.milp import OverlayNetwork, whole_connections

NAMES = ["aws:src", "aws:relay", "aws:dst"]
REGIONS = [Region(n, 0.0, float(i), "europe") for i, n in enumerate(NAMES)]


def triangle(direct: float, via: float, *, price: float = 0.02, vm: float = 1.0) -> NetworkModel:
    """src -> dst directly at ``direct`` Gbps, or through one relay at ``via`` a hop; 64 connections
    a VM, caps high enough that only the hops limit."""
    tp = {("aws:src", "aws:dst"): direct, ("aws:src", "aws:relay"): via, ("aws:relay", "aws:dst"): via}
    cost = {(a, b): price for a in NAMES for b in NAMES if a != b}
    return NetworkModel.custom(REGIONS, tp, cost, {n: (20.0, 20.0) for n in NAMES}, {n: vm for n in NAMES})


def test_a_relay_that_adds_less_than_the_tolerance_is_not_rented() -> None:
    # through the relay the source's 64 connections carry 4% more than straight to the destination
    model = triangle(direct=4.0, via=4.16)
    fastest = plan_transfer(model, "aws:src", "aws:dst", tolerance=0.0)
    assert "aws:relay" in fastest.relays
    assert fastest.throughput_gbps == pytest.approx(4.16)
    plan = plan_transfer(model, "aws:src", "aws:dst")  # default tolerance 5%
    assert set(plan.relays) == {"aws:src", "aws:dst"}
    assert plan.throughput_gbps == pytest.approx(4.0)
    assert plan.cost_per_gb_usd < fastest.cost_per_gb_usd
    assert plan.tolerance == 0.05 and fastest.tolerance == 0.0


def test_a_relay_that_pays_for_itself_is_rented() -> None:
    model = triangle(direct=2.0, via=8.0)
    plan = plan_transfer(model, "aws:src", "aws:dst")
    assert "aws:relay" in plan.relays
    assert plan.throughput_gbps >= 1.5 * plan.direct_throughput_gbps


def test_the_tolerance_is_a_setting_with_a_clear_error() -> None:
    model = triangle(direct=4.0, via=4.16)
    for bad in (-0.1, 0.9, float("nan"), "5%", True):
        with pytest.raises(InvalidInputError, match=r"tolerance must be a share of the best throughput"):
            plan_transfer(model, "aws:src", "aws:dst", tolerance=bad)  # type: ignore[arg-type]


def test_the_cost_objective_ignores_the_tolerance() -> None:
    model = triangle(direct=4.0, via=8.0)
    plan = plan_transfer(model, "aws:src", "aws:dst", min_throughput_gbps=6.0, tolerance=0.3)
    assert plan.objective == "cheapest" and plan.tolerance is None
    assert plan.throughput_gbps == pytest.approx(6.0)
    with pytest.raises(InfeasiblePlanError, match=r"--min-throughput-gbps 20 is out of reach"):
        plan_transfer(model, "aws:src", "aws:dst", min_throughput_gbps=20.0)


def test_a_multicast_hub_that_saves_egress_stays() -> None:
    """A hub is worth renting for its price even where it adds no speed: both ways reach 10 Gbps, the
    hub's way pays the expensive hop once."""
    names = ["aws:src", "aws:hub", "aws:d1", "aws:d2"]
    regions = [Region(n, 0.0, float(i), "europe") for i, n in enumerate(names)]
    tp = {(a, b): 20.0 for a in names for b in names if a != b}
    cost = {(a, b): 0.10 for a in names for b in names if a != b}
    cost[("aws:hub", "aws:d1")] = cost[("aws:hub", "aws:d2")] = 0.01
    caps = {"aws:src": (20.0, 20.0), "aws:hub": (20.0, 20.0), "aws:d1": (10.0, 10.0), "aws:d2": (10.0, 10.0)}
    model = NetworkModel.custom(regions, tp, cost, caps, {n: 0.0 for n in names})
    plan = plan_transfer(model, "aws:src", ["aws:d1", "aws:d2"])
    assert "aws:hub" in plan.relays
    assert plan.throughput_gbps == pytest.approx(10.0)
    assert plan.cost_per_gb_usd == pytest.approx(0.12, abs=1e-6)
    assert plan.direct_throughput_gbps == pytest.approx(10.0)
    assert plan.direct_cost_per_gb_usd == pytest.approx(0.20, abs=1e-6)


# -- relays on random networks ----------------------------------------------------------------------


@st.composite
def small_networks(draw: st.DrawFn) -> NetworkModel:
    n = draw(st.integers(4, 6))
    names = [f"aws:r{i}" for i in range(n)]
    regions = [Region(x, 0.0, float(i), "europe") for i, x in enumerate(names)]
    tp = {
        (a, b): draw(st.sampled_from([1.0, 2.0, 3.5, 5.0, 8.0]))
        for a in names
        for b in names
        if a != b and draw(st.integers(0, 5)) > 0
    }
    cost = {(a, b): draw(st.sampled_from([0.0, 0.02, 0.05, 0.09])) for a in names for b in names if a != b}
    caps = {x: (draw(st.sampled_from([5.0, 10.0])), 10.0) for x in names}
    price = {x: draw(st.sampled_from([0.5, 1.5])) for x in names}
    return NetworkModel.custom(regions, tp, cost, caps, price)


@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(model=small_networks())
def test_every_rented_relay_pays_for_itself(model: NetworkModel) -> None:
    src, dst = model.regions[0], model.regions[-1]
    try:
        plan = plan_transfer(model, src, dst, candidate_relays=None)
    except InfeasiblePlanError:
        return
    tol = 0.05
    assert all(e.connections >= 1 for e in plan.edges)
    for relay in (r for r in plan.relays if r not in (src, dst)):
        carried = sum(e.gbps for e in plan.edges if e.dst == relay)
        assert carried >= 0.01 * plan.throughput_gbps
        rest = [r for r in plan.relays if r != relay]
        for tolerance in (0.0, tol):  # the fastest and the cheapest plan without the relay
            try:
                other = plan_transfer(model, src, dst, allowed_regions=rest, tolerance=tolerance)
            except InfeasiblePlanError:
                continue
            # without the relay, the plan loses at least the tolerance, or pays more per GB
            assert other.throughput_gbps < (1 - tol) * plan.throughput_gbps * (
                1 + 1e-6
            ) or other.cost_per_gb_usd > plan.cost_per_gb_usd * (1 - 1e-6), (
                relay,
                plan.to_table(),
                other.to_table(),
            )


# -- whole connections ------------------------------------------------------------------------------


def test_whole_connections_keep_every_hop_and_the_budget() -> None:
    net = OverlayNetwork(
        nodes=["s", "a", "b", "d"],
        src="s",
        dsts=["d"],
        rate={("s", "a"): 6.4, ("s", "b"): 6.4, ("s", "d"): 6.4, ("a", "d"): 6.4, ("b", "d"): 6.4},
        price={},
        vm_price_per_hour={},
        egress_cap={},
        ingress_cap={},
    )
    # 0.1 Gbps per connection: the source needs 40.5 + 10.2 + 0.3 connections of its 16
    flows = {("s", "a"): 4.05, ("s", "b"): 1.02, ("s", "d"): 0.03, ("a", "d"): 4.05, ("b", "d"): 1.02}
    conns = whole_connections(net, {"s": 1, "a": 1, "b": 1, "d": 1}, flows, 5.1, 16, min_share=0.0)
    assert sum(c for (u, _), c in conns.items() if u == "s") == 16
    assert all(conns[e] >= 1 for e in flows)
    assert conns[("s", "a")] > conns[("s", "b")] >= conns[("s", "d")]
    # a trickle under 1% of the throughput gets no connection: the LP reroutes it
    assert ("s", "d") not in whole_connections(net, {"s": 1, "a": 1, "b": 1, "d": 1}, flows, 5.1, 16)


# -- robust to the model's error --------------------------------------------------------------------

SRC, DST = "azure:eastus", "aws:ap-northeast-1"


def test_relay_hops_count_at_their_conservative_rate() -> None:
    model = NetworkModel.default()
    plan = plan_transfer(model, SRC, DST)
    relayed = [e for e in plan.edges if not (e.src == SRC and e.dst == DST)]
    assert relayed, plan.to_table()  # Azure to Tokyo gains from relays in every model so far
    for e in plan.edges:
        rate = model.throughput if (e.src, e.dst) == (SRC, DST) else model.lower_throughput
        assert e.gbps <= rate(e.src, e.dst) * e.connections / 64 * (1 + 1e-6)
        assert e.basis == "model" and e.measured_age_s is None
    assert any(model.lower_throughput(e.src, e.dst) < model.throughput(e.src, e.dst) for e in relayed)
    # the fastest plans: trusting the best estimates can only promise more
    careful = plan_transfer(model, SRC, DST, tolerance=0.0)
    trusting = plan_transfer(model, SRC, DST, robust=False, tolerance=0.0)
    assert trusting.throughput_gbps >= careful.throughput_gbps * (1 - 1e-3)


def test_measured_hops_are_trusted_as_measured() -> None:
    model = NetworkModel.default()
    plan = plan_transfer(model, SRC, DST, tolerance=0.0)
    hops = {(e.src, e.dst) for e in plan.edges}
    # the same rates, now measured: no longer discounted, the fastest plan can only be faster
    measured = model.with_measured({h: model.throughput(*h) for h in hops}, "grid of the plan's hops")
    assert all(measured.lower_throughput(*h) == measured.throughput(*h) for h in hops)
    again = plan_transfer(measured, SRC, DST, tolerance=0.0)
    assert again.throughput_gbps >= plan.throughput_gbps * (1 - 1e-3)
    assert len(again.relays) <= len(plan.relays)
    # relay hops now carry what the measurement says, more than the model's conservative rate allows
    assert any(e.gbps > model.lower_throughput(e.src, e.dst) * e.connections / 64 * 1.01 for e in again.edges)
    assert {e.basis for e in again.edges if (e.src, e.dst) in hops} == {"measured"}


def test_history_is_preferred_and_fades_with_age() -> None:
    model = NetworkModel.default()
    point = model.throughput(SRC, DST)
    fresh = model.with_history({(SRC, DST): Observation(gbps=point / 2, age_s=0.0, samples=3)})
    assert fresh.throughput(SRC, DST) == pytest.approx(point / 2)
    assert fresh.lower_throughput(SRC, DST) == pytest.approx(point / 2)  # a fresh measurement as measured
    assert fresh.basis(SRC, DST) == "history" and "history of 1 hops" in fresh.source
    month = model.with_history({(SRC, DST): Observation(gbps=point / 2, age_s=30 * 86400.0)})
    assert month.history_weight(SRC, DST) == pytest.approx(0.5)
    assert month.throughput(SRC, DST) == pytest.approx(point / 2**0.5)  # halfway, in logs
    factor = model.lower_throughput(SRC, DST) / point
    assert factor < 1  # the model alone: its lower quartile
    assert month.lower_throughput(SRC, DST) / month.throughput(SRC, DST) == pytest.approx(factor**0.5)
    # unknown regions in a history are left out, not fatal
    assert model.with_history({("aws:moon-1", DST): Observation(1.0, 0.0)}) is model
    plan = plan_transfer(fresh, SRC, DST)
    direct = [e for e in plan.edges if (e.src, e.dst) == (SRC, DST)]
    assert plan.direct_throughput_gbps == pytest.approx(point / 2)
    if direct:
        assert direct[0].basis == "history" and direct[0].measured_age_s == 0.0


def test_plan_json_round_trip_keeps_the_basis() -> None:
    model = NetworkModel.default()
    seen = model.with_history({(SRC, DST): Observation(gbps=1.0, age_s=3600.0)})
    plan = plan_transfer(seen, SRC, DST, tolerance=0.0)
    again = TransferPlan.from_json(plan.to_json())
    assert again == plan
    assert {e.basis for e in again.edges} <= {"model", "history"}
    assert "rate from" in plan.to_table()
    old = plan.to_dict()
    for e in old["edges"]:  # a plan written before edges said what they rest on still loads
        del e["basis"], e["measured_age_s"]
    del old["tolerance"]
    assert {e.basis for e in TransferPlan.from_dict(old).edges} == {"model"}
