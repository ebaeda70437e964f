"""What a plan request asks for: its numbers checked, and the throughput target and $/GB cap it implies.

Shared by the planner and its error messages, which name the user's own options (``--budget-usd`` ...).
"""

from __future__ import annotations

import math

from airflow_skyplane.exceptions import InvalidInputError

OBJECTIVES = ("throughput", "cost")


def check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")


def check_pos(name: str, value: float | None) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidInputError(f"{name} must be a positive number, got {value!r}")


def targets(
    objective: str | None,
    min_throughput_gbps: float | None,
    size_gb: float | None,
    deadline_s: float | None,
    budget_usd: float | None,
    max_cost_per_gb: float | None,
) -> tuple[float | None, float | None, str]:
    for name, value in (
        ("--min-throughput-gbps", min_throughput_gbps),
        ("--size-gb", size_gb),
        ("--deadline-s", deadline_s),
        ("--budget-usd", budget_usd),
        ("--max-cost-per-gb", max_cost_per_gb),
    ):
        check_pos(name, value)
    if objective is not None and objective not in OBJECTIVES:
        raise InvalidInputError(
            f"unknown objective {objective!r}: use 'throughput' (fastest) or 'cost' (cheapest)"
        )
    if budget_usd is not None and max_cost_per_gb is not None:
        raise InvalidInputError("give either --budget-usd or --max-cost-per-gb, not both")
    if budget_usd is not None and size_gb is None:
        raise InvalidInputError(
            "--budget-usd needs --size-gb (the budget is for that much data); or use --max-cost-per-gb"
        )
    if deadline_s is not None and size_gb is None:
        raise InvalidInputError("--deadline-s needs --size-gb (the deadline is for that much data)")
    if deadline_s is not None and min_throughput_gbps is not None:
        raise InvalidInputError("give either --min-throughput-gbps or --size-gb with --deadline-s, not both")
    target = min_throughput_gbps
    if deadline_s is not None and size_gb is not None:
        target = size_gb * 8.0 / deadline_s
    cost_cap = max_cost_per_gb
    if budget_usd is not None and size_gb is not None:
        cost_cap = budget_usd / size_gb
    if objective is None:
        objective = "cost" if target is not None and cost_cap is None else "throughput"
    if objective == "cost" and target is None:
        raise InvalidInputError(
            "objective 'cost' needs a throughput target: "
            "add --min-throughput-gbps or --size-gb with --deadline-s"
        )
    return target, cost_cap, objective


def cap_name(budget_usd: float | None, size_gb: float | None, cost_cap: float) -> str:
    if budget_usd is not None and size_gb is not None:
        return f"--budget-usd {budget_usd:g} for {size_gb:g} GB allows ${cost_cap:.4f}/GB"
    return f"--max-cost-per-gb is {cost_cap:g}"


def cap_limit(budget_usd: float | None) -> str:
    """The name of the cost cap a plan is held to (the planner's keyword)."""
    return "budget_usd" if budget_usd is not None else "max_cost_per_gb"


def target_limit(deadline_s: float | None) -> str:
    """The name of the throughput target a plan must reach (the planner's keyword)."""
    return "deadline_s" if deadline_s is not None else "min_throughput_gbps"


def cap_value(budget_usd: float | None, size_gb: float | None, per_gb: float) -> str:
    if budget_usd is not None and size_gb is not None:
        return f"--budget-usd {math.ceil(per_gb * size_gb * 100) / 100:.2f}"
    return f"{math.ceil(per_gb * 1e4) / 1e4:.4f}"


def check_tolerance(value: object) -> float:
    """The throughput tolerance: a share of the best throughput, from 0 (the fastest plan) up to 0.5."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= 0.5
    ):
        raise InvalidInputError(
            f"tolerance must be a share of the best throughput from 0 to 0.5 (e.g. 0.05 for 5%), "
            f"got {value!r}"
        )
    return float(value)
