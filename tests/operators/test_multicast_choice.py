"""When the operator sends several destinations through the multicast tree, and why not otherwise."""

from __future__ import annotations

import pytest

from airflow_skyplane.operators.planning import Planning, why_not_multicast
from airflow_skyplane.planner.plan import PlanEdge, TransferPlan


def _plan(dsts: list[str], edges: list[tuple[str, str]]) -> TransferPlan:
    return TransferPlan(
        "us", dsts, dict.fromkeys(["us", *dsts], 1), [PlanEdge(a, b, 1.0, 8) for a, b in edges],
        1.0, 0.1, 0.01, 0.5, 0.12, "fastest", "highs", 0.1,
    )  # fmt: skip


def _planning(regions: list[str]) -> Planning:
    planning = Planning("us", regions, [10] * len(regions), [_plan([r], [("us", r)]) for r in regions])
    planning.multicast = _plan(sorted(set(regions)), [("us", "eu"), ("eu", "asia")])
    return planning


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({}, None),
        ({"wanted": False}, "multicast=False"),
        ({"mode": "sync"}, "the destinations need different objects (mode='sync')"),
        ({"selections": [(3, 30), (2, 20)]}, "the destinations need different objects (mode='sync')"),
        ({"relay_backend": "aws"}, "relay_backend='aws': the tree runs on local relays only for now"),
        (
            {"waits": False},
            "the tree runs only while the task waits (wait_for_completion=True, deferrable=False)",
        ),
        ({"shares": False}, "the multicast plan shares no edge: a tree would save nothing"),
        ({"regions": ["eu", "eu"]}, "two destinations share a region"),
    ],
)
def test_the_tree_runs_only_where_it_can_and_saves_something(change: dict, why: str | None) -> None:
    planning = _planning(change.get("regions", ["eu", "asia"]))
    summary = {"multicast_shares_edges": change.get("shares", True)}
    got = why_not_multicast(
        planning, summary, change.get("selections", [(3, 30), (3, 30)]), wanted=change.get("wanted", True),
        mode=change.get("mode", "copy"), relay_backend=change.get("relay_backend", "local"),
        waits=change.get("waits", True),
    )  # fmt: skip
    assert got == why


def test_a_destination_sent_directly_keeps_one_transfer_per_destination() -> None:
    planning = _planning(["eu", "asia"])
    planning.plans[1] = None  # its region unknown: sent directly
    got = why_not_multicast(
        planning, {"multicast_shares_edges": True}, [(1, 1), (1, 1)], wanted=True, mode="copy",
        relay_backend="local", waits=True,
    )  # fmt: skip
    assert got == "the tree needs every destination's region known and other than the source's"
