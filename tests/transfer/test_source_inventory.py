"""``source_inventory``: inventory reports put in a store (moto's S3, local files) give the same diff
as a listing of the source, whatever their format; bad reports are refused, naming the parameter."""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
import random
from collections.abc import Callable, Iterable
from contextlib import closing
from typing import Any
from urllib.parse import quote_plus

import pytest

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.hooks.storage import Location, open_store
from airflow_skyplane.storage.base import ObjectInfo, ObjectStore
from airflow_skyplane.storage.local import LocalStore
from airflow_skyplane.testing.sky import EmulatedSky
from airflow_skyplane.transfer import inventory, report_files
from airflow_skyplane.transfer.diff import DiffCounts, KeyFilter
from airflow_skyplane.transfer.source_inventory import At, SourceInventory, locate

pa = pytest.importorskip("pyarrow", reason="Parquet and ORC reports need pyarrow (the inventory extra)")
STATE = ".skyplane-state/"


def _seed(store: ObjectStore, seed: int = 5) -> None:
    rng = random.Random(seed)
    keys = [f"data/day={d}/part {i}+é.json" for d in range(3) for i in range(6)]
    keys += ["data/skip.tmp", "other/outside.json", f"{STATE}t/state.json"]
    for key in keys:
        store.put(key, rng.randbytes(rng.randrange(0, 3000)))


def _destination(src: ObjectStore, dst: ObjectStore) -> None:
    """Some objects the same at the destination, some changed, some extra."""
    for i, info in enumerate(src.list("data/")):
        if i % 3 == 0:
            dst.put("copy/" + info.key[len("data/") :], src.read(info.key))
        elif i % 3 == 1:
            dst.put("copy/" + info.key[len("data/") :], b"changed")
    dst.put("copy/gone.json", b"x")


def _diff(src: Location, dst: Location, objects: Iterable[ObjectInfo] | None) -> tuple[list[str], dict]:
    counts = DiffCounts()
    sent = inventory.to_send(
        src, dst, mode="sync", keep=KEEP, state_prefix=STATE, counts=counts, source_objects=objects
    )
    keys = [(i.key, i.size) for i in sent]
    return keys, {**counts.as_dict(), "new_bytes": counts.new_bytes, "changed_bytes": counts.changed_bytes}


KEEP = KeyFilter((), ("*.tmp",))


def _rows(store: ObjectStore) -> list[ObjectInfo]:
    rows = list(store.list(""))
    random.Random(1).shuffle(rows)  # reports are in no order
    return rows


def _etag(info: ObjectInfo) -> str:
    assert info.checksum is not None
    return info.checksum.value


def _put_manifest(store: ObjectStore, base: str, source: str, kind: str, files: list[bytes]) -> str:
    ext = {"CSV": "csv.gz", "Parquet": "parquet", "ORC": "orc"}[kind]
    keys = []
    for i, body in enumerate(files):
        keys.append(f"{base}data/{i}.{ext}")
        store.put(keys[-1], body)
    manifest = {
        "sourceBucket": source,
        "destinationBucket": f"arn:aws:s3:::{store.bucket}",
        "version": "2016-11-30",
        "creationTimestamp": "1700000000000",
        "fileFormat": kind,
        "fileSchema": "Bucket, Key, Size, LastModifiedDate, ETag, IsLatest",
        "files": [{"key": k, "size": 0, "MD5checksum": ""} for k in keys],
    }
    store.put(f"{base}manifest.json", json.dumps(manifest).encode())
    return f"{base}manifest.json"


