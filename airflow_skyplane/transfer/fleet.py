"""A fleet's transfers, conducted from any Airflow process that can find the fleet by its id.

The operator starts a :class:`FleetTransfer` (one :class:`~airflow_skyplane.transfer.job.TransferJob`
per destination, each with its gateways, all under one fleet id; or, for a multicast tree, one
:class:`~airflow_skyplane.transfer.multicast.MulticastJob` for every destination, run in this
process) and either waits for it or leaves it
running (``wait_for_completion=False``, or deferrable mode). Whoever continues - the operator's
``execute_complete``, the sensor, the ``on_failure_callback`` - calls :meth:`FleetTransfer.attach`
with the fleet id alone: the fleet's folder holds ``request.json`` (the URIs and connection ids, never
a credential; the stores are opened again through the Airflow hooks) and each transfer's
``job.json``.

:func:`teardown` is the one way everything ends: stop the gateways, abort the multipart uploads not
completed (no partial object appears at a destination), delete the fleet's folder and secrets. It is
idempotent and works on a fleet already gone.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from airflow_skyplane.compute import fleets
from airflow_skyplane.compute.launcher import GatewayLauncher
from airflow_skyplane.exceptions import SkyplaneError, TransferError
from airflow_skyplane.processes import alive
from airflow_skyplane.storage.base import ObjectInfo
from airflow_skyplane.storage.uri import parse_uri
from airflow_skyplane.transfer.job import TransferJob
from airflow_skyplane.transfer.multicast import MulticastJob, MulticastResult
from airflow_skyplane.transfer.options import TransferOptions
from airflow_skyplane.transfer.overlay import Overlay
from airflow_skyplane.transfer.summary import Summary, TransferResult, summarize
from airflow_skyplane.transfer.tracker import Progress, combine
from airflow_skyplane.transfer.tree import MulticastOverlay

if TYPE_CHECKING:
    from airflow_skyplane.compute.cloud import CloudFleet
    from airflow_skyplane.hooks.storage import Location

log = logging.getLogger(__name__)


class Logger(Protocol):
    """What the fleet logs through (a task's logger, or this module's)."""

    def info(self, event: str, *args: object) -> object: ...


REQUEST_FILE = "request.json"


@dataclass
class TransferRequest:
    """What a fleet's transfers were asked to do; JSON in the fleet folder, free of credentials."""

    source: str
    destinations: list[str]
    aws_conn_id: str | None = None
    gcp_conn_id: str | None = None
    wasb_conn_id: str | None = None
    #: the part of the task's summary known before the transfer ran (plans, diff counts)
    summary: Summary = field(default_factory=dict)
    #: per destination, keys (relative to its prefix) to delete once every object is verified
    #: (``sync`` with ``delete_extraneous``); bounded by the operator's ``max_delete``
    deletes: list[list[str]] = field(default_factory=list)

    def open_stores(self) -> tuple[Location, list[Location]]:
        from airflow_skyplane.hooks.storage import open_store

        def opened(uri: str) -> Location:
            return open_store(
                uri,
                aws_conn_id=self.aws_conn_id,
                gcp_conn_id=self.gcp_conn_id,
                wasb_conn_id=self.wasb_conn_id,
            )

        return opened(self.source), [opened(d) for d in self.destinations]


@dataclass(frozen=True)
class FleetWork:
    """What one fleet runs: per destination, its store, the objects it needs and its overlay."""

    source: Location
    destinations: Sequence[Location]
    selections: Sequence[Iterable[ObjectInfo]]
    overlays: Sequence[Overlay]
    #: per destination, the key of its resumable transfer's state (none: not resumable)
    state_keys: Sequence[str | None] = ()
    #: one multicast tree for every destination, run as one job on local relays (none: a transfer
    #: per destination); ``tree_gateways``: the tree's gateway of each destination, in order
    tree: MulticastOverlay | None = None
    tree_gateways: Sequence[str] = ()


