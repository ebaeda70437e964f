"""The transfer job: the controller of one transfer, run inside the Airflow task.

For one source and one destination over an overlay of gateways (:mod:`.overlay`), :meth:`TransferJob.start`
records the objects and cuts the manifest of chunks, beginning the multipart uploads
(:mod:`.manifest`, with the chunk size, connections, windows, budgets and workers derived from the
plan and the work by :mod:`.tuning`), makes the programs and starts the gateways downstream first
(:mod:`.wiring`, through a :class:`~airflow_skyplane.compute.launcher.GatewayLauncher`);
:meth:`~TransferJob.poll` watches the reading and the writing gateway until the writer has written
every chunk (:mod:`.control`), while each object is completed and verified as soon as the writer's
receipts cover it (:mod:`.completion`, :mod:`.verify`); :meth:`~TransferJob.finish` waits for the last
ones; :meth:`~TransferJob.close` always stops the gateways and, if anything failed, aborts every upload
not completed, so the destination holds complete objects only.

**Resume** (``state_key``, :mod:`.resume`): the job checkpoints its uploads and its writer's receipts
into the destination store; a job started with the key of a state a failed try left continues it,
sending only the chunks not recorded there. A failed job with ``keep_on_failure`` keeps its uploads
and state for the retry; without, it aborts the uploads and deletes the state.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_skyplane.compute.launcher import GatewayHandle, GatewayLauncher
from airflow_skyplane.exceptions import SkyplaneError, StorageError, TransferError
from airflow_skyplane.storage.base import MultipartUpload, ObjectInfo, ObjectStore
from airflow_skyplane.storage.kinds import StoreSpec, store_kind
from airflow_skyplane.transfer import control, credentials, manifest, resume, tuning, verify, wiring
from airflow_skyplane.transfer.completion import Completion
from airflow_skyplane.transfer.control import GatewayStatus, Receipt
from airflow_skyplane.transfer.credentials import RelayCredentials
from airflow_skyplane.transfer.options import TransferKnobs, TransferOptions
from airflow_skyplane.transfer.overlay import Hop, Overlay, overlay_from_plan
from airflow_skyplane.transfer.resume import ResumeLedger
from airflow_skyplane.transfer.summary import TransferResult, Unverified
from airflow_skyplane.transfer.tracker import Progress, aggregate, complete, first_failure

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Hop", "Overlay", "TransferJob", "TransferResult", "overlay_from_plan"]

log = logging.getLogger(__name__)
#: seconds between two looks at the gateways (each look is an HTTP request to the reader and writer)
POLL_S = 0.1


class TransferJob:
    """One transfer from a source prefix to a destination prefix over an overlay of gateways.

    :meth:`run` does it all in this process. A transfer can also be conducted in steps, possibly from
    different processes: :meth:`start` (inventory, uploads, gateways; writes ``job.json`` in the
    work folder), :meth:`poll` until done, then :meth:`finish` (complete and verify) and always
    :meth:`close`; :meth:`attach` rebuilds the job from its work folder in another process (the
    deferrable operator's ``execute_complete``, the sensor).

    :param backend: what runs the gateways (a :class:`~airflow_skyplane.compute.launcher.GatewayLauncher`).
    :param objects: the source objects to send (full keys, under ``source_prefix``), e.g. a listing
        filtered by include/exclude patterns or by a diff against the destination; by default every
        object under ``source_prefix``.
    :param options: how the bytes move (:class:`~airflow_skyplane.transfer.options.TransferOptions`);
        keywords named like its fields (``chunk_size=``, ``compress=`` ...) override some of them.
    :param source_spec: the store spec the reading gateway opens, instead of one made from ``source``
        (``destination_spec``: the same for the writing gateway).
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
        source_spec: StoreSpec | None = None,
        destination_spec: StoreSpec | None = None,
        test_faults: Mapping[str, Mapping[str, object]] | None = None,
        expires_at: float | None = None,
        watch_pid: int | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        progress_every_s: float = 10.0,
        state_key: str | None = None,
        **knobs: Unpack[TransferKnobs],
    ) -> None:
        self.source, self.source_prefix = source, source_prefix
        self.destination, self.destination_prefix = destination, destination_prefix
        self.sides = verify.Sides(source, source_prefix, destination, destination_prefix)
        self.backend = backend
        self.workdir = Path(workdir)
        self.overlay = overlay or Overlay.direct()
        self.selection = objects
        self.options = replace(options or TransferOptions(), **knobs)
        self.test_faults = test_faults or {}
        self.expires_at, self.watch_pid = expires_at, watch_pid
        self.on_progress, self.progress_every_s = on_progress, progress_every_s
        self._source_spec, self._destination_spec = source_spec, destination_spec
        self.transfer_id = uuid.uuid4().hex
        self.bytes_total = 0
        self.chunks_to_send = 0
        self.uploads: dict[str, MultipartUpload] = {}
        self.objects: dict[str, ObjectInfo] = {}
        self.started: dict[str, GatewayHandle] = {}
        self.started_at = 0.0
        self._next_report = 0.0
        #: the receipts this try's writer returned (a previous try's kept ones: ``resume.carried``)
        self.receipts: list[Receipt] = []
        self.resume = ResumeLedger(
            destination, state_key, source_prefix=source_prefix, destination_prefix=destination_prefix,
            chunk_size=self.options.chunk_size, every_s=self.options.state_every_s,
            every_chunks=self.options.state_every_chunks,
        )  # fmt: skip
        self._succeeded = False
        #: the settings derived for this transfer (:meth:`start`)
        self.tuning: tuning.Tuning | None = None
        # objects are completed and verified as their last chunk is written (None: a job attached in
        # another process, which completes and verifies everything in finish())
        self._completion: Completion | None = None
        self._uploads_lock = threading.Lock()
        self._fetched_at = 0.0
        self._next_sweep = 0.0
        #: the gateways' store credentials (minted when the programs are made)
        self.credentials: RelayCredentials | None = None

    # -- conducting ------------------------------------------------------------------------------
    def start(self) -> None:
        """Inventory, begin the uploads, start the gateways; record the job in ``job.json``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        self.started_at = time.time()
        listed = self.source.list(self.source_prefix) if self.selection is None else self.selection
        previous = self.resume.previous()

        def take_over(rel: str, info: ObjectInfo) -> None:  # what the previous try wrote of it
            if previous is not None:
                self.resume.take_over(rel, info, previous, self.uploads)

        completion = self._completion = Completion(self._finish_object, self._discard_bad)
        written = manifest.write_manifest(
            self.workdir, listed, source_prefix=self.source_prefix, destination=self.destination,
            destination_prefix=self.destination_prefix, chunk_size=self._tune, objects=self.objects,
            uploads=self.uploads, on_object=take_over, kept=self.resume.kept,
            on_chunk=lambda c: completion.expect(c.key, c.parts),
        )  # fmt: skip
        self.resume.chunk_size = written.chunk_size
        self.chunks_to_send = written.chunks
        completion.add(self.resume.carried)
        if previous is not None:
            self.resume.drop_unlisted(previous, self.objects)
        self.bytes_total = sum(o.size for o in self.objects.values())
        self._save()  # the uploads begun are recorded before any gateway runs: a kill now loses none
        self.checkpoint(force=True)  # ... and in the durable state, for a retry on another worker
        if self.chunks_to_send:
            programs = wiring.build_programs(self._wiring(written.path), self.backend)
            self.started = wiring.start_gateways(programs, self._tuned_overlay(), self.backend)
            self._save()

    def _tune(self, work: tuning.Work) -> int:
        """Decide the data plane's settings once the work is listed; the chunk size to cut it with."""
        regions = self.overlay.regions
        hops = [
            tuning.HopSpec(h.src, h.dst, h.connections, h.gbps, tuning.rtt_between(regions, h.src, h.dst))
            for h in self.overlay.hops
        ]
        self.tuning = tuning.tune(
            hops, self.overlay.source, self.overlay.destination, work,
            chunk_size=self.resume.chunk_size or self.options.chunk_size,
            min_part_size=self.destination.min_part_size, max_inflight_mb=self.options.max_inflight_mb,
            shared_cpus=self.backend.shared_cpus,
            workers=self.backend.gateway_workers,
        )  # fmt: skip
        return self.tuning.chunk_size

    def _tuned_overlay(self) -> Overlay:
        """The overlay with the connections the tuning chose for each hop."""
        assert self.tuning is not None
        connections = self.tuning.connections
        hops = [replace(h, connections=connections[(h.src, h.dst)]) for h in self.overlay.hops]
        return replace(self.overlay, hops=hops)

    def _wiring(self, manifest_path: Path) -> wiring.Wiring:
        assert self.tuning is not None  # decided while the manifest was cut
        relay_credentials = self.credentials = RelayCredentials(
            self.workdir,
            transfer_id=self.transfer_id,
            expires_at=self.expires_at or time.time() + self.options.timeout,
            mode=self.options.relay_credentials,
            gcp_sts_endpoint=self.options.gcp_sts_endpoint,
        )

        def store_spec(role: str, store: ObjectStore, prefix: str) -> StoreSpec:
            # the store without a secret, and its credential file: minted for this role of this transfer
            return relay_credentials.spec(role, store, prefix, store_kind(store.scheme).spec(store))

        return wiring.Wiring(
            transfer_id=self.transfer_id,
            workdir=self.workdir,
            overlay=self._tuned_overlay(),
            options=self.options,
            tuning=self.tuning,
            source_spec=self._source_spec or store_spec("source", self.source, self.source_prefix),
            source_prefix=self.source_prefix,
            manifest=manifest_path,
            destination_spec=self._destination_spec
            or store_spec("destination", self.destination, self.destination_prefix),
            destination_prefix=self.destination_prefix,
            uploads=self.uploads,
            expires_at=self.expires_at,
            watch_pid=self.watch_pid,
            test_faults=self.test_faults,
        )

    def _save(self) -> None:
        state = {
            "transfer_id": self.transfer_id,
            "source_prefix": self.source_prefix,
            "destination_prefix": self.destination_prefix,
            "overlay": {"source": self.overlay.source, "destination": self.overlay.destination},
            "bytes_total": self.bytes_total,
            "started_at": self.started_at,
            "uploads": {k: u.upload_id for k, u in self.uploads.items()},
            "keep_on_failure": self.options.keep_on_failure,
            "chunks_to_send": self.chunks_to_send,
            **self.resume.save(self.workdir),
        }
        tmp = self.workdir / "job.json.tmp"
        manifest.private_write(tmp, json.dumps(state))
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
            keep_on_failure=state.get("keep_on_failure", True),
        )  # fmt: skip
        job.transfer_id = state["transfer_id"]
        job.bytes_total = state["bytes_total"]
        job.started_at = state["started_at"]
        job.uploads = {
            k: MultipartUpload(job.destination_prefix + k, upload_id)
            for k, upload_id in state["uploads"].items()
        }
        job.resume.restore(state, folder)
        job.chunks_to_send = state.get("chunks_to_send", 0)
        job.objects = manifest.read_objects(folder)
        job.started = dict(backend.gateways)
        job.credentials = RelayCredentials.load(folder)
        return job

    def progress(self) -> Progress:
        statuses = {gid: control.status(gw) for gid, gw in self.started.items()}
        if not statuses:
            return Progress(0, 0, 0, 0, 0.0, 0, 0, ())
        writers = [self.overlay.destination] if self.overlay.destination in statuses else None
        return aggregate(
            statuses, [self.overlay.source], self.bytes_total - self.resume.resumed_bytes, writers
        )

    def _statuses(self) -> dict[str, GatewayStatus]:
        """The reader's and the writer's status; every gateway's once a second, or when one failed."""
        ends = (self.overlay.source, self.overlay.destination)
        statuses = {gid: control.status(self.started[gid]) for gid in ends if gid in self.started}
        now = time.monotonic()
        if now >= self._next_sweep or any(s["errors"] for s in statuses.values()):
            self._next_sweep = now + 1.0
            others = {gid: gw for gid, gw in self.started.items() if gid not in ends}
            statuses.update({gid: control.status(gw) for gid, gw in others.items()})
        return statuses

    def poll(self) -> bool:
        """True once every chunk is written at the destination (the writing gateway counts what it
        wrote); raise TransferError on a failure, naming the gateway that failed first."""
        if not self.started:
            return True  # nothing to send
        statuses = self._statuses()
        status = statuses[self.overlay.source]
        done = complete(status, statuses[self.overlay.destination], self.chunks_to_send)
        now = time.monotonic()
        if self.on_progress is not None and (done or now >= self._next_report):
            self.on_progress(self.progress())
            self._next_report = now + self.progress_every_s
        dead = [gid for gid, gw in self.started.items() if not gw.alive()]
        grace = time.monotonic() + 1.0
        while first_failure(statuses) and not dead and time.monotonic() < grace:
            time.sleep(0.05)  # a peer that vanished shows as errors a moment before it shows as dead
            dead = [gid for gid, gw in self.started.items() if not gw.alive()]
        if dead and not done:  # the cause first: a dead gateway makes the others report errors
            raise control.exit_error(self.started[dead[0]])
        failure = first_failure(statuses)
        if failure is not None:
            raise TransferError(f"gateway {failure[0]} failed: {failure[1][:3]}")
        self._fetch_receipts()
        self.checkpoint()
        if done:
            return True
        self.renew_credentials()
        if time.time() - self.started_at > self.options.timeout:
            raise TransferError(f"transfer did not finish in {self.options.timeout:.0f} s (status {status})")
        return False

    def renew_credentials(self) -> list[str]:
        """Renew the gateways' store credentials that near their expiry (see
        :mod:`~airflow_skyplane.transfer.credentials`); the roles renewed."""
        if self.credentials is None or not self.credentials.due():
            return []
        stores = {"source": self.source, "destination": self.destination}
        return self.credentials.renew(stores, self.started.values())

    def _fetch_receipts(self) -> None:
        """Append the writer's receipts this job has not seen yet; their objects complete as they can."""
        writer = self.started.get(self.overlay.destination)
        if writer is None or not writer.alive():  # a dead writer's receipts died with it
            return
        if time.monotonic() - self._fetched_at < 0.02:
            return  # fetched just now (poll, then checkpoint)
        new = control.receipts(writer, len(self.receipts))
        self._fetched_at = time.monotonic()
        self.receipts.extend(new)
        if self._completion is not None:
            self._completion.add(new)

    def _finish_object(self, key: str, receipts: list[Receipt]) -> str | None:
        """Complete (when striped) and verify one object once every chunk of it is written."""
        with self._uploads_lock:
            upload = self.uploads.get(key)
        checked = verify.finish_object(self.sides, key, self.objects[key], upload, receipts)
        if upload is not None:
            with self._uploads_lock:
                self.uploads.pop(key, None)
        return checked

    def _discard_bad(self, key: str, err: TransferError) -> TransferError:
        return verify.discard_bad(self.sides, key, err)

    def checkpoint(self, *, force: bool = False) -> bool:
        """Write the durable state when it is due (or ``force``); True when it was written."""
        if not self.resume.active:
            return False
        if self.started:
            self._fetch_receipts()
        if not (force or self.resume.due(len(self.receipts))):
            return False
        with self._uploads_lock:  # objects complete (and leave ``uploads``) meanwhile
            uploads = dict(self.uploads)
        return self.resume.checkpoint(self.transfer_id, self.objects, uploads, self.receipts)

    def finish(self) -> TransferResult:
        """Complete the uploads and verify every object; call once :meth:`poll` says done."""
        statuses = {gid: control.status(gw) for gid, gw in self.started.items()}
        self._fetch_receipts()
        unverified = Unverified()
        try:
            if self._completion is not None:
                verified = self._completion.finish(self.objects, unverified)
            else:  # attached in another process: everything is completed and verified here
                verified = verify.complete_and_verify(
                    self.sides, self.objects, self.uploads, self.resume.carried + self.receipts, unverified
                )
        except TransferError:
            self.resume.bad = True  # what was recorded does not hold up: a retry starts over
            raise
        if self.resume.key is not None:
            if self.resume.resumed:
                self.resume.sweep_dangling(self.objects)
            self.resume.delete()
        self._succeeded = True
        reader = statuses.get(self.overlay.source, {})
        return TransferResult(
            transfer_id=self.transfer_id,
            objects=len(self.objects),
            bytes=self.bytes_total,
            wire_bytes=reader.get("wire_bytes", 0),
            seconds=time.time() - self.started_at,
            resends=sum(s.get("resends", 0) for s in statuses.values()),
            checksums_verified=verified,
            unverified=unverified,
            gateways=statuses,
            resumed_bytes=self.resume.resumed_bytes,
            discarded=self.resume.discarded,
            overlay=self.overlay,
        )

    def close(self) -> None:
        """Stop the gateways; abort every upload not completed (so no partial object appears); delete
        the secrets. Idempotent; runs after success and failure alike.

        A resumable job that failed and will be retried (``keep_on_failure``) instead records what its
        writer wrote in the durable state, and keeps its uploads for the retry."""
        if self._completion is not None:
            self._completion.close()  # nothing completes while the uploads are aborted or recorded
        keep = self.resume.keeps(succeeded=self._succeeded, keep_on_failure=self.options.keep_on_failure)
        owner = self.resume.owner(self.transfer_id) if not self._succeeded else None
        if keep and owner == self.transfer_id:  # never over a later try's state, nor bring one back
            try:
                self.checkpoint(force=True)
            except (TransferError, SkyplaneError, OSError) as err:  # the last checkpoint stands
                log.warning("could not checkpoint the transfer state at failure: %s", str(err)[:300])
        for gw in self.started.values():
            control.stop(gw)
        self.backend.teardown()
        refused: list[str] = []
        if not keep and owner in (None, self.transfer_id):
            for upload in list(self.uploads.values()):  # only what was not completed: a failed transfer
                try:
                    manifest.abort_upload(self.destination, upload)
                except StorageError as err:  # after retries: keep going, every other upload still goes
                    refused.append(f"{upload.key}: {err}")
            if not self._succeeded:
                self.resume.delete()
        self.uploads.clear()
        self.destination.tidy()
        if self.credentials is not None:
            self.credentials.close()
        for name in ("job.json", resume.CARRIED_FILE, *wiring.SECRET_FILES, *credentials.FILES):
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
                time.sleep(POLL_S)
            return self.finish()
        finally:
            self.close()
