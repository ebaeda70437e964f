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
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, cast

from airflow_skyplane.exceptions import (
    CredentialsError,
    InvalidInputError,
    ObjectNotFoundError,
    SkyplaneError,
    StorageError,
)
from airflow_skyplane.storage.base import UPLOADS_PREFIX, MultipartUpload, ObjectInfo, ObjectStore
from airflow_skyplane.transfer.control import Receipt
from airflow_skyplane.transfer.manifest import object_record, private_write

log = logging.getLogger(__name__)

DEFAULT_STATE_PREFIX = ".skyplane-state/"
#: the receipts a job kept from a previous try, in its work folder
CARRIED_FILE = "carried.json"
STATE_VERSION = 1


class RecordedObject(TypedDict):
    """A source object as the state records it (to recognise it), and its upload at the destination."""

    size: int
    checksum: list[str] | None
    mtime: str | None
    upload_id: str | None


class State(TypedDict, total=False):
    version: int
    #: the try that wrote it (a later try's state is not an earlier try's to write or discard)
    transfer_id: str
    written_at: float
    source_prefix: str
    destination_prefix: str
    chunk_size: int | None
    objects: dict[str, RecordedObject]
    receipts: list[Receipt]


def check_state_prefix(prefix: object, *, origin: str = "state_prefix") -> str:
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


def same_source(recorded: RecordedObject, info: ObjectInfo) -> bool:
    """True when a recorded source object still is ``info``: size, checksum and mtime all equal."""
    now = object_record("", info)
    return all(recorded.get(name) == now[name] for name in ("size", "checksum", "mtime"))


def load_state(store: ObjectStore, key: str) -> State | None:
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
    return cast(State, data)


def save_state(store: ObjectStore, key: str, data: State) -> None:
    """Write the whole state at once (one ``put``: readers see the old state or the new one)."""
    store.put(key, json.dumps({**data, "version": STATE_VERSION}, separators=(",", ":")).encode())


