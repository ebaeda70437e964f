"""Throughput grid files: read a measured grid, write the model's (``airflow-skyplane grid export``).

Accepts this project's columns (``src_region,src_tier,dst_region,dst_tier,throughput_gbps,...``) or
Skyplane's raw ``throughput.csv`` (``src_region,dst_region,...,throughput_sent,...`` in bits per second),
told apart by the header. Standard library only (``csv``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_skyplane.exceptions import GridError, InvalidInputError
from airflow_skyplane.planner.regions import resolve_region

if TYPE_CHECKING:
    from airflow_skyplane.planner.network import NetworkModel

CONNECTIONS_PER_MEASUREMENT = 64
"""The grids give Gbps for one VM pair at this many parallel TCP connections."""

PREFERRED_TIER = "PREMIUM"
"""Network tier relays use; a grid row of another tier is only used when the pair has no premium row."""

OUR_COLUMNS = ("src_region", "src_tier", "dst_region", "dst_tier", "throughput_gbps", "iperf3_connections")


def _grid_error(path: Path, line: int, what: str) -> GridError:
    return GridError(
        f"grid {str(path)!r} line {line}: {what}; expected CSV with header "
        f"'{','.join(OUR_COLUMNS)}' (or Skyplane's throughput.csv with 'src_region,dst_region,"
        f"throughput_sent' in bits/s): fix the file or drop --grid to use the default model"
    )


def read_grid_csv(path: str | Path) -> dict[tuple[str, str], float]:
    """Read a throughput grid; returns Gbps by (src, dst) catalog names.

    Accepts this project's columns (``src_region,src_tier,dst_region,dst_tier,throughput_gbps,...``) or
    Skyplane's raw ``throughput.csv`` (``src_region,dst_region,...,throughput_sent,...`` in bits per
    second), detected from the header. Rows of the premium tier win over other tiers for the same pair;
    duplicate rows of one tier are averaged.
    """
    p = Path(path)
    try:
        handle = p.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise GridError(
            f"cannot read grid {str(p)!r}: {exc.strerror or exc}; pass an existing CSV to --grid "
            f"or drop --grid to use the default model"
        ) from None
    sums: dict[tuple[str, str], dict[str, list[float]]] = {}
    with handle:
        try:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise _grid_error(p, 1, "the file is empty")
            cols = [h.strip().lower() for h in header]
            src_col = _find(cols, ("src_region", "source_region", "src"))
            dst_col = _find(cols, ("dst_region", "dest_region", "destination_region", "dst"))
            tp_col: int | None
            if "throughput_gbps" in cols:
                tp_col, unit = cols.index("throughput_gbps"), 1.0
            else:
                found = _find(cols, ("throughput_sent", "throughput_received"))
                tp_col, unit = found, 1e-9
            if src_col is None or dst_col is None or tp_col is None:
                raise _grid_error(
                    p, 1, f"header {','.join(header)!r} lacks a source, destination or throughput"
                )
            src_tier_col = _find(cols, ("src_tier",))
            dst_tier_col = _find(cols, ("dst_tier", "dest_tier"))
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(cols):
                    raise _grid_error(p, line, f"{len(row)} fields where the header has {len(cols)}")
                src, dst = row[src_col].strip(), row[dst_col].strip()
                try:
                    src, dst = resolve_region(src), resolve_region(dst)
                except InvalidInputError:
                    bad = src if not _known(src) else dst
                    raise _grid_error(
                        p, line, f"unknown region {bad!r} (run 'airflow-skyplane regions' for names)"
                    ) from None
                try:
                    value = float(row[tp_col]) * unit
                except ValueError:
                    raise _grid_error(p, line, f"throughput {row[tp_col]!r} is not a number") from None
                if not math.isfinite(value) or value < 0:
                    raise _grid_error(p, line, f"throughput {row[tp_col]!r} must be a finite number >= 0")
                if src == dst:
                    continue
                premium = all(
                    c is None or row[c].strip().upper() in ("", PREFERRED_TIER)
                    for c in (src_tier_col, dst_tier_col)
                )
                slot = sums.setdefault((src, dst), {"premium": [], "other": []})
                slot["premium" if premium else "other"].append(value)
        except csv.Error as exc:
            raise _grid_error(p, getattr(reader, "line_num", 0), f"not valid CSV ({exc})") from None
        except UnicodeDecodeError:
            raise _grid_error(p, 0, "not UTF-8 text") from None
    if not sums:
        raise _grid_error(p, 2, "no data rows")
    grid: dict[tuple[str, str], float] = {}
    for pair, slot in sums.items():
        vals = slot["premium"] or slot["other"]
        grid[pair] = sum(vals) / len(vals)
    return grid


def _find(cols: list[str], names: tuple[str, ...]) -> int | None:
    for n in names:
        if n in cols:
            return cols.index(n)
    return None


def _known(name: str) -> bool:
    try:
        resolve_region(name)
    except InvalidInputError:
        return False
    return True


def export_rows(model: NetworkModel, *, measured_only: bool = False) -> Iterable[dict[str, object]]:
    """Ordered pairs of the model's regions in the grid's columns plus ``lower_gbps`` (the conservative
    rate the planner gives relay hops), ``basis`` (``measured``: a grid; ``history``: past transfers;
    ``model``), ``measured_age_s`` (history only) and ``cost_per_gb_usd``. ``measured_only`` keeps the
    pairs that rest on a measurement."""
    for src in model.regions:
        for dst in model.regions:
            if src == dst:
                continue
            basis = model.basis(src, dst)
            if measured_only and basis == "model":
                continue
            seen = model.observed.get((src, dst))
            yield {
                "src_region": src,
                "src_tier": PREFERRED_TIER,
                "dst_region": dst,
                "dst_tier": PREFERRED_TIER,
                "throughput_gbps": round(model.throughput(src, dst), 4),
                "iperf3_connections": CONNECTIONS_PER_MEASUREMENT,
                "lower_gbps": round(model.lower_throughput(src, dst), 4),
                "basis": basis,
                "measured_age_s": "" if seen is None else round(seen.age_s),
                "cost_per_gb_usd": round(model.cost_per_gb(src, dst), 6),
            }
