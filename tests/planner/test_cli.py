"""The airflow-skyplane CLI, run as a separate process the way a user runs it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_skyplane.testing.plugin import require, skip_missing

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CALIBRATION = SHARED / "throughput_grid_calibration.csv"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow_skyplane.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_planner_and_cli_import_no_airflow() -> None:
    code = (
        "import airflow_skyplane.cli, airflow_skyplane.planner, sys; "
        "assert not any(m.split('.')[0]=='airflow' for m in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_plan_json() -> None:
    done = run("plan", "azure:eastus", "aws:ap-northeast-1", "--max-vms-per-region", "2", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["predicted_throughput_gbps"] >= data["direct_throughput_gbps"] > 0
    assert data["predicted_cost_per_gb_usd"] > 0 and data["direct_cost_per_gb_usd"] > 0
    assert data["relays"]["azure:eastus"] >= 1
    assert all(set(e) == {"src", "dst", "gbps", "connections"} for e in data["edges"])
    assert data["solve_seconds"] > 0


def test_plan_table_and_png(tmp_path: Path) -> None:
    require("matplotlib")  # --png draws with it
    png = tmp_path / "p.png"
    done = run("plan", "aws:us-east-1", "gcp:europe-west4-a", "azure:westeurope", "--png", str(png))
    assert done.returncode == 0, done.stderr
    assert "aws:us-east-1" in done.stdout and "gcp:europe-west4-a" in done.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_plan_with_grid_and_deadline() -> None:
    if not CALIBRATION.exists():
        skip_missing(f"{CALIBRATION} is absent (shared reference data beside the repository)")
    done = run(
        "plan", "gcp:us-central1-a", "aws:eu-west-1", "--grid", str(CALIBRATION),
        "--size-gb", "100", "--deadline-s", "300", "--max-vms-per-region", "4", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["duration_s"] == pytest.approx(300, rel=1e-4)
    assert "throughput_grid_calibration.csv" in data["model"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan", "aws:moon-1", "aws:eu-west-1"], "unknown region 'aws:moon-1' (SRC): did you mean"),
        (
            ["plan", "aws:us-east-1", "azure:europe-west4-a"],
            "unknown region 'azure:europe-west4-a' (DST): did you mean gcp:europe-west4-a? names look like",
        ),
        (
            ["plan", "aws:us-east-1", "aws:eu-west-1", "--max-cost-per-gb", "0.001"],
            "raise it to at least 0.02",
        ),
        (
            [
                "plan",
                "aws:us-east-1",
                "aws:eu-west-1",
                "--size-gb",
                "1000",
                "--deadline-s",
                "10",
                "--max-vms",
                "4",
            ],
            "deadline 10 s for 1000 GB needs 800 Gbps",
        ),
        (
            ["plan", "gcp:us-central1-a", "aws:eu-west-1", "--allowed-regions", "aws:eu-*"],
            "no region allowed by ['aws:eu-*'] contains the source 'gcp:us-central1-a'",
        ),
        (
            ["plan", "aws:us-east-1", "aws:eu-west-1", "--allowed-regions", "aws:mars-*"],
            "matches no known region",
        ),
        (
            ["plan", "aws:us-east-1", "aws:eu-west-1", "--allowed-regions", ""],
            "the allowed-region set is empty",
        ),
        (["plan", "aws:us-east-1", "aws:eu-west-1", "--grid", "/nonexistent/grid.csv"], "cannot read grid"),
        (["plan", "aws:us-east-1", "aws:eu-west-1", "--max-vms", "many"], "invalid int value"),
        (["plan", "aws:us-east-1"], "the following arguments are required"),
        (["plan", "aws:us-east-1", "aws:eu-west-1", "--budget-usd", "3"], "--budget-usd needs --size-gb"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str) -> None:
    done = run(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("airflow-skyplane: error: ")
    assert message in lines[0]
    assert "Traceback" not in done.stderr


def test_malformed_grid_file(tmp_path: Path) -> None:
    bad = tmp_path / "grid.csv"
    bad.write_text(
        "src_region,src_tier,dst_region,dst_tier,throughput_gbps\naws:us-east-1,PREMIUM,aws:eu-west-1,PREMIUM,x\n"
    )
    done = run("plan", "aws:us-east-1", "aws:eu-west-1", "--grid", str(bad))
    assert done.returncode == 2
    assert "grid.csv" in done.stderr and "line 2" in done.stderr and "not a number" in done.stderr


def test_grid_export(tmp_path: Path) -> None:
    out = tmp_path / "grid.csv"
    done = run("grid", "export", "--out", str(out))
    assert done.returncode == 0, done.stderr
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    names = {r["src_region"] for r in rows}
    assert len(rows) == len(names) * (len(names) - 1)
    assert {"aws:us-east-1", "gcp:us-central1-a", "azure:eastus"} <= names
    header = "src_region,src_tier,dst_region,dst_tier,throughput_gbps,iperf3_connections,cost_per_gb_usd"
    assert list(rows[0]) == header.split(",")
    # the exported grid loads back as a grid with the same numbers
    again = run("plan", "aws:us-east-1", "aws:eu-west-1", "--grid", str(out), "--json")
    assert again.returncode == 0, again.stderr


def test_regions_lists_catalog() -> None:
    done = run("regions")
    assert done.returncode == 0
    assert (
        "aws:us-east-1" in done.stdout
        and "gcp:us-central1-a" in done.stdout
        and "azure:eastus" in done.stdout
    )
    as_json = json.loads(run("regions", "--provider", "gcp", "--json").stdout)
    assert as_json and all(r["region"].startswith("gcp:") for r in as_json)