def recorded_uploads(data: State, destination_prefix: str) -> list[MultipartUpload]:
    prefix = data.get("destination_prefix", destination_prefix)
    return [
        MultipartUpload(prefix + rel, upload_id)
        for rel, rec in data.get("objects", {}).items()
        if (upload_id := rec.get("upload_id"))
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


class JobResume(TypedDict, total=False):
    """The part of a job's ``job.json`` about resuming (see :meth:`ResumeLedger.save`)."""

    state_key: str | None
    resumed_bytes: int
    discarded: int
    resumed: bool


@dataclass
class Previous:
    """A previous try's state this try continues: its objects, and its receipts by object."""

    objects: dict[str, RecordedObject]
    receipts: dict[str, list[Receipt]]


class ResumeLedger:
    """The resume bookkeeping of one transfer job: what it takes over from a previous try's state,
    and when and what it checkpoints.

    ``key`` None means the transfer is not resumable (it becomes so when its state cannot be read or
    written: the transfer goes on whole, without one). ``carried`` are the receipts of a previous try
    this one keeps (their chunks are not sent again), ``kept`` their part numbers per object.
    """

    def __init__(
        self,
        store: ObjectStore,
        key: str | None,
        *,
        source_prefix: str,
        destination_prefix: str,
        chunk_size: int | None,
        every_s: float,
        every_chunks: int | None,
    ) -> None:
        self.store, self.key = store, key
        self.source_prefix, self.destination_prefix = source_prefix, destination_prefix
        self.chunk_size, self.every_s, self.every_chunks = chunk_size, every_s, every_chunks
        self.carried: list[Receipt] = []
        self.kept: dict[str, set[int]] = {}
        self.resumed_bytes = 0
        self.discarded = 0
        #: a previous try's state was found (after success, the uploads it left unrecorded go)
        self.resumed = False
        #: what was recorded does not hold up (verification failed): a retry starts over
        self.bad = False
        self._saved_at = 0.0
        self._saved_n = -1

    # -- taking over a previous try ----------------------------------------------------------------
    def previous(self) -> Previous | None:
        """The state a previous try left under :attr:`key`, when it can be continued."""
        if self.key is None:
            return None
        try:
            data = load_state(self.store, self.key)
        except (CredentialsError, OSError) as err:
            self.not_resumable(err)
            return None
        if data is None:
            return None
        self.resumed = True
        if self.chunk_size is None:  # derived: the retry cuts the objects as the try it continues did
            self.chunk_size = data.get("chunk_size")
        same_cut = (data.get("chunk_size"), data.get("destination_prefix"), data.get("source_prefix")) == (
            self.chunk_size, self.destination_prefix, self.source_prefix,
        )  # fmt: skip
        if not same_cut:  # parts cut differently (or another layout): nothing recorded lines up
            for upload in recorded_uploads(data, self.destination_prefix):
                self.store.abort_multipart(upload)
            self.discarded += len(data.get("objects", {}))
            return None
        by_key: dict[str, list[Receipt]] = defaultdict(list)
        for r in data.get("receipts", []):
            by_key[r["key"]].append(r)
        return Previous(data.get("objects", {}), by_key)

    def take_over(
        self, rel: str, info: ObjectInfo, previous: Previous, uploads: dict[str, MultipartUpload]
    ) -> None:
        """Take over what a previous try wrote of ``rel``, or discard it when it no longer fits."""
        recorded = previous.objects.get(rel)
        if recorded is None:
            return
        receipts = previous.receipts.get(rel, [])
        dest_key = self.destination_prefix + rel
        upload_id = recorded.get("upload_id")
        upload = MultipartUpload(dest_key, upload_id) if upload_id else None
        if not same_source(recorded, info):  # the source object changed since: start it over
            if upload is not None:
                self.store.abort_multipart(upload)
            self.discarded += 1
            return
        if upload is None:  # written whole by a single put: keep it if it is still there, whole
            whole = [r for r in receipts if r["part_number"] == 0 and r["length"] == info.size]
            if whole:
                try:
                    present = self.store.head(dest_key).size == info.size
                except ObjectNotFoundError:
                    present = False
                if present:
                    self._keep(rel, whole[-1:])
            return
        parts = self.store.uploaded_parts(upload)
        if parts is None:  # the upload is gone, or this store cannot continue one: send it again
            self.store.abort_multipart(upload)
            self.discarded += 1
            return
        kept = {}
        for r in receipts:
            part = parts.get(r["part_number"])
            same = part is not None and (part.size, part.token) == (r["length"], r["token"])
            if r["part_number"] and same:
                kept[r["part_number"]] = r
        uploads[rel] = upload
        self._keep(rel, list(kept.values()))

    def _keep(self, rel: str, receipts: list[Receipt]) -> None:
        self.kept[rel] = {r["part_number"] for r in receipts}
        self.carried.extend(receipts)
        self.resumed_bytes += sum(r["length"] for r in receipts)

    def drop_unlisted(self, previous: Previous, objects: Mapping[str, ObjectInfo]) -> None:
        """Abort the recorded uploads of objects this try does not send (deleted at the source since,
        excluded, or already in place for a sync)."""
        for rel, recorded in previous.objects.items():
            upload_id = recorded.get("upload_id")
            if rel not in objects and upload_id:
                self.store.abort_multipart(MultipartUpload(self.destination_prefix + rel, upload_id))

    # -- checkpoints -------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether this job checkpoints (it is resumable, and what it recorded still holds)."""
        return self.key is not None and not self.bad

    def due(self, written: int) -> bool:
        """Whether a checkpoint is due with ``written`` receipts of this try's writer."""
        if not self.active:
            return False
        pending = written - self._saved_n
        late = time.monotonic() - self._saved_at >= self.every_s
        every = self.every_chunks or max(4, self._saved_n // 16)
        return pending >= every or (pending > 0 and late)

    def checkpoint(
        self,
        transfer_id: str,
        objects: Mapping[str, ObjectInfo],
        uploads: Mapping[str, MultipartUpload],
        receipts: list[Receipt],
    ) -> bool:
        """Write the durable state now; True when it was written."""
        if self.key is None or self.bad:  # (spelled out for the type checker: key is used below)
            return False
        written = self.carried + receipts
        recorded: dict[str, RecordedObject] = {}
        for rel in set(uploads) | {r["key"] for r in written}:
            info = objects.get(rel)
            if info is not None:
                record = object_record(rel, info)
                upload = uploads.get(rel)
                recorded[rel] = {
                    "size": record["size"],
                    "checksum": record["checksum"],
                    "mtime": record["mtime"],
                    "upload_id": upload.upload_id if upload is not None else None,
                }
        state: State = {
            "transfer_id": transfer_id,
            "written_at": time.time(),
            "source_prefix": self.source_prefix,
            "destination_prefix": self.destination_prefix,
            "chunk_size": self.chunk_size,
            "objects": recorded,
            "receipts": written,
        }
        try:
            save_state(self.store, self.key, state)
        except (StorageError, OSError) as err:
            if self._saved_n < 0:  # the first one: the state cannot be written here at all
                self.not_resumable(err)
            else:  # a passing failure: the previous checkpoint stands, the next one tries again
                log.warning("checkpoint of the transfer state failed (the next one retries): %s", err)
            return False
        self._saved_at, self._saved_n = time.monotonic(), len(receipts)
        return True

    def not_resumable(self, err: Exception) -> None:
        log.warning(
            "the transfer is not resumable: its state %s cannot be used (%s); allow the destination's "
            "connection to read and write the state_prefix folder, or pass resume=False",
            self.store.describe(self.key or ""), err,
        )  # fmt: skip
        self.key = None

    # -- in the job's work folder, for whoever attaches to the job ---------------------------------
    def save(self, workdir: Path) -> JobResume:
        """What ``job.json`` records of this ledger (the kept receipts go to their own file)."""
        if self.carried:
            private_write(workdir / CARRIED_FILE, json.dumps(self.carried))
        return {
            "state_key": self.key,
            "resumed_bytes": self.resumed_bytes,
            "discarded": self.discarded,
            "resumed": self.resumed,
        }

    def restore(self, recorded: JobResume, workdir: Path) -> None:
        self.key = recorded.get("state_key")
        self.resumed_bytes = recorded.get("resumed_bytes", 0)
        self.discarded = recorded.get("discarded", 0)
        self.resumed = recorded.get("resumed", False)
        if (workdir / CARRIED_FILE).exists():
            self.carried = json.loads((workdir / CARRIED_FILE).read_text())

    # -- the end -----------------------------------------------------------------------------------
    def keeps(self, *, succeeded: bool, keep_on_failure: bool) -> bool:
        """Whether a job ending now keeps its uploads and state for a retry."""
        return self.key is not None and keep_on_failure and not succeeded and not self.bad

    def owner(self, transfer_id: str) -> str | None:
        """The transfer that wrote the durable state (None: there is none). Another one than
        ``transfer_id`` means a later try took over (this job is torn down late, e.g. by a sweeper):
        its uploads are that try's to finish, not ours to abort, and its state not ours to write."""
        if self.key is None:
            return None
        try:
            data = load_state(self.store, self.key)
        except (SkyplaneError, OSError):
            return transfer_id  # cannot tell: act as before resume existed
        return data.get("transfer_id") if data is not None else None

    def sweep_dangling(self, objects: Mapping[str, ObjectInfo]) -> None:
        """After a resumed transfer succeeded: abort uploads of its objects that a crashed try began
        without recording them (killed between beginning an upload and its first checkpoint)."""
        for upload in self.store.list_multipart_uploads(self.destination_prefix):
            if upload.key[len(self.destination_prefix) :] in objects:
                self.store.abort_multipart(upload)

    def finished(self, objects: Mapping[str, ObjectInfo]) -> None:
        """After the transfer succeeded: sweep what a crashed try left dangling (when this one resumed
        it, :meth:`sweep_dangling`), then delete the durable state."""
        if self.key is None:
            return
        if self.resumed:
            self.sweep_dangling(objects)
        self.delete()

    def delete(self) -> None:
        if self.key is not None:
            self.store.delete(self.key)
