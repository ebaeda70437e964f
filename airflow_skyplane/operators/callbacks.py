"""The failure callbacks the transfer operator and the transfer sensor install on their tasks, and
what the operator records for them (the fleet id and the durable states' keys, in XCom).

Each finds what to clean by ids alone (the fleet id, the durable states' keys, from XCom or the task),
so it works in the failed task's process or wherever Airflow runs the callbacks of a task whose
worker died. Both are idempotent. They compose with the user's own callbacks (:func:`with_callback`),
never replace them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

FLEET_XCOM_KEY = "skyplane_fleet_id"
#: XCom of the durable transfer states (``[[destination URI, state key], ...]``), for the callback
STATE_XCOM_KEY = "skyplane_state"


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


def push_state_keys(ti: Any, task_id: str, state_prefix: str, destinations: list[str]) -> list[str | None]:
    """The durable state key of each destination, pushed to XCom for :func:`discard_states`; none
    outside a task instance (nothing would identify a retry)."""
    from airflow_skyplane.transfer.resume import state_key

    if ti is None or not getattr(ti, "run_id", None):
        return []
    keys: list[str | None] = [
        state_key(
            state_prefix,
            dag_id=ti.dag_id,
            task_id=task_id,
            run_id=ti.run_id,
            map_index=getattr(ti, "map_index", -1),
            destination=uri,
        )
        for uri in destinations
    ]
    ti.xcom_push(key=STATE_XCOM_KEY, value=[[uri, key] for uri, key in zip(destinations, keys, strict=True)])
    return keys


def teardown_on_failure(context: Any) -> None:
    """The ``on_failure_callback`` every transfer task gets: tear its fleet down by its id.

    Runs in the failed task's process, or wherever Airflow runs callbacks of a task whose worker
    died; it needs only the fleet id from XCom and the fleet records. Idempotent.
    """
    from airflow_skyplane.transfer.fleet import teardown

    ti = context.get("ti") if hasattr(context, "get") else None
    task = context.get("task") if hasattr(context, "get") else None
    if ti is None:
        return
    fleet_id = ti.xcom_pull(task_ids=ti.task_id, key=FLEET_XCOM_KEY, map_indexes=ti.map_index)
    if not fleet_id:
        return
    running = teardown(fleet_id, fleets_dir(getattr(task, "skyplane_conn_id", "skyplane_default")))
    if running:
        ti.log.warning("fleet %s torn down after the failure: stopped %s", fleet_id, ", ".join(running))
    discard_states(ti, task)


def discard_states(ti: Any, task: Any) -> None:
    """The task failed for good: abort the uploads its resumable transfers kept for a retry, and
    delete their states (found through XCom, so this works wherever the callback runs)."""
    from airflow_skyplane.hooks.storage import open_store
    from airflow_skyplane.transfer.resume import discard_state

    states = ti.xcom_pull(task_ids=ti.task_id, key=STATE_XCOM_KEY, map_indexes=ti.map_index) or []
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
            ti.log.warning("could not discard the transfer state %s of %s: %s", key, uri, err)
            continue
        ti.log.warning("transfer state of %s discarded after the failure: %d upload(s) aborted", uri, aborted)


def teardown_sensor_fleet(context: Any) -> None:
    """``on_failure_callback`` of the transfer sensor: the fleet it watched is torn down."""
    from airflow_skyplane.transfer.fleet import teardown

    task = context.get("task")
    fleet_id = getattr(task, "fleet_id", None)
    if fleet_id:
        teardown(fleet_id, fleets_dir(getattr(task, "skyplane_conn_id", "skyplane_default")))
