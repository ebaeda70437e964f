"""``SkyplaneTransferTrigger``: wait in the triggerer for a fleet's transfers to finish or fail.

It polls the gateways' status endpoints (:func:`~airflow_skyplane.transfer.tracker.poll_fleet`, run in
a thread so the triggerer's event loop never blocks) every ``poll_interval`` seconds, renews the
gateways' store credentials that near their expiry
(:func:`~airflow_skyplane.transfer.credentials.renew_fleet`, through the Airflow hooks, in a thread
too), logs a progress line, and fires one event: ``done`` when every chunk is written at every
destination, ``failed`` with the gateways' errors, or ``timeout``. Finishing (completing the
uploads, verifying every object) and tearing down happen where the task resumes
(``execute_complete``), which finds the fleet by its id.

Local relays are found through the fleet records on this machine, so with the local relay backend
the triggerer must run on the worker's machine (as in ``airflow standalone`` or a LocalExecutor
deployment).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class SkyplaneTransferTrigger(BaseTrigger):
    def __init__(
        self, fleet_id: str, state_dir: str, poll_interval: float = 5.0, timeout_s: float = 24 * 3600.0
    ) -> None:
        super().__init__()
        self.fleet_id = fleet_id
        self.state_dir = state_dir
        self.poll_interval = poll_interval
        self.timeout_s = timeout_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "fleet_id": self.fleet_id,
                "state_dir": self.state_dir,
                "poll_interval": self.poll_interval,
                "timeout_s": self.timeout_s,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_skyplane.compute.fleets import fleet_dir
        from airflow_skyplane.transfer.credentials import renew_fleet
        from airflow_skyplane.transfer.tracker import poll_fleet

        folder = fleet_dir(self.state_dir, self.fleet_id)
        event = {"fleet_id": self.fleet_id, "state_dir": self.state_dir}
        deadline = time.monotonic() + self.timeout_s
        while True:
            await asyncio.to_thread(renew_fleet, folder)  # store credentials near their expiry
            status = await asyncio.to_thread(poll_fleet, folder)
            self.log.info("fleet %s: %s", self.fleet_id, status.progress.line())
            if status.state != "running":
                yield TriggerEvent({**event, "status": status.state, "message": status.message})
                return
            if time.monotonic() > deadline:
                yield TriggerEvent(
                    {**event, "status": "timeout", "message": f"not done after {self.timeout_s:.0f} s"}
                )
                return
            await asyncio.sleep(self.poll_interval)
