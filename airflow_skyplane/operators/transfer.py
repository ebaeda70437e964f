"""``SkyplaneTransferOperator``: copy a prefix between object stores over a planned overlay of relays.

The operator only conducts; each step is a module of its own:

1. **resolve** the URIs through the Airflow hooks and connections (:mod:`airflow_skyplane.hooks.storage`);
2. **plan** the overlay with the planner when both regions are known (:mod:`airflow_skyplane.planner`),
   logging the plan table, its cost estimate and the direct-path baseline;
3. **transfer** with the relay backend, logging a progress line every few seconds
   (:mod:`airflow_skyplane.transfer.job`);
4. **verify** and **tear down**, always (the job's ``finally``; :meth:`on_kill` for a killed task).

Settings come from the operator's arguments, then the ``skyplane`` connection, then ``[skyplane]``
(:class:`~airflow_skyplane.hooks.skyplane.SkyplaneHook`). The summary it returns (and so pushes to
XCom) holds no credential.

Built so far: ``copy`` to one destination on the ``local`` relay backend, with ``dry_run``. The
sensor, the trigger (deferrable mode), ``sync``, multicast and cloud relays come next.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from airflow_skyplane.exceptions import InvalidInputError

MiB = 1024 * 1024


class SkyplaneTransferOperator(BaseOperator):
    """Copy every object under ``source`` to ``destination`` through planned relays.

    :param source: URI of the source prefix (``s3://``, ``gs://``, ``az://``, ``file://``). Templated.
    :param destination: URI of the destination prefix. Templated.
    :param source_region: region of the source bucket in the planner's names (``aws:us-east-1``);
        inferred for S3 from the connection's region when left out.
    :param destination_region: the same for the destination.
    :param objective: ``throughput`` (fastest within ``max_cost_per_gb``) or ``cost`` (cheapest that
        reaches ``min_throughput_gbps``).
    :param dry_run: plan and estimate only; move nothing.
    """

    template_fields: Sequence[str] = ("source", "destination", "source_region", "destination_region")
    ui_color = "#d8f3ff"

    def __init__(
        self,
        *,
        source: str,
        destination: str,
        source_region: str | None = None,
        destination_region: str | None = None,
        aws_conn_id: str | None = None,
        gcp_conn_id: str | None = None,
        wasb_conn_id: str | None = None,
        skyplane_conn_id: str = "skyplane_default",
        objective: str | None = None,
        min_throughput_gbps: float | None = None,
        max_cost_per_gb: float | None = None,
        max_relays_per_region: int | None = None,
        allowed_regions: Sequence[str] | None = None,
        compression: bool | None = None,
        encryption: bool | None = None,
        chunk_size_mb: int | None = None,
        connections_per_hop: int = 8,
        dry_run: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.destination = destination
        self.source_region = source_region
        self.destination_region = destination_region
        self.aws_conn_id, self.gcp_conn_id, self.wasb_conn_id = aws_conn_id, gcp_conn_id, wasb_conn_id
        self.skyplane_conn_id = skyplane_conn_id
        self.objective = objective
        self.min_throughput_gbps = min_throughput_gbps
        self.max_cost_per_gb = max_cost_per_gb
        self.overrides = {
            k: v
            for k, v in {
                "objective": objective,
                "max_relays_per_region": max_relays_per_region,
                "allowed_regions": list(allowed_regions) if allowed_regions is not None else None,
                "compression": compression,
                "encryption": encryption,
                "chunk_size_mb": chunk_size_mb,
            }.items()
            if v is not None
        }
        if not 1 <= connections_per_hop <= 256:
            raise InvalidInputError(
                f"connections_per_hop={connections_per_hop} is out of range: use 1 to 256"
            )
        self.connections_per_hop = connections_per_hop
        self.plan_only = dry_run  # BaseOperator has a dry_run() method of its own
        self._backend: Any = None

    # -- steps -----------------------------------------------------------------------------------
    def _check_paths(self, src: Any, dst: Any) -> None:
        same_bucket = (src.uri.scheme, src.uri.bucket, src.uri.account) == (
            dst.uri.scheme,
            dst.uri.bucket,
            dst.uri.account,
        )
        if same_bucket and (dst.prefix.startswith(src.prefix) or src.prefix.startswith(dst.prefix)):
            raise InvalidInputError(
                f"destination={self.destination!r} overlaps source={self.source!r}: the copy would read "
                "what it writes; choose a destination outside the source prefix"
            )

    @staticmethod
    def _region_of(location: Any) -> str | None:
        store = location.store
        if store.scheme == "s3":
            region = getattr(store.client.meta, "region_name", None)
            return f"aws:{region}" if region else None
        return None

    def _plan(self, settings: Any, src_region: str | None, dst_region: str | None) -> Any:
        if not src_region or not dst_region:
            return None
        from airflow_skyplane.planner import NetworkModel, plan_transfer

        model = NetworkModel.from_csv(settings.grid_path) if settings.grid_path else NetworkModel.default()
        if settings.objective == "cost" and self.min_throughput_gbps is None:
            raise InvalidInputError(
                "objective='cost' needs min_throughput_gbps (the cheapest plan that reaches it); "
                "or use objective='throughput' with max_cost_per_gb"
            )
        return plan_transfer(
            model,
            src_region,
            dst_region,
            objective=settings.objective,
            min_throughput_gbps=self.min_throughput_gbps,
            max_cost_per_gb=self.max_cost_per_gb,
            max_vms_per_region=settings.max_relays_per_region,
            allowed_regions=list(settings.allowed_regions) or None,
        )

    # -- execute ---------------------------------------------------------------------------------
    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_skyplane.hooks.skyplane import SkyplaneHook
        from airflow_skyplane.hooks.storage import open_store

        settings = SkyplaneHook(self.skyplane_conn_id).get_settings()
        settings = settings.merged(self.overrides, origin=f"task {self.task_id!r}")
        if settings.relay_backend != "local":
            raise InvalidInputError(
                f"relay_backend={settings.relay_backend!r} is not available yet: use relay_backend='local' "
                "(relays as local processes)"
            )
        src, dst = (
            open_store(
                uri,
                aws_conn_id=self.aws_conn_id,
                gcp_conn_id=self.gcp_conn_id,
                wasb_conn_id=self.wasb_conn_id,
            )
            for uri in (self.source, self.destination)
        )
        self._check_paths(src, dst)

        src_region = self.source_region or self._region_of(src)
        dst_region = self.destination_region or self._region_of(dst)
        plan = self._plan(settings, src_region, dst_region)
        if plan is None:
            self.log.info(
                "No region known for %s: sending directly (pass source_region and destination_region, "
                "e.g. 'aws:us-east-1', to plan relays)",
                self.source if not src_region else self.destination,
            )
        else:
            self.log.info("Planned overlay (%s):\n%s", plan.solver, plan.to_table())
        if self.plan_only:
            return {"dry_run": True, "plan": plan.to_dict() if plan is not None else None}

        from airflow_skyplane.compute.local import LocalRelayBackend
        from airflow_skyplane.transfer.job import Overlay, TransferJob, overlay_from_plan

        overlay = (
            overlay_from_plan(plan, max_connections_per_hop=self.connections_per_hop)
            if plan is not None
            else Overlay.direct(self.connections_per_hop)
        )
        if plan is not None:
            overlay.regions = dict.fromkeys(overlay.regions)  # local relays: all on this machine
        with tempfile.TemporaryDirectory(prefix="skyplane-task-") as workdir:
            self._backend = LocalRelayBackend(f"{workdir}/fleet")
            job = TransferJob(
                src.store,
                src.prefix,
                dst.store,
                dst.prefix,
                backend=self._backend,
                workdir=f"{workdir}/job",
                overlay=overlay,
                chunk_size=settings.chunk_size_mb * MiB,
                compress="auto" if settings.compression else "never",
                encrypt=settings.encryption,
                on_progress=lambda p: self.log.info("%s", p.line()),
                progress_every_s=5.0,
            )
            result = job.run()
        summary = result.summary()
        summary["fleet_id"] = self._backend.fleet_id
        summary["source"], summary["destination"] = self.source, self.destination
        if plan is not None:
            summary["predicted_gbps"] = round(plan.throughput_gbps, 4)
            summary["estimated_cost_usd"] = round(plan.cost_per_gb_usd * result.bytes / 1e9, 6)
            summary["plan"] = plan.to_dict()
        self.log.info(
            "Copied %d objects, %.1f MiB in %.2f s (%.3f Gbps), %d checksums verified",
            result.objects,
            result.bytes / MiB,
            result.seconds,
            result.gbps,
            result.checksums_verified,
        )
        return summary

    def on_kill(self) -> None:
        if self._backend is not None:
            self._backend.teardown()
