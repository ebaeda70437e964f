"""The rows of one inventory report file, read as a stream through the store that holds it.

A report file (an S3 Inventory data file, a GCS Storage Insights shard, a plain list) can be larger
than the worker's memory, so nothing here reads one whole: :class:`StoreFile` is a seekable file
object over :meth:`~airflow_skyplane.storage.base.ObjectStore.read_range`, one block at a time;
CSV goes through the :mod:`csv` module over that body (gunzipped on the fly when it ends in ``.gz``),
Parquet through pyarrow's row batches and ORC through its stripes, only the columns used.

Each row comes out as a dict of normalized column names (lower case, no ``_``, ``-`` or spaces:
``LastModifiedDate``, ``last_modified_date`` and ``lastModifiedDate`` are all ``lastmodifieddate``)
to text or native values. No Airflow here.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.storage.base import ObjectStore

#: bytes asked of the store per read: large enough that a request's latency is small beside it
BLOCK = 8 * 1024 * 1024
#: rows per Parquet batch
BATCH_ROWS = 64 * 1024
FORMATS = ("csv", "parquet", "orc")


def normalize(name: str) -> str:
    return "".join(c for c in name.lower() if c not in "_- ")


class StoreFile(io.RawIOBase):
    """A read-only, seekable file over one object of a store, read in ranges on demand."""

    def __init__(self, store: ObjectStore, key: str, size: int) -> None:
        super().__init__()
        self.store, self.key, self.size, self.pos = store, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        length = min(len(view), self.size - self.pos)
        if length <= 0:
            return 0
        data = self.store.read_range(self.key, self.pos, length)
        view[: len(data)] = data
        self.pos += len(data)
        return len(data)


def open_buffered(store: ObjectStore, key: str, size: int) -> io.BufferedReader:
    return io.BufferedReader(StoreFile(store, key, size), buffer_size=BLOCK)


def file_format(key: str) -> str | None:
    """The format a file's name says (``csv`` for ``.csv`` and ``.csv.gz``), or None."""
    name = key.lower()
    for suffix, kind in ((".csv", "csv"), (".csv.gz", "csv"), (".parquet", "parquet"), (".orc", "orc")):
        if name.endswith(suffix):
            return kind
    return None


def csv_rows(
    store: ObjectStore, key: str, size: int, *, header: Sequence[str] | None, gzipped: bool
) -> Iterator[dict[str, object]]:
    """The rows of a CSV file; its own first line names the columns unless ``header`` is given."""
    body = open_buffered(store, key, size)
    raw = cast(io.BufferedReader, gzip.GzipFile(fileobj=body, mode="rb")) if gzipped else body
    with io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
        reader = csv.reader(text)
        names = [normalize(n) for n in header] if header is not None else None
        for row in reader:
            if names is None:
                names = [normalize(n) for n in row]
                continue
            if not row:
                continue
            yield dict(zip(names, row, strict=False))


def _pyarrow(what: str, parameter: str) -> ModuleType:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise InvalidInputError(
            f"{parameter}: {what} reports need pyarrow: pip install 'airflow-skyplane[inventory]'"
        ) from None
    import importlib

    return importlib.import_module(f"pyarrow.{what.lower()}")


def columnar_rows(
    store: ObjectStore, key: str, size: int, *, kind: str, wanted: set[str], parameter: str
) -> tuple[list[str], Iterator[dict[str, object]]]:
    """The normalized column names of a Parquet or ORC file, and its rows (only ``wanted`` columns)."""
    f = open_buffered(store, key, size)
    if kind == "parquet":
        pq = _pyarrow("Parquet", parameter)
        reader = pq.ParquetFile(f)
        names = list(reader.schema_arrow.names)
    else:
        orc = _pyarrow("ORC", parameter)
        reader = orc.ORCFile(f)
        names = list(reader.schema.names)
    columns = [n for n in names if normalize(n) in wanted]

    def rows() -> Iterator[dict[str, object]]:
        try:
            if kind == "parquet":
                batches = reader.iter_batches(batch_size=BATCH_ROWS, columns=columns)
            else:
                batches = (reader.read_stripe(i, columns=columns) for i in range(reader.nstripes))
            for batch in batches:
                data = {normalize(n): batch.column(n).to_pylist() for n in batch.schema.names}
                for i in range(batch.num_rows):
                    yield {n: values[i] for n, values in data.items()}
        finally:
            f.close()

    return [normalize(n) for n in names], rows()