def _s3_csv(rows: list[ObjectInfo], bucket: str) -> list[bytes]:
    out = []
    for half in (rows[: len(rows) // 2], rows[len(rows) // 2 :]):
        text = io.StringIO()
        w = csv.writer(text)
        for r in half:
            assert r.mtime is not None
            stamp = r.mtime.strftime("%Y-%m-%dT%H:%M:%S.") + f"{r.mtime.microsecond // 1000:03d}Z"
            w.writerow([bucket, quote_plus(r.key), r.size, stamp, _etag(r), "true"])
        out.append(gzip.compress(text.getvalue().encode()))
    return out


def _table(rows: list[ObjectInfo], bucket: str) -> Any:
    return pa.table(
        {
            "bucket": [bucket] * len(rows),
            "key": [r.key for r in rows],
            "size": pa.array([r.size for r in rows], pa.int64()),
            "last_modified_date": pa.array([r.mtime for r in rows], pa.timestamp("ms", tz="UTC")),
            "e_tag": [_etag(r) for r in rows],
            "is_latest": [True] * len(rows),
        }
    )


def _parquet(rows: list[ObjectInfo], bucket: str) -> list[bytes]:
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(_table(rows, bucket), sink, row_group_size=7)
    return [sink.getvalue()]


def _orc(rows: list[ObjectInfo], bucket: str) -> list[bytes]:
    from pyarrow import orc

    sink = io.BytesIO()
    orc.write_table(_table(rows, bucket), sink, stripe_size=4096)
    return [sink.getvalue()]


def _plain_csv(rows: list[ObjectInfo]) -> bytes:
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(["key", "size", "checksum", "mtime"])
    for r in rows:
        w.writerow(
            [r.key, r.size, str(r.checksum) if r.checksum else "", r.mtime.isoformat() if r.mtime else ""]
        )
    return text.getvalue().encode()


def _gcs_shards(rows: list[ObjectInfo], bucket: str) -> list[bytes]:
    """Storage Insights CSV shards: a header line, md5Hash in base64."""
    out = []
    for shard in (rows[::2], rows[1::2]):
        text = io.StringIO()
        w = csv.writer(text)
        w.writerow(["bucket", "name", "size", "updated", "md5Hash"])
        for r in shard:
            assert r.checksum is not None and r.mtime is not None
            md5 = base64.b64encode(bytes.fromhex(r.checksum.value)).decode()
            w.writerow([bucket, r.key, r.size, r.mtime.isoformat(), md5])
        out.append(text.getvalue().encode())
    return out


@pytest.fixture
def s3_pair(emulated_sky: EmulatedSky, sky_bucket: Callable[[str], str]) -> tuple[Location, Location, str]:
    src, dst, reports = sky_bucket("s3"), sky_bucket("s3"), sky_bucket("s3")
    _seed(emulated_sky.open(src))
    _destination(emulated_sky.open(src), emulated_sky.open(dst))
    return open_store(f"{src}/data/"), open_store(f"{dst}/copy/"), reports


@pytest.mark.parametrize("kind", ["CSV", "Parquet", "ORC"])
def test_s3_inventory_manifest_gives_the_listing_diff(
    s3_pair: tuple[Location, Location, str], kind: str
) -> None:
    src, dst, reports = s3_pair
    store = open_store(reports).store
    write = {"CSV": _s3_csv, "Parquet": _parquet, "ORC": _orc}[kind]
    rows = _rows(src.store)
    key = _put_manifest(store, f"inv/{src.store.bucket}/cfg/2024-01-01T00-00Z/", src.store.bucket, kind,
                        write(rows, src.store.bucket))  # fmt: skip
    listed = _diff(src, dst, None)
    report = SourceInventory(
        locate(f"{reports}/{key}", open_store), f"{reports}/{key}", src, keep=KEEP, state_prefix=STATE
    )
    try:
        assert report.count == 18 and report.rows == len(rows)  # 19 under data/, one excluded
        assert _diff(src, dst, report) == listed
        assert _diff(src, dst, report) == listed  # read again for a second destination
        counts = listed[1]
        assert counts["extraneous"] == 1 and min(counts["new"], counts["changed"], counts["unchanged"]) > 0
        assert counts["new"] + counts["changed"] + counts["unchanged"] == 18
        assert "taken 2023-11-14" in report.describe()
    finally:
        report.close()


def test_plain_csv_and_parquet_lists_give_the_listing_diff(s3_pair: tuple[Location, Location, str]) -> None:
    src, dst, reports = s3_pair
    store = open_store(reports).store
    rows = _rows(src.store)
    store.put("lists/objects.csv.gz", gzip.compress(_plain_csv(rows)))
    store.put("lists/objects.parquet", _parquet(rows, src.store.bucket)[0])
    listed = _diff(src, dst, None)
    for name in ("objects.csv.gz", "objects.parquet"):
        uri = f"{reports}/lists/{name}"
        _assert_same_diff(uri, src, dst, listed)


def test_local_store_plain_csv_and_gcs_shards(tmp_path: Any) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    (tmp_path / "reports").mkdir()
    src_root, dst_root, rep_root = (f"file://{tmp_path / n}" for n in ("src", "dst", "reports"))
    _seed(open_store(src_root).store)
    _destination(open_store(src_root).store, open_store(dst_root).store)
    src, dst, reports = (
        open_store(f"{src_root}/data/"),
        open_store(f"{dst_root}/copy/"),
        open_store(rep_root).store,
    )
    rows = _rows(src.store)
    reports.put("objects.csv", _plain_csv(rows))
    headed = [src.store.head(r.key) for r in rows]  # local listings carry no checksum; heads do
    for i, shard in enumerate(_gcs_shards(headed, src.store.bucket)):
        reports.put(f"insights/2024-01-01/shard_{i}.csv", shard)
    reports.put("insights/2024-01-01/report_manifest.json", b"{}")  # not a shard: left alone
    listed = _diff(src, dst, None)
    assert listed[1]["new"] > 0 and listed[1]["changed"] > 0
    for name in ("objects.csv", "insights/"):
        uri = f"{rep_root}/{name}"
        _assert_same_diff(uri, src, dst, listed)


def _assert_same_diff(uri: str, src: Location, dst: Location, listed: tuple[list[str], dict]) -> None:
    with closing(SourceInventory(locate(uri, open_store), uri, src, keep=KEEP, state_prefix=STATE)) as report:
        assert _diff(src, dst, report) == listed


def _refused(uri: str, src: Location, *words: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        SourceInventory(locate(uri, open_store), uri, src, keep=KEEP, state_prefix=STATE).close()
    message = str(err.value)
    assert message.startswith(f"source_inventory={uri!r}")
    for word in words:
        assert word in message, message


def test_bad_reports_are_refused_naming_the_parameter(s3_pair: tuple[Location, Location, str]) -> None:
    src, _, reports = s3_pair
    store = open_store(reports).store
    rows = _rows(src.store)
    _refused(f"{reports}/inv/missing/manifest.json", src, "no S3 Inventory manifest", "manifest.json")
    key = _put_manifest(store, "inv/json/", src.store.bucket, "CSV", _s3_csv(rows, src.store.bucket))
    manifest = json.loads(store.read(key))
    store.put(key, json.dumps({**manifest, "fileFormat": "Avro"}).encode())
    _refused(f"{reports}/{key}", src, "fileFormat 'Avro' is unknown", "CSV, ORC or Parquet")
    store.put("lists/objects.xlsx", b"x")
    _refused(f"{reports}/lists/objects.xlsx", src, "format of 'objects.xlsx' is unknown")
    other = _put_manifest(store, "inv/other/", "another-bucket", "CSV", _s3_csv(rows, "another-bucket"))
    _refused(f"{reports}/{other}", src, "sourceBucket is 'another-bucket'", src.store.uri)
    store.put("lists/other.csv", b"bucket,key,size\nanother-bucket,data/a,1\n")
    _refused(
        f"{reports}/lists/other.csv", src, "is 'another-bucket'", "give the report of the source's bucket"
    )
    store.put("lists/nosize.csv", b"key,etag\ndata/a,abc\n")
    _refused(f"{reports}/lists/nosize.csv", src, "no size column", "its columns: key, etag")
    store.put("lists/twice.csv", b"key,size\ndata/a,1\ndata/a,2\n")
    _refused(f"{reports}/lists/twice.csv", src, "lists 'data/a' twice")
    store.put("lists/badsize.csv", b"key,size\ndata/a,big\n")
    _refused(f"{reports}/lists/badsize.csv", src, "the row of 'data/a'", "cannot be read")
    _refused(f"{reports}/empty/", src, "no .csv or .parquet report shards")
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(_table(rows, src.store.bucket).drop_columns(["key"]), sink)
    store.put("lists/nokey.parquet", sink.getvalue())
    _refused(f"{reports}/lists/nokey.parquet", src, "no key column", "lastmodifieddate")


class _CountingStore(LocalStore):
    """Local files, with the length of every range read of a report."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.reads: list[int] = []

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        self.reads.append(length)
        return super().read_range(key, offset, length)


def test_a_report_is_read_in_blocks_never_whole(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_files, "BLOCK", 64 * 1024)
    (tmp_path / "src").mkdir()
    (tmp_path / "reports").mkdir()
    reports = _CountingStore(str(tmp_path / "reports"))
    rng = random.Random(2)
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(["key", "size", "md5"])
    n = 50_000
    for i in rng.sample(range(n), n):  # in no order
        w.writerow([f"data/{i:08d}.json", i, f"{i:032x}"])
    body = gzip.compress(text.getvalue().encode(), compresslevel=1)
    reports.put("big.csv.gz", body)
    src = At(LocalStore(str(tmp_path / "src")), "data/")
    with closing(
        SourceInventory(At(reports, "big.csv.gz"), "big", src, keep=KeyFilter(), state_prefix=None)
    ) as report:
        keys = [info.key for info in report]
    assert len(body) > 4 * 64 * 1024 and len(reports.reads) >= len(body) // (64 * 1024)
    assert max(reports.reads) <= 64 * 1024
    assert keys == [f"data/{i:08d}.json" for i in range(n)]
