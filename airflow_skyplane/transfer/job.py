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

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from airflow_skyplane.compute.launcher import GatewayHandle, GatewayLauncher
from airflow_skyplane.exceptions import SkyplaneError, TransferError
from airflow_skyplane.storage.base import MultipartUpload, ObjectInfo, ObjectStore
from airflow_skyplane.storage.kinds import StoreSpec
from airflow_skyplane.transfer import control, credentials, manifest, record, resume, tuning, verify, wiring
from airflow_skyplane.transfer.completion import Landing
from airflow_skyplane.transfer.credentials import RelayCredentials
from airflow_skyplane.transfer.options import TransferKnobs, TransferOptions
from airflow_skyplane.transfer.overlay import Hop, Overlay, overlay_from_plan
from airflow_skyplane.transfer.resume import ResumeLedger
from airflow_skyplane.transfer.summary import TransferResult, Unverified
from airflow_skyplane.transfer.tracker import Progress, complete, transfer_progress

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Hop", "Overlay", "TransferJob", "TransferResult", "overlay_from_plan"]

log = logging.getLogger(__name__)
R = TypeVar("R", covariant=True)
#: seconds between two looks at the gateways (each look is an HTTP request to the reader and writer)
POLL_S = 0.1


class TransferJob:
    """One transfer from a source prefix to a destination prefix over an overlay of gateways.

    :meth:`run` does it all in this process. A transfer can also be conducted in steps, possibly from
    different processes: :meth:`start` (inventory, uploads, gateways; writes ``job.json`` in the
    work folder, :mod:`.record`), :meth:`poll` until done, then :meth:`finish` (complete and verify)
    and always :meth:`close`; :meth:`attach` rebuilds the job from its work folder in another process
    (the deferrable operator's ``execute_complete``, the sensor).

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
        self.objects_to_send = 0
        self.uploads: dict[str, MultipartUpload] = {}
        self.objects: dict[str, ObjectInfo] = {}
        self.started: dict[str, GatewayHandle] = {}
        self.started_at = 0.0
        self._next_report = 0.0
        self.resume = ResumeLedger(
            destination, state_key, source_prefix=source_prefix, destination_prefix=destination_prefix,
            chunk_size=self.options.chunk_size, every_s=self.options.state_every_s,
            every_chunks=self.options.state_every_chunks,
        )  # fmt: skip
        self._succeeded = False
        #: the settings derived for this transfer (:meth:`start`)
        self.tuning: tuning.Tuning | None = None
        #: the writer's receipts, and the objects they complete (:mod:`.completion`)
        sides = verify.Sides(source, source_prefix, destination, destination_prefix)
        self.landing = Landing(sides, self.objects, self.uploads)
        self.watch = control.Watch(self.overlay.source, self.overlay.destination)
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

        completion = self.landing.begin()
        written = manifest.write_manifest(
            self.workdir, listed, source_prefix=self.source_prefix, destination=self.destination,
            destination_prefix=self.destination_prefix, chunk_size=self._tune, objects=self.objects,
            uploads=self.uploads, on_object=take_over, kept=self.resume.kept,
            on_chunk=lambda c: completion.expect(c.key, c.parts),
            batch_objects=lambda: self.tuning.batch_objects if self.tuning else tuning.MAX_BATCH_OBJECTS,
        )  # fmt: skip
        self.resume.chunk_size = written.chunk_size
        self.chunks_to_send, self.objects_to_send = written.chunks, written.objects
        completion.add(self.resume.carried)
        if previous is not None:
            self.resume.drop_unlisted(previous, self.objects)
        self.bytes_total = sum(o.size for o in self.objects.values())
        self._save()  # the uploads begun are recorded before any gateway runs: a kill now loses none
        self.checkpoint(force=True)  # ... and in the durable state, for a retry on another worker
        if self.chunks_to_send:
            programs = wiring.build_programs(self._wiring(written.path), self.backend)
            self.started = wiring.start_gateways(programs, self._tuned(), self.backend)
            self._save()

    def _tune(self, work: tuning.Work) -> int:
        """Decide the data plane's settings once the work is listed; the chunk size to cut it with."""
        self.tuning = tuning.tune_overlay(
            self.overlay, work, chunk_size=self.resume.chunk_size or self.options.chunk_size,
            min_part_size=self.destination.min_part_size, max_inflight_mb=self.options.max_inflight_mb,
            shared_cpus=self.backend.shared_cpus, workers=self.backend.gateway_workers,
            write_rate=self.destination.write_rate,
        )  # fmt: skip
        return self.tuning.chunk_size

    def _tuned(self) -> Overlay:
        assert self.tuning is not None  # decided while the manifest was cut
        return tuning.tuned_overlay(self.overlay, self.tuning)

    def _wiring(self, manifest_path: Path) -> wiring.Wiring:
        assert self.tuning is not None
        expires_at = self.expires_at or time.time() + self.options.timeout
        # the gateways' store credentials, minted for this transfer (:mod:`.credentials`)
        minted = self.credentials = RelayCredentials.for_transfer(
            self.workdir, self.transfer_id, expires_at, self.options
        )
        return wiring.Wiring(
            transfer_id=self.transfer_id,
            workdir=self.workdir,
            overlay=self._tuned(),
            options=self.options,
            tuning=self.tuning,
            source_spec=self._source_spec or minted.spec("source", self.source, self.source_prefix),
            source_prefix=self.source_prefix,
            manifest=manifest_path,
            destination_spec=self._destination_spec
            or minted.spec("destination", self.destination, self.destination_prefix),
            destination_prefix=self.destination_prefix,
            uploads=self.uploads,
            expires_at=self.expires_at,
            watch_pid=self.watch_pid,
            test_faults=self.test_faults,
        )

    def _save(self) -> None:
        """Record the job in its work folder (:mod:`.record`), for :meth:`attach`."""
        record.write(self.workdir, record.of(self))

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
        state = record.read(folder)
        overlay = Overlay(state["overlay"]["source"], state["overlay"]["destination"], [])
        job = cls(
            source, state["source_prefix"], destination, state["destination_prefix"],
            backend=backend, workdir=folder, overlay=overlay,
            keep_on_failure=state.get("keep_on_failure", True),
        )  # fmt: skip
        job.transfer_id = state["transfer_id"]
        job.bytes_total = state["bytes_total"]
        job.started_at = state["started_at"]
        job.uploads.update(record.open_uploads(state))
        job.resume.restore(state, folder)
        job.chunks_to_send = state.get("chunks_to_send", 0)
        job.objects_to_send = state.get("objects_to_send", 0)
        job.objects.update(manifest.read_objects(folder))
        job.started = dict(backend.gateways)
        job.credentials = RelayCredentials.load(folder)
        return job

    def progress(self) -> Progress:
        """The transfer's progress from its gateways' statuses (:mod:`.tracker`)."""
        statuses, sent = control.all_statuses(self.started), self.bytes_total - self.resume.resumed_bytes
        return transfer_progress(
            statuses, self.overlay.source, self.overlay.destination, sent, self.objects_to_send
        )

    def poll(self) -> bool:
        """True once every chunk is written at the destination (the writing gateway counts what it
        wrote); raise TransferError on a failure, naming the gateway that failed first."""
        if not self.started:
            return True  # nothing to send
        statuses = self.watch.statuses(self.started)
        status = statuses[self.overlay.source]
        done = complete(status, statuses[self.overlay.destination], self.chunks_to_send)
        now = time.monotonic()
        if self.on_progress is not None and (done or now >= self._next_report):
            self.on_progress(self.progress())
            self._next_report = now + self.progress_every_s
        control.check(self.started, statuses, done=done)  # the gateway that failed first, if any
        self.landing.fetch(self.started.get(self.overlay.destination))
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

    def checkpoint(self, *, force: bool = False) -> bool:
        """Write the durable state when it is due (or ``force``); True when it was written."""
        if not self.resume.active:
            return False
        if self.started:
            self.landing.fetch(self.started.get(self.overlay.destination))
        receipts = self.landing.receipts
        if not (force or self.resume.due(len(receipts))):
            return False
        # objects complete (and leave ``uploads``) meanwhile
        return self.resume.checkpoint(self.transfer_id, self.objects, self.landing.open_uploads(), receipts)

    def finish(self) -> TransferResult:
        """Complete the uploads and verify every object; call once :meth:`poll` says done."""
        statuses = control.all_statuses(self.started)
        self.landing.fetch(self.started.get(self.overlay.destination))
        unverified = Unverified()
        try:
            verified = self.landing.finish(self.resume.carried, unverified)  # :mod:`.completion`
        except TransferError:
            self.resume.bad = True  # what was recorded does not hold up: a retry starts over
            raise
        self.resume.finished(self.objects)
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
        self.landing.close()  # nothing completes while the uploads are aborted or recorded
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
        refused = None
        if not keep and owner in (None, self.transfer_id):
            # only what was not completed: a failed transfer (:mod:`.manifest`)
            refused = manifest.abort_uploads(self.destination, list(self.uploads.values()))
            if not self._succeeded:
                self.resume.delete()
        self.uploads.clear()
        self.destination.tidy()
        if self.credentials is not None:
            self.credentials.close()
        for name in (record.JOB_FILE, resume.CARRIED_FILE, *wiring.SECRET_FILES, *credentials.FILES):
            (self.workdir / name).unlink(missing_ok=True)
        if refused is not None:
            raise refused

    def run(self) -> TransferResult:
        return conduct(self, POLL_S)


class Conducted(Protocol[R]):
    """A job conducted in steps: start, poll until done, finish; always close."""

    def start(self) -> None: ...
    def poll(self) -> bool: ...
    def finish(self) -> R: ...
    def close(self) -> None: ...


def conduct(job: Conducted[R], poll_s: float) -> R:
    """Run ``job`` to its end in this process, closing it whatever happens."""
    try:
        job.start()
        while not job.poll():
            time.sleep(poll_s)
        return job.finish()
    finally:
        job.close()
