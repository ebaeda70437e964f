"""The inventory of one transfer, written once to private files of its work folder.

* ``objects.jsonl``: one record per source object to send (key relative to the source prefix, size,
  checksum, modification time), what the job completes and verifies, also from another process;
* ``manifest.jsonl``: the chunks the reading gateway sends (striped parts and batches of small
  objects, :mod:`.chunks`), one line per frame.

The objects are listed first and the chunks cut after, so that the chunk size can be chosen from the
work as a whole (:mod:`.tuning`). Writing the manifest begins a multipart upload at the destination
for every striped object not begun yet (a resumed transfer reuses the uploads it continues), a few at
once. An object record is also how the durable
state of a resumable transfer (:mod:`.resume`) and the spooled selection (:mod:`.diff`) keep an
object: :func:`object_record` and :func:`object_from_record`. The uploads a transfer did not
complete are aborted with :func:`abort_uploads`, so that no partial object appears.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO, TypedDict

from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential

from airflow_skyplane.exceptions import (
    BucketNotFoundError,
    CredentialsError,
    InvalidInputError,
    ObjectNotFoundError,
    StorageError,
    TransferError,
)
from airflow_skyplane.storage.base import Checksum, MultipartUpload, ObjectInfo, ObjectStore
from airflow_skyplane.transfer.chunks import Chunk, batch_small, plan_chunks
from airflow_skyplane.transfer.tuning import Work

OBJECTS_FILE = "objects.jsonl"
MANIFEST_FILE = "manifest.jsonl"
#: multipart uploads begun at once: one request each, under the 10 connections a boto3 client pools
BEGIN_THREADS = 8


class ObjectRecord(TypedDict):
    key: str
    size: int
    checksum: list[str] | None  # [algorithm, value]
    mtime: str | None  # ISO 8601


def object_record(key: str, info: ObjectInfo) -> ObjectRecord:
    return {
        "key": key,
        "size": info.size,
        "checksum": [info.checksum.algorithm, info.checksum.value] if info.checksum else None,
        "mtime": info.mtime.isoformat() if info.mtime else None,
    }


def object_from_record(raw: ObjectRecord) -> tuple[str, ObjectInfo]:
    recorded, when = raw.get("checksum"), raw.get("mtime")
    checksum = Checksum(recorded[0], recorded[1]) if recorded else None
    mtime = datetime.fromisoformat(when) if when else None
    return raw["key"], ObjectInfo(raw["key"], raw["size"], checksum, mtime)


def read_objects(workdir: Path) -> dict[str, ObjectInfo]:
    """The objects a job recorded in its work folder (relative key -> the source's object)."""
    with (workdir / OBJECTS_FILE).open(encoding="utf-8") as f:
        return dict(object_from_record(json.loads(line)) for line in f)


@dataclass
class Manifest:
    """What the inventory wrote: the manifest's path, the number of chunks to send, their size."""

    path: Path
    chunks: int
    chunk_size: int
    #: objects sent whole (none of their chunks kept from a previous try): what progress counts
    objects: int = 0


def write_manifest(
    workdir: Path,
    listed: Iterable[ObjectInfo],
    *,
    source_prefix: str,
    destination: ObjectStore,
    destination_prefix: str,
    chunk_size: int | Callable[[Work], int],
    objects: dict[str, ObjectInfo],
    uploads: dict[str, MultipartUpload],
    on_object: Callable[[str, ObjectInfo], None] = lambda rel, info: None,
    kept: Mapping[str, set[int]] | None = None,
    on_chunk: Callable[[Chunk], None] = lambda chunk: None,
    batch_objects: Callable[[], int] = lambda: 256,
    min_part_size: int | None = None,
) -> Manifest:
    """Record ``listed`` (full keys under ``source_prefix``) and cut it into the manifest's chunks.

    ``chunk_size`` is a size, or what chooses one from the listed work (its bytes, objects and
    largest object). ``objects`` (relative key -> object) and ``uploads`` fill as the listing is read
    and the uploads are begun, so that what was begun is known even when this fails half-way.
    ``on_object`` sees each object before its chunks are cut, so it can fill ``kept`` (relative key
    -> part numbers a previous try wrote, which are not sent again) and ``uploads`` (uploads it
    continues); an upload is begun for every other striped object. ``on_chunk`` sees every chunk of
    every object, sent or kept. ``batch_objects`` gives the most small objects one batch holds,
    once the chunk size is chosen (the tuning decides both from the listed work). ``min_part_size``
    (default: the destination's) is the least part size; the destinations of a multicast cut the same
    chunks with the largest of theirs.
    """
    kept = kept if kept is not None else {}
    manifest = workdir / MANIFEST_FILE
    sent = largest = total = whole = 0
    with _private_text(workdir / OBJECTS_FILE) as inventory:
        for info in listed:
            if not info.key.startswith(source_prefix):
                raise InvalidInputError(
                    f"object {info.key!r} is not under the source prefix {source_prefix!r}"
                )
            rel = info.key[len(source_prefix) :]
            objects[rel] = info
            inventory.write(json.dumps(object_record(rel, info)) + "\n")
            on_object(rel, info)
            largest, total = max(largest, info.size), total + info.size
    size = chunk_size if isinstance(chunk_size, int) else chunk_size(Work(total, len(objects), largest))
    sizes = ((rel, info.size) for rel, info in objects.items())
    least = destination.min_part_size if min_part_size is None else min_part_size
    chunks = plan_chunks(sizes, size, min_part_size=least)
    begin: set[str] = set()
    with _private_text(manifest) as f:
        for batch in batch_small(
            (c for c in _seen(chunks, on_chunk) if c.part_number not in kept.get(c.key, ())),
            max_count=batch_objects(),
        ):
            sent += len(batch)
            whole += sum(1 for c in batch if c.part_number <= 1 and not kept.get(c.key))
            entries = [
                {"chunk_id": c.chunk_id, "key": c.key, "offset": c.offset, "length": c.length,
                 "object_size": c.object_size, "part_number": c.part_number, "parts": c.parts}
                for c in batch
            ]  # fmt: skip
            f.write(json.dumps(entries[0] if len(entries) == 1 else {"chunks": entries}) + "\n")
            begin.update(c.key for c in batch if c.is_part and c.key not in uploads)
    _begin_uploads(destination, destination_prefix, sorted(begin), uploads)
    return Manifest(manifest, sent, size, whole)


def _seen(chunks: Iterable[Chunk], on_chunk: Callable[[Chunk], None]) -> Iterable[Chunk]:
    for chunk in chunks:
        on_chunk(chunk)
        yield chunk


def _begin_uploads(
    destination: ObjectStore, prefix: str, keys: list[str], uploads: dict[str, MultipartUpload]
) -> None:
    """Begin an upload for each key, a few at once (one after the other is a round trip per object
    before the first byte moves); each is recorded in ``uploads`` as soon as it is begun."""
    lock = threading.Lock()

    def begin(key: str) -> None:
        upload = destination.begin_multipart(prefix + key)
        with lock:
            uploads[key] = upload

    with ThreadPoolExecutor(BEGIN_THREADS, thread_name_prefix="begin") as pool:
        list(pool.map(begin, keys))


def private_write(path: Path, data: bytes | str) -> Path:
    """Write ``path`` readable by this user only (mode 0600 before a byte is written)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return path


def _private_text(path: Path) -> TextIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, "w", encoding="utf-8")


def abort_upload(store: ObjectStore, upload: MultipartUpload) -> None:
    """Abort a multipart upload, retrying what a store refuses for a while (throttling, 5xx)."""
    for attempt in Retrying(
        retry=retry_if_exception(
            lambda e: (
                isinstance(e, StorageError) and not isinstance(e, CredentialsError | BucketNotFoundError)
            )
        ),
        stop=stop_after_attempt(6) | stop_after_delay(120),
        wait=wait_exponential(multiplier=0.5, max=10),
        reraise=True,
    ):
        with attempt:
            try:
                store.abort_multipart(upload)
            except ObjectNotFoundError:
                return  # gone already (an earlier attempt went through)


def abort_uploads(store: ObjectStore, uploads: Iterable[MultipartUpload]) -> TransferError | None:
    """Abort every upload of ``uploads``, going on past those the store refuses after retries; the
    error that lists the refused ones (for the caller to raise once it cleaned up), None when none was."""
    refused: list[str] = []
    for upload in uploads:
        try:
            abort_upload(store, upload)
        except StorageError as err:  # after retries: keep going, every other upload still goes
            refused.append(f"{upload.key}: {err}")
    if not refused:
        return None
    return TransferError(
        f"the destination store refused to abort {len(refused)} multipart upload(s) after retries "
        f"(first: {refused[0]}); no object was written for them; abort them with the store's "
        "tools or an expiry rule for incomplete uploads"
    )
