"""Region catalog, prices, grid loading and the default model."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from airflow_skyplane.exceptions import GridError, InvalidInputError
from airflow_skyplane.planner import REGIONS, NetworkModel, read_grid_csv
from airflow_skyplane.planner.accuracy import spearman
from airflow_skyplane.planner.network import export_rows, great_circle_km
from airflow_skyplane.planner.regions import match_regions, resolve_region
from airflow_skyplane.testing.plugin import skip_missing

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CALIBRATION = SHARED / "throughput_grid_calibration.csv"
AWS_COSTS = SHARED / "aws_transfer_costs.csv"


def _need(path: Path) -> Path:
    if not path.exists():
        skip_missing(f"{path} is absent (the shared reference data lives beside the repository in ../shared)")
    return path


def test_catalog_names_and_providers() -> None:
    assert {r.provider for r in REGIONS.values()} == {"aws", "gcp", "azure"}
    assert all(-90 <= r.lat <= 90 and -180 <= r.lon <= 180 for r in REGIONS.values())
    assert all(r.name.startswith(("gcp:", "aws:", "azure:")) for r in REGIONS.values())
    # GCP names carry a zone, like the grid's
    assert all(r.short[-2] == "-" and r.short[-1].isalpha() for r in REGIONS.values() if r.provider == "gcp")


def test_catalog_covers_every_calibration_region() -> None:
    with _need(CALIBRATION).open() as handle:
        names = {row[k] for row in csv.DictReader(handle) for k in ("src_region", "dst_region")}
    assert names - set(REGIONS) == set()


def test_aws_prices_match_published_csv() -> None:
    """Every AWS pair both know: the catalog's $/GB equals the published one (internet = other clouds)."""
    with _need(AWS_COSTS).open() as handle:
        rows = list(csv.DictReader(handle))
    model = NetworkModel.default()
    compared, mismatches = 0, []
    for row in rows:
        src = f"aws:{row['src']}"
        if src not in REGIONS:
            continue  # e.g. GovCloud, a separate partition the catalog leaves out
        if row["dst"] == "internet":
            got = model.cost_per_gb(src, "gcp:us-central1-a")
        elif f"aws:{row['dst']}" in REGIONS:
            got = model.cost_per_gb(src, f"aws:{row['dst']}")
        else:
            continue
        compared += 1
        if not math.isclose(got, float(row["cost"]), abs_tol=1e-9):
            mismatches.append((row["src"], row["dst"], got, float(row["cost"])))
    assert compared > 550
    assert mismatches == []


def test_resolve_and_match() -> None:
    assert resolve_region("gcp:us-central1") == "gcp:us-central1-a"
    assert resolve_region("AWS:US-EAST-1") == "aws:us-east-1"
    with pytest.raises(InvalidInputError, match=r"unknown region 'aws:moon-1'.*airflow-skyplane regions"):
        resolve_region("aws:moon-1")
    eu = match_regions(["aws:eu-*", "gcp:europe-*"], sorted(REGIONS))
    assert "aws:eu-west-1" in eu and "gcp:europe-west4-a" in eu and "aws:us-east-1" not in eu
    with pytest.raises(InvalidInputError, match=r"'aws:mars-\*' matches no known region"):
        match_regions(["aws:mars-*"], sorted(REGIONS))


def test_default_model_is_physical() -> None:
    m = NetworkModel.default()
    near = m.throughput("azure:eastus", "azure:eastus2")
    far = m.throughput("azure:eastus", "azure:australiaeast")
    assert near > far > 0
    for a in ("aws:us-east-1", "gcp:us-central1-a", "azure:westeurope"):
        for b in ("aws:ap-southeast-2", "gcp:europe-west4-a", "azure:japaneast"):
            assert 0 < m.throughput(a, b) <= 30
    assert great_circle_km(REGIONS["aws:us-east-1"], REGIONS["aws:eu-west-1"]) == pytest.approx(
        5470, rel=0.05
    )
    assert m.egress_cap("aws:us-east-1") == 5 and m.ingress_cap("aws:us-east-1") == 10
    assert m.egress_cap("gcp:us-central1-a") == 7 and m.ingress_cap("azure:eastus") == 16
    assert m.vm_price_per_hour("aws:us-east-1") > NetworkModel.default(spot=True).vm_price_per_hour(
        "aws:us-east-1"
    )


