"""``SkyplaneTransferOperator``: copy or sync a prefix to one or more object stores over planned relays.

The operator only conducts; each step is a module of its own:

1. **resolve** the URIs through the Airflow hooks and connections (:mod:`airflow_skyplane.hooks.storage`)
   and check every parameter, before anything is listed or started;
2. **inventory**: list the source (filtered by ``include``/``exclude``) and, in ``sync`` mode, diff it
   against each destination by a streaming merge (:mod:`airflow_skyplane.transfer.inventory`, the
   same the replica sensor uses);
3. **plan** the overlay when the regions are known (:mod:`airflow_skyplane.operators.planning`),
   logging the plan table, its cost estimate and the direct-path baseline;
4. **provision and transfer**: start the fleet of gateways under one fleet id
   (:class:`~airflow_skyplane.transfer.fleet.FleetTransfer`), logging a progress line every few
   seconds; or leave it running and return (``wait_for_completion=False``, for
   :class:`~airflow_skyplane.sensors.transfer.SkyplaneTransferSensor`), or defer to
   :class:`~airflow_skyplane.triggers.transfer.SkyplaneTransferTrigger` (``deferrable=True``);
5. **verify** every object and **tear down**, always: in ``finally``, in :meth:`on_kill`, and in the
   ``on_failure_callback`` the operator adds to the task (:mod:`airflow_skyplane.operators.callbacks`,
   beside any the user gives), each finding the fleet by its id alone, which the task pushes to XCom
   (key ``skyplane_fleet_id``) before it starts a single gateway.

Settings come from the operator's arguments, then the ``skyplane`` connection, then ``[skyplane]``
(:class:`~airflow_skyplane.hooks.skyplane.SkyplaneHook`), and reach the gateways as one
:class:`~airflow_skyplane.transfer.options.TransferOptions`. The summary it returns (and so pushes to
XCom) holds no credential.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_skyplane.exceptions import InvalidInputError, TransferError
from airflow_skyplane.operators.audit import (
    check_sync,
    preview,
    stale_inventory_error,
    stale_source,
    warn_source,
)
from airflow_skyplane.operators.callbacks import (
    FLEET_XCOM_KEY,
    push_state_keys,
    record,
    start_record,
    teardown_on_failure,
    will_retry,
    with_callback,
)
from airflow_skyplane.operators.plan_files import record_plans
from airflow_skyplane.operators.planning import choose_multicast, multicast_tree, transfer_summary
from airflow_skyplane.operators.regions import given_destination_regions, given_region, locate
from airflow_skyplane.transfer.inventory import MODES
from airflow_skyplane.transfer.options import TransferOptions
from airflow_skyplane.transfer.summary import summarize

if TYPE_CHECKING:
    from airflow_skyplane.hooks.skyplane import SkyplaneSettings
    from airflow_skyplane.hooks.storage import Location
    from airflow_skyplane.operators.planning import TransferPlanner
    from airflow_skyplane.transfer.diff import DiffCounts, KeyFilter, Spool
    from airflow_skyplane.transfer.fleet import FleetTransfer
    from airflow_skyplane.transfer.source_inventory import SourceInventory

MiB = 1024 * 1024


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _seconds(name: str, value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds <= 0:
        raise InvalidInputError(f"{name}={value!r} must be a positive number of seconds or a timedelta")
    return float(seconds)


_KILLED = (
    "the task was stopped (SIGTERM, on_kill) during the transfer: its fleet was torn down and no "
    "object was half-written; a retry sends what is missing"
)


class SkyplaneTransferOperator(BaseOperator):
    """Copy (or sync) every object under ``source`` to each ``destination`` through planned relays.

    :param source: URI of the source prefix (``s3://``, ``gs://``, ``az://``, ``file://``). Templated.
    :param destination: URI of the destination prefix, or a list of them (one plan, many
        destinations). Templated.
    :param source_region: the source bucket's region in the planner's names (``aws:us-east-1``).
        Left out, the bucket is asked (S3 GetBucketLocation, the GCS bucket's location, the Azure
        account's location where the connection may ask); given, it must agree with what the bucket
        says, and is used where the bucket cannot tell. Templated.
    :param destination_region: the same for the destination(s): one region, or one per destination
        (one region for destinations of several clouds is refused).
    :param aws_conn_id: connection of S3 stores (default ``aws_default``).
    :param gcp_conn_id: connection of GCS stores (default ``google_cloud_default``).
    :param wasb_conn_id: connection of Azure Blob stores (default ``wasb_default``).
    :param skyplane_conn_id: the package's own settings (default ``skyplane_default``, may be absent).
    :param mode: ``copy`` sends every selected object; ``sync`` sends only those new or changed at the
        destination, compared by ``compare``.
    :param compare: how ``sync`` compares objects: ``checksum`` (falls back to size and modification
        time where the stores' checksums cannot be compared), ``size_mtime``, ``size`` or ``exists``.
    :param delete_extraneous: with ``sync``, delete destination objects the source no longer has
        (within ``include``/``exclude``), once every object sent is verified. The count is logged
        first; with ``dry_run`` nothing is deleted.
    :param max_delete: refuse (before anything starts) a sync that would delete more objects than
        this at one destination: a wrong or empty source must not empty a replica.
    :param source_inventory: URI of an inventory of the source to read instead of listing it: an S3
        Inventory manifest (``.../manifest.json``; CSV, ORC or Parquet), a folder of report shards
        ending in ``/`` (a GCS Storage Insights inventory report, CSV or Parquet), or one ``.csv``,
        ``.csv.gz``, ``.parquet`` or ``.orc`` list of keys, sizes and optionally checksums and
        modification times (:mod:`airflow_skyplane.transfer.source_inventory`). Read through the
        connection of its own store. Objects added since the report are not sent; an object deleted
        since fails the transfer. The destinations are still listed. Templated.
    :param include: glob pattern(s) over keys relative to ``source``; only matching objects are sent.
    :param exclude: glob pattern(s); matching objects are never sent.
    :param objective: ``throughput`` (fastest within ``max_cost_usd``) or ``cost`` (cheapest that
        reaches ``min_throughput_gbps`` or finishes within ``deadline``).
    :param deadline: time the transfer must fit in (seconds or timedelta), for ``objective="cost"``.
    :param min_throughput_gbps: throughput the plan must reach.
    :param max_cost_usd: most the transfer may cost (egress and relays), for the planner.
    :param max_relays_per_region: relays the planner may place per region.
    :param allowed_regions: region patterns relays may use (``["aws:eu-*", "gcp:*"]``).
    :param relay_backend: ``local`` (gateways as processes on the worker: the embedded default), or
        relay VMs rented for the transfer through the Airflow cloud hooks: ``aws`` (``EC2Hook``),
        ``gcp`` (``ComputeEngineHook``), ``azure`` (``AzureComputeHook``), each limiting the relays
        to its cloud, or ``auto`` (each region's own cloud). One VM per region of the plan, source and
        destination regions included, bootstrapped over SSH and always torn down; a relay region
        refused for quota or capacity is planned around (up to three times).
    :param compression: lz4 per chunk: ``True`` or ``"auto"`` where a sample shows it pays (the
        default), ``"always"``, or ``False`` or ``"never"``.
    :param encryption: AES-GCM end to end (default on).
    :param chunk_size_mb: chunk size on the wire.
    :param connections_per_hop: TCP connections per overlay edge (the cap of a planned edge's; default
        the ``connections_per_relay`` setting, 8).
    :param resume: checkpoint the transfer in the destination store (``state_prefix`` setting) so
        that a retry of this task instance continues where the failed try stopped, sending only
        what was not written; the failed try keeps its multipart uploads for the retry, and they are
        aborted once the task fails for good. ``False``: every try starts over.
    :param multicast: with several destinations in distinct known regions whose multicast plan
        shares an edge, send them through that plan's tree: the source is read once and each chunk
        copied where the tree branches; a destination that fails fails alone (the task fails
        naming it, after the others are complete and verified). Runs on local relays, in
        ``copy`` mode, while the task waits; a multicast keeps no resumable state (a retry sends
        everything again). ``False``: one transfer per destination. The summary's ``multicast``
        says which ran, and why.
    :param dry_run: inventory, plan and estimate only; move nothing. The log lists the first
        ``preview_keys`` keys it would send to (and, with ``delete_extraneous``, delete at) each
        destination.
    :param preview_keys: how many keys a dry run lists per destination (default 10).
    :param plan_picture: draw each plan as a PNG beside the task's logs and the plan file (needs the
        ``plot`` extra; without it the task logs a warning and goes on).
    :param wait_for_completion: when False, return once the relays run, with the fleet id for
        :class:`~airflow_skyplane.sensors.transfer.SkyplaneTransferSensor`.
    :param deferrable: wait in the triggerer instead of a worker slot.
    :param poll_interval: seconds between status polls of the trigger.
    :param timeout_s: a transfer still running after this long is failed and torn down.
    """

    template_fields: Sequence[str] = (
        "source",
        "destination",
        "source_inventory",
        "source_region",
        "destination_region",
        "include",
        "exclude",
    )
    template_fields_renderers = {"include": "json", "exclude": "json"}
    ui_color = "#d8f3ff"

    def __init__(
        self,
        *,
        source: str,
        destination: str | Sequence[str],
        source_region: str | None = None,
        destination_region: str | Sequence[str] | None = None,
        source_inventory: str | None = None,
        aws_conn_id: str | None = None,
        gcp_conn_id: str | None = None,
        wasb_conn_id: str | None = None,
        azure_conn_id: str = "azure_default",
        skyplane_conn_id: str = "skyplane_default",
        mode: str = "copy",
        compare: str = "checksum",
        delete_extraneous: bool = False,
        max_delete: int = 1000,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        objective: str | None = None,
        deadline: float | timedelta | None = None,
        min_throughput_gbps: float | None = None,
        max_cost_usd: float | None = None,
        max_relays_per_region: int | None = None,
        allowed_regions: Sequence[str] | None = None,
        relay_backend: str | None = None,
        compression: bool | str | None = None,
        encryption: bool | None = None,
        chunk_size_mb: int | None = None,
        connections_per_hop: int | None = None,
        resume: bool = True,
        multicast: bool = True,
        dry_run: bool = False,
        preview_keys: int = 10,
        plan_picture: bool = False,
        wait_for_completion: bool = True,
        deferrable: bool | None = None,
        poll_interval: float = 5.0,
        timeout_s: float = 24 * 3600.0,
        on_failure_callback: Callable[..., Any] | list[Callable[..., Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        from airflow.sdk import conf

        super().__init__(
            on_failure_callback=with_callback(on_failure_callback, teardown_on_failure), **kwargs
        )
        self.source = source
        self.destination = destination
        self.source_region = source_region
        self.source_inventory = source_inventory
        self.destination_region = destination_region
        self.aws_conn_id, self.gcp_conn_id, self.wasb_conn_id = aws_conn_id, gcp_conn_id, wasb_conn_id
        self.azure_conn_id = azure_conn_id
        self.skyplane_conn_id = skyplane_conn_id
        if mode not in MODES:
            raise InvalidInputError(f"mode={mode!r} is unknown: use 'copy' or 'sync'")
        from airflow_skyplane.transfer.diff import COMPARE_MODES

        if compare not in COMPARE_MODES:
            raise InvalidInputError(f"compare={compare!r} is unknown: use one of {', '.join(COMPARE_MODES)}")
        self.mode, self.compare = mode, compare
        if delete_extraneous and mode != "sync":
            raise InvalidInputError("delete_extraneous=True needs mode='sync' (a copy never deletes)")
        if not isinstance(max_delete, int) or isinstance(max_delete, bool) or max_delete < 0:
            raise InvalidInputError(f"max_delete={max_delete!r} must be a whole number >= 0")
        self.delete_extraneous, self.max_delete = delete_extraneous, max_delete
        self.include, self.exclude = include, exclude
        self.objective = objective
        self.deadline_s = _seconds("deadline", deadline)
        for name, value in (("min_throughput_gbps", min_throughput_gbps), ("max_cost_usd", max_cost_usd)):
            if value is not None and (not isinstance(value, int | float) or not value > 0):
                raise InvalidInputError(f"{name}={value!r} must be a positive number")
        self.min_throughput_gbps = min_throughput_gbps
        self.max_cost_usd = max_cost_usd
        if objective == "throughput" and self.deadline_s is not None:
            raise InvalidInputError(
                "deadline is a limit of objective='cost' (the cheapest plan within the deadline); with "
                "objective='throughput' give max_cost_usd instead, or drop objective"
            )
        if objective == "cost" and max_cost_usd is not None and min_throughput_gbps is None and not deadline:
            raise InvalidInputError(
                "objective='cost' with max_cost_usd alone asks for nothing to reach: give deadline or "
                "min_throughput_gbps, or use objective='throughput' (fastest within max_cost_usd)"
            )
        self.overrides = {
            k: v
            for k, v in {
                "objective": objective,
                "relay_backend": relay_backend,
                "max_relays_per_region": max_relays_per_region,
                "allowed_regions": list(allowed_regions) if allowed_regions is not None else None,
                "compression": compression,
                "encryption": encryption,
                "chunk_size_mb": chunk_size_mb,
                "connections_per_relay": connections_per_hop,
            }.items()
            if v is not None
        }
        if connections_per_hop is not None and not (
            isinstance(connections_per_hop, int) and 1 <= connections_per_hop <= 256
        ):
            raise InvalidInputError(
                f"connections_per_hop={connections_per_hop} is out of range: use 1 to 256"
            )
        self.connections_per_hop = connections_per_hop
        if not isinstance(resume, bool):
            raise InvalidInputError(f"resume={resume!r} must be True or False")
        self.resume = resume
        if not isinstance(multicast, bool):
            raise InvalidInputError(f"multicast={multicast!r} is not a bool: pass True or False")
        self.multicast = multicast
        self.plan_only = dry_run  # BaseOperator has a dry_run() method of its own
        if not isinstance(preview_keys, int) or isinstance(preview_keys, bool) or preview_keys < 0:
            raise InvalidInputError(f"preview_keys={preview_keys!r} must be a whole number >= 0")
        self.preview_keys = preview_keys
        self.plan_picture = bool(plan_picture)
        self.wait_for_completion = wait_for_completion
        if deferrable is None:
            deferrable = conf.getboolean("operators", "default_deferrable", fallback=False)
        self.deferrable = deferrable
        if deferrable and not wait_for_completion:
            raise InvalidInputError(
                "deferrable=True waits for the transfer in the triggerer, wait_for_completion=False does "
                "not wait at all: set one of them"
            )
        self.poll_interval = _seconds("poll_interval", poll_interval) or 5.0
        self.timeout_s = _seconds("timeout_s", timeout_s) or 24 * 3600.0
        self._fleet: FleetTransfer | None = None
        self._killed = False  # on_kill ran (SIGTERM): stop, whatever step execute is at

    # -- resolve -------------------------------------------------------------------------------------
    def _settings(self) -> SkyplaneSettings:
        from airflow_skyplane.hooks.skyplane import SkyplaneHook

        settings = SkyplaneHook(self.skyplane_conn_id).get_settings()
        settings = settings.merged(self.overrides, origin=f"task {self.task_id!r}")
        if settings.relay_backend != "local":
            if not settings.worker_cidr:
                raise InvalidInputError(
                    f"relay_backend={settings.relay_backend!r} rents relay VMs, whose SSH is admitted only "
                    "from the worker: set worker_cidr (the worker's public address, e.g. '203.0.113.7/32') "
                    "in the skyplane connection's extra or [skyplane] config"
                )
            if not self.wait_for_completion or self.deferrable:
                raise InvalidInputError(
                    f"relay_backend={settings.relay_backend!r}: a transfer on cloud relays is conducted over "
                    "the worker's SSH sessions and cannot detach or defer yet; use wait_for_completion=True "
                    "and deferrable=False, or relay_backend='local'"
                )
        if settings.objective == "cost" and self.min_throughput_gbps is None and self.deadline_s is None:
            raise InvalidInputError(
                "objective='cost' needs deadline or min_throughput_gbps (the cheapest plan that reaches "
                "it); or use objective='throughput' with max_cost_usd"
            )
        return settings

    def _destinations(self) -> list[str]:
        destinations = _as_list(self.destination)
        if not destinations or not all(isinstance(d, str) and d for d in destinations):
            raise InvalidInputError(
                f"destination={self.destination!r}: give a destination URI or a non-empty list of them"
            )
        if len(set(destinations)) != len(destinations):
            raise InvalidInputError(f"destination={destinations!r} names the same URI twice: list it once")
        return destinations

    def _open(self, uri: str) -> Location:
        from airflow_skyplane.hooks.storage import open_store

        return open_store(
            uri, aws_conn_id=self.aws_conn_id, gcp_conn_id=self.gcp_conn_id, wasb_conn_id=self.wasb_conn_id
        )

    def _check_paths(self, src: Location, dst: Location, dst_uri: str) -> None:
        if src.uri.overlaps(dst.uri):
            raise InvalidInputError(
                f"destination={dst_uri!r} overlaps source={self.source!r}: the copy would read "
                "what it writes; choose a destination outside the source prefix"
            )

    # -- execute -------------------------------------------------------------------------------------
    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_skyplane.transfer import inventory
        from airflow_skyplane.transfer.diff import DiffCounts, KeyFilter, Spool, check_patterns
        from airflow_skyplane.transfer.resume import check_destination

        start_record(self)  # the failure callback reads what this try pushed from here, not XCom
        settings = self._settings()
        destinations = self._destinations()
        given_src = given_region("source_region", self.source_region, self.source)
        given_dsts = given_destination_regions(self.destination_region, destinations)
        keep = KeyFilter(check_patterns("include", self.include), check_patterns("exclude", self.exclude))
        src = self._open(self.source)
        dsts = [self._open(uri) for uri in destinations]
        for dst, uri in zip(dsts, destinations, strict=True):
            self._check_paths(src, dst, uri)
            check_destination(settings.state_prefix, dst.prefix, uri)
        src.store.check_bucket()
        for dst in dsts:
            dst.store.check_bucket()
        src_region = locate("source_region", given_src, src, self.source, self.log)
        dst_regions = [
            locate("destination_region", given, dst, uri, self.log)
            for given, dst, uri in zip(given_dsts, dsts, destinations, strict=True)
        ]

        # inventory, taken once: what each destination needs (its size feeds a deadline or a budget)
        counts = [DiffCounts() for _ in dsts]
        spools: list[Spool] = []
        report = self._source_inventory(src, keep, settings.state_prefix)
        try:
            for dst, count in zip(dsts, counts, strict=True):
                items = inventory.to_send(
                    src, dst, mode=self.mode, compare=self.compare, keep=keep,
                    state_prefix=settings.state_prefix, counts=count,
                    keep_extraneous=self.max_delete + 1 if self.delete_extraneous else 0,
                    source_objects=report,
                )  # fmt: skip
                spools.append(Spool(items))
            if self.mode == "sync":
                check_sync(
                    self.log, destinations, counts, delete_extraneous=self.delete_extraneous,
                    max_delete=self.max_delete, dry_run=self.plan_only,
                )  # fmt: skip
            warn_source(
                self.log, self.source, src.prefix, counts, filtered=bool(keep.include or keep.exclude),
                delete_extraneous=self.delete_extraneous,
            )  # fmt: skip
            if self.plan_only:
                preview(
                    self.log, destinations, spools, counts, source_prefix=src.prefix,
                    first=self.preview_keys, deleting=self.delete_extraneous,
                )  # fmt: skip
            return self._plan_and_send(
                context, settings, src, dsts, destinations, src_region, dst_regions, counts, spools
            )
        finally:
            for spool in spools:
                spool.close()
            if report is not None:
                report.close()

    def _source_inventory(
        self, src: Location, keep: KeyFilter, state_prefix: str | None
    ) -> SourceInventory | None:
        """The report ``source_inventory`` names, read and sorted; None when the source is listed."""
        from airflow_skyplane.transfer.source_inventory import SourceInventory, locate

        uri = self.source_inventory
        if uri is None:
            return None
        if not isinstance(uri, str) or not uri:
            raise InvalidInputError(
                f"source_inventory={uri!r}: give the URI of an inventory report of the source, or leave "
                "it out to list the source"
            )
        report = SourceInventory(locate(uri, self._open), uri, src, keep=keep, state_prefix=state_prefix)
        self.log.info("%s", report.describe())
        return report

    def _planner(self, settings: SkyplaneSettings) -> TransferPlanner:
        from airflow_skyplane.operators.planning import TransferPlanner

        return TransferPlanner(
            settings, task_id=self.task_id, min_throughput_gbps=self.min_throughput_gbps,
            deadline_s=self.deadline_s, max_cost_usd=self.max_cost_usd, log=self.log,
        )  # fmt: skip

    def _plan_and_send(
        self,
        context: Any,
        settings: SkyplaneSettings,
        src: Location,
        dsts: list[Location],
        destinations: list[str],
        src_region: str | None,
        dst_regions: list[str | None],
        counts: list[DiffCounts],
        spools: list[Spool],
    ) -> dict[str, Any]:
        from airflow_skyplane.operators.launch import start_fleet
        from airflow_skyplane.transfer.fleet import FleetWork, TransferRequest

        planner = self._planner(settings)
        needed = [spool.bytes for spool in spools]
        regions = [r or "" for r in dst_regions]
        planning = planner.plan_destinations(self.source, src_region, regions, destinations, needed)
        summary = transfer_summary(
            self.source, src_region, self.mode, self.plan_only, destinations, dst_regions, spools, counts
        )
        planning.fill(summary)
        planner.log_estimate(planning)
        ti = context.get("ti") if hasattr(context, "get") else None
        record_plans(self, ti, planning, destinations, summary)
        why_not = choose_multicast(
            self.log, planning, summary, [(spool.count, spool.bytes) for spool in spools],
            wanted=self.multicast, mode=self.mode, relay_backend=settings.relay_backend,
            waits=self.wait_for_completion and not self.deferrable,
        )  # fmt: skip
        if self.plan_only:
            return summary

        # provision, bootstrap and start: the fleet id reaches XCom before any gateway runs
        fleet_id = f"{uuid.uuid4().hex[:12]}"
        record(ti, self, FLEET_XCOM_KEY, fleet_id)
        summary["fleet_id"] = fleet_id
        request = TransferRequest(
            self.source, destinations, self.aws_conn_id, self.gcp_conn_id, self.wasb_conn_id, summary,
            deletes=[list(c.extraneous_keys) for c in counts] if self.delete_extraneous else [],
        )  # fmt: skip
        options = TransferOptions.from_settings(
            settings, timeout=self.timeout_s, keep_on_failure=will_retry(ti)
        )
        tree, ends = (
            multicast_tree(self.log, planning, options, resume=self.resume) if why_not is None else (None, [])
        )
        resumable = self.resume and tree is None
        state_keys = push_state_keys(ti, self, settings.state_prefix, destinations) if resumable else []
        self._fleet = start_fleet(
            self, settings, planner, planning, ti, request, options,
            lambda hops: FleetWork(src, dsts, spools, hops, state_keys, tree=tree, tree_gateways=ends),
        )  # fmt: skip
        if self._killed:  # on_kill ran while the fleet was starting, before there was one to stop
            self._fleet.close()
            raise TransferError(_KILLED)
        if not self.wait_for_completion or self.deferrable:
            self._fleet.detach()
            self._fleet = None
            if not self.wait_for_completion:
                self.log.info(
                    "Transfer running on fleet %s; SkyplaneTransferSensor(fleet_id=...) waits for it",
                    fleet_id,
                )
                return {**summary, "status": "running"}
            from airflow_skyplane.triggers.transfer import SkyplaneTransferTrigger

            self.defer(
                trigger=SkyplaneTransferTrigger(
                    fleet_id=fleet_id,
                    state_dir=settings.fleets_dir(),
                    poll_interval=self.poll_interval,
                    timeout_s=self.timeout_s,
                ),
                method_name="execute_complete",
                timeout=timedelta(seconds=self.timeout_s),
            )
        fleet = self._fleet
        try:
            fleet.wait()
            results = fleet.finish(self.log)
        except TransferError as err:
            if self._killed:
                raise TransferError(_KILLED) from err
            self.log.error("Gateway logs:\n%s", fleet.gateway_logs())
            if self.source_inventory and stale_source(str(err), src.store.uri):
                raise stale_inventory_error(err, self.source_inventory) from err
            raise
        finally:
            fleet.close()
        if fleet.multicast_result is not None:  # what the tree saved: the source read once
            summary["multicast"].update(
                {
                    k: v
                    for k, v in fleet.multicast_result.summary().items()
                    if k not in ("destinations", "failed")
                }
            )
        return self._summary(summarize(summary, results, fleet.deleted, settings.measurements_path))

    def _summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Log the summary of a finished transfer; return it (for XCom)."""
        if summary["resumed_bytes"]:
            self.log.info(
                "Resumed the previous try: %d bytes it had written were not sent again",
                summary["resumed_bytes"],
            )
        self.log.info(
            "Sent %d objects, %.1f MiB in %.2f s (%.3f Gbps%s), %d checksums verified",
            summary["objects"], summary["bytes"] / MiB, summary["seconds"], summary["gbps"],
            f", predicted {summary['predicted_gbps']:.3f}" if "predicted_gbps" in summary else "",
            summary["checksums_verified"],
        )  # fmt: skip
        for uri, entry in summary["destinations"].items():
            size_only = entry.get("size_only")
            if size_only:
                why = "; ".join(f"{reason} ({n})" for reason, n in size_only["why"].items())
                self.log.warning(
                    "%d of the %d objects sent to %s were checked by size only, not by the store's "
                    "checksum: %s (first: %s)",
                    size_only["objects"], entry["objects"], uri, why, ", ".join(size_only["first"]),
                )  # fmt: skip
        return summary

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after the trigger fired: finish (complete and verify) and tear down, or fail."""
        from airflow_skyplane.transfer.fleet import FleetTransfer, teardown

        fleet_id, state_dir = event["fleet_id"], event["state_dir"]
        if event.get("status") != "done":
            teardown(fleet_id, state_dir)
            raise TransferError(f"transfer on fleet {fleet_id} failed: {event.get('message')}")
        return self._summary(FleetTransfer.complete(fleet_id, state_dir, self.log))

    def on_kill(self) -> None:
        self._killed = True
        if self._fleet is not None:
            self._fleet.close()

    # -- lineage -------------------------------------------------------------------------------------
    def get_openlineage_facets_on_start(self) -> Any:
        from airflow_skyplane.lineage import transfer_lineage

        return transfer_lineage(self.source, _as_list(self.destination))

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return self.get_openlineage_facets_on_start()
