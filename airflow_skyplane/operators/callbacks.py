"""The failure callbacks the transfer operator and the transfer sensor install on their tasks, and
what the operator records for them (the fleet id and the durable states' keys).

The operator records both in XCom and on the task object itself. The callback reads the task's own
record when it runs in the failed try's process (Airflow 3 runs ``on_failure_callback`` there, with
the same operator object): a try that failed before it started a fleet then pulls nothing, so no
"XCom not found" error is logged. Where there is no record (the callback of a task whose worker died,
run elsewhere by Airflow), it pulls the ids from XCom. It finds everything else by these ids alone.

It logs through the task's logger (a ``RuntimeTaskInstance`` of Airflow 3 has none), and every step
runs whatever the one before it raised: the fleet is torn down, then the state of every destination
is discarded, each on its own. Both callbacks are idempotent. They compose with the user's own
callbacks (:func:`with_callback`), never replace them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

FLEET_XCOM_KEY = "skyplane_fleet_id"
#: XCom of the durable transfer states (``[[destination URI, state key], ...]``), for the callback
STATE_XCOM_KEY = "skyplane_state"
#: the attribute of the operator object where a try records what it pushed (None: not this process)
RECORD_ATTR = "_skyplane_pushed"

_log = logging.getLogger(__name__)


def task_logger(task: Any) -> Any:
    """The task's logger (the operator's, routed into the task log), else this module's."""
    log = getattr(task, "log", None)
    return log if log is not None else _log


def start_record(task: Any) -> None:
    """A try of ``task`` begins in this process: from now on its callback reads what it pushed from
    the task, not from XCom."""
    setattr(task, RECORD_ATTR, {})


def record(ti: Any, task: Any, key: str, value: Any) -> None:
    """Push ``value`` to XCom under ``key`` (when there is a task instance) and record it on the task."""
    recorded = getattr(task, RECORD_ATTR, None)
    if isinstance(recorded, dict):
        recorded[key] = value
    if ti is not None:
        ti.xcom_push(key=key, value=value)


def recall(ti: Any, task: Any, key: str) -> Any:
    """What the failed try pushed under ``key``: from the task when the try ran in this process
    (None when it never pushed it), else from XCom."""
    recorded = getattr(task, RECORD_ATTR, None)
    if isinstance(recorded, dict):
        return recorded.get(key)
    if ti is None:
        return None
    return ti.xcom_pull(task_ids=ti.task_id, key=key, map_indexes=getattr(ti, "map_index", -1))


def with_callback(
    given: Callable[..., Any] | Sequence[Callable[..., Any]] | None, ours: Callable[..., Any]
) -> list[Callable[..., Any]]:
    """The user's failure callback(s), then ours: composing, never replacing, what the user passed."""
    if given is None:
        return [ours]
    return [given, ours] if callable(given) else [*given, ours]


def fleets_dir(skyplane_conn_id: str) -> str:
    """Where the fleets of the ``skyplane`` connection's settings are recorded."""
    from airflow_skyplane.hooks.skyplane import SkyplaneHook

    return str(SkyplaneHook(skyplane_conn_id).get_settings().fleets_dir())


def will_retry(ti: Any) -> bool:
    """Whether a failure of this try leaves the task up for retry (then its uploads are kept):
    what the API server told the task runner, else ``try_number <= max_tries`` (which counts
    the tries a clear added)."""
    should = getattr(getattr(ti, "_ti_context_from_server", None), "should_retry", None)
    if isinstance(should, bool):
        return should
    try_number, max_tries = getattr(ti, "try_number", None), getattr(ti, "max_tries", None)
    return isinstance(try_number, int) and isinstance(max_tries, int) and try_number <= max_tries


def push_state_keys(ti: Any, task: Any, state_prefix: str, destinations: list[str]) -> list[str | None]:
    """The durable state key of each destination, recorded (:func:`record`) for
    :func:`discard_states`; none outside a task instance (nothing would identify a retry)."""
    from airflow_skyplane.transfer.resume import state_key

    if ti is None or not getattr(ti, "run_id", None):
        return []
    keys: list[str | None] = [
        state_key(
            state_prefix,
            dag_id=ti.dag_id,
            task_id=task.task_id,
            run_id=ti.run_id,
            map_index=getattr(ti, "map_index", -1),
            destination=uri,
        )
        for uri in destinations
    ]
    record(ti, task, STATE_XCOM_KEY, [[uri, key] for uri, key in zip(destinations, keys, strict=True)])
    return keys


def teardown_on_failure(context: Any) -> None:
    """The ``on_failure_callback`` every transfer task gets: tear its fleet down by its id, then
    discard the durable state of every destination (the task failed for good).

    Runs in the failed task's process, or wherever Airflow runs callbacks of a task whose worker
    died; it needs only the ids the try recorded and the fleet records. Idempotent.
    """
    from airflow_skyplane.transfer.fleet import teardown

    ti = context.get("ti") if hasattr(context, "get") else None
    task = context.get("task") if hasattr(context, "get") else None
    log = task_logger(task)
    fleet_id = recall(ti, task, FLEET_XCOM_KEY)
    if fleet_id:
        try:
            state_dir = fleets_dir(getattr(task, "skyplane_conn_id", "skyplane_default"))
            running = teardown(fleet_id, state_dir, for_good=True)
        except Exception as err:  # noqa: BLE001 - the states below are discarded all the same
            log.error("could not tear down fleet %s after the failure: %s", fleet_id, err)
        else:
            if running:
                log.warning("fleet %s torn down after the failure: stopped %s", fleet_id, ", ".join(running))
            else:
                log.info("fleet %s torn down after the failure: nothing was left running", fleet_id)
    discard_states(ti, task)


def discard_states(ti: Any, task: Any) -> None:
    """The task failed for good: abort the uploads its resumable transfers kept for a retry, and
    delete their states (found through the try's record, so this works wherever the callback runs).
    Each destination is cleaned whatever happened at the others."""
    from airflow_skyplane.hooks.storage import open_store
    from airflow_skyplane.transfer.resume import discard_state

    log = task_logger(task)
    states = recall(ti, task, STATE_XCOM_KEY) or []
    for uri, key in states:
        try:
            location = open_store(
                uri,
                aws_conn_id=getattr(task, "aws_conn_id", None),
                gcp_conn_id=getattr(task, "gcp_conn_id", None),
                wasb_conn_id=getattr(task, "wasb_conn_id", None),
            )
            aborted = discard_state(location.store, key)
        except Exception as err:  # noqa: BLE001 - the other destinations still get cleaned
            log.warning("could not discard the transfer state %s of %s: %s", key, uri, err)
            continue
        log.warning("transfer state of %s discarded after the failure: %d upload(s) aborted", uri, aborted)


def teardown_sensor_fleet(context: Any) -> None:
    """``on_failure_callback`` of the transfer sensor: the fleet it watched is torn down."""
    from airflow_skyplane.transfer.fleet import teardown

    task = context.get("task")
    fleet_id = getattr(task, "fleet_id", None)
    if fleet_id:
        teardown(fleet_id, fleets_dir(getattr(task, "skyplane_conn_id", "skyplane_default")))
