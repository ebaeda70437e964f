"""What a transfer sends: include/exclude patterns, and the diff of a source against a destination.

Both listings arrive sorted by the UTF-8 bytes of their keys (every adapter lists that way), so the
diff is a merge of two streams: it holds one object of each side at a time, never either listing.

How two objects with the same relative key are compared (``compare``):

``checksum``
    changed when the checksums differ; where the two stores report no comparable checksum (S3's MD5
    against GCS's CRC32C, or two S3 multipart ETags cut differently) it falls back to ``size_mtime``.
``size_mtime``
    changed when the sizes differ or the source was modified after the destination was written.
``size``
    changed when the sizes differ.
``exists``
    never changed: only new objects are sent.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.storage.base import ObjectInfo

COMPARE_MODES = ("checksum", "size_mtime", "size", "exists")


def check_patterns(name: str, patterns: str | Sequence[str] | None) -> tuple[str, ...]:
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns:
        if not isinstance(p, str) or not p or p.startswith("/"):
            raise InvalidInputError(
                f"{name}={p!r} is not a glob pattern over keys relative to the source prefix: give e.g. "
                "'*.parquet' or 'year=2024/*' (no leading '/')"
            )
        out.append(p)
    return tuple(out)


@dataclass(frozen=True)
class KeyFilter:
    """``include`` (keep keys matching any; all when empty) minus ``exclude`` (drop any match).

    Patterns are :mod:`fnmatch` globs over the key relative to the source prefix; ``*`` also matches
    ``/``, so ``*.csv`` selects CSV files at any depth.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __call__(self, rel_key: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(rel_key, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(rel_key, p) for p in self.exclude)


@dataclass
class DiffCounts:
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    extraneous: int = 0
    new_bytes: int = 0
    changed_bytes: int = 0
    extraneous_keys: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "new": self.new,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "extraneous": self.extraneous,
        }


def differs(src: ObjectInfo, dst: ObjectInfo, compare: str) -> bool:
    if compare == "exists":
        return False
    if src.size != dst.size:
        return True
    if compare == "size":
        return False
    if compare == "checksum" and src.checksum and dst.checksum:
        a, b = src.checksum, dst.checksum
        if a.algorithm == b.algorithm and (a.algorithm != "s3-etag" or a.value == b.value):
            return a.value != b.value
    if src.mtime is not None and dst.mtime is not None:
        return src.mtime > dst.mtime
    return False  # same size and nothing else to compare


def diff(
    source: Iterable[ObjectInfo],
    destination: Iterable[ObjectInfo],
    *,
    source_prefix: str,
    destination_prefix: str,
    compare: str = "checksum",
    keep: KeyFilter | None = None,
    counts: DiffCounts | None = None,
    keep_extraneous: int = 0,
) -> Iterator[ObjectInfo]:
    """The source objects (full keys) to send: new ones and changed ones, by a sorted merge.

    ``counts`` is filled as the merge goes; up to ``keep_extraneous`` keys (relative) found only at the
    destination are kept in it (to report, or to delete with ``delete_extraneous``).
    """
    if compare not in COMPARE_MODES:
        raise InvalidInputError(f"compare={compare!r} is unknown: use one of {', '.join(COMPARE_MODES)}")
    counts = counts if counts is not None else DiffCounts()
    keep = keep or KeyFilter()

    def rel(items: Iterable[ObjectInfo], prefix: str) -> Iterator[tuple[bytes, str, ObjectInfo]]:
        last = b""
        for info in items:
            key = info.key[len(prefix) :]
            if not keep(key):
                continue
            order = key.encode("utf-8")
            if order < last:
                raise InvalidInputError(f"listing of {prefix!r} is not sorted at {key!r}: cannot diff")
            last = order
            yield order, key, info

    src_it, dst_it = rel(source, source_prefix), rel(destination, destination_prefix)
    s, d = next(src_it, None), next(dst_it, None)
    while s is not None or d is not None:
        if d is None or (s is not None and s[0] < d[0]):
            assert s is not None
            counts.new += 1
            counts.new_bytes += s[2].size
            yield s[2]
            s = next(src_it, None)
        elif s is None or d[0] < s[0]:
            counts.extraneous += 1
            if len(counts.extraneous_keys) < keep_extraneous:
                counts.extraneous_keys.append(d[1])
            d = next(dst_it, None)
        else:
            if differs(s[2], d[2], compare):
                counts.changed += 1
                counts.changed_bytes += s[2].size
                yield s[2]
            else:
                counts.unchanged += 1
            s, d = next(src_it, None), next(dst_it, None)


def select(source: Iterable[ObjectInfo], *, source_prefix: str, keep: KeyFilter) -> Iterator[ObjectInfo]:
    """The source objects whose relative key passes ``keep`` (copy mode)."""
    for info in source:
        if keep(info.key[len(source_prefix) :]):
            yield info


class Spool:
    """The selected objects, written once to a private temporary file and read back as often as needed.

    The inventory is taken once: the plan is sized on it, and the gateways send exactly it, even if
    the source changes in between. Memory stays flat whatever the number of objects.
    """

    def __init__(self, items: Iterable[ObjectInfo]) -> None:
        import json
        import tempfile

        from airflow_skyplane.transfer.manifest import object_record

        self._file = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.count = self.bytes = 0
        for info in items:
            self._file.write(json.dumps(object_record(info.key, info)) + "\n")
            self.count += 1
            self.bytes += info.size
        self._file.flush()

    def __iter__(self) -> Iterator[ObjectInfo]:
        import json

        from airflow_skyplane.transfer.manifest import object_from_record

        self._file.seek(0)
        for line in self._file:
            yield object_from_record(json.loads(line))[1]

    def close(self) -> None:
        self._file.close()
