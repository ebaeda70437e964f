"""Resumable transfers: the durable state a retry of the same task finds, in the destination store.

A transfer with a state key checkpoints what it has written into one object of the destination
store, ``<state_prefix><digest>.json`` at the bucket root (``.skyplane-state/`` by default; the
transfer never lists it as data, see :func:`hide_state`). The object holds, for every object with a
multipart upload begun or a chunk written: the source object's size, checksum and modification time
(to recognise it), the upload id, and the receipts the writing gateway returned (part number,
length, MD5/CRC32C and the store's token: S3 ETag, GCS part object, Azure block id, local part
file). It is written whole with one ``put``, which every store makes visible atomically, so a reader
sees the previous checkpoint or the next one, never half of one.

The key is a digest of what identifies a task instance (DAG, task, run, map index) and the
destination URI: a retry of that task instance finds it, on any worker; another run, date or mapped
instance never does.

A retry (see :class:`~airflow_skyplane.transfer.job.TransferJob`):

* reuses each upload the store still holds (:meth:`ObjectStore.uploaded_parts`), keeps the parts
  recorded and present with the same size and token, and sends only the other chunks;
* skips objects written whole whose copy at the destination still has their size;
* discards what no longer matches - the source object changed (size, checksum or mtime), the chunk
  size changed, the upload is gone, or the store cannot continue an upload - by aborting that upload
  and sending the object again from scratch, so a stale part never ends up in an object.

The completed transfer deletes its state; a failed one keeps it (and its uploads) when the task
will be retried, and :func:`discard_state` (from the operator's ``on_failure_callback``) aborts the
uploads and deletes it once the task failed for good.

No Airflow here: plain stores and JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from airflow_skyplane.exceptions import InvalidInputError, ObjectNotFoundError
from airflow_skyplane.storage.base import UPLOADS_PREFIX, MultipartUpload, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

DEFAULT_STATE_PREFIX = ".skyplane-state/"
STATE_VERSION = 1


def check_state_prefix(prefix: Any, *, origin: str = "state_prefix") -> str:
    """A state prefix: a relative folder ending in ``/``, outside the stores' hidden upload folder."""
    if (
        not isinstance(prefix, str)
        or not prefix.endswith("/")
        or prefix.startswith("/")
        or prefix == "/"
        or "//" in prefix
        or prefix.startswith(UPLOADS_PREFIX)
    ):
        raise InvalidInputError(
            f"{origin}={prefix!r} is not a folder for transfer state: give a relative prefix ending in "
            f"'/', such as {DEFAULT_STATE_PREFIX!r} (not under {UPLOADS_PREFIX!r})"
        )
    return prefix


def state_key(
    state_prefix: str,
    *,
    dag_id: str | None,
    task_id: str | None,
    run_id: str | None,
    map_index: int | None,
    destination: str,
) -> str:
    """The key of the state of one task instance's transfer to ``destination``, under ``state_prefix``."""
    identity = json.dumps([dag_id, task_id, run_id, map_index, destination], separators=(",", ":"))
    return check_state_prefix(state_prefix) + hashlib.sha256(identity.encode()).hexdigest()[:40] + ".json"


def check_destination(state_prefix: str, destination_prefix: str, uri: str) -> None:
    """Refuse a destination inside the state folder: its data and the checkpoints would mix."""
    if destination_prefix.startswith(state_prefix):
        raise InvalidInputError(
            f"destination={uri!r} is inside the transfer-state folder {state_prefix!r}: choose another "
            "destination, or set state_prefix (skyplane connection or [skyplane] config) elsewhere"
        )


def hide_state(items: Iterable[ObjectInfo], state_prefix: str | None) -> Iterator[ObjectInfo]:
    """A listing without the objects under the state folder (bucket-relative keys)."""
    for info in items:
        if not state_prefix or not info.key.startswith(state_prefix):
            yield info


def same_source(recorded: dict[str, Any], info: ObjectInfo) -> bool:
    """True when a recorded source object still is ``info``: size, checksum and mtime all equal."""
    checksum = [info.checksum.algorithm, info.checksum.value] if info.checksum else None
    mtime = info.mtime.isoformat() if info.mtime else None
    return (
        recorded.get("size") == info.size
        and recorded.get("checksum") == checksum
        and recorded.get("mtime") == mtime
    )


def load_state(store: ObjectStore, key: str) -> dict[str, Any] | None:
    """The state recorded under ``key``, or ``None`` when there is none (or none this version reads)."""
    try:
        raw = store.read(key)
    except ObjectNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        log.warning("transfer state %s is not JSON: ignored, the transfer starts over", store.describe(key))
        return None
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        log.warning("transfer state %s is of another version: ignored", store.describe(key))
        return None
    return data


def save_state(store: ObjectStore, key: str, data: dict[str, Any]) -> None:
    """Write the whole state at once (one ``put``: readers see the old state or the new one)."""
    store.put(key, json.dumps({**data, "version": STATE_VERSION}, separators=(",", ":")).encode())


def recorded_uploads(data: dict[str, Any], destination_prefix: str) -> list[MultipartUpload]:
    prefix = data.get("destination_prefix", destination_prefix)
    return [
        MultipartUpload(prefix + rel, rec["upload_id"])
        for rel, rec in data.get("objects", {}).items()
        if rec.get("upload_id")
    ]


def discard_state(store: ObjectStore, key: str) -> int:
    """Abort every upload a state records and delete it; the number of uploads aborted. Idempotent."""
    data = load_state(store, key)
    aborted = 0
    if data is not None:
        for upload in recorded_uploads(data, ""):
            store.abort_multipart(upload)
            aborted += 1
    store.delete(key)
    return aborted
