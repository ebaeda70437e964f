"""The operator's failure callback, on the paths the kill test of ``tests/dags`` does not reach: a
fleet whose gateways still run (the worker died without tearing down), and a destination whose
store cannot be opened while the others are cleaned all the same. Run as Airflow runs it: with the
task whose try recorded the ids, and no task instance to pull anything from."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_skyplane.compute import fleets
from airflow_skyplane.hooks.storage import open_store
from airflow_skyplane.operators.callbacks import STATE_XCOM_KEY, record, teardown_on_failure
from airflow_skyplane.operators.transfer import SkyplaneTransferOperator
from airflow_skyplane.testing.sky import EmulatedSky
from airflow_skyplane.transfer.resume import save_state

MiB = 1024 * 1024


def _kept_for_a_retry(uri: str, key: str) -> None:
    """What a resumable try that failed leaves at ``uri``: a multipart upload begun, and its state."""
    loc = open_store(uri)
    upload = loc.store.begin_multipart(loc.prefix + "big.bin")
    loc.store.write_part(upload, 1, b"x" * (5 * MiB))
    objects = {"big.bin": {"upload_id": upload.upload_id}}
    save_state(loc.store, key, {"destination_prefix": loc.prefix, "objects": objects})  # type: ignore[typeddict-item]


def test_the_callback_stops_running_gateways_and_cleans_every_destination_it_can_open(
    emulated_sky: EmulatedSky,
    sky_bucket: Callable[..., str],
    state_dir: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    src, azure, s3 = sky_bucket("s3"), sky_bucket("az"), sky_bucket("s3")
    emulated_sky.open(src).put("in/big.bin", random.Random(5).randbytes(16 * MiB))
    destinations = [f"{azure}/r/", f"{s3}/r/"]
    op = SkyplaneTransferOperator(
        task_id="cb", source=f"{src}/in/", destination=destinations, wait_for_completion=False,
        chunk_size_mb=5,
    )  # fmt: skip
    started = op.execute(context={})  # the try records its fleet on the task: the callback reads it there
    assert fleets.gateways_under(state_dir) != []
    keys = [".skyplane-state/cb-0.json", ".skyplane-state/cb-1.json"]
    for uri, key in zip(destinations, keys, strict=True):
        _kept_for_a_retry(uri, key)
    record(None, op, STATE_XCOM_KEY, [[uri, key] for uri, key in zip(destinations, keys, strict=True)])
    op.wasb_conn_id = "skyplane_no_such_connection"  # the Azure store cannot be opened any more
    capfd.readouterr()

    teardown_on_failure({"task": op, "ti": None})
    logged = "".join(capfd.readouterr())
    assert re.search(rf"fleet {started['fleet_id']} torn down after the failure: stopped \S+", logged), logged
    assert fleets.gateways_under(state_dir) == [] and fleets.fleet_ids(state_dir) == []
    assert f"could not discard the transfer state {keys[0]} of {destinations[0]}" in logged
    assert f"transfer state of {destinations[1]} discarded after the failure: 1 upload(s) aborted" in logged
    s3_store, az_store = open_store(s3).store, open_store(azure).store
    assert list(s3_store.list(".skyplane-state/")) == [] and list(s3_store.list_multipart_uploads()) == []
    assert [i.key for i in az_store.list(".skyplane-state/")] == [keys[0]]  # left, and said so

    op.wasb_conn_id = "wasb_default"  # run again once the connection is back: idempotent
    teardown_on_failure({"task": op, "ti": None})
    logged = "".join(capfd.readouterr())
    assert f"fleet {started['fleet_id']} torn down after the failure: nothing was left running" in logged
    assert f"transfer state of {destinations[0]} discarded after the failure: 1 upload(s) aborted" in logged
    assert list(az_store.list(".skyplane-state/")) == [] and list(az_store.list_multipart_uploads()) == []
    assert list(az_store.list("r/")) == [] and list(s3_store.list("r/")) == []  # nothing half-written
