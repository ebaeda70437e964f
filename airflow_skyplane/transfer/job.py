"""The transfer job: the controller of one transfer, run inside the Airflow task.

For one source and one destination over an overlay of gateways (:mod:`.overlay`), :meth:`TransferJob.start`
records the objects and cuts the manifest of chunks, beginning the multipart uploads
(:mod:`.manifest`), makes the programs and starts the gateways downstream first (:mod:`.wiring`,
through a :class:`~airflow_skyplane.compute.launcher.GatewayLauncher`); :meth:`~TransferJob.poll`
watches the reading gateway until every chunk is acknowledged, which happens only once it is written
(:mod:`.control`); :meth:`~TransferJob.finish` completes the uploads from the writer's receipts and
verifies every object (:mod:`.verify`); :meth:`~TransferJob.close` always stops the gateways and, if
anything failed, aborts every upload begun, so the destination holds complete objects only.

**Resume** (``state_key``, :mod:`.resume`): the job checkpoints its uploads and its writer's receipts
into the destination store; a job started with the key of a state a failed try left continues it,
sending only the chunks not recorded there. A failed job with ``keep_on_failure`` keeps its uploads
and state for the retry; without, it aborts the uploads and deletes the state.
"""

from __future__ import annotations

import json
import logging
import os
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
from airflow_skyplane.transfer import control, credentials, manifest, resume, verify, wiring
from airflow_skyplane.transfer.control import Receipt
from airflow_skyplane.transfer.credentials import RelayCredentials
from airflow_skyplane.transfer.options import TransferKnobs, TransferOptions
from airflow_skyplane.transfer.overlay import Hop, Overlay, overlay_from_plan
from airflow_skyplane.transfer.resume import ResumeLedger
from airflow_skyplane.transfer.summary import TransferResult
from airflow_skyplane.transfer.tracker import Progress, aggregate

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Hop", "Overlay", "TransferJob", "TransferResult", "overlay_from_plan"]

log = logging.getLogger(__name__)


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

        written = manifest.write_manifest(
            self.workdir, listed, source_prefix=self.source_prefix, destination=self.destination,
            destination_prefix=self.destination_prefix, chunk_size=self.options.chunk_size,
            objects=self.objects, uploads=self.uploads, on_object=take_over, kept=self.resume.kept,
        )  # fmt: skip
        self.chunks_to_send = written.chunks
        if previous is not None:
            self.resume.drop_unlisted(previous, self.objects)
        self.bytes_total = sum(o.size for o in self.objects.values())
        self._save()  # the uploads begun are recorded before any gateway runs: a kill now loses none
        self.checkpoint(force=True)  # ... and in the durable state, for a retry on another worker
        if self.chunks_to_send:
            self.started = wiring.start_gateways(
                wiring.build_programs(self._wiring(written.path), self.backend), self.overlay, self.backend
            )
            self._save()

    def _wiring(self, manifest_path: Path) -> wiring.Wiring:
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
            overlay=self.overlay,
            options=self.options,
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
        job.objects = manifest.read_objects(folder)
        job.started = dict(backend.gateways)
        job.credentials = RelayCredentials.load(folder)
        return job

    def progress(self) -> Progress:
        statuses = {gid: control.status(gw) for gid, gw in self.started.items()}
        if not statuses:
            return Progress(0, 0, 0, 0, 0.0, 0, 0, ())
        return aggregate(statuses, [self.overlay.source], self.bytes_total - self.resume.resumed_bytes)

    def poll(self) -> bool:
        """True once every chunk is written at the destination; raise TransferError on a failure."""
        if not self.started:
            return True  # nothing to send
        reader = self.started[self.overlay.source]
        status = control.status(reader)
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
            raise control.exit_error(self.started[dead[0]])
        if status["errors"]:
            errors = list(dict.fromkeys(status["errors"]))
            raise TransferError(f"gateway {reader.gateway_id} failed: {errors[:3]}")
        self.checkpoint()
        if status["done"]:
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
        """Append the writer's receipts this job has not seen yet."""
        writer = self.started.get(self.overlay.destination)
        if writer is None or not writer.alive():  # a dead writer's receipts died with it
            return
        self.receipts.extend(control.receipts(writer, len(self.receipts)))

    def checkpoint(self, *, force: bool = False) -> bool:
        """Write the durable state when it is due (or ``force``); True when it was written."""
        if not self.resume.active:
            return False
        if self.started:
            self._fetch_receipts()
        if not (force or self.resume.due(len(self.receipts))):
            return False
        return self.resume.checkpoint(self.transfer_id, self.objects, self.uploads, self.receipts)

    def finish(self) -> TransferResult:
        """Complete the uploads and verify every object; call once :meth:`poll` says done."""
        statuses = {gid: control.status(gw) for gid, gw in self.started.items()}
        self._fetch_receipts()
        try:
            verified = verify.complete_and_verify(
                self.sides, self.objects, self.uploads, self.resume.carried + self.receipts
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
            gateways=statuses,
            resumed_bytes=self.resume.resumed_bytes,
            discarded=self.resume.discarded,
        )

    def close(self) -> None:
        """Stop the gateways; abort every upload not completed (so no partial object appears); delete
        the secrets. Idempotent; runs after success and failure alike.

        A resumable job that failed and will be retried (``keep_on_failure``) instead records what its
        writer wrote in the durable state, and keeps its uploads for the retry."""
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
                time.sleep(0.05)
            return self.finish()
        finally:
            self.close()