class FleetTransfer:
    def __init__(
        self, fleet_id: str, state_dir: str, request: TransferRequest, jobs: list[TransferJob]
    ) -> None:
        self.fleet_id, self.state_dir, self.request, self.jobs = fleet_id, state_dir, request, jobs
        self.folder = fleets.fleet_dir(state_dir, fleet_id)
        self.deleted: list[int] = []
        self.cloud: CloudFleet | None = None  # the relay VMs that run the gateways, if any
        #: the multicast job that replaces the per-destination jobs, and what it delivered
        self.multicast: MulticastJob | None = None
        self.multicast_result: MulticastResult | None = None
        self._on_progress: Callable[[Progress], None] | None = None
        self._every = 5.0

    # -- starting ------------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        *,
        fleet_id: str,
        state_dir: str,
        request: TransferRequest,
        work: FleetWork,
        options: TransferOptions,
        ttl_s: float,
        owner: Mapping[str, object],
        on_progress: Callable[[Progress], None] | None = None,
        progress_every_s: float = 5.0,
        detached: bool = False,
        cloud: CloudFleet | None = None,
        test_faults: Mapping[str, Mapping[str, object]] | None = None,
    ) -> FleetTransfer:
        """Record the fleet, then start one transfer per destination; on any failure tear down all.

        Unless ``detached`` (another process will finish the transfer), every gateway watches this
        process and stops if it dies without tearing down (SIGKILL, a lost container).

        With ``cloud`` (a :class:`~airflow_skyplane.compute.cloud.CloudFleet`), one relay VM is
        rented in every region the overlays name and the gateways of those transfers run there,
        reached over SSH; a transfer sent directly (no region known) runs its gateways here.

        ``work.state_keys`` (one per destination, or none) makes the transfers resumable (see
        :mod:`airflow_skyplane.transfer.resume`).
        """
        from airflow_skyplane.compute.local import LocalRelayBackend

        folder = fleets.fleet_dir(state_dir, fleet_id)
        now = time.time()
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        # check for a running transfer into the same prefixes and record ours, atomically
        with open(Path(state_dir) / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _refuse_overlaps(state_dir, request.destinations)
            recorded = {**owner, "pid": os.getpid()}  # the controller, alive while it starts the gateways
            kind = "local" if cloud is None else "cloud"
            fleets.FleetRecord(fleet_id, kind, now, now + ttl_s, recorded).write(folder)
            _private_json(folder / REQUEST_FILE, asdict(request))
        fleet = cls(fleet_id, state_dir, request, [])
        fleet.cloud = cloud
        try:
            if work.tree is not None:
                ends = {
                    gid: (d.store, d.prefix)
                    for gid, d in zip(work.tree_gateways, work.destinations, strict=True)
                }
                fleet.multicast = MulticastJob(
                    work.source.store, work.source.prefix, ends,
                    backend=LocalRelayBackend(folder / "0", fleet_id=fleet_id), workdir=folder / "0",
                    overlay=work.tree, objects=work.selections[0], options=options, test_faults=test_faults,
                    expires_at=now + ttl_s, watch_pid=os.getpid(),
                )  # fmt: skip
                fleet.multicast.start()
                fleet._on_progress, fleet._every = on_progress, progress_every_s
                return fleet
            relays = None
            regions = [r for overlay in work.overlays for r in overlay.regions.values() if r]
            if cloud is not None and regions:
                relays = cloud.provision(dict.fromkeys(regions, 1), expires_at=now + ttl_s, owner=recorded)
            for n, (dst, selection, overlay) in enumerate(
                zip(work.destinations, work.selections, work.overlays, strict=True)
            ):
                workdir = folder / str(n)
                backend: GatewayLauncher
                if relays is not None and any(overlay.regions.values()):
                    backend = relays.backend(str(n))  # its gateways on the relay VMs
                else:
                    backend = LocalRelayBackend(workdir, fleet_id=fleet_id)
                job = TransferJob(
                    work.source.store,
                    work.source.prefix,
                    dst.store,
                    dst.prefix,
                    backend=backend,
                    workdir=workdir,
                    overlay=overlay,
                    objects=selection,
                    options=options,
                    test_faults=test_faults,
                    expires_at=now + ttl_s,  # every gateway stops itself then, controller or not
                    watch_pid=None if detached else os.getpid(),
                    state_key=work.state_keys[n] if n < len(work.state_keys) else None,
                )
                fleet.jobs.append(job)
                job.start()
        except BaseException:
            fleet.close()
            raise
        fleet._on_progress, fleet._every = on_progress, progress_every_s
        return fleet

    @classmethod
    def attach(cls, fleet_id: str, state_dir: str) -> FleetTransfer:
        """The fleet another process started, with its stores opened again through the hooks."""
        from airflow_skyplane.compute.local import LocalRelayBackend

        folder = fleets.fleet_dir(state_dir, fleet_id)
        try:
            raw = json.loads((folder / REQUEST_FILE).read_text())
        except FileNotFoundError:
            raise TransferError(
                f"fleet {fleet_id!r} is not recorded in {state_dir}: it has finished and been torn down, "
                "or it ran on another machine (local relays are found only where they were started)"
            ) from None
        request = TransferRequest(**raw)
        source, destinations = request.open_stores()
        jobs = []
        for n, dst in enumerate(destinations):
            workdir = folder / str(n)
            backend = LocalRelayBackend.attach(workdir, fleet_id=fleet_id)
            jobs.append(TransferJob.attach(workdir, source.store, dst.store, backend=backend))
        return cls(fleet_id, state_dir, request, jobs)

    @classmethod
    def complete(cls, fleet_id: str, state_dir: str, log: Logger = log) -> Summary:
        """Finish the fleet another process left running (every chunk is written): complete, verify,
        delete what ``sync`` was asked to delete, tear down; the task's summary."""
        fleet = cls.attach(fleet_id, state_dir)
        try:
            results = fleet.finish(log)
        finally:
            fleet.close()
        return summarize(fleet.request.summary, results, fleet.deleted)

    # -- watching ------------------------------------------------------------------------------------
    def progress(self) -> Progress:
        if self.multicast is not None:
            return self.multicast.progress()
        return combine([job.progress() for job in self.jobs])

    def poll(self) -> bool:
        """True when every destination has every chunk; raise TransferError on a gateway failure."""
        if self.multicast is not None:
            return self.multicast.poll()
        return all([job.poll() for job in self.jobs])

    def wait(self, *, poll_s: float = 0.05) -> None:
        next_report = time.monotonic() + self._every
        while not self.poll():
            if self._on_progress is not None and time.monotonic() >= next_report:
                self._on_progress(self.progress())
                next_report = time.monotonic() + self._every
            time.sleep(poll_s)
        if self._on_progress is not None:
            self._on_progress(self.progress())

    def finish(self, log: Logger = log) -> list[TransferResult]:
        """Complete the uploads and verify every object, per destination (results in order); then,
        and only then, delete the extraneous objects ``sync`` was asked to delete.

        A multicast raises when a destination failed (the others complete and are verified first),
        naming each failed destination and why."""
        if self.multicast is not None:
            return self._finish_multicast(self.multicast)
        results = [job.finish() for job in self.jobs]
        self.deleted = []
        for n, job in enumerate(self.jobs):
            keys = self.request.deletes[n] if n < len(self.request.deletes) else []
            for key in keys:
                job.destination.delete(job.destination_prefix + key)
            if keys:  # through the task's log (``log``), for a person auditing the sync
                log.info(
                    "sync deleted %d object(s) from %s, found only there: %s",
                    len(keys), self.request.destinations[n], ", ".join(keys),
                )  # fmt: skip
            self.deleted.append(len(keys))
        return results

    def _finish_multicast(self, job: MulticastJob) -> list[TransferResult]:
        result = self.multicast_result = job.finish()
        if result.failed:
            done = [result.uris[gid] for gid in result.results]
            raise TransferError(
                f"{len(result.failed)} of {len(result.uris)} destinations failed: "
                + "; ".join(f"{result.uris[gid]}: {why[:300]}" for gid, why in result.failed.items())
                + f" (complete and verified: {', '.join(done) or 'none'}); a retry sends everything again"
            )
        self.deleted = [0] * len(result.uris)
        return [result.results[gid] for gid in job.legs]

    def close(self) -> None:
        """Stop every gateway, abort what was not completed, delete the fleet folder. Idempotent."""
        errors: list[Exception] = []
        if self.multicast is not None:
            try:
                self.multicast.close()
            except Exception as err:  # noqa: BLE001 - the folder is torn down all the same, then reported
                errors.append(err)
        for job in self.jobs:
            try:
                job.close()
            except Exception as err:  # noqa: BLE001 - tear down the others first, then report
                errors.append(err)
        if self.cloud is not None:
            try:
                self.cloud.teardown()
            except Exception as err:  # noqa: BLE001 - the folder (and its cloud.json) stays for a retry
                errors.append(err)
                raise TransferError(f"teardown of fleet {self.fleet_id} met errors: {errors}") from None
        fleets.teardown_fleet(self.state_dir, self.fleet_id)
        if errors:
            raise TransferError(f"teardown of fleet {self.fleet_id} met errors: {errors}")

    def detach(self) -> None:
        """Leave the gateways running when this process exits (see ``wait_for_completion``)."""
        for job in self.jobs:
            job.backend.detach()

    def gateway_logs(self, lines: int = 20) -> str:
        out = []
        if self.multicast is not None:
            for gid, gw in self.multicast.started.items():
                out.append(f"--- multicast gateway {gid}:\n{gw.log_tail(lines)}")
        for n, job in enumerate(self.jobs):
            for gid, gw in job.started.items():
                out.append(f"--- destination {n}, gateway {gid}:\n{gw.log_tail(lines)}")
        return "\n".join(out)


def teardown(fleet_id: str, state_dir: str, *, for_good: bool = False) -> list[str]:
    """Tear a fleet down by its id alone: gateways, dangling uploads, folder. Idempotent.

    ``for_good``: nobody will continue these transfers (the task failed for good, or a person tore
    the fleet down), so the uploads a resumable transfer kept for a retry are aborted and its
    durable state is deleted from the destination too (a later try's state is left alone).

    Returns the gateways that were still running. Aborting the uploads needs the stores (opened
    through the hooks); when they cannot be opened the gateways are stopped all the same.
    """
    folder = fleets.fleet_dir(state_dir, fleet_id)
    if not folder.exists():
        return []
    running = [
        f"{sub.name}/{gid}"
        for sub in fleets.transfer_dirs(folder)
        for gid, gw in fleets.read_gateways(sub).items()
        if isinstance(gw.get("pid"), int) and fleets.runs_gateway(gw["pid"])
    ]
    try:
        fleet = FleetTransfer.attach(fleet_id, state_dir)
        if for_good:
            for job in fleet.jobs:
                job.options = replace(job.options, keep_on_failure=False)
        fleet.close()
    except (SkyplaneError, OSError, ValueError, KeyError) as err:
        log.warning("fleet %s: could not reopen its stores to abort its uploads (%s)", fleet_id, err)
    from airflow_skyplane.compute.cloud import teardown_recorded

    if teardown_recorded(folder, fleet_id):  # its relay VMs, found by tag; raises if any is left
        running.append("relay VMs")
    fleets.teardown_fleet(state_dir, fleet_id)
    return running


def _refuse_overlaps(state_dir: str, destinations: Sequence[str]) -> None:
    """Fail when a live fleet on this machine writes into one of ``destinations`` (or around it):
    two transfers into one prefix at once would race on the same objects."""
    for record, running in fleets.list_fleets(state_dir):
        folder = fleets.fleet_dir(state_dir, record.fleet_id)
        starting = not any(folder.glob(f"*/{fleets.GATEWAYS_FILE}")) and alive(record.owner.get("pid"))
        if not running and not starting:
            continue  # finished, failed or dead: it writes nothing any more
        try:
            theirs = json.loads((folder / REQUEST_FILE).read_text())
        except (OSError, ValueError):
            continue
        for ours in destinations:
            for other in theirs.get("destinations", []):
                if parse_uri(ours).overlaps(parse_uri(other)):
                    owner = record.owner
                    who = ".".join(str(owner.get(k)) for k in ("dag_id", "task_id") if owner.get(k))
                    raise TransferError(
                        f"destination {ours!r} is being written by fleet {record.fleet_id} "
                        f"({who or 'unknown task'}, into {other!r}, started "
                        f"{time.time() - record.created_at:.0f} s ago): two transfers must not write one "
                        "prefix at once; wait for it to finish or choose another prefix"
                    )


def _private_json(path: Path, data: object) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
