"""What the operator tells a person about a copy or sync before it moves anything, so it can be audited.

* what ``sync`` found per destination (new, changed, unchanged, only at the destination) and what
  happens to the last (kept, deleted once all is verified, or would be deleted: dry run); a sync that
  would delete more than ``max_delete`` is refused;
* a warning for a source with nothing to send from, and for a source prefix without a trailing ``/``
  (it also selects ``data-old/...`` beside ``data/...``, the keys keep the leading ``/`` at the
  destination, and include/exclude patterns see it);
* in a dry run, the first ``preview_keys`` keys it would send and delete at each destination.

The keys a real sync deletes are logged where they are deleted
(:meth:`~airflow_skyplane.transfer.fleet.FleetTransfer.finish`). No Airflow here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from airflow_skyplane.exceptions import InvalidInputError, TransferError
from airflow_skyplane.storage.base import ObjectInfo
from airflow_skyplane.transfer.diff import DiffCounts


def check_sync(
    log: Any,
    destinations: Sequence[str],
    counts: Sequence[DiffCounts],
    *,
    delete_extraneous: bool,
    max_delete: int,
    dry_run: bool,
) -> None:
    """Log what ``sync`` found; refuse to delete more than ``max_delete`` at any destination."""
    fate = "kept"
    if delete_extraneous:
        fate = "would be deleted: dry run" if dry_run else "to delete once all is verified"
    for uri, c in zip(destinations, counts, strict=True):
        log.info(
            "sync %s: %d new, %d changed, %d unchanged, %d only at the destination (%s)",
            uri, c.new, c.changed, c.unchanged, c.extraneous, fate,
        )  # fmt: skip
        if delete_extraneous and c.extraneous > max_delete:
            raise InvalidInputError(
                f"sync would delete {c.extraneous} objects under {uri}, more than max_delete="
                f"{max_delete}: check the source prefix (a wrong or empty source would empty the "
                "replica), or raise max_delete"
            )


def warn_source(
    log: Any,
    source: str,
    prefix: str,
    counts: Sequence[DiffCounts],
    *,
    filtered: bool,
    delete_extraneous: bool,
) -> None:
    """Warn about a source that selects nothing, and about a source prefix without a trailing ``/``."""
    if prefix and not prefix.endswith("/"):
        log.warning(
            "source=%r does not end with '/': its prefix %r also selects keys like '%s-old/...'; each "
            "key keeps what follows the prefix, so '%s/part-0' is written as <destination> + "
            "'/part-0' (one '/' level deeper), and include/exclude patterns see '/part-0' ('part-*' "
            "no longer matches it); end source with '/' to copy what is inside '%s/'",
            source, prefix, prefix, prefix, prefix,
        )  # fmt: skip
    if all(c.new + c.changed + c.unchanged == 0 for c in counts):
        which = " that include/exclude select" if filtered else ""
        deletes = (
            "; with delete_extraneous, every object at the destinations would be deleted "
            "(max_delete bounds how many)"
            if delete_extraneous
            else ""
        )
        log.warning("source %s holds no object%s: nothing will be sent%s", source, which, deletes)


def preview(
    log: Any,
    destinations: Sequence[str],
    sends: Sequence[Iterable[ObjectInfo]],
    counts: Sequence[DiffCounts],
    *,
    source_prefix: str,
    first: int,
    deleting: bool,
) -> None:
    """A dry run: the first ``first`` keys (relative) it would send to, and delete at, each destination."""
    for uri, items, c in zip(destinations, sends, counts, strict=True):
        keys = [i.key[len(source_prefix) :] for i in itertools.islice(items, first)]
        total = c.new + c.changed
        log.info("dry run: would send %d object(s) to %s%s", total, uri, _listed(keys, total))
        if deleting and c.extraneous:
            gone = c.extraneous_keys[:first]
            log.info(
                "dry run: would delete %d object(s) under %s%s",
                c.extraneous,
                uri,
                _listed(gone, c.extraneous),
            )


def _listed(keys: Sequence[str], total: int) -> str:
    if not keys:
        return ""
    more = f" (and {total - len(keys)} more)" if total > len(keys) else ""
    return ": " + ", ".join(keys) + more


def stale_source(message: str, source_uri: str) -> bool:
    """True when a transfer failed on a source object gone or changed since it was listed."""
    if "ObjectNotFoundError" in message and source_uri in message:
        return True
    return "changed since it was listed" in message or "changed during the transfer" in message


def stale_inventory_error(err: Exception, inventory: object) -> TransferError:
    """The error of a transfer listed from an inventory report older than the source it lists."""
    return TransferError(
        f"{err}: source_inventory={inventory!r} lists objects the source no longer has as reported "
        "(deleted or rewritten after the report was taken); a retry fails the same way: give a newer "
        "report, or leave source_inventory out to list the source"
    )
