"""The measurement history: what record() writes, what load() makes of it, and what goes wrong."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from airflow_skyplane import measurements
from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.measurements import HopMeasurement, load, record
from airflow_skyplane.planner import NetworkModel, plan_transfer
from airflow_skyplane.transfer.control import GatewayStatus
from airflow_skyplane.transfer.overlay import Hop, Overlay
from airflow_skyplane.transfer.summary import TransferResult

A, B, C = "aws:us-east-1", "gcp:europe-west4-a", "azure:westeurope"
DAY = 86400.0


def test_record_then_load_scales_to_64_connections(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    assert record([HopMeasurement(A, B, 3.0, 32), HopMeasurement(B, C, 5.0, 64)], path=tmp_path, now=now) == 2
    seen = load(tmp_path, now=now + DAY)
    assert seen[(A, B)].gbps == pytest.approx(6.0)  # 3 Gbps on 32 connections: 6 on 64
    assert seen[(A, B)].age_s == pytest.approx(DAY) and seen[(A, B)].samples == 1
    assert seen[(B, C)].gbps == pytest.approx(5.0)
    lines = (tmp_path / "hops.jsonl").read_text().splitlines()
    assert [json.loads(x)["src"] for x in lines] == [A, B]


def test_newest_samples_decide_and_old_ones_expire(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    for days_ago, gbps in [(400, 9.0), (10, 1.0), (3, 4.0), (2, 4.2), (1, 3.8)]:
        record([HopMeasurement(A, B, gbps, 64)], path=tmp_path, now=now - days_ago * DAY)
    got = load(tmp_path, now=now)[(A, B)]
    assert got.samples == 4  # the 400-day-old sample is past the 180-day limit
    assert got.gbps == pytest.approx((3.8 + 4.0) / 2)  # median of the newest
    assert got.age_s == pytest.approx(DAY)
    assert load(tmp_path, now=now, max_age_days=1.5)[(A, B)].samples == 1
    assert load(tmp_path / "absent", now=now) == {}


@pytest.mark.parametrize(
    ("hop", "message"),
    [
        (HopMeasurement("aws:moon-1", B, 1.0, 8), r"aws:moon-1 -> .*unknown region 'aws:moon-1'"),
        (HopMeasurement(A, A, 1.0, 8), r"within one region: record only hops between regions"),
        (HopMeasurement(A, B, 0.0, 8), r"gbps=0.0 must be a positive number"),
        (HopMeasurement(A, B, float("nan"), 8), r"gbps=nan must be a positive number"),
        (HopMeasurement(A, B, 1.0, 0), r"connections=0 must be a whole number >= 1"),
        (HopMeasurement(A, B, 1.0, 2.5), r"connections=2.5 must be a whole number"),
        ((A, B, 1.0, 8), r"is not a HopMeasurement"),
    ],
)
def test_bad_hops_are_refused_and_nothing_is_written(tmp_path: Path, hop: object, message: str) -> None:
    good = HopMeasurement(A, B, 1.0, 8)
    with pytest.raises(InvalidInputError, match=message):
        record([good, hop], path=tmp_path)
    assert not (tmp_path / "hops.jsonl").exists()


def test_lines_cut_short_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    record([HopMeasurement(A, B, 2.0, 64)], path=tmp_path)
    with (tmp_path / "hops.jsonl").open("a") as handle:
        handle.write('{"src": "aws:us-east-1", "dst": "gcp:eu\n')  # a writer killed mid-line
        handle.write('{"src": "aws:us-east-1", "dst": "aws:moon-1", "gbps": 1, "connections": 1, "at": 1}\n')
    record([HopMeasurement(B, C, 3.0, 64)], path=tmp_path)
    with caplog.at_level("WARNING"):
        seen = load(tmp_path)
    assert set(seen) == {(A, B), (B, C)}
    assert "skipped 2 unreadable line(s)" in caplog.text


def _writer(path: str, n: int) -> None:
    for i in range(n):
        record([HopMeasurement(A, B, 1.0 + i, 64), HopMeasurement(B, C, 2.0, 64)], path=path)


def test_concurrent_writers_do_not_interleave(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), 40)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = (tmp_path / "hops.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 40 * 2
    assert all(json.loads(x)["src"] in (A, B) for x in lines)


def test_history_compacts_to_the_newest_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measurements, "COMPACT_AFTER_LINES", 50)
    now = time.time()
    for i in range(60):
        record([HopMeasurement(A, B, 1.0 + i, 64)], path=tmp_path, now=now - (60 - i))
    lines = (tmp_path / "hops.jsonl").read_text().splitlines()
    assert len(lines) <= measurements.KEEP_PER_HOP + 10
    assert json.loads(lines[-1])["gbps"] == 60.0  # the newest survived
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".hops-")]  # no temporary left behind


def test_default_path_follows_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(measurements.PATH_VARIABLE, raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    assert measurements.default_path() == tmp_path / "home" / "skyplane" / "measurements"
    monkeypatch.setenv(measurements.PATH_VARIABLE, str(tmp_path / "elsewhere"))
    assert measurements.default_path() == tmp_path / "elsewhere"
    record([HopMeasurement(A, B, 1.0, 64)])
    assert (tmp_path / "elsewhere" / "hops.jsonl").exists()


def test_unwritable_history_names_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(InvalidInputError, match=r"cannot create the measurement history .*AIRFLOW__SKYPLANE"):
        record([HopMeasurement(A, B, 1.0, 64)], path=blocker / "sub")


def test_the_planner_prefers_what_was_measured(tmp_path: Path) -> None:
    """A hop measured much slower than the model says: the plan sees it and says so."""
    model = NetworkModel.default()
    src, dst = "azure:eastus", "aws:ap-northeast-1"
    before = plan_transfer(model, src, dst)
    slow = model.throughput(src, dst) / 4
    record([HopMeasurement(src, dst, slow, 64)], path=tmp_path)
    seen = model.with_history(load(tmp_path))
    after = plan_transfer(seen, src, dst)
    assert after.direct_throughput_gbps == pytest.approx(slow, rel=1e-3)
    assert after.direct_throughput_gbps < before.direct_throughput_gbps
    assert {e.basis for e in after.edges if (e.src, e.dst) == (src, dst)} <= {"history"}
    assert "history of 1 hops" in after.model


def _finished(overlay: Overlay, gateways: dict[str, GatewayStatus]) -> TransferResult:
    return TransferResult("t", 1, 10**9, 10**9, 1.0, 0, 1, gateways, overlay=overlay)


def test_finished_transfers_are_recorded_only_when_the_history_is_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the source splits its bytes 3:1 over two hops, as its gateway dispatches them; the relay forwards
    overlay = Overlay(A, C, [Hop(A, B, 24, 3.0), Hop(A, C, 8, 1.0), Hop(B, C, 16, 3.0)], {A: A, B: B, C: C})
    result = _finished(
        overlay, {A: {"wire_bytes": 2 * 10**9, "seconds": 4.0}, B: {"wire_bytes": 10**9, "seconds": 2.0}}
    )
    hops = {(h.src, h.dst): h for h in measurements.hops_of(result)}
    assert hops[(A, B)].gbps == pytest.approx(3.0) and hops[(A, B)].connections == 24  # 4 Gbps x 3/4
    assert hops[(A, C)].gbps == pytest.approx(1.0)
    assert hops[(B, C)].gbps == pytest.approx(4.0)

    monkeypatch.delenv(measurements.PATH_VARIABLE, raising=False)
    assert measurements.record_finished([result]) == 0  # off: nothing written anywhere
    assert measurements.with_recorded(NetworkModel.default()).observed == {}
    monkeypatch.setenv(measurements.PATH_VARIABLE, str(tmp_path))
    assert measurements.record_finished([result]) == 3
    assert measurements.with_recorded(NetworkModel.default()).basis(A, B) == "history"
    # the [skyplane] measurements_path setting, as the operator passes it from its settings
    setting = tmp_path / "from-settings"
    monkeypatch.delenv(measurements.PATH_VARIABLE, raising=False)
    assert measurements.record_finished([result], str(setting)) == 3
    assert measurements.with_recorded(NetworkModel.default(), str(setting)).basis(A, B) == "history"
    # loopback gateways (no region) record nothing
    plain = _finished(Overlay("source", "destination", [Hop("source", "destination")]), {"source": {}})
    assert measurements.hops_of(plain) == []


def test_the_operator_reads_the_history_folder_from_the_skyplane_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """airflow.cfg's [skyplane] measurements_path (here in its environment form) and a connection
    extra both reach the settings the operator plans and summarises with."""
    from airflow_skyplane.hooks.skyplane import SkyplaneHook

    monkeypatch.delenv("AIRFLOW_CONN_SKYPLANE_DEFAULT", raising=False)
    assert SkyplaneHook().get_settings().measurements_path is None  # off by default
    monkeypatch.setenv("AIRFLOW__SKYPLANE__MEASUREMENTS_PATH", "/var/lib/skyplane/history")
    assert SkyplaneHook().get_settings().measurements_path == "/var/lib/skyplane/history"
    monkeypatch.setenv(
        "AIRFLOW_CONN_SKYPLANE_DEFAULT",
        json.dumps({"conn_type": "skyplane", "extra": {"measurements_path": "/srv/h"}}),
    )
    assert SkyplaneHook().get_settings().measurements_path == "/srv/h"
