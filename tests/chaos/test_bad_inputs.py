"""Bad input, one table: operator parameters, URIs, connections, grids, gateway programs and wire
frames. Each case must fail with the package's own error and a message naming the input, and leave
nothing behind (no fleet started, nothing written at the destination)."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_skyplane.compute.fleets import fleet_ids
from airflow_skyplane.exceptions import SkyplaneError
from airflow_skyplane.gateway import protocol as p
from airflow_skyplane.gateway.program import Program
from airflow_skyplane.hooks.storage import open_store
from airflow_skyplane.operators.transfer import SkyplaneTransferOperator
from airflow_skyplane.planner.network import NetworkModel
from airflow_skyplane.testing.sky import EmulatedSky

S, D = "{src}", "{dst}"  # filled with fresh buckets per case

OPERATOR_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown scheme", {"source": "ftp://host/x"}, "unknown scheme 'ftp'"),
    ("relative file path", {"source": "file://relative/dir"}, "file:///absolute/path"),
    ("destination is the source", {"destination": S + "/d/"}, "overlaps source"),
    ("destination inside the source", {"destination": S + "/d/copy/"}, "overlaps source"),
    ("unknown aws connection", {"aws_conn_id": "nope_conn"}, "'nope_conn'"),
    ("unknown skyplane connection", {"skyplane_conn_id": "nope_sky"}, "'nope_sky'"),
    ("unknown mode", {"mode": "mirror"}, "mode='mirror'"),
    ("unknown compare", {"compare": "mtime"}, "compare='mtime'"),
    ("absolute include", {"include": "/abs/*"}, "include='/abs/\\*'"),
    ("include not a string", {"include": [3]}, "include=3"),
    ("deferrable without waiting", {"deferrable": True, "wait_for_completion": False}, "deferrable=True"),
    (
        "deadline with throughput objective",
        {"objective": "throughput", "deadline": 60},
        "deadline is a limit",
    ),
    ("cost objective without a target", {"objective": "cost"}, "needs deadline or min_throughput_gbps"),
    ("negative budget", {"max_cost_usd": -1}, "max_cost_usd=-1"),
    ("zero throughput", {"min_throughput_gbps": 0}, "min_throughput_gbps=0"),
    ("negative deadline", {"deadline": timedelta(seconds=-5)}, "deadline="),
    ("chunk size zero", {"chunk_size_mb": 0}, "chunk_size_mb=0"),
    ("chunk size too big", {"chunk_size_mb": 4096}, "chunk_size_mb=4096"),
    ("unknown relay backend", {"relay_backend": "moon"}, "relay_backend='moon'"),
    ("cloud relays without the worker's address", {"relay_backend": "aws"}, "set worker_cidr"),
    (
        "region count mismatch",
        {"destination_region": ["aws:us-east-1", "aws:us-west-2"]},
        "destination_region has 2",
    ),
    ("no destination", {"destination": []}, "non-empty list"),
    ("same destination twice", {"destination": [D, D]}, "names the same URI twice"),
    ("connections per hop zero", {"connections_per_hop": 0}, "connections_per_hop=0"),
    ("delete in copy mode", {"delete_extraneous": True}, "needs mode='sync'"),
    ("negative max_delete", {"mode": "sync", "max_delete": -1}, "max_delete=-1"),
    (
        "infeasible deadline",
        {"objective": "cost", "deadline": 0.001, "destination_region": "azure:westeurope"},
        "deadline=",
    ),
    ("unknown region", {"destination_region": "aws:mars-1"}, "mars-1"),
    (
        "empty allowed region",
        {"allowed_regions": [""], "destination_region": "gcp:us-central1-a"},
        "allowed_regions",
    ),
]


@pytest.mark.parametrize(("case", "kwargs", "match"), OPERATOR_CASES, ids=[c[0] for c in OPERATOR_CASES])
def test_operator_bad_input_fails_before_anything_starts(
    case: str,
    kwargs: dict[str, Any],
    match: str,
    emulated_sky: EmulatedSky,
    sky_bucket: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = tmp_path / "fleets"
    monkeypatch.setenv("AIRFLOW__SKYPLANE__STATE_DIR", str(state))
    src, dst = sky_bucket("s3"), sky_bucket("az")
    emulated_sky.open(src).put("d/x.bin", random.Random(0).randbytes(1 << 20))

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(S, src).replace(D, dst)
        return [fill(v) for v in value] if isinstance(value, list) else value

    args = {"source": f"{src}/d/", "destination": dst, **{k: fill(v) for k, v in kwargs.items()}}
    with pytest.raises(SkyplaneError, match=match):
        SkyplaneTransferOperator(task_id="bad", **args).execute(context={})
    assert fleet_ids(state) == []  # no fleet
    assert (
        list(open_store(dst).store.list()) == []
        and list(open_store(dst).store.list_multipart_uploads()) == []
    )


GRID_HEADER = "src_region,src_tier,dst_region,dst_tier,throughput_gbps,iperf3_connections\n"
GRID_CASES = [
    ("not a CSV", "\x00\x01 binary", "grid"),
    ("missing columns", "a,b\n1,2\n", "lacks a source, destination or throughput"),
    ("negative throughput", GRID_HEADER + "aws:us-east-1,PREMIUM,aws:us-west-2,PREMIUM,-3,64\n", "-3"),
    ("unknown region", GRID_HEADER + "aws:mars-1,PREMIUM,aws:us-west-2,PREMIUM,3,64\n", "mars-1"),
    (
        "throughput not a number",
        GRID_HEADER + "aws:us-east-1,PREMIUM,aws:us-west-2,PREMIUM,fast,64\n",
        "fast",
    ),
]


@pytest.mark.parametrize(("case", "text", "match"), GRID_CASES, ids=[c[0] for c in GRID_CASES])
def test_bad_grids_name_the_problem(case: str, text: str, match: str, tmp_path: Path) -> None:
    path = tmp_path / "grid.csv"
    path.write_text(text)
    with pytest.raises(SkyplaneError, match=match):
        NetworkModel.from_csv(path)


BASE = {"version": 1, "transfer_id": "ab" * 16, "gateway_id": "relay",
        "tls": {"cert": "c", "key": "k", "ca": "ca"}, "listen": {"host": "127.0.0.1", "port": 0},
        "next_hops": [{"gateway_id": "d", "host": "127.0.0.1", "port": 7000}]}  # fmt: skip
PROGRAM_CASES: list[tuple[str, Any, str]] = [
    ("not JSON", "{not json", "not JSON"),
    ("not an object", "[1, 2]", "not a JSON object"),
    ("another version", json.dumps({**BASE, "version": 9}), "version 9"),
    ("next_hops not a list", json.dumps({**BASE, "next_hops": 7}), "next_hops is 7"),
    (
        "connections true",
        json.dumps({**BASE, "next_hops": [{"host": "h", "port": 1, "connections": True}]}),
        "connections is True",
    ),
    (
        "weight NaN",
        json.dumps({**BASE, "next_hops": [{"host": "h", "port": 1, "weight": float("nan")}]}),
        "weight is nan",
    ),
    ("encrypt a string", json.dumps({**BASE, "encrypt": "yes"}), "encrypt is 'yes'"),
    ("port out of range", json.dumps({**BASE, "listen": {"host": "h", "port": 70000}}), "70000"),
]


@pytest.mark.parametrize(("case", "text", "match"), PROGRAM_CASES, ids=[c[0] for c in PROGRAM_CASES])
def test_bad_gateway_programs_name_the_field(case: str, text: str, match: str) -> None:
    with pytest.raises(SkyplaneError, match=match):
        Program.loads(text)


TID = bytes(range(16))


def _frame(kind: p.FrameType, header: bytes = b"", payload: bytes = b"") -> bytes:
    out = io.BytesIO()
    p.write_frame(out, kind, header, payload)
    return out.getvalue()


def _chunk(cipher: p.ChunkCipher | None = None, attempt: int = 0) -> tuple[p.ChunkHeader, bytes]:
    return p.encode_chunk(TID, 1, "k", 0, b"data" * 100, object_size=400, cipher=cipher, attempt=attempt)


def _truncated() -> None:
    head, body = _chunk()
    p.read_frame(io.BytesIO(_frame(p.FrameType.CHUNK, head.pack(), body)[:-10]))


def _oversized() -> None:
    p.read_frame(
        io.BytesIO(
            p.MAGIC + bytes([int(p.FrameType.CHUNK)]) + (10).to_bytes(2, "big") + (2**31).to_bytes(4, "big")
        )
    )


def _bad_magic() -> None:
    p.read_frame(io.BytesIO(b"HTTP/1.1 200 OK\r\n\r\n" + bytes(64)))


def _other_transfer() -> None:
    head, body = _chunk(p.ChunkCipher.generate())
    p.decode_chunk(head, body, cipher=p.ChunkCipher.generate())


def _replayed() -> None:
    guard = p.ReplayGuard()
    head, _ = _chunk()
    guard.check_header(head)
    guard.check_header(head)


def _plaintext_injected() -> None:
    head, body = _chunk()
    p.decode_chunk(head, body, cipher=p.ChunkCipher.generate())


FRAME_CASES: list[tuple[str, Callable[[], None], str]] = [
    ("truncated frame", _truncated, "truncated"),
    ("oversized length field", _oversized, "limit"),
    ("not our protocol", _bad_magic, "magic|HTTP"),
    ("another transfer's key", _other_transfer, "failed authentication"),
    ("replayed chunk", _replayed, "replay|seen"),
    ("plaintext injected into an encrypted transfer", _plaintext_injected, "unencrypted"),
]


@pytest.mark.parametrize(("case", "action", "match"), FRAME_CASES, ids=[c[0] for c in FRAME_CASES])
def test_bad_frames_are_refused_with_a_reason(case: str, action: Callable[[], None], match: str) -> None:
    with pytest.raises(SkyplaneError, match=match):
        action()


def test_there_are_at_least_forty_bad_input_cases() -> None:
    assert len(OPERATOR_CASES) + len(GRID_CASES) + len(PROGRAM_CASES) + len(FRAME_CASES) >= 40
