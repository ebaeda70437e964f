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
   destination holds complete objects only.

The overlay is a list of hops between named gateways; :func:`overlay_from_plan` makes it from a
:class:`~airflow_skyplane.planner.plan.TransferPlan`.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential

from airflow_skyplane.exceptions import (
    BucketNotFoundError,
    CredentialsError,
    InvalidInputError,
    ObjectNotFoundError,
    StorageError,
    TransferError,
)
from airflow_skyplane.gateway import protocol as proto
from airflow_skyplane.gateway import tls
from airflow_skyplane.gateway.program import Endpoint, NextHop, Program
from airflow_skyplane.storage.base import Checksum, MultipartUpload, ObjectInfo, ObjectStore, PartInfo
from airflow_skyplane.storage.checksums import from_part_crc32cs, from_part_md5s
from airflow_skyplane.transfer.chunks import DEFAULT_CHUNK_SIZE, batch_small, plan_chunks
from airflow_skyplane.transfer.tracker import Progress, aggregate


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


def _get(gateway: Any, path: str) -> Any:
    url = f"http://{gateway.control_host}:{gateway.control_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - a gateway's control endpoint
            return json.loads(r.read())
    except OSError as err:
        state = "is running" if gateway.alive() else f"exited with code {gateway.exit_code}"
        raise TransferError(
            f"lost the status endpoint of gateway {gateway.gateway_id} ({err}); it {state}; its log ends "
            f"with:\n{gateway.log_tail()}"
        ) from None


