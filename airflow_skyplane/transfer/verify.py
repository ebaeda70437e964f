"""Complete a transfer's multipart uploads from the writer's receipts, then verify every object.

A running transfer completes and verifies each object as soon as the writer's receipts cover it
(:func:`finish_object`, through :mod:`.completion`); :func:`complete_and_verify` does all of them at
once, for a job attached in another process.

Each object is checked at the destination (one HEAD, :data:`VERIFY_THREADS` at once, unless the
response of its single write carried the checksum the store computed and the writer confirmed it,
see :func:`_confirmed`): its size, and
its checksum against what the gateways wrote (MD5, the S3 multipart ETag, or the CRC32C a GCS
composed object reports, derived from the receipts) and, where the algorithms allow, against the
source store's own checksum. An object that fails is deleted from the destination, so nothing that
looks like a copy and is not one stays there. A striped object whose source changed while its parts
were read is caught before any upload is completed.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from airflow_skyplane.exceptions import TransferError
from airflow_skyplane.storage.base import Checksum, MultipartUpload, ObjectInfo, ObjectStore, PartInfo
from airflow_skyplane.storage.checksums import from_part_crc32cs, from_part_md5s
from airflow_skyplane.transfer.control import Receipt
from airflow_skyplane.transfer.summary import Unverified

# HEAD requests of the verification at once: under the 10 connections a boto3 client pools by default
VERIFY_THREADS = 8


@dataclass(frozen=True)
class Sides:
    """Where a transfer reads and writes."""

    source: ObjectStore
    source_prefix: str
    destination: ObjectStore
    destination_prefix: str


#: why a store reports no checksum for an object written in parts, by URI scheme
NO_WHOLE_CHECKSUM = {
    "az": "Azure keeps no Content-MD5 for a blob whose blocks did not arrive in order",
}


def complete_and_verify(
    sides: Sides,
    objects: Mapping[str, ObjectInfo],
    uploads: dict[str, MultipartUpload],
    receipts: list[Receipt],
    unverified: Unverified | None = None,
) -> int:
    """Complete every upload in ``uploads`` (removing it from there) and verify every object; the
    number of objects whose checksum matched, the others (checked by size) noted in ``unverified``
    with the reason. Raise TransferError on the first object that fails."""
    by_key: dict[str, list[Receipt]] = defaultdict(list)
    latest = {(r["key"], r["part_number"]): r for r in receipts}  # a chunk written twice counts once
    for r in latest.values():
        by_key[r["key"]].append(r)
    # A striped object is read range by range: if it changed meanwhile, its parts may mix two
    # versions. Check before completing any upload, so such an object never appears (close()
    # aborts the uploads); a single-range object was read whole, one version.
    changed = [key for key in uploads if key in objects and _source_changed(sides, key, objects[key])]
    if changed:
        raise TransferError(
            f"source object {sides.source.describe(sides.source_prefix + changed[0])} changed during the "
            f"transfer ({len(changed)} object(s) did): nothing was written for it; rerun the transfer "
            "to copy the new version"
        )
    for key, upload in list(uploads.items()):
        parts = sorted(by_key[key], key=lambda r: r["part_number"])
        sides.destination.complete_multipart(
            upload, [PartInfo(r["part_number"], r["length"], r["token"]) for r in parts]
        )
        del uploads[key]
    verified = 0
    for key, check in _verify_all(sides, objects, by_key):
        try:
            why = check.result()
            if why is None:
                verified += 1
            elif unverified is not None:
                unverified.add(key, why)
        except TransferError as err:
            raise discard_bad(sides, key, err) from err
    return verified


def finish_object(
    sides: Sides, key: str, info: ObjectInfo, upload: MultipartUpload | None, receipts: list[Receipt]
) -> str | None:
    """Complete one object whose chunks are all written (a striped one after checking that its source
    did not change while its ranges were read) and verify it; None when a checksum matched, else why
    none could be compared (the size matched)."""
    if upload is not None:
        if _source_changed(sides, key, info):
            raise TransferError(
                f"source object {sides.source.describe(sides.source_prefix + key)} changed during the "
                "transfer: nothing was written for it; rerun the transfer to copy the new version"
            )
        parts = sorted(receipts, key=lambda r: r["part_number"])
        completed = sides.destination.complete_multipart(
            upload, [PartInfo(r["part_number"], r["length"], r["token"]) for r in parts]
        )
        return _verify_one(sides, key, info, receipts, completed)
    return _verify_one(sides, key, info, receipts)


def discard_bad(sides: Sides, key: str, err: TransferError) -> TransferError:
    """Delete an object that failed verification (readers must not take it for a copy); the error to
    raise."""
    dest_key = sides.destination_prefix + key
    try:
        sides.destination.delete(dest_key)
    except Exception as cleanup:  # noqa: BLE001 - the verification error is the one to show
        where = sides.destination.describe(dest_key)
        return TransferError(f"{err}; deleting {where} failed too ({cleanup}): delete it by hand")
    return TransferError(f"{err}; the object was deleted from the destination and a rerun sends it again")


def _verify_all(
    sides: Sides, objects: Mapping[str, ObjectInfo], by_key: Mapping[str, list[Receipt]]
) -> Iterator[tuple[str, Future[str | None]]]:
    """(key, its check) of every object, in order. One HEAD per object, a few at once: one after
    the other is most of a small-object transfer's time, as a store answers each in milliseconds
    to tens of them but serves many at once. Windows of 1,024 keep memory flat."""
    items = iter(objects.items())
    with ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="verify") as pool:
        while window := list(itertools.islice(items, 1024)):
            yield from [(k, pool.submit(_verify_one, sides, k, o, by_key.get(k, []))) for k, o in window]


def _verify_one(
    sides: Sides, key: str, src: ObjectInfo, receipts: list[Receipt], completed: ObjectInfo | None = None
) -> str | None:
    """Check one written object (size, and checksums where comparable); None if the destination's
    checksum matched, else why it could not be compared (the size matched). ``completed``: the object
    as ``complete_multipart`` returned it (the store's own look at it after completing: no HEAD
    again)."""
    parts = sorted(receipts, key=lambda r: r["part_number"])
    destination, dest_key = sides.destination, sides.destination_prefix + key
    written = sum(r["length"] for r in parts)
    if written != src.size:
        raise TransferError(
            f"{destination.describe(dest_key)}: the gateways wrote {written} of {src.size} bytes"
        )
    dst = completed or _confirmed(dest_key, parts) or destination.head(dest_key)
    if dst.size != src.size:
        raise TransferError(f"{destination.describe(dest_key)} has {dst.size} bytes, the source {src.size}")
    expected = _expected(parts, dst.checksum.algorithm if dst.checksum else "")
    # what the destination store holds = what the gateway wrote (any algorithm we can derive);
    # what the source store reports = what was sent (whole-object algorithms only: an S3
    # multipart ETag depends on the source's own part sizes)
    dest_checked = _compare(key, "destination", dst.checksum, expected, allow_etag=True)
    if not dest_checked:
        dest_checked = _compare(key, "destination", dst.checksum, src.checksum, allow_etag=False)
    _compare(key, "source", src.checksum, expected, allow_etag=False)
    if dest_checked:
        return None
    if dst.checksum is None:
        if len(parts) > 1:
            note = NO_WHOLE_CHECKSUM.get(destination.scheme, "the store reports no checksum")
            return f"written in parts: {note}"
        return "the store reports no checksum"
    if expected is None:
        return "no checksum of the parts written to compare with (checked chunk by chunk)"
    return (
        f"the store's {dst.checksum.algorithm} of the whole object cannot be derived from the parts' "
        "checksums, and the source reports none to compare it with"
    )


def _confirmed(dest_key: str, parts: list[Receipt]) -> ObjectInfo | None:
    """The object as its single write's response described it, when the store computed its checksum
    of the bytes it stored and the writing gateway found it equal to its own (``confirmed``): a HEAD
    would only repeat it (stores read their writes after them). None otherwise (written in parts, or
    no checksum in the response): then the object is asked for."""
    if len(parts) != 1 or parts[0]["part_number"] != 0:
        return None
    receipt = parts[0]
    algorithm = receipt.get("confirmed", "")
    value = {"md5": receipt["md5"], "crc32c": receipt["crc32c"]}.get(algorithm, "")
    if not value:
        return None
    return ObjectInfo(dest_key, receipt["length"], Checksum(algorithm, value))


def _compare(
    key: str, side: str, reported: Checksum | None, wanted: Checksum | None, *, allow_etag: bool
) -> bool:
    """True when both checksums exist, are comparable and equal; raise when they differ."""
    if reported is None or wanted is None or reported.algorithm != wanted.algorithm:
        return False
    if reported.algorithm == "s3-etag" and not allow_etag:
        return False
    if reported != wanted:
        raise TransferError(
            f"checksum mismatch for {key!r}: the {side} store reports {reported}, the bytes written give "
            f"{wanted}"
        )
    return True


def _expected(parts: list[Receipt], algorithm: str) -> Checksum | None:
    """What a store reports for the bytes the gateway wrote: md5, the S3 multipart ETag, or the
    CRC32C of a GCS composed object."""
    if algorithm == "crc32c" and parts and all(p.get("crc32c") for p in parts):
        return from_part_crc32cs([(int(p["crc32c"], 16), p["length"]) for p in parts])
    if parts and all(p["md5"] for p in parts):
        return from_part_md5s([bytes.fromhex(p["md5"]) for p in parts])
    return None  # checked chunk by chunk (CRC and AES-GCM tag) only


def _source_changed(sides: Sides, key: str, listed: ObjectInfo) -> bool:
    """True when the source object no longer has the size, checksum or mtime it was listed with."""
    full = sides.source_prefix + key
    now = next((info for info in sides.source.list(full) if info.key == full), None)
    if now is None or now.size != listed.size:
        return True
    if now.checksum and listed.checksum and now.checksum.algorithm == listed.checksum.algorithm:
        if now.checksum != listed.checksum:
            return True
    return bool(now.mtime and listed.mtime and now.mtime != listed.mtime)
