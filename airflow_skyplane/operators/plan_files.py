"""The operator's plan file and plan pictures, written beside the task's logs.

The XCom summary keeps each plan in brief (its relay regions, predicted Gbps and cost); the plans
whole - edges, connections, candidate regions, solver, the multicast plan - go to one JSON file the
summary names (``plan_file``), and with ``plan_picture=True`` one PNG per plan beside it, drawn by
:func:`~airflow_skyplane.planner.render.write_plan_pictures` (the ``plot`` extra; without it the
task logs a warning naming the extra and goes on).

The folder is the one Airflow's default ``log_filename_template`` puts the task's attempt logs in:
``<base_log_folder>/dag_id=<dag>/run_id=<run>/task_id=<task>/[map_index=<n>/]``; the files are named
by attempt (``skyplane-plan-attempt=<try>.json``, ``...-<n>.png`` for the n-th destination). Outside
a task instance (an operator run by hand) they go to ``<base_log_folder>/skyplane/task_id=<task>/``,
named by the time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from airflow_skyplane.exceptions import PlannerError
from airflow_skyplane.files import replaced_whole


def plan_folder(ti: Any, task_id: str) -> tuple[Path, str]:
    """Where the plan files of this try go, and the stem of their names."""
    from airflow.sdk import conf

    base = Path(conf.get("logging", "base_log_folder"))
    run_id = getattr(ti, "run_id", None)
    if ti is None or not run_id:
        return base / "skyplane" / f"task_id={task_id}", f"skyplane-plan-{time.strftime('%Y%m%dT%H%M%S')}"
    folder = base / f"dag_id={ti.dag_id}" / f"run_id={run_id}" / f"task_id={ti.task_id}"
    map_index = getattr(ti, "map_index", -1)
    if isinstance(map_index, int) and map_index >= 0:
        folder /= f"map_index={map_index}"
    return folder, f"skyplane-plan-attempt={getattr(ti, 'try_number', 1)}"


def write_plan_file(folder: Path, stem: str, document: dict[str, Any]) -> Path:
    """The plans whole, as JSON, written in one step."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.json"
    with replaced_whole(path, what="the plan file") as tmp:
        tmp.write_text(json.dumps(document, indent=1))
    return path


def draw_plans(folder: Path, stem: str, plans: list[dict[str, Any] | None], log: Any) -> list[Path]:
    """One PNG per plan beside the plan file; without the ``plot`` extra, a warning and none."""
    from airflow_skyplane.planner.render import write_plan_pictures

    try:
        return write_plan_pictures(plans, folder, stem)
    except PlannerError as err:
        log.warning("plan_picture=True, but no picture was drawn: %s; the transfer goes on", err)
        return []


def record_plans(task: Any, ti: Any, planning: Any, uris: list[str], summary: dict[str, Any]) -> None:
    """Write the plan file of ``planning`` (and its pictures when the task asks) beside the task's
    logs; name it in ``summary``. Nothing when every destination is sent directly."""
    if all(p is None for p in planning.plans):
        return
    folder, stem = plan_folder(ti, task.task_id)
    document = planning.document(uris)
    path = write_plan_file(folder, stem, document)
    summary["plan_file"] = str(path)
    task.log.info("Plan file: %s", path)
    if task.plan_picture:
        drawn = draw_plans(folder, stem, [d["plan"] for d in document["destinations"].values()], task.log)
        if drawn:
            task.log.info("Plan pictures: %s", ", ".join(map(str, drawn)))


def read_plans(summary: dict[str, Any]) -> dict[str, Any]:
    """The plan file an XCom summary names, read back: ``{"source_region", "destinations": {uri:
    {"region", "bytes", "plan"}}, "multicast_plan", "excluded_regions"}`` (``{}`` when no plan was
    made: every destination was sent directly)."""
    path = summary.get("plan_file")
    return json.loads(Path(path).read_text()) if path else {}
