"""Planning the operator's transfer: one overlay plan per destination region, its estimate, re-plans.

For each destination whose region and the source's are known and differ, the planner
(:mod:`airflow_skyplane.planner`, pure) gets the task's objective and limits - its own arguments,
then the ``skyplane`` settings - and the bytes the destination needs; otherwise the destination is
sent directly. With several remote destinations the multicast plan is made too, for its cost
estimate: the summary and the log show both costs (one plan per destination, and the tree) and the
tree itself, as the data plane would run it (:func:`~airflow_skyplane.transfer.tree.tree_from_plan`).
When a cloud refuses a relay region for quota or capacity, :meth:`TransferPlanner.replan` plans
again without it.

A plan that cannot be made fails with :class:`~airflow_skyplane.exceptions.InfeasiblePlanError`
naming the binding limits by the operator's parameters (the planner names them by its own keywords
in ``limits``; its message speaks the CLI's flags).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from airflow_skyplane.exceptions import InfeasiblePlanError, InvalidInputError

if TYPE_CHECKING:
    from airflow_skyplane.hooks.skyplane import SkyplaneSettings
    from airflow_skyplane.planner.plan import TransferPlan
    from airflow_skyplane.transfer.diff import DiffCounts, Spool
    from airflow_skyplane.transfer.options import TransferOptions
    from airflow_skyplane.transfer.overlay import Overlay
    from airflow_skyplane.transfer.tree import MulticastOverlay

MiB = 1024 * 1024


class Logger(Protocol):
    """What the planner logs through (a task's logger)."""

    def info(self, event: str, *args: Any) -> object: ...


#: the summary's keys :meth:`Planning.estimate` sets
ESTIMATE_KEYS = (
    "predicted_gbps", "direct_gbps", "estimated_cost_usd", "multicast_cost_usd", "multicast_tree",
    "multicast_shares_edges", "excluded_regions",
)  # fmt: skip


@dataclass
class Planning:
    """The plans of one task's transfer, per destination (None: sent directly)."""

    source_region: str | None
    #: per destination, its region ("" when unknown)
    regions: list[str]
    #: per destination, the bytes it needs
    needed: list[int]
    plans: list[TransferPlan | None]
    multicast: TransferPlan | None = None
    #: relay regions a cloud refused, planned around
    excluded: list[str] = field(default_factory=list)

    def estimate(self) -> dict[str, Any]:
        """The plans' estimate (predicted and direct Gbps, cost), for the summary."""
        planned = [(p, n) for p, n in zip(self.plans, self.needed, strict=True) if p is not None]
        out: dict[str, Any] = {}
        if planned:
            out["predicted_gbps"] = round(min(p.throughput_gbps for p, _ in planned), 4)
            out["direct_gbps"] = round(min(p.direct_throughput_gbps for p, _ in planned), 4)
            out["estimated_cost_usd"] = round(sum(p.cost_per_gb_usd * n / 1e9 for p, n in planned), 6)
        if self.multicast is not None and planned:
            from airflow_skyplane.transfer.tree import tree_from_plan

            out["multicast_cost_usd"] = round(self.multicast.cost_per_gb_usd * max(self.needed) / 1e9, 6)
            tree = tree_from_plan(self.multicast)
            out["multicast_tree"] = tree.describe()
            # an edge that carries the data for more than one destination: the tree pays it once
            out["multicast_shares_edges"] = any("," in hop.branch for hop in tree.hops)
        if self.excluded:
            out["excluded_regions"] = list(self.excluded)
        return out

    def fill(self, summary: dict[str, Any]) -> None:
        """Put the estimate in ``summary`` and each plan, in brief, in its destination's entry (the
        relay regions, predicted Gbps and cost per GB; None: sent directly). The plans whole go to
        the plan file (:meth:`document`)."""
        for key in ESTIMATE_KEYS:  # a plan made again (around a refused region) estimates anew
            summary.pop(key, None)
        summary.update(self.estimate())
        for entry, plan in zip(summary["destinations"].values(), self.plans, strict=True):
            entry["plan"] = None
            if plan is not None:
                ends = {plan.source, *plan.destinations}
                entry["plan"] = {
                    "relays": sorted(r for r in plan.relays if r not in ends),
                    "predicted_gbps": round(plan.throughput_gbps, 3),
                    "cost_per_gb_usd": round(plan.cost_per_gb_usd, 4),
                }

    def document(self, uris: Sequence[str]) -> dict[str, Any]:
        """Every plan whole, by destination URI, for the plan file."""
        return {
            "source_region": self.source_region,
            "destinations": {
                uri: {"region": region or None, "bytes": n, "plan": p.to_dict() if p is not None else None}
                for uri, region, n, p in zip(uris, self.regions, self.needed, self.plans, strict=True)
            },
            "multicast_plan": self.multicast.to_dict() if self.multicast is not None else None,
            "excluded_regions": list(self.excluded),
        }

    def overlays(self, options: TransferOptions, *, on_vms: bool) -> list[Overlay]:
        """One overlay per destination: its plan's, or the direct path; on local relays every
        gateway runs on this machine, so the overlays name no region."""
        from airflow_skyplane.transfer.overlay import Overlay, overlay_from_plan

        overlays = []
        for plan in self.plans:
            if plan is None:
                overlays.append(Overlay.direct(options.connections_per_hop))
                continue
            overlay = overlay_from_plan(plan, max_connections_per_hop=options.connections_per_hop)
            if not on_vms:
                overlay.regions = dict.fromkeys(overlay.regions)
            overlays.append(overlay)
        return overlays


def why_not_multicast(
    planning: Planning,
    summary: dict[str, Any],
    selections: Sequence[tuple[int, int]],
    *,
    wanted: bool,
    mode: str,
    relay_backend: str,
    waits: bool,
) -> str | None:
    """None when the destinations go through the multicast plan's tree, else why each destination
    gets a transfer of its own. ``selections``: per destination, the objects and bytes it needs."""
    if len(selections) < 2:
        return "one destination"
    if not wanted:
        return "multicast=False"
    planned = [p.destinations[0] for p in planning.plans if p is not None]
    if planning.multicast is None or len(planned) < len(selections):
        return "the tree needs every destination's region known and other than the source's"
    if len(set(planned)) < len(planned):
        return "two destinations share a region"
    if mode != "copy" or len(set(selections)) > 1:
        return "the destinations need different objects (mode='sync')"
    if relay_backend != "local":
        return f"relay_backend={relay_backend!r}: the tree runs on local relays only for now"
    if not waits:
        return "the tree runs only while the task waits (wait_for_completion=True, deferrable=False)"
    if not summary.get("multicast_shares_edges"):
        return "the multicast plan shares no edge: a tree would save nothing"
    return None


def transfer_summary(
    source: str,
    source_region: str | None,
    mode: str,
    dry_run: bool,
    destinations: Sequence[str],
    regions: Sequence[str | None],
    spools: Sequence[Spool],
    counts: Sequence[DiffCounts],
) -> dict[str, Any]:
    """The task's summary before the plan fills it: what each destination is to receive."""
    return {
        "source": source,
        "source_region": source_region,
        "mode": mode,
        "dry_run": dry_run,
        "bytes_to_send": sum(spool.bytes for spool in spools),
        "objects_to_send": sum(spool.count for spool in spools),
        "destinations": {
            uri: {"region": region or None, "bytes_to_send": spool.bytes}
            | ({"sync": c.as_dict()} if mode == "sync" else {})
            for uri, region, spool, c in zip(destinations, regions, spools, counts, strict=True)
        },
    }


def choose_multicast(
    log: Any,
    planning: Planning,
    summary: dict[str, Any],
    selections: Sequence[tuple[int, int]],
    **conditions: Any,
) -> str | None:
    """:func:`why_not_multicast`, said in ``summary`` (several destinations) and in the task's log."""
    why_not = why_not_multicast(planning, summary, selections, **conditions)
    if len(selections) > 1:
        summary["multicast"] = {"used": why_not is None, "why_not": why_not}
        log.info(
            "Multicast: %s",
            "the tree runs" if why_not is None else f"one transfer per destination ({why_not})",
        )
    return why_not


def multicast_tree(
    log: Any, planning: Planning, options: TransferOptions, *, resume: bool
) -> tuple[MulticastOverlay, list[str]]:
    """The overlay tree of the multicast plan, on local relays, and its destination gateways in the
    order of the destinations."""
    from airflow_skyplane.transfer.tree import tree_from_plan

    assert planning.multicast is not None
    tree = tree_from_plan(planning.multicast, max_connections_per_hop=options.connections_per_hop)
    tree.regions = {}  # local relays: every gateway on this machine
    if resume:
        log.warning("A multicast keeps no resumable state: a retry sends everything again")
    return tree, [plan.destinations[0] for plan in planning.plans if plan is not None]


#: the planner's names of its limits -> the operator's parameter (or setting) that sets each
OPERATOR_NAMES = {
    "max_vms_per_region": "max_relays_per_region",
    "max_vms": "max_relays",
    "min_throughput_gbps": "min_throughput_gbps",
    "deadline_s": "deadline",
    "budget_usd": "max_cost_usd",
    "max_cost_per_gb": "max_cost_usd",
    "allowed_regions": "allowed_regions",
}


class TransferPlanner:
    """Plans for one task, with its objective and limits."""

    def __init__(
        self,
        settings: SkyplaneSettings,
        *,
        task_id: str,
        min_throughput_gbps: float | None,
        deadline_s: float | None,
        max_cost_usd: float | None,
        log: Logger,
    ) -> None:
        self.settings, self.task_id, self.log = settings, task_id, log
        self.min_throughput_gbps, self.deadline_s, self.max_cost_usd = (
            min_throughput_gbps,
            deadline_s,
            max_cost_usd,
        )

    def plan_destinations(
        self,
        source_uri: str,
        source_region: str | None,
        regions: Sequence[str],
        uris: Sequence[str],
        needed: Sequence[int],
    ) -> Planning:
        """A plan per destination (logged), and the multicast plan for the estimate."""
        plans: list[TransferPlan | None] = []
        for uri, region, n in zip(uris, regions, needed, strict=True):
            if not source_region or not region:
                self.log.info(
                    "No region known for %s: sending it directly (pass source_region and "
                    "destination_region, e.g. 'aws:us-east-1', to plan relays)",
                    source_uri if not source_region else uri,
                )
                plans.append(None)
            elif region == source_region:
                self.log.info("%s is in the source's region %s: sending it directly", uri, region)
                plans.append(None)
            else:
                plan = self.plan(source_region, [region], n / 1e9)
                self.log.info("Planned overlay to %s (%s):\n%s", uri, plan.solver, plan.to_table())
                plans.append(plan)
        planning = Planning(source_region, list(regions), list(needed), plans)
        remote = list(dict.fromkeys(r for r, p in zip(regions, plans, strict=True) if p is not None))
        if source_region and len(remote) > 1:
            planning.multicast = self.plan(source_region, remote, max(needed) / 1e9)
            self.log.info("Multicast plan, for its cost estimate:\n%s", planning.multicast.to_table())
        return planning

    def replan(self, planning: Planning, excluded_region: str) -> None:
        """Plan every planned destination again without ``excluded_region`` (and those before)."""
        planning.excluded.append(excluded_region)
        planning.plans = [
            None if p is None else self.plan(planning.source_region, [r], n / 1e9, planning.excluded)
            for p, r, n in zip(planning.plans, planning.regions, planning.needed, strict=True)
        ]
        for plan in planning.plans:
            if plan is not None:
                self.log.info("Planned again (%s):\n%s", plan.solver, plan.to_table())

    def log_estimate(self, planning: Planning) -> None:
        estimate = planning.estimate()
        if "predicted_gbps" in estimate:
            self.log.info(
                "Estimate: %.1f MiB to send, %.3f Gbps predicted (direct %.3f Gbps), $%.4f",
                sum(planning.needed) / MiB, estimate["predicted_gbps"], estimate["direct_gbps"],
                estimate["estimated_cost_usd"],
            )  # fmt: skip
        if "multicast_cost_usd" in estimate:
            self.log.info(
                "One transfer per destination: $%.4f; the multicast tree (%s): $%.4f\n%s",
                estimate["estimated_cost_usd"],
                "shares edges" if estimate["multicast_shares_edges"] else "shares no edge",
                estimate["multicast_cost_usd"], "\n".join(estimate["multicast_tree"]),
            )  # fmt: skip

    def plan(
        self,
        src_region: str | None,
        dst_regions: Sequence[str],
        size_gb: float,
        excluded: Sequence[str] = (),
    ) -> TransferPlan:
        from airflow_skyplane import measurements
        from airflow_skyplane.planner import NetworkModel, plan_transfer
        from airflow_skyplane.planner.regions import match_regions

        settings = self.settings
        model = NetworkModel.from_csv(settings.grid_path) if settings.grid_path else NetworkModel.default()
        model = measurements.with_recorded(model, settings.measurements_path)  # when the history is on
        size = max(size_gb, 1e-9)
        allowed = list(settings.allowed_regions) or None
        if settings.relay_backend in ("aws", "gcp", "azure"):
            allowed = allowed or [f"{settings.relay_backend}:*"]
            for region in (src_region, *dst_regions):
                if region and not region.startswith(f"{settings.relay_backend}:"):
                    raise InvalidInputError(
                        f"relay_backend={settings.relay_backend!r} rents relays in that cloud only, but "
                        f"{region!r} is elsewhere: use relay_backend='auto' (relays in each region's cloud)"
                    )
        if excluded:
            allowed = [r for r in match_regions(allowed or ["*"], model.regions) if r not in excluded]
        limits: dict[str, Any] = {
            "min_throughput_gbps": self.min_throughput_gbps,
            "deadline_s": self.deadline_s,
            "max_vms_per_region": settings.max_relays_per_region,
            "max_vms": settings.max_relays,
            "allowed_regions": allowed,
        }
        if not src_region:
            raise InvalidInputError(
                f"task {self.task_id!r}: no source region to plan from: pass source_region"
            )
        dsts = list(dst_regions) if len(dst_regions) > 1 else dst_regions[0]
        sized = size if (self.deadline_s is not None or self.max_cost_usd is not None) else None
        try:
            return plan_transfer(
                model, src_region, dsts, objective=settings.objective, size_gb=sized,
                budget_usd=self.max_cost_usd, **limits,
            )  # fmt: skip
        except InfeasiblePlanError as err:
            if "budget_usd" in err.limits:
                raise self._over_budget(err, model, src_region, dsts, size, limits) from None
            raise self._infeasible(err) from None

    def _over_budget(
        self,
        err: InfeasiblePlanError,
        model: Any,
        src: str,
        dsts: str | list[str],
        size_gb: float,
        limits: dict[str, Any],
    ) -> InfeasiblePlanError:
        """``max_cost_usd`` binds: the error names it and what the cheapest plan costs, found by
        planning again without it (the cheapest plan reaching the task's target, or at any speed)."""
        from airflow_skyplane.planner.solver import Planner, plan_transfer

        target = self.min_throughput_gbps is not None or self.deadline_s is not None
        try:
            if target:
                per_gb = plan_transfer(
                    model, src, dsts, objective="cost", size_gb=size_gb, **limits
                ).cost_per_gb_usd
            else:
                planner = Planner(
                    model, max_vms_per_region=limits["max_vms_per_region"], max_vms=limits["max_vms"],
                    allowed_regions=limits["allowed_regions"],
                )  # fmt: skip
                dst_list = [dsts] if isinstance(dsts, str) else dsts
                per_gb = planner.min_cost_per_gb(planner.candidates(src, dst_list), src, dst_list)
        except InfeasiblePlanError as other:  # the target is out of reach at any price: say that
            return self._infeasible(other)
        cost = per_gb * size_gb
        minimum = _rounded_up(cost)
        names = ("max_cost_usd", *(OPERATOR_NAMES.get(k, k) for k in err.limits if k != "budget_usd"))
        reaching = ""
        if self.deadline_s is not None:
            reaching = f" within deadline={self.deadline_s:g} s"
        elif self.min_throughput_gbps is not None:
            reaching = f" reaching min_throughput_gbps={self.min_throughput_gbps:g}"
        lower = f", or relax {', '.join(names[1:])}" if len(names) > 1 else ""
        return InfeasiblePlanError(
            f"task {self.task_id!r}: max_cost_usd={self.max_cost_usd:g} is too small: the cheapest plan"
            f"{reaching} for {size_gb:.3g} GB costs ${_usd(cost, places=4)} (${per_gb:.4f}/GB); raise "
            f"max_cost_usd to at least {_usd(minimum)}{lower}",
            limits=names,
        )

    def _infeasible(self, err: InfeasiblePlanError) -> InfeasiblePlanError:
        """The planner's error, with the binding limits named as the task sets them."""
        values = {
            "max_relays_per_region": self.settings.max_relays_per_region,
            "max_relays": self.settings.max_relays,
            "min_throughput_gbps": self.min_throughput_gbps,
            "deadline": self.deadline_s,
            "max_cost_usd": self.max_cost_usd,
            "allowed_regions": list(self.settings.allowed_regions) or None,
        }
        names = list(dict.fromkeys(OPERATOR_NAMES.get(limit, limit) for limit in err.limits))
        setting = {"max_relays"}  # only in the skyplane connection or [skyplane]
        shown = [
            f"{name}={values.get(name)!r}" + (" (skyplane connection)" if name in setting else "")
            for name in names
        ]
        held = f"no plan within {', '.join(shown)}: " if shown else ""
        return InfeasiblePlanError(
            f"task {self.task_id!r}: {held}the planner says: {err}", limits=tuple(names)
        )


def _rounded_up(usd: float) -> float:
    """``usd`` rounded up to the cent, or below a cent to two significant digits (a transfer of a few
    MB costs a fraction of a cent, and "at least 0.01" would not be the real minimum)."""
    if usd >= 0.01:
        return math.ceil(usd * 100 - 1e-9) / 100
    if usd <= 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(usd)) - 1)
    return float(f"{math.ceil(usd / step - 1e-9) * step:.2g}")


def _usd(usd: float, places: int = 2) -> str:
    """An amount in dollars as a person reads it: ``places`` decimals, or two significant digits
    below a cent."""
    return f"{usd:.{places}f}" if usd >= 0.01 or usd == 0 else f"{usd:.2g}"