def _post(gateway: Any, path: str) -> None:
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
    """

    def __init__(
        self,
        source: ObjectStore,
        source_prefix: str,
        destination: ObjectStore,
        destination_prefix: str,
        *,
        backend: Any,
        workdir: str | os.PathLike[str],
        overlay: Overlay | None = None,
        objects: Iterable[ObjectInfo] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compress: str = "auto",
        encrypt: bool = True,
        max_inflight_mb: int = 128,
        source_spec: dict[str, Any] | None = None,
        destination_spec: dict[str, Any] | None = None,
        test_faults: dict[str, dict[str, Any]] | None = None,
        timeout: float = 3600.0,
        expires_at: float | None = None,
        watch_pid: int | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        progress_every_s: float = 10.0,
    ) -> None:
        self.source, self.source_prefix = source, source_prefix
        self.destination, self.destination_prefix = destination, destination_prefix
        self.backend = backend
        self.workdir = Path(workdir)
        self.overlay = overlay or Overlay.direct()
        self.selection = objects
        self.chunk_size = chunk_size
        self.compress, self.encrypt, self.max_inflight_mb = compress, encrypt, max_inflight_mb
        self.test_faults = test_faults or {}
        self.timeout = timeout
        self.expires_at = expires_at
        self.watch_pid = watch_pid
        self.on_progress = on_progress
        self.progress_every_s = progress_every_s
        self.bytes_total = 0
        self.transfer_id = uuid.uuid4().hex
        self._source_spec, self._destination_spec = source_spec, destination_spec
        self.uploads: dict[str, MultipartUpload] = {}
        self.objects: dict[str, ObjectInfo] = {}
        self.started: dict[str, Any] = {}
        self.started_at = 0.0
        self._next_report = 0.0
        self._last_status: dict[str, Any] = {}

    # -- steps -----------------------------------------------------------------------------------
    def _inventory(self) -> Path:
        objects = self.objects
        manifest = self.workdir / "manifest.jsonl"
        listed = self.source.list(self.source_prefix) if self.selection is None else self.selection
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
                    yield rel, info.size

            chunks = plan_chunks(listing(), self.chunk_size, min_part_size=self.destination.min_part_size)
            fd = os.open(manifest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for batch in batch_small(chunks):
                    entries = [
                        {"chunk_id": c.chunk_id, "key": c.key, "offset": c.offset, "length": c.length,
                         "object_size": c.object_size, "part_number": c.part_number, "parts": c.parts}
                        for c in batch
                    ]  # fmt: skip
                    f.write(json.dumps(entries[0] if len(entries) == 1 else {"chunks": entries}) + "\n")
                    for c in batch:
                        if c.part_number == 1:
                            self.uploads[c.key] = self.destination.begin_multipart(
                                self.destination_prefix + c.key
                            )
        return manifest

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
                "compress": self.compress,
                "encrypt": self.encrypt,
                "max_inflight_mb": self.max_inflight_mb,
                "chunk_size_mb": max(1, -(-self.chunk_size // (1024 * 1024))),
                "next_hops": [],
            }
            if not reads:
                raw["listen"] = {
                    "host": "0.0.0.0" if self.overlay.regions.get(gid) else "127.0.0.1",
                    "port": 0,
                }
            if (reads or writes) and self.encrypt:
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
            if self.watch_pid is not None and not getattr(self.backend, "via_ssh", False):
                raw["watch_pid"] = self.watch_pid
            if gid in self.test_faults:
                raw["test_faults"] = self.test_faults[gid]
            programs[gid] = raw
        return programs

    def _control_host(self, gid: str) -> str:
        """Loopback, or in the emulated WAN the host-facing control address of the gateway's region."""
        wan = getattr(self.backend, "wan", None)
        region = self.overlay.regions.get(gid)
        return wan.control_address(region) if wan is not None and region else "127.0.0.1"

    def _addresses(self, gid: str) -> list[str]:
        wan = getattr(self.backend, "wan", None)
        region = self.overlay.regions.get(gid)
        if wan is None or region is None:
            return []
        return [
            wan.address(self.overlay.regions[h.src] or "", region) for h in self.overlay.hops if h.dst == gid
        ]

    def _hop_endpoint(self, hop: Hop, listen_port: int) -> Endpoint:
        wan = getattr(self.backend, "wan", None)
        src_region, dst_region = self.overlay.regions.get(hop.src), self.overlay.regions.get(hop.dst)
        if wan is not None and src_region and dst_region:
            return Endpoint(wan.address(src_region, dst_region), listen_port)
        return Endpoint("127.0.0.1", listen_port)

    def _start(self, programs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        started: dict[str, Any] = {}
        for gid in self.overlay.gateways():
            raw = programs[gid]
            hops = []
            for hop in self.overlay.hops:
                if hop.src == gid:
                    endpoint = self._hop_endpoint(hop, started[hop.dst].listen_port)
                    hops.append(NextHop(hop.dst, endpoint.host, endpoint.port, hop.connections, hop.weight))
            raw["next_hops"] = [h.__dict__ for h in hops]
            program = Program.parse(raw)
            started[gid] = self.backend.start(program, region=self.overlay.regions.get(gid))
        return started

    def _complete_and_verify(self, objects: dict[str, ObjectInfo], receipts: list[dict[str, Any]]) -> int:
        by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in receipts:
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
        for key, src in objects.items():
            try:
                verified += self._verify_one(key, src, by_key.get(key, []))
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
        if self.objects:
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
        }
        tmp = self.workdir / "job.json.tmp"
        _private_write(tmp, json.dumps(state))
        os.replace(tmp, self.workdir / "job.json")

    @classmethod
    def attach(
        cls, workdir: str | os.PathLike[str], source: ObjectStore, destination: ObjectStore, *, backend: Any
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
        with (folder / "objects.jsonl").open(encoding="utf-8") as f:
            job.objects = dict(_info_from_json(json.loads(line)) for line in f)
        job.started = dict(backend.gateways)
        return job

    def progress(self) -> Progress:
        statuses = {gid: _get(gw, "/status") for gid, gw in self.started.items()}
        if not statuses:
            return Progress(0, 0, 0, 0, 0.0, 0, 0, ())
        return aggregate(statuses, [self.overlay.source], self.bytes_total)

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
            gw = self.started[dead[0]]
            raise TransferError(
                f"gateway {dead[0]} exited with code {gw.exit_code} before the transfer finished; "
                f"its log ends with:\n{gw.log_tail()}"
            )
        if status["errors"]:
            errors = list(dict.fromkeys(status["errors"]))
            raise TransferError(f"gateway {reader.gateway_id} failed: {errors[:3]}")
        if status["done"]:
            return True
        if time.time() - self.started_at > self.timeout:
            raise TransferError(f"transfer did not finish in {self.timeout:.0f} s (status {status})")
        return False

    def finish(self) -> TransferResult:
        """Complete the uploads and verify every object; call once :meth:`poll` says done."""
        statuses = {gid: _get(gw, "/status") for gid, gw in self.started.items()}
        receipts = _get(self.started[self.overlay.destination], "/receipts") if self.started else []
        verified = self._complete_and_verify(self.objects, receipts)
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
        )

    def close(self) -> None:
        """Stop the gateways; abort every upload not completed (so no partial object appears); delete
        the secrets. Idempotent; runs after success and failure alike."""
        for gw in self.started.values():
            if gw.control_port and gw.alive():
                try:
                    _post(gw, "/stop")
                except OSError:
                    pass
        self.backend.teardown()
        refused: list[str] = []
        for upload in list(self.uploads.values()):  # only what was not completed: a failed transfer
            try:
                _abort(self.destination, upload)
            except StorageError as err:  # after retries: keep going, every other upload still goes
                refused.append(f"{upload.key}: {err}")
        self.uploads.clear()
        tidy = getattr(self.destination, "tidy", None)
        if tidy is not None:
            tidy()
        for name in ("transfer.key", "uploads.json", "job.json"):
            (self.workdir / name).unlink(missing_ok=True)
        if refused:
            raise TransferError(
                f"the destination store refused to abort {len(refused)} multipart upload(s) after retries "
                f"(first: {refused[0]}); no object was written for them; abort them with the store's "
                "tools or an expiry rule for incomplete uploads"
            )

    def run(self) -> TransferResult:
        try:
            self.start()
            while not self.poll():
                time.sleep(0.05)
            return self.finish()
        finally:
            self.close()
