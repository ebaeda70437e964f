"""The operator with ``source_inventory=``: a sync from an inventory report sends what a sync from a
listing sends; objects the report lists but the source no longer has; a bad report fails first."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import pytest

from airflow_skyplane.exceptions import InvalidInputError, TransferError
from airflow_skyplane.hooks.storage import open_store
from airflow_skyplane.operators.transfer import SkyplaneTransferOperator
from airflow_skyplane.storage.base import ObjectStore
from airflow_skyplane.testing.sky import EmulatedSky


def _report(source: ObjectStore, reports: ObjectStore, key: str) -> None:
    """A plain CSV list of the source as it is now."""
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(["Key", "Size", "ETag", "Last_Modified"])
    for info in reversed(list(source.list(""))):  # in no order
        assert info.checksum is not None and info.mtime is not None
        w.writerow([info.key, info.size, info.checksum.value, info.mtime.isoformat()])
    reports.put(key, text.getvalue().encode())


def _contents(uri: str) -> dict[str, bytes]:
    loc = open_store(uri)
    return {i.key[len(loc.prefix) :]: loc.store.read(i.key) for i in loc.store.list(loc.prefix)}


def _sync(src: str, dst: str, **kwargs: Any) -> dict[str, Any]:
    op = SkyplaneTransferOperator(
        task_id="nightly", source=f"{src}/in/", destination=f"{dst}/out/", mode="sync", resume=False,
        **kwargs,
    )  # fmt: skip
    return op.execute(context={})


def test_sync_from_an_inventory_sends_what_a_listing_sync_sends(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str]
) -> None:
    src, dst, reports = sky_bucket("s3"), sky_bucket("gs"), sky_bucket("s3")
    source = emulated_sky.open(src)
    for i in range(8):
        source.put(f"in/{i:02d}.bin", bytes([i]) * (1000 + i))
    source.put("in/skip.tmp", b"x")
    first = _sync(src, dst)
    assert first["objects"] == 9
    source.put("in/03.bin", b"changed")
    source.put("in/new.bin", b"new")
    _report(source, emulated_sky.open(reports), "daily/list.csv")
    source.put("in/after-the-report.bin", b"not in the report")

    by_report = _sync(src, dst, source_inventory=f"{reports}/daily/list.csv", exclude="*.tmp")
    sync = by_report["destinations"][f"{dst}/out/"]["sync"]
    assert sync == {"new": 1, "changed": 1, "unchanged": 7, "extraneous": 0, "deleted": 0}
    assert by_report["objects"] == 2
    got = _contents(f"{dst}/out/")
    assert got["03.bin"] == b"changed" and got["new.bin"] == b"new" and "after-the-report.bin" not in got
    listed = _sync(src, dst, exclude="*.tmp")  # a listing finds what the report did not know
    assert listed["objects"] == 1 and _contents(f"{dst}/out/")["after-the-report.bin"] == b"not in the report"


def test_objects_deleted_since_the_report(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str]
) -> None:
    src, dst, reports = sky_bucket("s3"), sky_bucket("gs"), sky_bucket("s3")
    source = emulated_sky.open(src)
    for i in range(4):
        source.put(f"in/{i}.bin", bytes([i]) * 5000)
    _report(source, emulated_sky.open(reports), "list.csv")
    source.delete("in/2.bin")
    with pytest.raises(TransferError) as err:
        _sync(src, dst, source_inventory=f"{reports}/list.csv")
    message = str(err.value)
    assert f"{src}/in/2.bin does not exist" in message
    assert f"source_inventory='{reports}/list.csv' lists objects the source no longer has as" in message
    assert "give a newer report, or leave source_inventory out" in message
    assert "2.bin" not in _contents(f"{dst}/out/")  # nothing half-written


def test_a_bad_report_fails_before_anything_moves(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str]
) -> None:
    src, dst, reports = sky_bucket("s3"), sky_bucket("gs"), sky_bucket("s3")
    emulated_sky.open(src).put("in/a.bin", b"a")
    with pytest.raises(InvalidInputError, match=r"source_inventory='s3://.*/nope/manifest.json'"):
        _sync(src, dst, source_inventory=f"{reports}/nope/manifest.json")
    assert _contents(f"{dst}/") == {}


def test_objects_changed_since_the_report(
    emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str]
) -> None:
    """Rewritten with the same size: sent whole as it is now. Grown: the transfer fails, rather than
    write the first bytes of the new object as the object."""
    src, dst, reports = sky_bucket("s3"), sky_bucket("gs"), sky_bucket("s3")
    source = emulated_sky.open(src)
    for i in range(3):
        source.put(f"in/{i}.bin", bytes([i]) * 5000)
    _report(source, emulated_sky.open(reports), "list.csv")
    source.put("in/2.bin", b"X" * 5000)
    _sync(src, dst, source_inventory=f"{reports}/list.csv")
    assert _contents(f"{dst}/out/")["2.bin"] == b"X" * 5000
    source.put("in/1.bin", b"grown" * 3000)
    fresh = sky_bucket("gs")
    with pytest.raises(TransferError) as err:
        _sync(src, fresh, source_inventory=f"{reports}/list.csv")
    message = str(err.value)
    assert "'1.bin' has more than the 5000 bytes it was listed with" in message
    assert f"source_inventory='{reports}/list.csv' lists objects the source no longer has as" in message
    assert "1.bin" not in _contents(f"{fresh}/out/")  # nothing of it written
