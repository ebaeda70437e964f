"""Pictures of TransferPlans: the overlay on a map, one PNG per plan.

What a reader needs from the picture, and how it gets it:

* **where**: regions on a map of the continents (the Natural Earth relief image that cartopy ships in
  its wheel, so nothing is downloaded, ever: cartopy's vector coastlines would be fetched on first
  use). The map is centred on the plan's regions, so a route across the Pacific is drawn across the
  Pacific rather than across the whole map.
* **who**: a legend of shapes (square the source, diamond a destination, circle a relay) and of
  clouds (one colour each, AWS orange, Google Cloud green, Azure blue).
* **how much**: each hop an arrow as wide as its share of the plan's fastest hop, labelled in Gbps;
  hops the solver left (near) empty are not drawn.
* **legibility**: labels are moved apart by adjustText until none overlaps another.

The libraries (matplotlib, cartopy, adjustText: the ``plot`` extra) are imported lazily, here only;
without them :func:`plan_figure` raises :class:`PlannerError` naming the extra. No pyplot: each
figure is drawn on its own Agg canvas, so drawing is safe in a worker thread and leaves no global
state behind.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_skyplane.exceptions import InvalidInputError, PlannerError
from airflow_skyplane.files import replaced_whole
from airflow_skyplane.planner.regions import REGIONS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from airflow_skyplane.planner.plan import TransferPlan

PLOT_EXTRA = "pip install 'airflow-skyplane[plot]'"
CLOUDS = {"aws": ("AWS", "#ff9900"), "gcp": ("Google Cloud", "#1e9e4a"), "azure": ("Azure", "#1f6fd1")}
ROLES = {"source": "s", "destination": "D", "relay": "o"}
#: hops planned below this are solver rounding, not routes: they are not drawn
MIN_DRAWN_GBPS = 0.05
#: the smallest map, in degrees of longitude and latitude (one metro's regions stay readable)
MIN_SPAN = (44.0, 22.0)
ASPECT = 2.0  # width / height of the map
MARKER_SIZE = 150  # points squared, as matplotlib's scatter takes it


def _libraries() -> tuple[Any, Any, Any, Any]:
    try:
        import cartopy.crs as ccrs
        from adjustText import adjust_text
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        missing = (err.name or str(err)).split(".")[0]
        raise PlannerError(
            f"drawing a plan needs matplotlib, cartopy and adjustText ({missing} is missing): {PLOT_EXTRA}"
        ) from None
    return ccrs, adjust_text, FigureCanvasAgg, Figure


def central_longitude(lons: Iterable[float]) -> float:
    """The middle of the shortest arc of longitudes that holds every one of ``lons`` (the map is
    centred there, so that no route crosses the map's edge)."""
    ordered = sorted(((lon + 180.0) % 360.0) - 180.0 for lon in lons)
    if not ordered:
        return 0.0
    gaps = [(ordered[(i + 1) % len(ordered)] - ordered[i]) % 360.0 for i in range(len(ordered))]
    if len(ordered) == 1:
        gaps = [360.0]
    widest = max(range(len(gaps)), key=lambda i: gaps[i])
    start = ordered[(widest + 1) % len(ordered)]  # the arc begins after the widest gap
    middle = start + (360.0 - gaps[widest]) / 2.0
    return ((middle + 180.0) % 360.0) - 180.0


def _extent(xs: list[float], ys: list[float]) -> tuple[float, float, float, float]:
    """A box around the points with room for their labels (a tenth of the width on each side, more
    above than below), at least MIN_SPAN, ASPECT wide, inside the world."""
    width = max((max(xs) - min(xs)) / 0.72, MIN_SPAN[0])
    height = max((max(ys) - min(ys)) / 0.62, MIN_SPAN[1])
    width, height = max(width, height * ASPECT), max(height, width / ASPECT)
    width, height = min(width, 360.0), min(height, 180.0)
    cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2 + 0.04 * height
    cx = min(max(cx, -180.0 + width / 2), 180.0 - width / 2)
    cy = min(max(cy, -90.0 + height / 2), 90.0 - height / 2)
    return cx - width / 2, cx + width / 2, cy - height / 2, cy + height / 2


def _gbps(value: float) -> str:
    return f"{value:.2f} Gbps" if value < 10 else f"{value:.1f} Gbps"


def plan_figure(plan: TransferPlan, coordinates: Mapping[str, tuple[float, float]] | None = None) -> Figure:
    """The plan drawn on a map (a matplotlib Figure with its own Agg canvas).

    ``coordinates`` gives (lon, lat) for regions the catalog does not know.
    """
    ccrs, adjust_text, FigureCanvasAgg, Figure = _libraries()

    def lon_lat(region: str) -> tuple[float, float]:
        if coordinates and region in coordinates:
            return coordinates[region]
        known = REGIONS.get(region)
        if known is None:
            raise InvalidInputError(
                f"region {region!r} of the plan is not in the catalog: give its (lon, lat) in coordinates"
            )
        return known.lon, known.lat

    edges = [e for e in plan.edges if e.gbps >= MIN_DRAWN_GBPS and e.src != e.dst]
    roles = {plan.source: "source", **dict.fromkeys(plan.destinations, "destination")}
    used = {r for r, n in plan.relays.items() if n > 0} | {r for e in edges for r in (e.src, e.dst)}
    regions = list(roles) + sorted(used - set(roles))
    geo = {r: lon_lat(r) for r in regions}
    centre = float(round(central_longitude(lon for lon, _ in geo.values())))  # whole degrees: see _relief
    projection = ccrs.PlateCarree(central_longitude=centre)
    where = {r: projection.transform_point(lon, lat, ccrs.PlateCarree()) for r, (lon, lat) in geo.items()}

    fig = Figure(figsize=(12, 7.4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.17, 0.96, 0.72), projection=projection)
    x0, x1, y0, y1 = _extent([x for x, _ in where.values()], [y for _, y in where.values()])
    ax.set_extent((x0, x1, y0, y1), crs=projection)
    ax.imshow(
        _relief(centre), origin="upper", extent=(-180, 180, -90, 90), transform=projection,
        interpolation="bilinear", alpha=0.45, zorder=0,
    )  # fmt: skip
    _graticule(ax, centre, (x0, x1, y0, y1))

    labels: list[Any] = []
    anchors: list[tuple[float, float]] = []  # the point each label names
    top, widest = _draw_hops(ax, edges, where, labels, anchors)
    markers = _draw_regions(ax, plan, regions, roles, where, 0.02 * (y1 - y0), labels, anchors)

    speed = plan.speedup_over_direct
    ax.set_title(
        f"{plan.source} \u2192 {', '.join(plan.destinations)}\n"
        f"{_gbps(plan.throughput_gbps)} per destination"
        + ("" if speed is None else f" ({speed:.2f}\u00d7 direct)")
        + f", ${plan.cost_per_gb_usd:.4f}/GB, {plan.vm_count} VMs; {plan.objective}, {plan.model}",
        fontsize=10,
    )
    _legend(fig, top, 1.0 + widest)
    adjust_text(  # it draws the figure first, to measure the labels
        labels,
        x=[x for x, _ in where.values()],
        y=[y for _, y in where.values()],
        ax=ax,
        expand=(1.2, 1.4),
        ensure_inside_axes=True,
        iter_lim=1000,  # a count, not its default of one second: the same picture on a busy machine
    )
    _separate(ax, labels, markers)
    for text, anchor in zip(labels, anchors, strict=True):
        _connect(ax, text, anchor)
    return fig


def _box(text: Any, renderer: Any) -> Any:
    """The label's box on the canvas, its rounded frame included."""
    text.update_bbox_position_size(renderer)
    patch = text.get_bbox_patch()
    return (patch or text).get_window_extent(renderer)


def marker_box(ax: Any, marker: Any) -> Any:
    """The canvas box a region's marker covers (a square of 1.5 marker sizes: a diamond's corners
    reach 0.71 of its size from the centre, a square's and a circle's 0.5)."""
    from matplotlib.transforms import Bbox

    x, y = ax.transData.transform(marker.get_offsets()[0])
    half = 0.75 * math.sqrt(MARKER_SIZE) * ax.figure.dpi / 72.0
    return Bbox.from_extents(x - half, y - half, x + half, y + half)


def _separate(ax: Any, labels: list[Any], markers: list[Any]) -> None:
    """adjustText moves labels apart but promises nothing: any label it left on an earlier one or on
    a region's marker, or outside the map, goes to the nearest free spot on rings around where it is
    now (12 px apart, 16 directions each); one with no free spot within 400 px stays put."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed: list[Any] = [marker_box(ax, m) for m in markers]

    def free(box: Any) -> bool:
        inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        return inside and not any(box.overlaps(other) for other in placed)

    for text in labels:
        box = _box(text, renderer)
        spot = next(
            (
                (dx, dy)
                for radius in range(0, 400, 12)
                for k in range(16 if radius else 1)
                if free(
                    box.translated(
                        dx := radius * math.cos(k * math.pi / 8), dy := radius * math.sin(k * math.pi / 8)
                    )
                )
            ),
            (0.0, 0.0),
        )
        if spot != (0.0, 0.0):
            x, y = ax.transData.transform(text.get_position())
            text.set_position(ax.transData.inverted().transform((x + spot[0], y + spot[1])))
        placed.append(box.translated(*spot))


def _connect(ax: Any, text: Any, anchor: tuple[float, float]) -> None:
    """A thin line from a label that was moved off its point back to the point."""
    renderer = ax.figure.canvas.get_renderer()
    box = _box(text, renderer)
    x, y = ax.transData.transform(anchor)
    gap = math.hypot(max(box.x0 - x, 0.0, x - box.x1), max(box.y0 - y, 0.0, y - box.y1))
    if gap > 8:
        ax.annotate(
            "", xy=anchor, xytext=text.get_position(), zorder=4,
            arrowprops={"arrowstyle": "-", "color": "#555555", "lw": 0.6, "shrinkA": 0, "shrinkB": 4,
                        "patchA": text.get_bbox_patch()},
        )  # fmt: skip


def _draw_hops(
    ax: Any,
    edges: list[Any],
    where: Mapping[str, tuple[float, float]],
    labels: list[Any],
    anchors: list[tuple[float, float]],
) -> tuple[float, float]:
    """Each hop an arrow as wide as its share of the fastest, with its Gbps label (added to
    ``labels``, its point to ``anchors``); returns the fastest hop's Gbps and the widest extra line width."""
    top = max((e.gbps for e in edges), default=1.0)
    widest = 5.0 if len(edges) <= 6 else 2.5  # many hops: thinner, or they hide each other
    into: dict[str, int] = {}
    for e in edges:
        # hops into one region bend alternately left and right, further each time, so that two routes
        # to a destination (direct and through a nearby relay) stay apart
        k = into[e.dst] = into.get(e.dst, -1) + 1
        bend = 0.12 * (1 + k // 2) * (-1 if k % 2 else 1)
        (xa, ya), (xb, yb) = where[e.src], where[e.dst]
        width = 1.0 + widest * e.gbps / top
        ax.annotate(
            "", xy=(xb, yb), xytext=(xa, ya), zorder=3, gid=f"hop {e.src} {e.dst}",
            arrowprops={
                "arrowstyle": "-|>,head_length=0.6,head_width=0.35", "lw": width,
                "mutation_scale": 10 + 2.5 * width,  # the head grows with the line, or it disappears in it
                "color": "#2b2b2b", "alpha": 0.75, "shrinkA": 7, "shrinkB": 9,
                "connectionstyle": f"arc3,rad={bend}",
            },
        )  # fmt: skip
        # the middle of matplotlib's arc3 curve: half-way, pushed aside by half the bend
        mx, my = (xa + xb) / 2 + bend * (yb - ya) / 2, (ya + yb) / 2 - bend * (xb - xa) / 2
        anchors.append((mx, my))
        labels.append(
            ax.text(mx, my, _gbps(e.gbps), fontsize=8, ha="center", va="center", zorder=4,
                    bbox={"boxstyle": "round,pad=0.2", "fc": "#fffbe6", "ec": "#888888", "lw": 0.5})
        )  # fmt: skip
    return top, widest


def _draw_regions(
    ax: Any,
    plan: TransferPlan,
    regions: list[str],
    roles: Mapping[str, str],
    where: Mapping[str, tuple[float, float]],
    lift: float,
    labels: list[Any],
    anchors: list[tuple[float, float]],
) -> list[Any]:
    """Each region a marker (shape: role, colour: cloud) labelled with its name and VM count, the
    label ``lift`` above it; returns the markers."""
    markers = []
    for region in regions:
        x, y = where[region]
        colour = CLOUDS.get(region.split(":")[0], ("", "#888888"))[1]
        marker = ROLES[roles.get(region, "relay")]
        markers.append(
            ax.scatter([x], [y], s=MARKER_SIZE, marker=marker, c=colour, edgecolors="black", linewidths=1.0,
                       zorder=5)
        )  # fmt: skip
        vms = plan.relays.get(region, 0)
        text = f"{region}\n{vms} VM{'s' if vms != 1 else ''}" if vms else region
        anchors.append((x, y))
        labels.append(
            ax.text(x, y + lift, text, fontsize=8.5, ha="center", va="bottom", zorder=6, linespacing=1.1,
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85})
        )  # fmt: skip
    return markers


def _relief(centre: float) -> Any:
    """The Natural Earth shaded relief image that cartopy ships (what its ``stock_img`` draws), turned
    to be centred on ``centre`` (whole degrees). Turning the pixels is exact for this projection and
    much cheaper than cartopy's general reprojection of the image (seconds)."""
    import cartopy
    import numpy as np
    from matplotlib.image import imread

    image = imread(
        Path(cartopy.config["repo_data_dir"]) / "raster/natural_earth/50-natural-earth-1-downsampled.png"
    )
    per_degree = image.shape[1] / 360.0
    return np.roll(image, -round(centre * per_degree), axis=1)


def _graticule(ax: Any, centre: float, extent: tuple[float, float, float, float]) -> None:
    """Faint meridians and parallels (every 30 and 20 degrees, 10 and 10 on a small map), labelled in
    real longitudes."""
    from matplotlib.ticker import FuncFormatter

    def lon_name(x: float, _pos: object = None) -> str:
        lon = round(((x + centre + 180.0) % 360.0) - 180.0)
        return f"{abs(lon)}°{'E' if 0 < lon < 180 else 'W' if -180 < lon < 0 else ''}"

    def lat_name(y: float, _pos: object = None) -> str:
        return f"{abs(y):.0f}°{'N' if y > 0 else 'S' if y < 0 else ''}"

    x0, x1, y0, y1 = extent
    step = 10 if x1 - x0 <= 90 else 30
    first = (x0 + centre) // step * step + step  # the first meridian at a multiple of the step
    xs = [lon - centre for lon in range(int(first), int(x1 + centre) + 1, step)]
    rise = 10 if step == 10 else 20
    ys = list(range(int(y0 // rise * rise) + rise, int(y1) + 1, rise))
    ax.set_xticks(xs)
    ax.set_yticks(ys)
    ax.xaxis.set_major_formatter(FuncFormatter(lon_name))
    ax.yaxis.set_major_formatter(FuncFormatter(lat_name))
    ax.tick_params(labelsize=7, colors="#555555", length=0)
    ax.grid(True, linewidth=0.3, color="#555555", alpha=0.35)


def _legend(fig: Figure, top_gbps: float, top_width: float) -> None:
    from matplotlib.lines import Line2D

    def marker(label: str, shape: str, colour: str) -> Line2D:
        return Line2D([], [], linestyle="", marker=shape, markersize=10, markerfacecolor=colour,
                      markeredgecolor="black", label=label)  # fmt: skip

    def line(label: str, width: float) -> Line2D:
        return Line2D([], [], color="#2b2b2b", lw=width, label=label)

    handles = [marker(role, shape, "#bbbbbb") for role, shape in ROLES.items()]
    handles += [marker(name, "o", colour) for name, colour in CLOUDS.values()]
    quarter = 1.0 + (top_width - 1.0) / 4
    handles += [line(f"hop at {_gbps(top_gbps)}", top_width), line(f"hop at {_gbps(top_gbps / 4)}", quarter)]
    fig.legend(
        handles=handles, loc="lower center", ncol=4, fontsize=8.5, frameon=False,
        bbox_to_anchor=(0.5, 0.005), title="shape: role   colour: cloud   width and label: planned Gbps",
        title_fontsize=8.5,
    )  # fmt: skip


def render_plan_png(
    plan: TransferPlan,
    path: str | os.PathLike[str],
    coordinates: Mapping[str, tuple[float, float]] | None = None,
) -> None:
    """Draw ``plan`` to the PNG file ``path``, written whole or not at all."""
    fig = plan_figure(plan, coordinates)
    with replaced_whole(path, what="the plan picture") as tmp:
        fig.savefig(tmp, format="png")


def write_plan_pictures(
    plans: Iterable[TransferPlan | Mapping[str, Any] | None],
    folder: str | os.PathLike[str],
    stem: str = "plan",
) -> list[Path]:
    """One PNG per plan, ``<folder>/<stem>-<n>.png`` for the n-th (plans as :class:`TransferPlan` or as
    the dicts of an XCom summary; a None, a destination sent without a plan, keeps its number and
    gets no picture). Returns the paths written."""
    from airflow_skyplane.planner.plan import TransferPlan

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, raw in enumerate(plans):
        if raw is None:
            continue
        plan = raw if isinstance(raw, TransferPlan) else TransferPlan.from_dict(dict(raw))
        path = out / f"{stem}-{n}.png"
        render_plan_png(plan, path)
        written.append(path)
    return written
