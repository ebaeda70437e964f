"""The transfer job: the controller side of the data plane, run inside the Airflow task.

For one source and one destination over an overlay of gateways:

1. **inventory**: list the source prefix (streaming) into a manifest of chunks (striped parts and
   batches of small objects, :mod:`.chunks`), written to a private file;
2. **uploads**: begin a multipart upload at the destination for every striped object;
3. **fleet**: make a per-fleet CA and one identity per gateway, a per-transfer AES key (given only to
   the reading and writing gateways), and one program per gateway; start the gateways downstream
   first, so every sender finds its next hop listening;
4. **watch** the reading gateway until every chunk is acknowledged, which happens only once the
   chunk is written at the destination;
5. **complete** the multipart uploads from the writing gateway's receipts, and **verify** every
   object (size always; the checksum the destination store reports against what was written, and the
   source store's checksum where the algorithms allow);
6. **always** stop the gateways and, if anything failed, abort every multipart upload begun, so the
   destination holds complete objects only - unless the transfer is resumable and will be retried.

**Resume** (``state_key``): the job checkpoints its uploads and the writing gateway's receipts into an
object of the destination store (:mod:`.resume`) once its uploads are begun, then whenever
``state_every_chunks`` new chunks are written (by default the larger of 4 and a sixteenth of those
already recorded: a kill re-sends at most that many chunks plus those in flight, and rewriting the
state costs time linear in the chunks over the whole transfer) or ``state_every_s`` passed, and
when it fails. A job
started with the key of a state left by a failed try continues it: it reuses the uploads the store
still holds, sends only the chunks not recorded there, and completes and verifies every object as
usual; on success it deletes the state (and any upload of its objects a crashed try left behind). A
failed job with ``keep_on_failure`` keeps its uploads and its state for the retry; without, it aborts
the uploads and deletes the state.

The overlay is a list of hops between named gateways; :func:`overlay_from_plan` makes it from a
:class:`~airflow_skyplane.planner.plan.TransferPlan`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential

from airflow_skyplane.compute.launcher import GatewayHandle, GatewayLauncher
from airflow_skyplane.exceptions import (
    BucketNotFoundError,
    CredentialsError,
    InvalidInputError,
    ObjectNotFoundError,
    SkyplaneError,
    StorageError,
    TransferError,
)
from airflow_skyplane.gateway import protocol as proto
from airflow_skyplane.gateway import tls
from airflow_skyplane.gateway.program import Endpoint, NextHop, Program
from airflow_skyplane.storage.base import Checksum, MultipartUpload, ObjectInfo, ObjectStore, PartInfo
from airflow_skyplane.storage.checksums import from_part_crc32cs, from_part_md5s
from airflow_skyplane.transfer.chunks import batch_small, plan_chunks
from airflow_skyplane.transfer.options import TransferKnobs, TransferOptions
from airflow_skyplane.transfer.tracker import Progress, aggregate

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = logging.getLogger(__name__)
# HEAD requests of the verification at once: under the 10 connections a boto3 client pools by default
VERIFY_THREADS = 8


@dataclass(frozen=True)
class Hop:
    """One overlay edge between two gateways, with its TCP connections and share of the flow."""

    src: str
    dst: str
    connections: int = 8
    weight: float = 1.0


@dataclass
class Overlay:
    """Gateways (id -> region, ``None`` on plain loopback) and the hops between them."""

    source: str
    destination: str
    hops: list[Hop]
    regions: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def direct(cls, connections: int = 8) -> Overlay:
        return cls("source", "destination", [Hop("source", "destination", connections)])

    def gateways(self) -> list[str]:
        """Gateway ids, each after every gateway it sends to (the order to start them in)."""
        nodes = {self.destination} | {h.src for h in self.hops} | {h.dst for h in self.hops}
        order: list[str] = []
        while len(order) < len(nodes):
            ready = sorted(
                n for n in nodes - set(order) if all(h.dst in order for h in self.hops if h.src == n)
            )
            if not ready:
                raise InvalidInputError(f"overlay hops form a cycle among {sorted(nodes - set(order))}")
            order.extend(ready)
        if self.source not in order or not self._reaches(self.source, self.destination):
            raise InvalidInputError(f"overlay has no path from {self.source!r} to {self.destination!r}")
        return order

    def _reaches(self, a: str, b: str) -> bool:
        seen, todo = {a}, [a]
        while todo:
            n = todo.pop()
            for h in self.hops:
                if h.src == n and h.dst not in seen:
                    seen.add(h.dst)
                    todo.append(h.dst)
        return b in seen


def overlay_from_plan(plan: Any, *, max_connections_per_hop: int | None = None) -> Overlay:
    """The overlay of a unicast :class:`~airflow_skyplane.planner.plan.TransferPlan`.

    One gateway per region of the plan (named by the region); each planned edge becomes a hop whose
    share of the flow is the edge's planned Gbps and whose connections are the planned ones (capped
    by ``max_connections_per_hop``, e.g. for local relays that share one machine). Several VMs in a
    region are served by one gateway with their connections added up.
    """
    if len(plan.destinations) != 1:
        raise InvalidInputError(
            f"the plan has {len(plan.destinations)} destinations: run one transfer per destination "
            "(multicast through shared relays is not wired into the data plane yet)"
        )
    hops = []
    for edge in plan.edges:
        if edge.gbps <= 0:
            continue
        connections = max(1, edge.connections)
        if max_connections_per_hop:
            connections = min(connections, max_connections_per_hop)
        hops.append(Hop(edge.src, edge.dst, connections, edge.gbps))
    regions: dict[str, str | None] = {name: name for name in plan.relays}
    return Overlay(plan.source, plan.destinations[0], hops, regions)


@dataclass
class TransferResult:
    transfer_id: str
    objects: int
    bytes: int
    wire_bytes: int
    seconds: float
    resends: int
    checksums_verified: int
    gateways: dict[str, dict[str, Any]]
    #: bytes a previous try had written and this one did not send again (resumed transfers)
    resumed_bytes: int = 0
    #: objects whose recorded state no longer matched the source (sent again from scratch)
    discarded: int = 0

    @property
    def gbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1e9 if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "transfer_id": self.transfer_id,
            "objects": self.objects,
            "bytes": self.bytes,
            "wire_bytes": self.wire_bytes,
            "wire_to_raw": round(self.wire_bytes / self.bytes, 4) if self.bytes else None,
            "seconds": round(self.seconds, 3),
            "gbps": round(self.gbps, 4),
            "resends": self.resends,
            "checksums_verified": self.checksums_verified,
            "resumed_bytes": self.resumed_bytes,
            "resumed_objects_discarded": self.discarded,
        }


def _compare(key: str, side: str, reported: Any, wanted: Any, *, allow_etag: bool) -> bool:
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


def _private_write(path: Path, data: bytes | str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return path


def _settled_dead(gateway: GatewayHandle, grace_s: float = 1.0) -> bool:
    """True when ``gateway`` has exited, waiting ``grace_s`` for a peer that is vanishing: its sockets
    close a moment before its process can be reaped, so a refused connection comes first."""
    deadline = time.monotonic() + grace_s
    while gateway.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not gateway.alive()


def _exit_error(gateway: GatewayHandle) -> TransferError:
    """The error for a gateway that died mid-transfer: the cause, with the end of its log."""
    return TransferError(
        f"gateway {gateway.gateway_id} exited with code {gateway.exit_code} before the transfer finished; "
        f"its log ends with:\n{gateway.log_tail()}"
    )


def _get(gateway: GatewayHandle, path: str) -> Any:
    url = f"http://{gateway.control_host}:{gateway.control_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - a gateway's control endpoint
            return json.loads(r.read())
    except OSError as err:
        if _settled_dead(gateway):
            raise _exit_error(gateway) from None
        raise TransferError(
            f"lost the status endpoint of gateway {gateway.gateway_id} ({err}); it is running; its log "
            f"ends with:\n{gateway.log_tail()}"
        ) from None


def _post(gateway: GatewayHandle, path: str) -> None:
    url = f"http://{gateway.control_host}:{gateway.control_port}{path}"
    request = urllib.request.Request(url, method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - a gateway's control endpoint
        pass


def _abort(store: ObjectStore, upload: MultipartUpload) -> None:
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


def _info_to_json(rel: str, info: ObjectInfo) -> dict[str, Any]:
    return {
        "key": rel,
        "size": info.size,
        "checksum": [info.checksum.algorithm, info.checksum.value] if info.checksum else None,
        "mtime": info.mtime.isoformat() if info.mtime else None,
    }


def _info_from_json(raw: dict[str, Any]) -> tuple[str, ObjectInfo]:
    from datetime import datetime

    checksum = Checksum(*raw["checksum"]) if raw.get("checksum") else None
    mtime = datetime.fromisoformat(raw["mtime"]) if raw.get("mtime") else None
    return raw["key"], ObjectInfo(raw["key"], raw["size"], checksum, mtime)


class TransferJob:
    """One transfer from a source prefix to a destination prefix over an overlay of gateways.

    :meth:`run` does it all in this process. A transfer can also be conducted in steps, possibly from
    different processes: :meth:`start` (inventory, uploads, gateways; writes ``job.json`` in the
    work folder), :meth:`poll` until done, then :meth:`finish` (complete and verify) and always
    :meth:`close`; :meth:`attach` rebuilds the job from its work folder in another process (the
    deferrable operator's ``execute_complete``, the sensor).

    :param objects: the source objects to send (full keys, under ``source_prefix``), e.g. a listing
        filtered by include/exclude patterns or by a diff against the destination; by default every
        object under ``source_prefix``.
    :param options: how the bytes move (:class:`~airflow_skyplane.transfer.options.TransferOptions`);
        keywords named like its fields (``chunk_size=``, ``compress=`` ...) override some of them.
    :param test_faults: test-only: faults per gateway id, written into its program (see the daemon).
    """

    def __init__(
        self,
        source: ObjectStore,
        source_prefix: str,
        destination: ObjectStore,
        destination_prefix: str,
        *,
        backend: GatewayLauncher,
        workdir: str | os.PathLike[str],
        overlay: Overlay | None = None,
        objects: Iterable[ObjectInfo] | None = None,
        options: TransferOptions | None = None,
        source_spec: dict[str, Any] | None = None,
        destination_spec: dict[str, Any] | None = None,
        test_faults: dict[str, dict[str, Any]] | None = None,
        expires_at: float | None = None,
        watch_pid: int | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        progress_every_s: float = 10.0,
        state_key: str | None = None,
        **knobs: Unpack[TransferKnobs],
    ) -> None:
        self.source, self.source_prefix = source, source_prefix
        self.destination, self.destination_prefix = destination, destination_prefix
        self.backend = backend
        self.workdir = Path(workdir)
        self.overlay = overlay or Overlay.direct()
        self.selection = objects
        self.options = replace(options or TransferOptions(), **knobs)
        self.test_faults = test_faults or {}
        self.expires_at = expires_at
        self.watch_pid = watch_pid
        self.on_progress = on_progress
        self.progress_every_s = progress_every_s
        self.bytes_total = 0
        self.transfer_id = uuid.uuid4().hex
        self._source_spec, self._destination_spec = source_spec, destination_spec
        self.uploads: dict[str, MultipartUpload] = {}
        self.objects: dict[str, ObjectInfo] = {}
        self.started: dict[str, GatewayHandle] = {}
        self.started_at = 0.0
        self._next_report = 0.0
        self._last_status: dict[str, Any] = {}
        # resume: the durable state's key (None: not resumable), what the previous try left that this
        # one reuses (``carried``), the receipts this try's writer returned, and checkpoint bookkeeping
        self.state_key = state_key
        self.carried: list[dict[str, Any]] = []
        self.receipts: list[dict[str, Any]] = []
        self.resumed_bytes = 0
        self.discarded = 0
        self.chunks_to_send = 0
        self._kept: dict[str, set[int]] = {}
        self._resumed = False
        self._succeeded = False
        self._state_bad = False
        self._saved_at = 0.0
        self._saved_n = -1

    # -- steps -----------------------------------------------------------------------------------
    def _inventory(self) -> Path:
        objects = self.objects
        manifest = self.workdir / "manifest.jsonl"
        listed = self.source.list(self.source_prefix) if self.selection is None else self.selection
        previous = self._load_previous()
        fd = os.open(self.workdir / "objects.jsonl", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as inventory:

            def listing() -> Iterable[tuple[str, int]]:
                for info in listed:
                    if not info.key.startswith(self.source_prefix):
                        raise InvalidInputError(
                            f"object {info.key!r} is not under the source prefix {self.source_prefix!r}"
                        )
                    rel = info.key[len(self.source_prefix) :]
                    objects[rel] = info
                    inventory.write(json.dumps(_info_to_json(rel, info)) + "\n")
                    if previous is not None:
                        self._resume_object(rel, info, previous)
                    yield rel, info.size

            chunks = plan_chunks(
                listing(), self.options.chunk_size, min_part_size=self.destination.min_part_size
            )
            fd = os.open(manifest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for batch in batch_small(c for c in chunks if c.part_number not in self._kept.get(c.key, ())):
                    self.chunks_to_send += len(batch)
                    entries = [
                        {"chunk_id": c.chunk_id, "key": c.key, "offset": c.offset, "length": c.length,
                         "object_size": c.object_size, "part_number": c.part_number, "parts": c.parts}
                        for c in batch
                    ]  # fmt: skip
                    f.write(json.dumps(entries[0] if len(entries) == 1 else {"chunks": entries}) + "\n")
                    for c in batch:
                        if c.is_part and c.key not in self.uploads:
                            self.uploads[c.key] = self.destination.begin_multipart(
                                self.destination_prefix + c.key
                            )
        if previous is not None:
            self._drop_unlisted(previous)
        return manifest

    # -- resume ----------------------------------------------------------------------------------
    def _load_previous(self) -> dict[str, Any] | None:
        """The state a previous try left under :attr:`state_key`, when it can be continued."""
        if self.state_key is None:
            return None
        from airflow_skyplane.transfer import resume

        try:
            data = resume.load_state(self.destination, self.state_key)
        except (CredentialsError, OSError) as err:
            self._not_resumable(err)
            return None
        if data is None:
            return None
        self._resumed = True
        same_cut = (data.get("chunk_size"), data.get("destination_prefix"), data.get("source_prefix")) == (
            self.options.chunk_size, self.destination_prefix, self.source_prefix,
        )  # fmt: skip
        if not same_cut:  # parts cut differently (or another layout): nothing recorded lines up
            for upload in resume.recorded_uploads(data, self.destination_prefix):
                self.destination.abort_multipart(upload)
            self.discarded += len(data.get("objects", {}))
            return None
        by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in data.get("receipts", []):
            by_key[r["key"]].append(r)
        data["receipts_by_key"] = by_key
        return data

    def _resume_object(self, rel: str, info: ObjectInfo, previous: dict[str, Any]) -> None:
        """Take over what a previous try wrote of ``rel``, or discard it when it no longer fits."""
        from airflow_skyplane.transfer import resume

        recorded = previous["objects"].get(rel)
        if recorded is None:
            return
        receipts = previous["receipts_by_key"].get(rel, [])
        dest_key = self.destination_prefix + rel
        upload_id = recorded.get("upload_id")
        upload = MultipartUpload(dest_key, upload_id) if upload_id else None
        if not resume.same_source(recorded, info):  # the source object changed since: start it over
            if upload is not None:
                self.destination.abort_multipart(upload)
            self.discarded += 1
            return
        if upload is None:  # written whole by a single put: keep it if it is still there, whole
            whole = [r for r in receipts if r["part_number"] == 0 and r["length"] == info.size]
            if whole:
                try:
                    present = self.destination.head(dest_key).size == info.size
                except ObjectNotFoundError:
                    present = False
                if present:
                    self._keep(rel, whole[-1:])
            return
        parts = self.destination.uploaded_parts(upload)
        if parts is None:  # the upload is gone, or this store cannot continue one: send it again
            self.destination.abort_multipart(upload)
            self.discarded += 1
            return
        kept = {}
        for r in receipts:
            part = parts.get(r["part_number"])
            same = part is not None and (part.size, part.token) == (r["length"], r["token"])
            if r["part_number"] and same:
                kept[r["part_number"]] = r
        self.uploads[rel] = upload
        self._keep(rel, list(kept.values()))

    def _keep(self, rel: str, receipts: list[dict[str, Any]]) -> None:
        self._kept[rel] = {r["part_number"] for r in receipts}
        self.carried.extend(receipts)
        self.resumed_bytes += sum(r["length"] for r in receipts)

    def _drop_unlisted(self, previous: dict[str, Any]) -> None:
        """Abort the recorded uploads of objects this try does not send (deleted at the source since,
        excluded, or already in place for a sync)."""
        for rel, recorded in previous["objects"].items():
            if rel not in self.objects and recorded.get("upload_id"):
                self.destination.abort_multipart(
                    MultipartUpload(self.destination_prefix + rel, recorded["upload_id"])
                )

    def _state(self) -> dict[str, Any]:
        receipts = self.carried + self.receipts
        keys = set(self.uploads) | {r["key"] for r in receipts}
        objects = {}
        for rel in keys:
            info = self.objects.get(rel)
            if info is not None:
                entry = _info_to_json(rel, info)
                del entry["key"]
                entry["upload_id"] = self.uploads[rel].upload_id if rel in self.uploads else None
                objects[rel] = entry
        return {
            "transfer_id": self.transfer_id,
            "written_at": time.time(),
            "source_prefix": self.source_prefix,
            "destination_prefix": self.destination_prefix,
            "chunk_size": self.options.chunk_size,
            "objects": objects,
            "receipts": receipts,
        }

    def _fetch_receipts(self) -> None:
        """Append the writer's receipts this job has not seen yet."""
        writer = self.started.get(self.overlay.destination)
        if writer is None or not writer.alive():  # a dead writer's receipts died with it
            return
        self.receipts.extend(_get(writer, f"/receipts?since={len(self.receipts)}"))

    def checkpoint(self, *, force: bool = False) -> bool:
        """Write the durable state when it is due (or ``force``); True when it was written."""
        if self.state_key is None or self._state_bad:
            return False
        from airflow_skyplane.transfer import resume

        if self.started:
            self._fetch_receipts()
        pending = len(self.receipts) - self._saved_n
        now = time.monotonic()
        late = now - self._saved_at >= self.options.state_every_s
        every = self.options.state_every_chunks or max(4, self._saved_n // 16)
        due = pending >= every or (pending > 0 and late)
        if not (force or due):
            return False
        try:
            resume.save_state(self.destination, self.state_key, self._state())
        except (StorageError, OSError) as err:
            if self._saved_n < 0:  # the first one: the state cannot be written here at all
                self._not_resumable(err)
            else:  # a passing failure: the previous checkpoint stands, the next one tries again
                log.warning("checkpoint of the transfer state failed (the next one retries): %s", err)
            return False
        self._saved_at, self._saved_n = now, len(self.receipts)
        return True

    def _not_resumable(self, err: Exception) -> None:
        log.warning(
            "the transfer is not resumable: its state %s cannot be used (%s); allow the destination's "
            "connection to read and write the state_prefix folder, or pass resume=False",
            self.destination.describe(self.state_key or ""), err,
        )  # fmt: skip
        self.state_key = None

    def _sweep_dangling(self) -> None:
        """After a resumed transfer succeeded: abort uploads of its objects that a crashed try began
        without recording them (killed between beginning an upload and its first checkpoint)."""
        for upload in self.destination.list_multipart_uploads(self.destination_prefix):
            if upload.key[len(self.destination_prefix) :] in self.objects:
                self.destination.abort_multipart(upload)

    def _programs(self, manifest: Path) -> dict[str, dict[str, Any]]:
        """One program per gateway, as JSON-able dicts; next hops are added when their ports are known."""
        ca = tls.FleetCA.create(f"transfer-{self.transfer_id[:12]}")
        _private_write(self.workdir / "ca.pem", ca.cert_pem)
        key_file = _private_write(self.workdir / "transfer.key", proto.ChunkCipher.generate().key)
        uploads_file = _private_write(
            self.workdir / "uploads.json", json.dumps({k: u.upload_id for k, u in self.uploads.items()})
        )
        from airflow_skyplane.transfer.stores import store_spec

        source_spec = self._source_spec or store_spec(self.source)
        destination_spec = self._destination_spec or store_spec(self.destination)
        programs: dict[str, dict[str, Any]] = {}
        for gid in self.overlay.gateways():
            folder = self.workdir / ("gw-" + "".join(c if c.isalnum() else "-" for c in gid))
            folder.mkdir(mode=0o700, exist_ok=True)
            identity = ca.issue(gid, addresses=["127.0.0.1"] + self._addresses(gid))
            files = identity.write(folder)
            cert, key = files["cert"], files["key"]
            reads, writes = gid == self.overlay.source, gid == self.overlay.destination
            raw: dict[str, Any] = {
                "version": 1,
                "transfer_id": self.transfer_id,
                "gateway_id": gid,
                "tls": {"cert": str(cert), "key": str(key), "ca": str(self.workdir / "ca.pem")},
                "control": {"host": self._control_host(gid), "port": 0},
                "compress": self.options.compress,
                "encrypt": self.options.encrypt,
                "max_inflight_mb": self.options.max_inflight_mb,
                "chunk_size_mb": self.options.chunk_size_mb,
                "next_hops": [],
            }
            if not reads:
                raw["listen"] = self._listen(gid)
            if (reads or writes) and self.options.encrypt:
                raw["cipher_key_file"] = str(key_file)
            if reads:
                raw["source"] = {
                    "store": source_spec,
                    "manifest": str(manifest),
                    "prefix": self.source_prefix,
                }
            if writes:
                raw["destination"] = {
                    "store": destination_spec,
                    "prefix": self.destination_prefix,
                    "uploads_file": str(uploads_file),
                }
            if self.expires_at is not None:
                raw["expires_at"] = self.expires_at
            if self.watch_pid is not None and self.backend.same_machine:
                raw["watch_pid"] = self.watch_pid
            if gid in self.test_faults:
                raw["test_faults"] = self.test_faults[gid]
            programs[gid] = raw
        return programs

    # Where gateways listen and how they reach each other: the launcher says.
    def _listen(self, gid: str) -> dict[str, Any]:
        host, port = self.backend.listen_endpoint(self.overlay.regions.get(gid))
        return {"host": host, "port": port}

    def _control_host(self, gid: str) -> str:
        return self.backend.control_host(self.overlay.regions.get(gid))

    def _addresses(self, gid: str) -> list[str]:
        peers = [self.overlay.regions.get(h.src) for h in self.overlay.hops if h.dst == gid]
        return self.backend.cert_addresses(self.overlay.regions.get(gid), peers)

    def _hop_endpoint(self, hop: Hop, listen_port: int) -> Endpoint:
        src_region, dst_region = self.overlay.regions.get(hop.src), self.overlay.regions.get(hop.dst)
        return Endpoint(self.backend.hop_address(src_region, dst_region), listen_port)

    def _start(self, programs: dict[str, dict[str, Any]]) -> dict[str, GatewayHandle]:
        started: dict[str, GatewayHandle] = {}
        for gid in self.overlay.gateways():
            raw = programs[gid]
            hops = []
            for hop in self.overlay.hops:
                if hop.src == gid:
                    port = started[hop.dst].listen_port
                    if port is None:
                        raise TransferError(f"gateway {hop.dst} started but reported no listening port")
                    endpoint = self._hop_endpoint(hop, port)
                    hops.append(NextHop(hop.dst, endpoint.host, endpoint.port, hop.connections, hop.weight))
            raw["next_hops"] = [h.__dict__ for h in hops]
            program = Program.parse(raw)
            started[gid] = self.backend.start(program, region=self.overlay.regions.get(gid))
        return started

    def _complete_and_verify(self, objects: dict[str, ObjectInfo], receipts: list[dict[str, Any]]) -> int:
        by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
        latest = {(r["key"], r["part_number"]): r for r in receipts}  # a chunk written twice counts once
        for r in latest.values():
            by_key[r["key"]].append(r)
        # A striped object is read range by range: if it changed meanwhile, its parts may mix two
        # versions. Check before completing any upload, so such an object never appears (close()
        # aborts the uploads); a single-range object was read whole, one version.
        changed = [key for key in self.uploads if key in objects and self._source_changed(key, objects[key])]
        if changed:
            raise TransferError(
                f"source object {self.source.describe(self.source_prefix + changed[0])} changed during the "
                f"transfer ({len(changed)} object(s) did): nothing was written for it; rerun the transfer "
                "to copy the new version"
            )
        for key, upload in list(self.uploads.items()):
            parts = sorted(by_key[key], key=lambda r: r["part_number"])
            self.destination.complete_multipart(
                upload, [PartInfo(r["part_number"], r["length"], r["token"]) for r in parts]
            )
            del self.uploads[key]
        verified = 0
        for key, check in self._verify_all(objects, by_key):
            try:
                verified += check.result()
            except TransferError as err:
                # a short or mismatching object must not stay where readers would take it for a copy
                dest_key = self.destination_prefix + key
                try:
                    self.destination.delete(dest_key)
                except Exception as cleanup:  # noqa: BLE001 - the verification error is the one to show
                    raise TransferError(
                        f"{err}; deleting {self.destination.describe(dest_key)} failed too ({cleanup}): "
                        "delete it by hand"
                    ) from err
                raise TransferError(
                    f"{err}; the object was deleted from the destination and a rerun sends it again"
                ) from err
        return verified

    def _verify_all(
        self, objects: dict[str, ObjectInfo], by_key: dict[str, list[dict[str, Any]]]
    ) -> Iterator[tuple[str, Future[bool]]]:
        """(key, its check) of every object, in order. One HEAD per object, a few at once: one after
        the other is most of a small-object transfer's time, as a store answers each in milliseconds
        to tens of them but serves many at once. Windows of 1,024 keep memory flat."""
        items = iter(objects.items())
        with ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="verify") as pool:
            while window := list(itertools.islice(items, 1024)):
                yield from [(k, pool.submit(self._verify_one, k, o, by_key.get(k, []))) for k, o in window]

    def _verify_one(self, key: str, src: ObjectInfo, receipts: list[dict[str, Any]]) -> bool:
        """Check one written object (size, and checksums where comparable); True if a checksum matched."""
        parts = sorted(receipts, key=lambda r: r["part_number"])
        dest_key = self.destination_prefix + key
        written = sum(r["length"] for r in parts)
        if written != src.size:
            raise TransferError(
                f"{self.destination.describe(dest_key)}: the gateways wrote {written} of {src.size} bytes"
            )
        dst = self.destination.head(dest_key)
        if dst.size != src.size:
            raise TransferError(
                f"{self.destination.describe(dest_key)} has {dst.size} bytes, the source {src.size}"
            )
        expected = self._expected(parts, dst.checksum.algorithm if dst.checksum else "")
        # what the destination store holds = what the gateway wrote (any algorithm we can derive);
        # what the source store reports = what was sent (whole-object algorithms only: an S3
        # multipart ETag depends on the source's own part sizes)
        dest_checked = _compare(key, "destination", dst.checksum, expected, allow_etag=True)
        if not dest_checked:
            dest_checked = _compare(key, "destination", dst.checksum, src.checksum, allow_etag=False)
        _compare(key, "source", src.checksum, expected, allow_etag=False)
        return dest_checked

    def _source_changed(self, key: str, listed: ObjectInfo) -> bool:
        """True when the source object no longer has the size, checksum or mtime it was listed with."""
        full = self.source_prefix + key
        now = next((info for info in self.source.list(full) if info.key == full), None)
        if now is None or now.size != listed.size:
            return True
        if now.checksum and listed.checksum and now.checksum.algorithm == listed.checksum.algorithm:
            if now.checksum != listed.checksum:
                return True
        return bool(now.mtime and listed.mtime and now.mtime != listed.mtime)

    @staticmethod
    def _expected(parts: list[dict[str, Any]], algorithm: str) -> Any:
        """What a store reports for the bytes the gateway wrote: md5, the S3 multipart ETag, or the
        CRC32C of a GCS composed object."""
        if algorithm == "crc32c" and parts and all(p.get("crc32c") for p in parts):
            return from_part_crc32cs([(int(p["crc32c"], 16), p["length"]) for p in parts])
        if parts and all(p["md5"] for p in parts):
            return from_part_md5s([bytes.fromhex(p["md5"]) for p in parts])
        return None  # checked chunk by chunk (CRC and AES-GCM tag) only

    # -- conducting ------------------------------------------------------------------------------
    def start(self) -> None:
        """Inventory, begin the uploads, start the gateways; record the job in ``job.json``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        self.started_at = time.time()
        manifest = self._inventory()
        self.bytes_total = sum(o.size for o in self.objects.values())
        self._save()  # the uploads begun are recorded before any gateway runs: a kill now loses none
        self.checkpoint(force=True)  # ... and in the durable state, for a retry on another worker
        if self.chunks_to_send:
            self.started = self._start(self._programs(manifest))
            self._save()

    def _save(self) -> None:
        state = {
            "transfer_id": self.transfer_id,
            "source_prefix": self.source_prefix,
            "destination_prefix": self.destination_prefix,
            "overlay": {"source": self.overlay.source, "destination": self.overlay.destination},
            "bytes_total": self.bytes_total,
            "started_at": self.started_at,
            "uploads": {k: u.upload_id for k, u in self.uploads.items()},
            "state_key": self.state_key,
            "keep_on_failure": self.options.keep_on_failure,
            "resumed_bytes": self.resumed_bytes,
            "discarded": self.discarded,
            "resumed": self._resumed,
        }
        if self.carried:
            _private_write(self.workdir / "carried.json", json.dumps(self.carried))
        tmp = self.workdir / "job.json.tmp"
        _private_write(tmp, json.dumps(state))
        os.replace(tmp, self.workdir / "job.json")

    @classmethod
    def attach(
        cls,
        workdir: str | os.PathLike[str],
        source: ObjectStore,
        destination: ObjectStore,
        *,
        backend: GatewayLauncher,
    ) -> TransferJob:
        """The job :meth:`start` recorded in ``workdir``, with its running gateways (``backend``)."""
        folder = Path(workdir)
        try:
            state = json.loads((folder / "job.json").read_text())
        except FileNotFoundError:
            raise TransferError(
                f"no transfer is recorded in {folder}: it finished and was cleaned up, or was torn down"
            ) from None
        overlay = Overlay(state["overlay"]["source"], state["overlay"]["destination"], [])
        job = cls(
            source, state["source_prefix"], destination, state["destination_prefix"],
            backend=backend, workdir=folder, overlay=overlay,
        )  # fmt: skip
        job.transfer_id = state["transfer_id"]
        job.bytes_total = state["bytes_total"]
        job.started_at = state["started_at"]
        job.uploads = {
            k: MultipartUpload(job.destination_prefix + k, upload_id)
            for k, upload_id in state["uploads"].items()
        }
        job.state_key = state.get("state_key")
        job.options = replace(job.options, keep_on_failure=state.get("keep_on_failure", True))
        job.resumed_bytes, job.discarded = state.get("resumed_bytes", 0), state.get("discarded", 0)
        job._resumed = state.get("resumed", False)
        if (folder / "carried.json").exists():
            job.carried = json.loads((folder / "carried.json").read_text())
        with (folder / "objects.jsonl").open(encoding="utf-8") as f:
            job.objects = dict(_info_from_json(json.loads(line)) for line in f)
        job.started = dict(backend.gateways)
        return job

    def progress(self) -> Progress:
        statuses = {gid: _get(gw, "/status") for gid, gw in self.started.items()}
        if not statuses:
            return Progress(0, 0, 0, 0, 0.0, 0, 0, ())
        return aggregate(statuses, [self.overlay.source], self.bytes_total - self.resumed_bytes)

    def poll(self) -> bool:
        """True once every chunk is written at the destination; raise TransferError on a failure."""
        if not self.started:
            return True  # nothing to send
        reader = self.started[self.overlay.source]
        status = _get(reader, "/status")
        self._last_status = status
        now = time.monotonic()
        if self.on_progress is not None and (status["done"] or now >= self._next_report):
            self.on_progress(self.progress())
            self._next_report = now + self.progress_every_s
        dead = [gid for gid, gw in self.started.items() if not gw.alive()]
        grace = time.monotonic() + 1.0
        while status["errors"] and not dead and time.monotonic() < grace:
            time.sleep(0.05)  # a peer that vanished shows as errors a moment before it shows as dead
            dead = [gid for gid, gw in self.started.items() if not gw.alive()]
        if dead and (
            status["errors"] or not status["done"]
        ):  # the cause first: a dead gateway makes the others report errors
            raise _exit_error(self.started[dead[0]])
        if status["errors"]:
            errors = list(dict.fromkeys(status["errors"]))
            raise TransferError(f"gateway {reader.gateway_id} failed: {errors[:3]}")
        self.checkpoint()
        if status["done"]:
            return True
        if time.time() - self.started_at > self.options.timeout:
            raise TransferError(f"transfer did not finish in {self.options.timeout:.0f} s (status {status})")
        return False

    def finish(self) -> TransferResult:
        """Complete the uploads and verify every object; call once :meth:`poll` says done."""
        statuses = {gid: _get(gw, "/status") for gid, gw in self.started.items()}
        self._fetch_receipts()
        try:
            verified = self._complete_and_verify(self.objects, self.carried + self.receipts)
        except TransferError:
            self._state_bad = True  # what was recorded does not hold up: a retry starts over
            raise
        if self.state_key is not None:
            if self._resumed:
                self._sweep_dangling()
            self.destination.delete(self.state_key)
        self._succeeded = True
        reader = statuses.get(self.overlay.source, {})
        return TransferResult(
            transfer_id=self.transfer_id,
            objects=len(self.objects),
            bytes=self.bytes_total,
            wire_bytes=reader.get("wire_bytes", 0),
            seconds=time.time() - self.started_at,
            resends=sum(s["resends"] for s in statuses.values()),
            checksums_verified=verified,
            gateways=statuses,
            resumed_bytes=self.resumed_bytes,
            discarded=self.discarded,
        )

    def close(self) -> None:
        """Stop the gateways; abort every upload not completed (so no partial object appears); delete
        the secrets. Idempotent; runs after success and failure alike.

        A resumable job that failed and will be retried (``keep_on_failure``) instead records what its
        writer wrote in the durable state, and keeps its uploads for the retry."""
        keep = self._keeps_state()
        owner = self._state_owner() if self.state_key is not None and not self._succeeded else None
        if keep and owner == self.transfer_id:  # never over a later try's state, nor bring one back
            try:
                self.checkpoint(force=True)
            except (TransferError, SkyplaneError, OSError) as err:  # the last checkpoint stands
                log.warning("could not checkpoint the transfer state at failure: %s", str(err)[:300])
        for gw in self.started.values():
            if gw.control_port and gw.alive():
                try:
                    _post(gw, "/stop")
                except OSError:
                    pass
        self.backend.teardown()
        refused: list[str] = []
        if not keep:
            ours = owner in (None, self.transfer_id)
            for upload in list(self.uploads.values()):  # only what was not completed: a failed transfer
                if not ours:
                    continue
                try:
                    _abort(self.destination, upload)
                except StorageError as err:  # after retries: keep going, every other upload still goes
                    refused.append(f"{upload.key}: {err}")
            if self.state_key is not None and ours and not self._succeeded:
                self.destination.delete(self.state_key)
        self.uploads.clear()
        self.destination.tidy()
        for name in ("transfer.key", "uploads.json", "job.json", "carried.json"):
            (self.workdir / name).unlink(missing_ok=True)
        if refused:
            raise TransferError(
                f"the destination store refused to abort {len(refused)} multipart upload(s) after retries "
                f"(first: {refused[0]}); no object was written for them; abort them with the store's "
                "tools or an expiry rule for incomplete uploads"
            )

    def _keeps_state(self) -> bool:
        resumable = self.state_key is not None and self.options.keep_on_failure
        return resumable and not self._succeeded and not self._state_bad

    def _state_owner(self) -> str | None:
        """The transfer that wrote the durable state (None: there is none). Another one than this job
        means a later try took over (this job is torn down late, e.g. by a sweeper): its uploads are
        that try's to finish, not ours to abort, and its state not ours to write."""
        from airflow_skyplane.transfer import resume

        assert self.state_key is not None
        try:
            data = resume.load_state(self.destination, self.state_key)
        except (SkyplaneError, OSError):
            return self.transfer_id  # cannot tell: act as before resume existed
        return data.get("transfer_id") if data is not None else None

    def run(self) -> TransferResult:
        try:
            self.start()
            while not self.poll():
                time.sleep(0.05)
            return self.finish()
        finally:
            self.close()
