"""The source's objects as an inventory report lists them, instead of a listing of the source.

A nightly sync of a bucket of a hundred million objects should not list it: the store already wrote
an inventory. ``source_inventory=`` names one of

* an S3 Inventory manifest (``.../manifest.json``): its ``fileFormat`` (CSV, ORC or Parquet) and
  ``files``, the CSV columns from its ``fileSchema`` (keys URL-encoded, as S3 writes them);
* a folder (a URI ending in ``/``) of report shards, ``.csv`` (with a header line) or ``.parquet``,
  as a GCS Storage Insights inventory report writes them; other files there are left alone;
* one plain ``.csv`` (header line; ``.csv.gz`` too), ``.parquet`` or ``.orc`` list.

Columns are matched by name, case and ``_`` aside: the key (``key`` or ``name``, relative to the
bucket) and ``size`` are required; ``bucket`` (must be the source's), a checksum (``checksum`` as
``md5:<hex>``, or ``crc32c``, ``md5``/``md5Hash`` in hex or base64, or an S3 ``etag``), a
modification time (``last_modified_date``, ``last_modified``, ``updated``, ``mtime``), and S3's
``is_latest``/``is_delete_marker`` of a versioned report are used when present.

Every file is read as a stream through the adapter of the store that holds it
(:mod:`.report_files`); only rows under the source prefix that pass include/exclude, outside the
state folder, are kept, in a private temporary SQLite database on disk that sorts them by the UTF-8
bytes of their keys (report files are in no useful order; the diff merges sorted streams). The
database is read as often as there are destinations; memory stays flat whatever the report's size.
No Airflow here.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import unquote_plus

from airflow_skyplane.exceptions import InvalidInputError, ObjectNotFoundError
from airflow_skyplane.storage.base import Checksum, ObjectInfo, ObjectStore
from airflow_skyplane.storage.checksums import b64_to_hex
from airflow_skyplane.storage.s3 import etag_checksum
from airflow_skyplane.transfer.diff import KeyFilter
from airflow_skyplane.transfer.inventory import Prefix
from airflow_skyplane.transfer.report_files import columnar_rows, csv_rows, file_format

PARAMETER = "source_inventory"
KEY_COLUMNS = ("key", "name")
MTIME_COLUMNS = ("lastmodifieddate", "lastmodified", "updated", "mtime")
CHECKSUM_COLUMNS = ("checksum", "crc32c", "md5", "md5hash", "etag")
#: every column a report row is read for
USED = {*KEY_COLUMNS, "size", "bucket", *MTIME_COLUMNS, *CHECKSUM_COLUMNS, "islatest", "isdeletemarker"}
#: one object in the sorting database: key, size, checksum algorithm and value, ISO modification time
Row = tuple[str, int, str | None, str | None, str | None]
#: rows inserted into the sorting database at a time
INSERT_BATCH = 10_000


@dataclass
class ReportFile:
    key: str
    size: int
    kind: str  # csv, parquet or orc
    header: list[str] | None = None  # the CSV columns, when the file has no header line
    url_encoded: bool = False  # S3 Inventory CSV keys


@dataclass
class Report:
    """What a ``source_inventory`` URI names: its files, and what it says about itself."""

    uri: str
    files: list[ReportFile]
    source_bucket: str | None = None
    taken: datetime | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class At:
    """A key (or prefix) of an opened store."""

    store: ObjectStore
    prefix: str


def locate(uri: str, opener: Callable[[str], Prefix]) -> Prefix:
    """Open where ``uri`` points with ``opener`` (the operator's store opener). A ``file://`` URI is
    a directory as a whole, so a report file there is opened as its directory and its name."""
    if uri.startswith("file://") and not uri.endswith("/"):
        directory, _, name = uri.rpartition("/")
        return At(opener(directory).store, name)
    return opener(uri)


def _bad(uri: str, why: str) -> InvalidInputError:
    return InvalidInputError(f"{PARAMETER}={uri!r}: {why}")


def _head_size(store: ObjectStore, key: str, uri: str, what: str) -> int:
    try:
        return store.head(key).size
    except ObjectNotFoundError:
        raise _bad(uri, f"there is no {what} at {store.describe(key)}: {_KINDS}") from None


_KINDS = (
    "give the manifest.json of an S3 Inventory report, a folder of report shards ending in '/', or a "
    ".csv, .csv.gz, .parquet or .orc list of keys and sizes"
)


def _s3_manifest(store: ObjectStore, key: str, uri: str) -> Report:
    _head_size(store, key, uri, "S3 Inventory manifest")
    try:
        manifest = json.loads(store.read(key))
        kind = str(manifest["fileFormat"]).lower()
        entries = [str(f["key"]) for f in manifest["files"]]
    except (ValueError, KeyError, TypeError) as err:
        raise _bad(uri, f"not an S3 Inventory manifest ({err!r}): {_KINDS}") from None
    if kind not in ("csv", "orc", "parquet"):
        raise _bad(
            uri, f"fileFormat {manifest['fileFormat']!r} is unknown: S3 Inventory writes CSV, ORC or Parquet"
        )
    header = None
    if kind == "csv":
        header = [c.strip() for c in str(manifest.get("fileSchema", "")).split(",") if c.strip()]
        if not header:
            raise _bad(uri, "the manifest of a CSV report has no fileSchema naming its columns")
    files = [
        ReportFile(k, _head_size(store, k, uri, "report file"), kind, header, url_encoded=kind == "csv")
        for k in entries
    ]
    taken = None
    if str(manifest.get("creationTimestamp", "")).isdigit():
        taken = datetime.fromtimestamp(int(manifest["creationTimestamp"]) / 1000, tz=timezone.utc)
    return Report(uri, files, source_bucket=manifest.get("sourceBucket"), taken=taken)


def open_report(report: Prefix, uri: str) -> Report:
    """The files ``uri`` (opened as ``report``) names, checked before any row is read."""
    store, key = report.store, report.prefix
    if key.endswith("manifest.json"):
        return _s3_manifest(store, key, uri)
    if key == "" or key.endswith("/"):
        files = [
            ReportFile(info.key, info.size, kind)
            for info in store.list(key)
            if (kind := file_format(info.key)) in ("csv", "parquet") and "/." not in "/" + info.key
        ]
        if not files:
            raise _bad(uri, f"no .csv or .parquet report shards under {store.describe(key)}: {_KINDS}")
        return Report(uri, files)
    kind = file_format(key)
    if kind is None:
        raise _bad(uri, f"the format of {key.rsplit('/', 1)[-1]!r} is unknown: {_KINDS}")
    return Report(uri, [ReportFile(key, _head_size(store, key, uri, "inventory file"), kind)])


def _mtime(value: object) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        when = value
    else:
        text = str(value).strip()
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _hex(value: str, hex_length: int) -> str:
    """A checksum given in hex or in base64 (as GCS reports write them), in hex."""
    value = value.strip()
    if len(value) == hex_length and all(c in "0123456789abcdefABCDEF" for c in value):
        return value.lower()
    return b64_to_hex(value)


def _checksum(row: dict[str, object], s3: bool) -> Checksum | None:
    if given := row.get("checksum"):
        algorithm, _, value = str(given).partition(":")
        return Checksum(algorithm, value) if value else None
    if crc := row.get("crc32c"):
        return Checksum("crc32c", _hex(str(crc), 8))
    if md5 := row.get("md5") or row.get("md5hash"):
        return Checksum("md5", _hex(str(md5), 32))
    if s3 and (etag := row.get("etag")):
        return etag_checksum(str(etag))
    return None


def _true(value: object) -> bool:
    return value is True or str(value).lower() == "true"


class SourceInventory:
    """The source objects a report lists, filtered and sorted once; iterable as often as needed."""

    def __init__(
        self,
        report: Prefix,
        uri: str,
        source: Prefix,
        *,
        keep: KeyFilter,
        state_prefix: str | None,
    ) -> None:
        self.uri, self.source = uri, source
        self.report = open_report(report, uri)
        self._check_bucket(self.report.source_bucket, "the manifest's sourceBucket")
        self.rows = self.count = self.bytes = 0
        self._db = sqlite3.connect("", check_same_thread=False)  # a private temporary file on disk
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE objects (key TEXT NOT NULL, size INTEGER, alg TEXT, val TEXT, mtime TEXT)"
        )
        try:
            batch: list[Row] = []
            for f in self.report.files:
                for info in self._read(report.store, f, keep, state_prefix):
                    c = info.checksum
                    batch.append((
                        info.key, info.size, c.algorithm if c else None, c.value if c else None,
                        info.mtime.isoformat() if info.mtime else None,
                    ))  # fmt: skip
                    if len(batch) >= INSERT_BATCH:
                        self._insert(batch)
            self._insert(batch)
            try:  # sorts once; the scans that follow read in key order
                self._db.execute("CREATE UNIQUE INDEX by_key ON objects (key)")
            except sqlite3.IntegrityError:
                twice = self._db.execute(
                    "SELECT key FROM objects GROUP BY key HAVING COUNT(*) > 1 LIMIT 1"
                ).fetchone()
                raise _bad(uri, f"the report lists {twice[0]!r} twice: give one row per object") from None
        except BaseException:
            self.close()
            raise

    def _insert(self, batch: list[Row]) -> None:
        self._db.executemany("INSERT INTO objects VALUES (?, ?, ?, ?, ?)", batch)
        self.count += len(batch)
        self.bytes += sum(row[1] for row in batch)
        batch.clear()

    def _check_bucket(self, bucket: str | None, where: str) -> None:
        source = self.source.store
        if bucket is not None and bucket != source.bucket:
            raise _bad(
                self.uri,
                f"{where} is {bucket!r}, but the source is {source.uri}: give the report of the source's "
                "bucket",
            )

    def _read(
        self, store: ObjectStore, f: ReportFile, keep: KeyFilter, state_prefix: str | None
    ) -> Iterator[ObjectInfo]:
        where = store.describe(f.key)
        if f.kind == "csv":
            names = None
            rows = csv_rows(store, f.key, f.size, header=f.header, gzipped=f.key.lower().endswith(".gz"))
        else:
            names, rows = columnar_rows(store, f.key, f.size, kind=f.kind, wanted=USED, parameter=PARAMETER)
        prefix, s3 = self.source.prefix, self.source.store.scheme == "s3"
        checked = False
        for row in rows:
            self.rows += 1
            if not checked:
                self._check_columns(names or list(row), where)
                checked = True
            key = next((row[c] for c in KEY_COLUMNS if c in row), None)
            if not isinstance(key, str) or not key:
                raise _bad(self.uri, f"a row of {where} has no key: {row!r}")
            if f.url_encoded:
                key = unquote_plus(key)
            if "bucket" in row and row["bucket"] != self.source.store.bucket:
                self._check_bucket(str(row["bucket"]), f"the bucket of {where}")
            if not key.startswith(prefix) or (state_prefix and key.startswith(state_prefix)):
                continue
            if not keep(key[len(prefix) :]):
                continue
            if ("islatest" in row and not _true(row["islatest"])) or _true(row.get("isdeletemarker")):
                continue
            try:
                size = int(str(row["size"]))
                mtime = _mtime(next((row[c] for c in MTIME_COLUMNS if row.get(c) not in (None, "")), None))
                checksum = _checksum(row, s3)
            except (TypeError, ValueError) as err:
                raise _bad(self.uri, f"the row of {key!r} in {where} cannot be read: {err}") from None
            yield ObjectInfo(key, size, checksum, mtime)

    def _check_columns(self, names: list[str], where: str) -> None:
        missing = [
            need
            for need, any_of in (("key", KEY_COLUMNS), ("size", ("size",)))
            if not set(any_of) & set(names)
        ]
        if missing:
            raise _bad(
                self.uri,
                f"{where} has no {' or '.join(missing)} column (its columns: {', '.join(names) or 'none'}): "
                "a report needs the key and size of each object",
            )

    def __iter__(self) -> Iterator[ObjectInfo]:
        cursor = self._db.execute("SELECT key, size, alg, val, mtime FROM objects ORDER BY key")
        while rows := cursor.fetchmany(INSERT_BATCH):
            for key, size, alg, val, mtime in rows:
                checksum = Checksum(alg, val) if alg else None
                yield ObjectInfo(key, size, checksum, datetime.fromisoformat(mtime) if mtime else None)

    def describe(self) -> str:
        """One line for the task log."""
        taken = f", taken {self.report.taken.isoformat()}" if self.report.taken else ""
        return (
            f"{PARAMETER}: {self.count} objects ({self.bytes} bytes) under the source prefix, of "
            f"{self.rows} rows in {len(self.report.files)} files{taken}"
        )

    def close(self) -> None:
        self._db.close()
