"""TransferPlan: what the solver decided, in a form people and XCom can read.

JSON (``to_json``/``from_json``) for XCom and the CLI, a text table for logs, and a PNG of the overlay
drawn with matplotlib, which is imported only inside :meth:`TransferPlan.to_png` so the planner works
without it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_skyplane.exceptions import InvalidInputError


@dataclass(frozen=True)
class PlanEdge:
    """One overlay hop: ``gbps`` sent once from ``src`` to ``dst`` over ``connections`` TCP streams.

    ``basis`` says what the hop's rate rests on: ``"measured"`` (a grid the caller loaded),
    ``"history"`` (what past transfers measured on it, ``measured_age_s`` old) or ``"model"``.
    """

    src: str
    dst: str
    gbps: float
    connections: int
    basis: str = "model"
    measured_age_s: float | None = None


@dataclass
class TransferPlan:
    """A planned overlay transfer from ``source`` to every region in ``destinations``.

    ``relays`` counts the VMs per region, source and destination gateways included (every region
    that runs a gateway). ``throughput_gbps`` is what every destination receives. Costs are per GB of
    the data set (a multicast to three destinations delivers it three times, and pays for that):
    ``cost_per_gb_usd = egress_cost_per_gb_usd + vm_cost_per_gb_usd``. ``size_gb``, ``duration_s`` and
    ``total_cost_usd`` are set when the request named a size. ``direct_*`` is the baseline of sending
    straight from the source to each destination with the same VM counts there. ``tolerance`` is the
    share of the fastest plan's throughput a "fastest" plan may give up to be cheaper (None for a
    "cheapest" plan).
    """

    source: str
    destinations: list[str]
    relays: dict[str, int]
    edges: list[PlanEdge]
    throughput_gbps: float
    egress_cost_per_gb_usd: float
    vm_cost_per_gb_usd: float
    direct_throughput_gbps: float
    direct_cost_per_gb_usd: float | None
    objective: str
    solver: str
    solve_seconds: float
    size_gb: float | None = None
    model: str = "default model"
    candidate_regions: list[str] = field(default_factory=list)
    tolerance: float | None = None

    @property
    def cost_per_gb_usd(self) -> float:
        return self.egress_cost_per_gb_usd + self.vm_cost_per_gb_usd

    @property
    def duration_s(self) -> float | None:
        if self.size_gb is None or self.throughput_gbps <= 0:
            return None
        return self.size_gb * 8.0 / self.throughput_gbps

    @property
    def total_cost_usd(self) -> float | None:
        return None if self.size_gb is None else self.size_gb * self.cost_per_gb_usd

    @property
    def speedup_over_direct(self) -> float | None:
        if self.direct_throughput_gbps <= 0:
            return None
        return self.throughput_gbps / self.direct_throughput_gbps

    @property
    def vm_count(self) -> int:
        return sum(self.relays.values())

    # -- JSON -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["edges"] = [asdict(e) for e in self.edges]
        out.update(
            predicted_throughput_gbps=self.throughput_gbps,
            predicted_cost_per_gb_usd=self.cost_per_gb_usd,
            direct_throughput_gbps=self.direct_throughput_gbps,
            direct_cost_per_gb_usd=self.direct_cost_per_gb_usd,
            duration_s=self.duration_s,
            total_cost_usd=self.total_cost_usd,
            vm_count=self.vm_count,
        )
        return out

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransferPlan:
        try:
            return cls(
                source=str(data["source"]),
                destinations=[str(d) for d in data["destinations"]],
                relays={str(k): int(v) for k, v in data["relays"].items()},
                edges=[
                    PlanEdge(
                        str(e["src"]),
                        str(e["dst"]),
                        float(e["gbps"]),
                        int(e["connections"]),
                        basis=str(e.get("basis", "model")),
                        measured_age_s=None
                        if e.get("measured_age_s") is None
                        else float(e["measured_age_s"]),
                    )
                    for e in data["edges"]
                ],
                throughput_gbps=float(data["throughput_gbps"]),
                egress_cost_per_gb_usd=float(data["egress_cost_per_gb_usd"]),
                vm_cost_per_gb_usd=float(data["vm_cost_per_gb_usd"]),
                direct_throughput_gbps=float(data["direct_throughput_gbps"]),
                direct_cost_per_gb_usd=(
                    None if data["direct_cost_per_gb_usd"] is None else float(data["direct_cost_per_gb_usd"])
                ),
                objective=str(data["objective"]),
                solver=str(data["solver"]),
                solve_seconds=float(data["solve_seconds"]),
                size_gb=None if data.get("size_gb") is None else float(data["size_gb"]),
                model=str(data.get("model", "default model")),
                candidate_regions=[str(r) for r in data.get("candidate_regions", [])],
                tolerance=None if data.get("tolerance") is None else float(data["tolerance"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInputError(
                f"not a TransferPlan JSON document ({type(exc).__name__}: {exc}); "
                f"pass the output of TransferPlan.to_json() or 'airflow-skyplane plan --json'"
            ) from None

    @classmethod
    def from_json(cls, text: str) -> TransferPlan:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise InvalidInputError(
                f"plan JSON does not parse ({exc}); pass the output of TransferPlan.to_json()"
            ) from None
        if not isinstance(data, dict):
            raise InvalidInputError("plan JSON must be an object; pass the output of TransferPlan.to_json()")
        return cls.from_dict(data)

    # -- people ---------------------------------------------------------------------------------------
    def to_table(self) -> str:
        within = "" if not self.tolerance else f" within {self.tolerance:.0%}"
        lines = [
            f"plan {self.source} -> {', '.join(self.destinations)}  ({self.objective}{within}; {self.model})",
            "",
            f"{'region':<34}{'VMs':>5}",
        ]
        lines += [f"{r:<34}{n:>5}" for r, n in sorted(self.relays.items())]
        lines += ["", f"{'edge':<62}{'Gbps':>9}{'conns':>7}  rate from"]
        for e in sorted(self.edges, key=lambda e: (-e.gbps, e.src, e.dst)):
            basis = (
                e.basis if e.measured_age_s is None else f"{e.basis}, {e.measured_age_s / 86400:.1f} days old"
            )
            lines.append(f"{e.src + ' -> ' + e.dst:<62}{e.gbps:>9.2f}{e.connections:>7}  {basis}")
        direct_cost = (
            "n/a" if self.direct_cost_per_gb_usd is None else f"${self.direct_cost_per_gb_usd:.4f}/GB"
        )
        speed = self.speedup_over_direct
        lines += [
            "",
            f"throughput   {self.throughput_gbps:.2f} Gbps per destination"
            + ("" if speed is None else f" ({speed:.2f}x direct)"),
            f"cost         ${self.cost_per_gb_usd:.4f}/GB (egress ${self.egress_cost_per_gb_usd:.4f}"
            f" + VMs ${self.vm_cost_per_gb_usd:.4f})",
            f"direct       {self.direct_throughput_gbps:.2f} Gbps, {direct_cost}"
            " with the same VMs at the ends",
        ]
        if self.size_gb is not None and self.duration_s is not None and self.total_cost_usd is not None:
            lines.append(
                f"for {self.size_gb:g} GB  {self.duration_s:.0f} s, ${self.total_cost_usd:.2f} total"
            )
        lines.append(f"solver       {self.solver}, {self.solve_seconds:.3f} s")
        return "\n".join(lines)

    def to_png(self, path: str, coordinates: dict[str, tuple[float, float]] | None = None) -> None:
        """Draw the overlay: regions at (lon, lat), edges as arrows whose width grows with Gbps."""
        from airflow_skyplane.planner.render import render_plan_png

        render_plan_png(self, path, coordinates)
