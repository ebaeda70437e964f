"""PNG picture of a TransferPlan's overlay.

matplotlib (a dev/optional dependency) is imported here, lazily, because a picture is the only thing
in the planner that needs it; without it, :func:`render_plan_png` raises an error that says how to get it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_skyplane.exceptions import PlannerError
from airflow_skyplane.planner.regions import REGIONS

if TYPE_CHECKING:
    from airflow_skyplane.planner.plan import TransferPlan

_COLOURS = {"aws": "#ff9900", "gcp": "#4285f4", "azure": "#008ad7"}


def render_plan_png(
    plan: TransferPlan, path: str, coordinates: dict[str, tuple[float, float]] | None = None
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlannerError(
            "drawing a plan needs matplotlib: pip install matplotlib (or drop --png)"
        ) from None

    def where(region: str) -> tuple[float, float]:
        if coordinates and region in coordinates:
            return coordinates[region]
        r = REGIONS.get(region)
        return (r.lon, r.lat) if r else (0.0, 0.0)

    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=100)
    try:
        top = max((e.gbps for e in plan.edges), default=1.0) or 1.0
        for e in plan.edges:
            (x0, y0), (x1, y1) = where(e.src), where(e.dst)
            ax.annotate(
                "",
                xy=(x1, y1),
                xytext=(x0, y0),
                arrowprops={
                    "arrowstyle": "-|>",
                    "lw": 0.8 + 5.0 * e.gbps / top,
                    "color": "#444444",
                    "alpha": 0.75,
                    "connectionstyle": "arc3,rad=0.12",
                },
            )
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, f"{e.gbps:.1f}", fontsize=7, color="#222222")
        for region, count in plan.relays.items():
            x, y = where(region)
            role = "src" if region == plan.source else ("dst" if region in plan.destinations else "relay")
            ax.scatter(
                [x],
                [y],
                s=80 + 30 * count,
                c=_COLOURS.get(region.split(":")[0], "#888888"),
                marker={"src": "s", "dst": "D", "relay": "o"}[role],
                edgecolors="black",
                zorder=3,
            )
            ax.annotate(
                f"{region} ({count})",
                (x, y),
                xytext=(0, 9),
                textcoords="offset points",
                fontsize=7,
                ha="center",
                zorder=4,
            )
        ax.margins(0.12)
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")
        ax.set_title(
            f"{plan.source} -> {', '.join(plan.destinations)}: {plan.throughput_gbps:.1f} Gbps, "
            f"${plan.cost_per_gb_usd:.3f}/GB",
            fontsize=9,
        )
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
