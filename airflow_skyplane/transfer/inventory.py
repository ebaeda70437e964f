"""What a source prefix holds for a destination: one inventory for the operator and the replica sensor.

Both list the stores the same way - streaming, filtered by include/exclude, and without the folder
where resumable transfers keep their state (``.skyplane-state/`` at the bucket root by default,
:func:`~airflow_skyplane.transfer.resume.hide_state`), which is never data - so a bucket that is both
a destination and a source (A -> B -> C) is in sync when the operator would copy nothing.

``copy`` selects every source object that passes the filter; ``sync`` diffs the source against the
destination (:func:`~airflow_skyplane.transfer.diff.diff`). No Airflow here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.storage.base import ObjectInfo, ObjectStore
from airflow_skyplane.transfer.diff import DiffCounts, KeyFilter, diff, select
from airflow_skyplane.transfer.resume import hide_state

MODES = ("copy", "sync")


class Prefix(Protocol):
    """A prefix of an opened store (:class:`~airflow_skyplane.hooks.storage.Location` is one)."""

    @property
    def store(self) -> ObjectStore: ...

    @property
    def prefix(self) -> str: ...


def listing(location: Prefix, state_prefix: str | None) -> Iterable[ObjectInfo]:
    """The objects under ``location``'s prefix, as data: the state folder left out."""
    return hide_state(location.store.list(location.prefix), state_prefix)


def to_send(
    source: Prefix,
    destination: Prefix,
    *,
    mode: str,
    keep: KeyFilter,
    state_prefix: str | None,
    counts: DiffCounts,
    compare: str = "checksum",
    keep_extraneous: int = 0,
    source_objects: Iterable[ObjectInfo] | None = None,
) -> Iterator[ObjectInfo]:
    """The source objects (full keys) a ``copy`` or a ``sync`` sends to ``destination``; ``counts``
    fills as the stream is read (with ``sync``, up to ``keep_extraneous`` keys found only at the
    destination are kept in it). ``source_objects``: what the source holds, sorted as a listing is
    (:class:`~airflow_skyplane.transfer.source_inventory.SourceInventory`), instead of listing it."""
    if mode not in MODES:
        raise InvalidInputError(f"mode={mode!r} is unknown: use 'copy' or 'sync'")
    listed = listing(source, state_prefix) if source_objects is None else source_objects
    if mode == "copy":
        for info in select(listed, source_prefix=source.prefix, keep=keep):
            counts.new += 1
            counts.new_bytes += info.size
            yield info
        return
    yield from diff(
        listed,
        listing(destination, state_prefix),
        source_prefix=source.prefix,
        destination_prefix=destination.prefix,
        compare=compare,
        keep=keep,
        counts=counts,
        keep_extraneous=keep_extraneous,
    )
