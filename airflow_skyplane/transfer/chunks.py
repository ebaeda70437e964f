"""Cut a work list of objects into chunks, and group small objects into batches.

A chunk is a byte range of one object, the unit a source gateway reads, the wire carries and a
destination gateway writes. An object up to the multipart threshold travels as one chunk written
with a single ``put``; a larger one is striped into parts of one size (the last one shorter), each
written as a part of a multipart upload, so the destination never shows a partial object.

The part size starts at the chunk size and grows when the object would need more parts than the
stores allow (10,000), and is never below the largest minimum part size of the destinations (5 MiB
on S3). Small objects are grouped into batches (by count and bytes), so that 10,000 objects of
16 KiB cost a few hundred frames rather than 10,000 round trips.

Pure: no I/O, no Airflow; the gateway and the operator share it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from airflow_skyplane.exceptions import InvalidInputError

MiB = 1024 * 1024
DEFAULT_CHUNK_SIZE = 16 * MiB
MAX_PARTS = 10_000


@dataclass(frozen=True)
class Chunk:
    """One byte range of one object. ``part_number`` 0 means the whole object in one ``put``."""

    chunk_id: int
    key: str
    offset: int
    length: int
    object_size: int
    part_number: int = 0
    parts: int = 1

    @property
    def is_part(self) -> bool:
        return self.part_number > 0


def part_size_for(
    object_size: int, chunk_size: int, min_part_size: int = 1, max_parts: int = MAX_PARTS
) -> int:
    """The part size for one object: the chunk size, raised to fit ``max_parts`` and ``min_part_size``."""
    size = max(chunk_size, min_part_size)
    if math.ceil(object_size / size) > max_parts:
        size = math.ceil(object_size / max_parts)
        size = math.ceil(size / MiB) * MiB  # whole MiB, as stores and people like them
    return size


def plan_chunks(
    objects: Iterable[tuple[str, int]],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    multipart_threshold: int | None = None,
    min_part_size: int = 1,
    max_parts: int = MAX_PARTS,
    first_chunk_id: int = 0,
) -> Iterator[Chunk]:
    """Chunks for ``(key, size)`` pairs, lazily, numbered from ``first_chunk_id``.

    ``multipart_threshold`` (default: the chunk size) is the size above which an object is striped.
    """
    if chunk_size < 1:
        raise InvalidInputError(f"chunk size {chunk_size} is not positive: use e.g. 32 MiB ({32 * MiB})")
    threshold = chunk_size if multipart_threshold is None else multipart_threshold
    chunk_id = first_chunk_id
    for key, size in objects:
        if size < 0:
            raise InvalidInputError(f"object {key!r} has negative size {size}")
        if size <= threshold:
            yield Chunk(chunk_id, key, 0, size, size)
            chunk_id += 1
            continue
        part = part_size_for(size, chunk_size, min_part_size, max_parts)
        parts = math.ceil(size / part)
        for n, offset in enumerate(range(0, size, part), start=1):
            yield Chunk(chunk_id, key, offset, min(part, size - offset), size, n, parts)
            chunk_id += 1


def batch_small(
    chunks: Iterable[Chunk], *, max_bytes: int = 4 * MiB, max_count: int = 256, small: int = 256 * 1024
) -> Iterator[list[Chunk]]:
    """Group whole-object chunks of at most ``small`` bytes into batches; others go alone.

    Order is kept within the stream of small chunks and within the stream of large ones.
    """
    batch: list[Chunk] = []
    size = 0
    for chunk in chunks:
        if chunk.is_part or chunk.length > small:
            yield [chunk]
            continue
        if batch and (len(batch) >= max_count or size + chunk.length > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(chunk)
        size += chunk.length
    if batch:
        yield batch
