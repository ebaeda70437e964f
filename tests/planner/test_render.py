"""Plan pictures a person can read: a legend, Gbps on every hop, no label on another, routes across
the Pacific drawn across it, no empty hop, a map drawn from data the libraries ship (no download)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.planner import NetworkModel, PlanEdge, TransferPlan, plan_transfer
from airflow_skyplane.planner.render import (
    MIN_DRAWN_GBPS,
    PLOT_EXTRA,
    central_longitude,
    marker_box,
    plan_figure,
    render_plan_png,
    write_plan_pictures,
)

pytest.importorskip("cartopy", reason=f"plan pictures need the plot extra: {PLOT_EXTRA}")
pytest.importorskip("adjustText", reason=f"plan pictures need the plot extra: {PLOT_EXTRA}")


@pytest.fixture(scope="module")
def model() -> NetworkModel:
    return NetworkModel.default()


def _hand_made(edges: list[PlanEdge]) -> TransferPlan:
    """A plan written out by hand, to draw exactly these hops."""
    relays = {r: 1 for e in edges for r in (e.src, e.dst)}
    return TransferPlan(
        source=edges[0].src, destinations=[edges[-1].dst], relays=relays, edges=edges,
        throughput_gbps=4.0, egress_cost_per_gb_usd=0.09, vm_cost_per_gb_usd=0.01,
        direct_throughput_gbps=2.0, direct_cost_per_gb_usd=0.09, objective="throughput",
        solver="test", solve_seconds=0.1,
    )  # fmt: skip


def _labels(fig: Any) -> list[Any]:
    return [t for t in fig.axes[0].texts if t.get_text()]


def _arrows(fig: Any) -> list[Any]:
    """The hops: arrows with a head (label connectors are plain lines)."""
    return [a for a in fig.axes[0].texts if (a.get_gid() or "").startswith("hop ")]


@pytest.mark.parametrize(
    ("src", "dst", "vms"),
    [
        ("aws:us-east-1", ["gcp:europe-west4-a", "azure:westeurope"], 1),
        ("gcp:asia-east1-a", ["aws:us-east-1"], 1),  # five regions, four of them close together in Asia
        ("aws:eu-west-1", ["gcp:asia-southeast1-a", "azure:australiaeast", "aws:sa-east-1"], 2),
    ],
)
def test_no_label_lies_on_another_or_on_a_region_or_off_the_map(
    model: NetworkModel, src: str, dst: list[str], vms: int
) -> None:
    plan = plan_transfer(model, src, dst, max_vms_per_region=vms)
    fig = plan_figure(plan)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = _labels(fig)
    boxes = [t.get_bbox_patch().get_window_extent(renderer) for t in labels]
    assert len(labels) == len(plan.relays) + len(_arrows(fig))  # every region and every hop is named
    overlapping = [
        (a.get_text(), b.get_text())
        for (a, box_a), (b, box_b) in itertools.combinations(zip(labels, boxes, strict=True), 2)
        if box_a.overlaps(box_b)
    ]
    assert overlapping == []
    frame = ax.get_window_extent(renderer)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    markers = [marker_box(ax, c) for c in ax.collections]
    assert len(markers) == len(plan.relays)
    assert not any(box.overlaps(m) for box in boxes for m in markers)


def test_every_hop_is_labelled_in_gbps_and_empty_hops_are_not_drawn() -> None:
    plan = _hand_made(
        [
            PlanEdge("aws:us-east-1", "aws:us-east-2", 3.456, 32),
            PlanEdge("aws:us-east-1", "aws:eu-west-1", 0.0, 0),  # left empty by the solver
            PlanEdge("aws:us-east-1", "aws:ca-central-1", MIN_DRAWN_GBPS / 10, 1),  # solver rounding
            PlanEdge("aws:us-east-2", "gcp:europe-west4-a", 12.5, 64),
        ]
    )
    fig = plan_figure(plan)
    assert len(_arrows(fig)) == 2
    hop_labels = sorted(t.get_text() for t in _labels(fig) if t.get_text().endswith("Gbps"))
    assert hop_labels == ["12.5 Gbps", "3.46 Gbps"]
    assert not any("0.00" in t.get_text() for t in _labels(fig))


def test_the_legend_names_roles_and_clouds_in_distinct_colours(model: NetworkModel) -> None:
    fig = plan_figure(plan_transfer(model, "aws:us-east-1", ["gcp:europe-west4-a", "azure:westeurope"]))
    (legend,) = fig.legends
    names = [t.get_text() for t in legend.get_texts()]
    assert names[:6] == ["source", "destination", "relay", "AWS", "Google Cloud", "Azure"]
    assert [n for n in names if n.startswith("hop at")] == ["hop at 5.00 Gbps", "hop at 1.25 Gbps"]
    handles = {n: h for n, h in zip(names, legend.legend_handles, strict=True)}
    assert [handles[r].get_marker() for r in ("source", "destination", "relay")] == ["s", "D", "o"]
    colours = {handles[c].get_markerfacecolor() for c in ("AWS", "Google Cloud", "Azure")}
    assert len(colours) == 3


@pytest.mark.parametrize(
    ("lons", "centre"),
    [
        ([0.0, 10.0], 5.0),
        ([170.0, -170.0], 180.0),  # across the antimeridian, not across the world
        ([-122.7, 151.2], -165.75),  # Oregon and Sydney: the middle of the Pacific
        ([-77.5, 139.7, 4.9], 31.1),  # Virginia, Tokyo, Amsterdam: the Pacific is the widest gap
        ([42.0], 42.0),
    ],
)
def test_the_map_is_centred_on_the_shortest_arc_holding_the_regions(lons: list[float], centre: float) -> None:
    got = central_longitude(lons)
    assert min(abs(got - centre), 360 - abs(got - centre)) == pytest.approx(0, abs=1e-6)


def test_a_route_across_the_pacific_is_drawn_across_it(model: NetworkModel) -> None:
    plan = plan_transfer(model, "aws:us-west-2", "aws:ap-southeast-2", max_vms_per_region=2)
    fig = plan_figure(plan)
    ax = fig.axes[0]
    centre = ax.projection.proj4_params["pm"]  # PlateCarree keeps its central longitude as the prime meridian
    assert centre > 150 or centre < -120  # the middle of the map is in the Pacific
    x0, x1 = ax.get_xlim()
    arrows = _arrows(fig)
    assert arrows
    for arrow in arrows:
        (xa, _), (xb, _) = arrow.xyann, arrow.xy
        assert x0 <= min(xa, xb) and max(xa, xb) <= x1  # both ends on the map
        assert abs(xa - xb) < 180  # the short way, across the Pacific, not back across the world


def test_pictures_are_written_one_per_plan_whole(model: NetworkModel, tmp_path: Path) -> None:
    first = plan_transfer(model, "aws:us-east-1", "azure:westeurope")
    second = plan_transfer(model, "aws:us-east-1", "gcp:europe-west4-a").to_dict()  # as in an XCom summary
    written = write_plan_pictures([first, None, second], tmp_path / "pictures", stem="sync_day-plan")
    assert [p.name for p in written] == ["sync_day-plan-0.png", "sync_day-plan-2.png"]
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == [p.name for p in written]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


def test_an_unwritable_path_is_named_and_nothing_is_left(model: NetworkModel, tmp_path: Path) -> None:
    plan = plan_transfer(model, "aws:us-east-1", "aws:us-east-2")
    with pytest.raises(InvalidInputError, match="cannot write the plan picture .*no-such-dir"):
        render_plan_png(plan, tmp_path / "no-such-dir" / "plan.png")
    assert list(tmp_path.iterdir()) == []


def test_a_region_outside_the_catalog_needs_coordinates(tmp_path: Path) -> None:
    plan = _hand_made([PlanEdge("aws:us-east-1", "onprem:frankfurt-dc", 2.0, 8)])
    with pytest.raises(InvalidInputError, match="'onprem:frankfurt-dc' of the plan is not in the catalog"):
        plan_figure(plan)
    render_plan_png(plan, tmp_path / "p.png", coordinates={"onprem:frankfurt-dc": (8.7, 50.1)})
    assert (tmp_path / "p.png").stat().st_size > 10_000


_OFFLINE_PROBE = r"""
import json, sys
seen = []
watched = ("socket.connect", "socket.getaddrinfo", "urllib.Request")
sys.addaudithook(lambda event, args: seen.append(event) if event in watched else None)
from airflow_skyplane.planner import NetworkModel, plan_transfer
from airflow_skyplane.planner.render import render_plan_png
plan = plan_transfer(NetworkModel.default(), "azure:eastus", "aws:ap-northeast-1")
render_plan_png(plan, sys.argv[1])
print(json.dumps(seen))
"""


def test_a_first_picture_on_a_fresh_machine_downloads_nothing(tmp_path: Path) -> None:
    """No cache, no data folder (a new HOME): the map comes from the installed packages alone."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(home / ".cache")}
    done = subprocess.run(
        [sys.executable, "-c", _OFFLINE_PROBE, str(tmp_path / "plan.png")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []  # no connection attempted
    assert (tmp_path / "plan.png").read_bytes()[:4] == b"\x89PNG"


def test_without_the_plot_extra_the_error_names_it(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['cartopy'] = None\n"  # as if cartopy were not installed
        "from airflow_skyplane.cli import main\n"
        f"sys.exit(main(['plan', 'aws:us-east-1', 'aws:eu-west-1', '--png', {str(tmp_path / 'p.png')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        "airflow-skyplane: error: drawing a plan needs matplotlib, cartopy and adjustText (cartopy is "
        "missing): pip install 'airflow-skyplane[plot]'"
    )
    assert not (tmp_path / "p.png").exists()
