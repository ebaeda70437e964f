"""Resumable transfers: a try killed mid-way leaves a durable state in the destination store; the
retry continues its multipart uploads, sends only what was not written, and leaves nothing behind.

Real gateway processes, real stores (local folders for the 2 GiB case, moto for S3 multipart).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_skyplane.compute import fleets
from airflow_skyplane.compute.local import LocalRelayBackend
from airflow_skyplane.exceptions import TransferError
from airflow_skyplane.hooks.storage import open_store
from airflow_skyplane.storage.base import UPLOADS_PREFIX
from airflow_skyplane.storage.local import LocalStore
from airflow_skyplane.testing.digest import tree_digest
from airflow_skyplane.transfer import resume
from airflow_skyplane.transfer.job import Overlay, TransferJob

MiB = 1024 * 1024
GiB = 1024 * MiB
KEY = resume.state_key(
    resume.DEFAULT_STATE_PREFIX, dag_id="d", task_id="t", run_id="r", map_index=-1, destination="x"
)

# The controller of the first try, in a process of its own so that it can be SIGKILLed like a task.
CONTROLLER = r"""
import os, sys
from airflow_skyplane.compute.local import LocalRelayBackend
from airflow_skyplane.storage.local import LocalStore
from airflow_skyplane.transfer.job import Overlay, TransferJob
src, dst, work, key, chunk, connections = sys.argv[1:7]
job = TransferJob(
    LocalStore(src), "", LocalStore(dst), "", backend=LocalRelayBackend(work + "/fleet"),
    workdir=work + "/job", overlay=Overlay.direct(int(connections)), chunk_size=int(chunk),
    state_key=key, watch_pid=os.getpid(),  # checkpoints as often as the operator's defaults
)
job.run()
"""


def recorded_bytes(store, key: str = KEY) -> int:
    data = resume.load_state(store, key)
    return sum(r["length"] for r in data["receipts"]) if data else 0


def written_parts_bytes(root: Path) -> int:
    """Bytes a local destination holds in multipart parts (written, whether recorded or not)."""
    uploads = root / UPLOADS_PREFIX.rstrip("/")
    return sum(p.stat().st_size for p in uploads.glob("*/part-*")) if uploads.is_dir() else 0


def kill_gateways(workdir: Path) -> None:
    for raw in fleets.read_gateways(workdir).values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(raw["pid"], signal.SIGKILL)


def interrupt(job: TransferJob, until: Callable[[], bool]) -> None:
    """Run ``job`` until ``until()`` holds, then SIGKILL its gateways; the job is never closed, as
    when its controller is killed."""
    job.start()
    while not until():
        assert not job.poll(), "the transfer finished before it could be interrupted"
        time.sleep(0.02)
    for gw in job.started.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(gw.process.pid, signal.SIGKILL)
        gw.process.wait(timeout=30)


def new_job(src, sprefix, dst, dprefix, workdir: Path, **kwargs) -> TransferJob:
    backend = LocalRelayBackend(workdir / "fleet")
    return TransferJob(src, sprefix, dst, dprefix, backend=backend, workdir=workdir / "job", **kwargs)


@pytest.mark.slow
@pytest.mark.full_tier(
    reason="a minute of 2 GiB; the other resume tests kill transfers of a few MiB at every stage"
)
def test_a_2gib_transfer_killed_at_half_resumes_and_resends_little(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    with (src / "big.bin").open("wb") as f:  # the 1 GiB object
        for _ in range(64):
            f.write(os.urandom(16 * MiB))
    for n in range(16):  # and 1 GiB more in 64 MiB objects
        (src / f"parts/p-{n:02d}.bin").parent.mkdir(exist_ok=True)
        (src / f"parts/p-{n:02d}.bin").write_bytes(os.urandom(64 * MiB))
    total, chunk, connections = 2 * GiB, 32 * MiB, 8

    first = tmp_path / "first"
    controller = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER, str(src), str(dst), str(first), KEY, str(chunk), str(connections)],
        start_new_session=True,
    )
    try:
        while written_parts_bytes(dst) < total // 2:  # half written, wherever the checkpoints are
            assert controller.poll() is None, "the first try ended before it was killed"
            time.sleep(0.05)
    finally:
        os.kill(controller.pid, signal.SIGKILL)  # the task process ...
        controller.wait(timeout=30)
        kill_gateways(first / "job")  # ... and its gateways
    written = written_parts_bytes(dst)
    assert total // 2 <= written < total  # killed mid-way, with parts on disk
    assert recorded_bytes(LocalStore(dst)) <= written

    retry = new_job(
        LocalStore(src), "", LocalStore(dst), "", tmp_path / "retry", overlay=Overlay.direct(connections),
        chunk_size=chunk, state_key=KEY,
    )  # fmt: skip
    result = retry.run()
    assert tree_digest(dst) == tree_digest(src)  # byte-exact, and nothing else at the destination
    assert result.bytes == total and result.objects == 17
    sent = result.gateways["source"]["raw_bytes"]
    assert sent == total - result.resumed_bytes
    resent = written - result.resumed_bytes  # written by the first try and sent again by the retry
    assert resent <= total // 10 + connections * chunk
    print(json.dumps({"written_before_kill": written, "resumed": result.resumed_bytes, "resent": resent}))
    assert not (dst / ".skyplane-state").exists()
    assert list(LocalStore(dst).list_multipart_uploads()) == []


def test_s3_multipart_uploads_continue_in_a_new_job(sky_bucket: Callable[[str], str], tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "w").mkdir(parents=True)
    rng = random.Random(11)
    data = {"w/big.bin": rng.randbytes(100 * MiB + 3), "w/small.txt": b"small"}
    data["w/mid.bin"] = rng.randbytes(MiB)
    for key, body in data.items():
        (src / key).write_bytes(body)
    s3 = open_store(sky_bucket("s3") + "/copy/")
    options = {"overlay": Overlay.direct(2), "chunk_size": 5 * MiB, "state_key": KEY, "state_every_chunks": 1}
    first = new_job(LocalStore(src), "w/", s3.store, s3.prefix, tmp_path / "first", **options)
    interrupt(first, lambda: recorded_bytes(s3.store) >= 4 * 5 * MiB)
    state = resume.load_state(s3.store, KEY)
    assert state is not None
    upload_id = state["objects"]["big.bin"]["upload_id"]
    [left] = [u for u in s3.store.list_multipart_uploads("copy/") if u.key == "copy/big.bin"]
    assert left.upload_id == upload_id  # the first try's upload is still open, as a killed task leaves it

    retry = new_job(LocalStore(src), "w/", s3.store, s3.prefix, tmp_path / "retry", **options)
    try:
        retry.start()
        assert retry.uploads["big.bin"].upload_id == upload_id  # continued, not begun again
        while not retry.poll():
            time.sleep(0.05)
        result = retry.finish()
    finally:
        retry.close()
    assert result.resumed_bytes >= 4 * 5 * MiB
    for key, body in data.items():
        assert s3.store.read("copy/" + key[2:]) == body
    assert s3.store.head("copy/big.bin").checksum.value.endswith("-21")  # one S3 object of 21 parts
    assert list(s3.store.list_multipart_uploads()) == []
    assert not s3.store.exists(KEY)


def test_a_source_object_changed_since_discards_its_state(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "big.bin").write_bytes(os.urandom(24 * MiB))
    (src / "other.bin").write_bytes(os.urandom(12 * MiB))
    options = {"overlay": Overlay.direct(1), "chunk_size": MiB, "state_key": KEY, "state_every_chunks": 1}
    # a slow writer, so that the transfer is surely in flight when it is interrupted, however fast
    # the data plane moves 36 MiB on loopback
    slow = {"destination": {"delay_per_chunk_s": 0.05}}
    first = new_job(LocalStore(src), "", LocalStore(dst), "", tmp_path / "first", test_faults=slow, **options)
    interrupt(first, lambda: recorded_bytes(LocalStore(dst)) >= 3 * MiB)
    old = resume.load_state(LocalStore(dst), KEY)
    assert old is not None and old["objects"]["big.bin"]["upload_id"]
    # the same size, other bytes, later mtime: parts of the old version must not end up in the new one
    (src / "big.bin").write_bytes(os.urandom(24 * MiB))
    later = time.time() + 60
    os.utime(src / "big.bin", (later, later))

    result = new_job(LocalStore(src), "", LocalStore(dst), "", tmp_path / "retry", **options).run()
    assert tree_digest(dst) == tree_digest(src)
    assert result.discarded == 1
    assert not (dst / UPLOADS_PREFIX / old["objects"]["big.bin"]["upload_id"]).exists()
    assert list(LocalStore(dst).list_multipart_uploads()) == [] and not (dst / ".skyplane-state").exists()


def test_a_failed_try_keeps_its_uploads_for_the_retry_and_discard_removes_them(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "big.bin").write_bytes(os.urandom(8 * MiB))
    faults = {"destination": {"exit_after_chunks": 3}}
    kept = new_job(
        LocalStore(src), "", LocalStore(dst), "", tmp_path / "kept", chunk_size=MiB, state_key=KEY,
        test_faults=faults,
    )  # fmt: skip
    with pytest.raises(TransferError, match="exited with code 17"):
        kept.run()
    assert LocalStore(dst).exists(KEY)  # the state, for the retry
    assert [u.key for u in LocalStore(dst).list_multipart_uploads()] == ["big.bin"]
    assert resume.discard_state(LocalStore(dst), KEY) == 1  # the task failed for good
    assert list(LocalStore(dst).list_multipart_uploads()) == [] and not LocalStore(dst).exists(KEY)

    final = new_job(
        LocalStore(src), "", LocalStore(dst), "", tmp_path / "final", chunk_size=MiB, state_key=KEY,
        test_faults=faults, keep_on_failure=False,
    )  # fmt: skip
    with pytest.raises(TransferError, match="exited with code 17"):
        final.run()
    assert list(LocalStore(dst).list_multipart_uploads()) == [] and not LocalStore(dst).exists(KEY)
    assert list(LocalStore(dst).list()) == []


def test_state_keys_tell_task_instances_apart() -> None:
    base = {"dag_id": "d", "task_id": "t", "run_id": "r", "map_index": -1, "destination": "s3://b/p/"}
    key = resume.state_key(".skyplane-state/", **base)
    assert key.startswith(".skyplane-state/") and key.endswith(".json")
    assert resume.state_key(".skyplane-state/", **base) == key  # a retry finds it
    for field, other in (("run_id", "r2"), ("map_index", 0), ("destination", "s3://b/q/"), ("task_id", "u")):
        assert resume.state_key(".skyplane-state/", **{**base, field: other}) != key
    for bad in ("", "state", "/abs/", ".skyplane-uploads/x/", "a//b/"):
        with pytest.raises(Exception, match="state_prefix"):
            resume.check_state_prefix(bad)


@pytest.mark.parametrize("service", ["s3", "gs", "az", "file"])
def test_every_store_continues_an_upload_from_its_id_and_part_tokens(
    service: str, sky_bucket: Callable[[str], str]
) -> None:
    """An upload begun and partly written by one client is found, finished and completed by another
    (a new process has nothing but the upload id and the recorded tokens)."""
    uri = sky_bucket(service)
    writer = open_store(uri + "/").store
    part = b"a" * writer.min_part_size
    upload = writer.begin_multipart("obj/big.bin")
    written = [writer.write_part(upload, n, part.replace(b"a", bytes([96 + n]))) for n in (1, 2)]

    reader = open_store(uri + "/").store  # another client, as in the retry
    again = type(upload)(upload.key, upload.upload_id)
    found = reader.uploaded_parts(again)
    assert found is not None
    assert {n: (p.size, p.token) for n, p in found.items()} == {p.number: (p.size, p.token) for p in written}
    last = reader.write_part(again, 3, b"tail")
    reader.complete_multipart(again, [*found.values(), last])
    body = b"".join(part.replace(b"a", bytes([96 + n])) for n in (1, 2)) + b"tail"
    assert reader.read("obj/big.bin") == body
    assert reader.uploaded_parts(again) in (None, {})  # gone once completed (Azure: no blocks left)
    assert list(reader.list_multipart_uploads()) == []


def test_the_state_folder_is_never_data_and_bad_settings_name_the_fix(
    tmp_path: Path, sky_bucket: Callable[[str], str]
) -> None:
    from airflow_skyplane.exceptions import InvalidInputError
    from airflow_skyplane.hooks.skyplane import SkyplaneSettings
    from airflow_skyplane.operators.transfer import SkyplaneTransferOperator

    root = tmp_path / "bucket"
    (root / "data").mkdir(parents=True)
    store = LocalStore(root)
    store.put("data/a.txt", b"a")
    store.put(KEY, b"{}")
    listed = [i.key for i in resume.hide_state(store.list(), resume.DEFAULT_STATE_PREFIX)]
    assert [i.key for i in store.list()] == [KEY, "data/a.txt"] and listed == ["data/a.txt"]

    with pytest.raises(InvalidInputError, match=r"connection 'x' extra: state_prefix='state'.*ending in '/'"):
        SkyplaneSettings.from_mapping({"state_prefix": "state"}, origin="connection 'x' extra")
    with pytest.raises(InvalidInputError, match="resume='yes' must be True or False"):
        SkyplaneTransferOperator(task_id="t", source="file:///a/", destination="file:///b/", resume="yes")
    bucket = sky_bucket("s3")
    op = SkyplaneTransferOperator(
        task_id="t", source=f"file://{root}/data/", destination=f"{bucket}/.skyplane-state/copy/"
    )
    with pytest.raises(InvalidInputError, match="inside the transfer-state folder '.skyplane-state/'"):
        op.execute(context={})
    assert list(open_store(bucket + "/").store.list()) == []  # refused before anything was written


def test_a_state_that_cannot_be_written_leaves_the_transfer_whole_but_not_resumable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "big.bin").write_bytes(os.urandom(3 * MiB))
    (dst / ".skyplane-state").write_bytes(b"a file where the state folder would be")
    store = LocalStore(dst)
    result = new_job(LocalStore(src), "", store, "copy/", tmp_path / "w", chunk_size=MiB, state_key=KEY).run()
    assert result.objects == 1 and (dst / "copy/big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert "the transfer is not resumable" in caplog.text and "resume=False" in caplog.text
    assert list(LocalStore(dst).list_multipart_uploads()) == []
