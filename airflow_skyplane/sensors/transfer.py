"""Sensors: wait on a running transfer, or on a replica being in sync with its source.

``SkyplaneTransferSensor`` waits on a fleet the operator left running (``wait_for_completion=False``),
by the fleet id of the operator's XCom summary. Each poke renews the gateways' store credentials
that near their expiry (:func:`~airflow_skyplane.transfer.credentials.renew_fleet`), reads the
gateways' status and logs the progress; when every chunk is written it completes the uploads,
verifies every object, tears the fleet down and returns the operator's summary (to XCom); when a
gateway fails it tears the fleet down and fails with the gateways' errors. A failure of the sensor
itself (timeout included) tears the fleet down too, through the ``on_failure_callback`` it installs.
In deferrable mode it waits in the triggerer
(:class:`~airflow_skyplane.triggers.transfer.SkyplaneTransferTrigger`).

``SkyplaneReplicaSensor`` succeeds once every source object under a prefix (filtered by
``include``/``exclude``) is at the destination with the same size and checksum (or size and
modification time, per ``compare``): the operator's inventory for ``mode="sync"``
(:mod:`airflow_skyplane.transfer.inventory`), which leaves the transfer-state folder out, so a bucket
that is both a destination and a source is in sync once the operator would copy nothing. In
deferrable mode it sleeps between pokes in the triggerer.

Both work in ``poke`` and ``reschedule`` modes. With local relays, the sensor runs where the
transfer's relays run (the worker's machine).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_skyplane.exceptions import TransferError
from airflow_skyplane.operators.callbacks import fleets_dir, teardown_sensor_fleet, with_callback


def _complete(fleet_id: str, state_dir: str, log: Any) -> dict[str, Any]:
    from airflow_skyplane.transfer.fleet import FleetTransfer

    return FleetTransfer.complete(fleet_id, state_dir, log)


class SkyplaneTransferSensor(BaseSensorOperator):
    """Wait for the transfer of fleet ``fleet_id`` to finish; return its summary.

    :param fleet_id: the ``fleet_id`` of the operator's summary, e.g.
        ``"{{ ti.xcom_pull(task_ids='replicate')['fleet_id'] }}"``. Templated.
    :param skyplane_conn_id: the ``skyplane`` connection (where the fleet records are kept).
    :param deferrable: wait in the triggerer instead of a worker slot.
    """

    template_fields: Sequence[str] = ("fleet_id",)
    ui_color = "#d8f3ff"

    def __init__(
        self,
        *,
        fleet_id: str,
        skyplane_conn_id: str = "skyplane_default",
        deferrable: bool = False,
        on_failure_callback: Callable[..., Any] | list[Callable[..., Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            on_failure_callback=with_callback(on_failure_callback, teardown_sensor_fleet), **kwargs
        )
        self.fleet_id = fleet_id
        self.skyplane_conn_id = skyplane_conn_id
        self.deferrable = deferrable

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        from airflow_skyplane.compute.fleets import check_fleet_id
        from airflow_skyplane.triggers.transfer import SkyplaneTransferTrigger

        timeout = self.timeout if isinstance(self.timeout, int | float) else 7 * 24 * 3600.0
        self.defer(
            trigger=SkyplaneTransferTrigger(
                fleet_id=check_fleet_id(self.fleet_id),
                state_dir=fleets_dir(self.skyplane_conn_id),
                poll_interval=float(self.poke_interval)
                if isinstance(self.poke_interval, int | float)
                else 5.0,
                timeout_s=float(timeout),
            ),
            method_name="execute_complete",
        )

    def poke(self, context: Any) -> bool | PokeReturnValue:
        from airflow_skyplane.compute.fleets import check_fleet_id, fleet_dir
        from airflow_skyplane.transfer.credentials import renew_fleet
        from airflow_skyplane.transfer.fleet import teardown
        from airflow_skyplane.transfer.tracker import poll_fleet

        state_dir = fleets_dir(self.skyplane_conn_id)
        folder = fleet_dir(state_dir, check_fleet_id(self.fleet_id))
        renew_fleet(folder)  # the gateways' store credentials that near their expiry
        status = poll_fleet(folder)
        self.log.info("fleet %s: %s", self.fleet_id, status.progress.line())
        if status.state == "running":
            return False
        if status.state == "failed":
            teardown(self.fleet_id, state_dir)
            raise TransferError(f"transfer on fleet {self.fleet_id} failed: {status.message}")
        return PokeReturnValue(is_done=True, xcom_value=_complete(self.fleet_id, state_dir, self.log))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        from airflow_skyplane.transfer.fleet import teardown

        if event.get("status") != "done":
            teardown(event["fleet_id"], event["state_dir"])
            raise TransferError(f"transfer on fleet {event['fleet_id']} failed: {event.get('message')}")
        return _complete(event["fleet_id"], event["state_dir"], self.log)


class SkyplaneReplicaSensor(BaseSensorOperator):
    """Wait until ``destination`` holds every object of ``source`` (same size and checksum).

    :param source: URI of the source prefix. Templated.
    :param destination: URI of the replica prefix. Templated.
    :param compare: ``checksum`` (default), ``size_mtime``, ``size`` or ``exists``, as in ``sync``.
    :param include: glob pattern(s) of the objects that must be replicated.
    :param exclude: glob pattern(s) of objects that need not be.
    :param skyplane_conn_id: the ``skyplane`` connection, whose ``state_prefix`` names the folder of
        transfer state that is never data (so a bucket that is also a transfer's destination is in
        sync when the operator would copy nothing).
    :param deferrable: sleep between pokes in the triggerer instead of a worker slot.
    """

    template_fields: Sequence[str] = ("source", "destination", "include", "exclude")
    ui_color = "#d8f3ff"

    def __init__(
        self,
        *,
        source: str,
        destination: str,
        compare: str = "checksum",
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        aws_conn_id: str | None = None,
        gcp_conn_id: str | None = None,
        wasb_conn_id: str | None = None,
        skyplane_conn_id: str = "skyplane_default",
        deferrable: bool = False,
        **kwargs: Any,
    ) -> None:
        from airflow_skyplane.exceptions import InvalidInputError
        from airflow_skyplane.transfer.diff import COMPARE_MODES

        super().__init__(**kwargs)
        if compare not in COMPARE_MODES:
            raise InvalidInputError(f"compare={compare!r} is unknown: use one of {', '.join(COMPARE_MODES)}")
        self.source, self.destination, self.compare = source, destination, compare
        self.include, self.exclude = include, exclude
        self.aws_conn_id, self.gcp_conn_id, self.wasb_conn_id = aws_conn_id, gcp_conn_id, wasb_conn_id
        self.skyplane_conn_id = skyplane_conn_id
        self.deferrable = deferrable

    def _check(self) -> dict[str, int]:
        from airflow_skyplane.hooks.skyplane import SkyplaneHook
        from airflow_skyplane.hooks.storage import open_store
        from airflow_skyplane.transfer import inventory
        from airflow_skyplane.transfer.diff import DiffCounts, KeyFilter, check_patterns

        conns: dict[str, Any] = {
            "aws_conn_id": self.aws_conn_id,
            "gcp_conn_id": self.gcp_conn_id,
            "wasb_conn_id": self.wasb_conn_id,
        }
        src, dst = open_store(self.source, **conns), open_store(self.destination, **conns)
        counts = DiffCounts()
        keep = KeyFilter(check_patterns("include", self.include), check_patterns("exclude", self.exclude))
        state_prefix = SkyplaneHook(self.skyplane_conn_id).get_settings().state_prefix
        to_send = inventory.to_send(
            src, dst, mode="sync", compare=self.compare, keep=keep, state_prefix=state_prefix, counts=counts
        )
        # stop at the fifth difference: not in sync is all a poke needs to know
        missing = [info.key for _, info in zip(range(5), to_send, strict=False)]
        result = counts.as_dict()
        if missing:
            self.log.info("%s is not in sync yet, e.g. %s", self.destination, ", ".join(missing))
        return result

    def poke(self, context: Any) -> bool | PokeReturnValue:
        counts = self._check()
        done = counts["new"] == 0 and counts["changed"] == 0
        return PokeReturnValue(is_done=done, xcom_value=counts if done else None)

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        return self.execute_complete(context, None, started=time.time())

    def execute_complete(self, context: Any, event: Any, started: float | None = None) -> Any:
        """Deferrable mode: poke, then sleep in the triggerer until the next poke."""
        result = self.poke(context)
        assert isinstance(result, PokeReturnValue)
        if result.is_done:
            return result.xcom_value
        started = started or time.time()
        limit = self.timeout.total_seconds() if isinstance(self.timeout, timedelta) else self.timeout
        if limit is not None and time.time() - started > limit:
            from airflow.sdk.exceptions import AirflowSensorTimeout

            raise AirflowSensorTimeout(
                f"{self.destination} not in sync with {self.source} after {limit:.0f} s"
            )
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        interval = self.poke_interval
        delta = interval if isinstance(interval, timedelta) else timedelta(seconds=interval)
        self.defer(
            trigger=TimeDeltaTrigger(delta), method_name="execute_complete", kwargs={"started": started}
        )
