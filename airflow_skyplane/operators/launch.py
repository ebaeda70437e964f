"""Starting the transfer operator's fleet: local relays, or relay VMs rented through the cloud hooks.

The fleet's id is in XCom and its request (URIs and connection ids) recorded before anything runs
(:class:`~airflow_skyplane.transfer.fleet.FleetTransfer`). With a cloud ``relay_backend``, one VM per
region of the plans is rented (:class:`~airflow_skyplane.compute.cloud.CloudFleet`); when a cloud
refuses a relay region for quota or capacity, the destinations are planned again without it and the
fleet started again, at most three regions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_skyplane.compute.cloud import CloudFleet
    from airflow_skyplane.hooks.skyplane import SkyplaneSettings
    from airflow_skyplane.operators.planning import Planning, TransferPlanner
    from airflow_skyplane.operators.transfer import SkyplaneTransferOperator
    from airflow_skyplane.transfer.fleet import FleetTransfer, FleetWork, TransferRequest
    from airflow_skyplane.transfer.options import TransferOptions
    from airflow_skyplane.transfer.overlay import Overlay

#: relay regions a task plans around before it gives up
MAX_EXCLUDED_REGIONS = 3


def start_fleet(
    task: SkyplaneTransferOperator,
    settings: SkyplaneSettings,
    planner: TransferPlanner,
    planning: Planning,
    ti: Any,
    request: TransferRequest,
    options: TransferOptions,
    work: Callable[[Sequence[Overlay]], FleetWork],
) -> FleetTransfer:
    """Start the task's fleet on the overlays of ``planning`` (``work`` gives the fleet its stores,
    selections and state keys around them); plan around a relay region a cloud refuses."""
    from airflow_skyplane.compute.relays import RelayCapacityError
    from airflow_skyplane.operators.plan_files import record_plans
    from airflow_skyplane.operators.seams import TestSeams
    from airflow_skyplane.transfer.fleet import FleetTransfer

    seams = TestSeams.of(task)
    fleet_id = str(request.summary["fleet_id"])
    owner = {
        "dag_id": getattr(ti, "dag_id", None),
        "run_id": getattr(ti, "run_id", None),
        "task_id": task.task_id,
        "map_index": getattr(ti, "map_index", -1),
        "try_number": getattr(ti, "try_number", None),
    }
    while True:
        cloud = cloud_fleet(task, settings, fleet_id, seams.cloud_backends)
        try:
            return FleetTransfer.start(
                fleet_id=fleet_id,
                state_dir=settings.fleets_dir(),
                request=request,
                work=work(planning.overlays(options, on_vms=cloud is not None)),
                options=options,
                ttl_s=settings.fleet_ttl_minutes * 60.0,
                owner=owner,
                on_progress=lambda p: task.log.info("%s", p.line()),
                detached=not task.wait_for_completion or task.deferrable,
                cloud=cloud,
                test_faults=seams.test_faults,
            )
        except RelayCapacityError as err:
            fixed = {planning.source_region, *planning.regions}
            if err.region is None or err.region in fixed or len(planning.excluded) >= MAX_EXCLUDED_REGIONS:
                raise
            task.log.warning(
                "%s; planning again without %s", err, ", ".join([*planning.excluded, err.region])
            )
            planner.replan(planning, err.region)
            planning.fill(request.summary)
            record_plans(task, ti, planning, request.destinations, request.summary)
            planner.log_estimate(planning)


def cloud_fleet(
    task: SkyplaneTransferOperator,
    settings: SkyplaneSettings,
    fleet_id: str,
    backends: Mapping[str, object] | None,
) -> CloudFleet | None:
    """The fleet's relay VMs for a cloud ``relay_backend``; None for local relays."""
    if settings.relay_backend == "local":
        return None
    from airflow_skyplane.compute.cloud import CloudFleet, CloudOptions
    from airflow_skyplane.compute.fleets import fleet_dir

    options = CloudOptions.from_settings(
        settings, aws_conn_id=task.aws_conn_id, gcp_conn_id=task.gcp_conn_id, azure_conn_id=task.azure_conn_id
    )
    return CloudFleet(fleet_id, fleet_dir(settings.fleets_dir(), fleet_id), options, backends=backends)