def test_default_model_ranks_calibration_pairs() -> None:
    grid = read_grid_csv(_need(CALIBRATION))
    model = NetworkModel.default()
    pairs = sorted(grid)
    rho = spearman([model.throughput(*p) for p in pairs], [grid[p] for p in pairs])
    assert rho >= 0.7


def test_loaded_grid_and_fallback() -> None:
    model = NetworkModel.from_csv(_need(CALIBRATION))
    assert model.is_measured("aws:af-south-1", "aws:ap-east-1")
    assert model.throughput("aws:af-south-1", "aws:ap-east-1") == pytest.approx(5.0528)
    # a catalog region the grid never measured falls back to the model
    assert not model.is_measured("azure:newzealandnorth", "aws:us-east-1")
    assert model.throughput("azure:newzealandnorth", "aws:us-east-1") == model.model_throughput(
        "azure:newzealandnorth", "aws:us-east-1"
    )


def test_skyplane_raw_format(tmp_path: Path) -> None:
    path = tmp_path / "throughput.csv"
    path.write_text(
        "src_region,dst_region,src_tier,dst_tier,src_instance_type,dst_instance_type,"
        "throughput_sent,throughput_received,cpu_utilization\n"
        "aws:us-east-1,aws:eu-west-1,PREMIUM,PREMIUM,m5.8xlarge,m5.8xlarge,4500000000,4400000000,0.3\n"
        "aws:us-east-1,aws:eu-west-1,STANDARD,PREMIUM,m5.8xlarge,m5.8xlarge,1000000000,900000000,0.3\n"
        "gcp:us-central1-a,azure:eastus,PREMIUM,PREMIUM,n2-standard-32,Standard_D32_v5,7e9,6.9e9,0.2\n"
    )
    grid = read_grid_csv(path)
    assert grid == {("aws:us-east-1", "aws:eu-west-1"): 4.5, ("gcp:us-central1-a", "azure:eastus"): 7.0}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"line 1: the file is empty"),
        ("a,b,c\n1,2,3\n", r"line 1: header 'a,b,c' lacks"),
        (
            "src_region,src_tier,dst_region,dst_tier,throughput_gbps,iperf3_connections\n"
            "aws:us-east-1,PREMIUM,aws:eu-west-1,PREMIUM,fast,64\n",
            r"line 2: throughput 'fast' is not a number",
        ),
        (
            "src_region,src_tier,dst_region,dst_tier,throughput_gbps,iperf3_connections\n"
            "aws:us-east-1,PREMIUM,aws:eu-west-1,PREMIUM,1.0,64\n"
            "aws:us-east-1,PREMIUM,aws:moon-1,PREMIUM,1.0,64\n",
            r"line 3: unknown region 'aws:moon-1'",
        ),
        (
            "src_region,src_tier,dst_region,dst_tier,throughput_gbps,iperf3_connections\n"
            "aws:us-east-1,PREMIUM,aws:eu-west-1,PREMIUM,-2,64\n",
            r"line 2: throughput '-2' must be a finite number >= 0",
        ),
        (
            "src_region,src_tier,dst_region,dst_tier,throughput_gbps,iperf3_connections\n"
            "aws:us-east-1,PREMIUM,aws:eu-west-1\n",
            r"line 2: 3 fields where the header has 6",
        ),
    ],
)
def test_malformed_grid(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(GridError, match=message) as info:
        read_grid_csv(path)
    assert "bad.csv" in str(info.value) and "drop --grid" in str(info.value)


def test_missing_grid_file(tmp_path: Path) -> None:
    with pytest.raises(GridError, match=r"cannot read grid .*nope.csv.*pass an existing CSV"):
        NetworkModel.from_csv(tmp_path / "nope.csv")


def test_export_rows_cover_every_ordered_pair() -> None:
    model = NetworkModel.default()
    rows = list(export_rows(model))
    n = len(model.regions)
    assert len(rows) == n * (n - 1)
    assert set(rows[0]) == {
        "src_region",
        "src_tier",
        "dst_region",
        "dst_tier",
        "throughput_gbps",
        "iperf3_connections",
        "cost_per_gb_usd",
    }
    assert all(float(r["throughput_gbps"]) > 0 for r in rows)  # type: ignore[arg-type]
