"""The job record: ``job.json`` in a transfer's work folder, what another process attaches by.

:meth:`~airflow_skyplane.transfer.job.TransferJob.start` writes it once the uploads are begun (before
any gateway runs, so a kill then loses none) and again once the gateways run;
:meth:`~airflow_skyplane.transfer.job.TransferJob.attach` rebuilds the job from it (the deferrable
operator's ``execute_complete``, the sensor), with the objects recorded beside it (:mod:`.manifest`).
The file is private to this user and replaced whole: a reader sees the old record or the new one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, cast

from airflow_skyplane.exceptions import TransferError
from airflow_skyplane.storage.base import MultipartUpload
from airflow_skyplane.transfer.manifest import private_write
from airflow_skyplane.transfer.resume import JobResume

if TYPE_CHECKING:
    from airflow_skyplane.transfer.job import TransferJob

JOB_FILE = "job.json"


class JobRecord(JobResume):
    """What ``job.json`` holds (the resume ledger's part: :class:`~.resume.JobResume`)."""

    transfer_id: str
    source_prefix: str
    destination_prefix: str
    #: the ids of the reading and the writing gateway: ``source`` and ``destination``
    overlay: dict[str, str]
    bytes_total: int
    started_at: float
    #: relative key -> id of each upload not completed yet
    uploads: dict[str, str]
    keep_on_failure: bool
    chunks_to_send: int
    #: objects this try sends whole (the progress's count of objects)
    objects_to_send: int


def of(job: TransferJob) -> JobRecord:
    """What ``job`` records of itself now (its resume ledger writes the receipts it carries)."""
    return {
        "transfer_id": job.transfer_id,
        "source_prefix": job.source_prefix,
        "destination_prefix": job.destination_prefix,
        "overlay": {"source": job.overlay.source, "destination": job.overlay.destination},
        "bytes_total": job.bytes_total,
        "started_at": job.started_at,
        "uploads": {k: u.upload_id for k, u in job.uploads.items()},
        "keep_on_failure": job.options.keep_on_failure,
        "chunks_to_send": job.chunks_to_send,
        "objects_to_send": job.objects_to_send,
        **job.resume.save(job.workdir),
    }


def write(workdir: Path, record: JobRecord) -> None:
    tmp = workdir / f"{JOB_FILE}.tmp"
    private_write(tmp, json.dumps(record))
    os.replace(tmp, workdir / JOB_FILE)


def read(workdir: Path) -> JobRecord:
    """The record in ``workdir``; TransferError when there is none."""
    try:
        return cast(JobRecord, json.loads((workdir / JOB_FILE).read_text()))
    except FileNotFoundError:
        raise TransferError(
            f"no transfer is recorded in {workdir}: it finished and was cleaned up, or was torn down"
        ) from None


def open_uploads(state: JobRecord) -> dict[str, MultipartUpload]:
    """The uploads ``state`` records as not completed (relative key -> upload)."""
    prefix = state["destination_prefix"]
    return {k: MultipartUpload(prefix + k, upload_id) for k, upload_id in state["uploads"].items()}
