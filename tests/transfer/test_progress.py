"""Progress a person can follow on a transfer of many objects: objects and bytes done, rates, ETA and
the share sent again, in the task log's line and in the writing gateway's status endpoint."""

from __future__ import annotations

import random
from pathlib import Path

from airflow_skyplane.compute.local import LocalRelayBackend
from airflow_skyplane.gateway.status import Counters
from airflow_skyplane.storage.local import LocalStore
from airflow_skyplane.transfer.job import Overlay, TransferJob
from airflow_skyplane.transfer.tracker import Progress, combine

TINY = 2_500


def test_a_transfer_of_thousands_of_tiny_objects_reports_objects_bytes_rate_and_eta(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    rng = random.Random(5)
    total = 0
    for i in range(TINY):
        folder = src / f"day={i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randrange(20, 200))
        (folder / f"event-{i:05d}.json").write_bytes(data)
        total += len(data)
    dst.mkdir()
    reports: list[Progress] = []
    backend = LocalRelayBackend(tmp_path / "fleet")
    job = TransferJob(
        LocalStore(src), "", LocalStore(dst), "", backend=backend, workdir=tmp_path / "job",
        overlay=Overlay.direct(2), on_progress=reports.append, progress_every_s=0.2,
    )  # fmt: skip
    result = job.run()
    assert result.objects == TINY and backend.running() == []

    final = reports[-1]  # reported as the last chunk landed
    assert final.objects_total == TINY and final.objects_done == TINY
    assert final.bytes_done == final.bytes_total == total
    assert final.fraction == 1.0 and final.eta_seconds == 0 and final.objects_per_s > 0
    assert f"{TINY:,} of {TINY:,} objects" in final.line() and "objects/s" in final.line()
    # the figures only grow, and each report is the one of its moment
    for before, after in zip(reports, reports[1:], strict=False):
        assert after.objects_done >= before.objects_done and after.bytes_done >= before.bytes_done
        assert after.seconds >= before.seconds
    # the writing gateway's status endpoint says the same, each object and byte once
    writer = result.gateways["destination"]
    assert writer["objects_stored"] == TINY and writer["bytes_stored"] == total
    fields = final.fields()
    assert fields["objects_done"] == TINY and fields["eta_seconds"] == 0 and fields["resent_share"] == 0


def test_an_object_written_in_parts_counts_once_all_its_parts_are_stored() -> None:
    counters = Counters("destination")
    counters.receipt({"key": "big", "part_number": 3, "length": 4, "last": True}, chunk_id=12)
    counters.receipt({"key": "big", "part_number": 1, "length": 10}, chunk_id=10)
    counters.receipt({"key": "small", "part_number": 0, "length": 7}, chunk_id=20)
    counters.receipt({"key": "small", "part_number": 0, "length": 7}, chunk_id=20)  # written twice
    assert (counters.objects_stored, counters.bytes_stored) == (1, 21)
    counters.receipt({"key": "big", "part_number": 2, "length": 10}, chunk_id=11)
    snapshot = counters.snapshot()
    assert (snapshot["objects_stored"], snapshot["bytes_stored"], snapshot["chunks_stored"]) == (2, 31, 4)


def test_the_eta_follows_whichever_of_bytes_and_objects_is_further_behind() -> None:
    # half the bytes but a tenth of the objects in 10 s: 90 s of objects are left, not 10 s of bytes
    progress = Progress(100, 1000, 50, 100, 10.0, 3, 0, (), objects_done=100, objects_total=1000)
    assert progress.eta_seconds == (1000 - 100) * 10.0 / 100
    assert progress.resent_share == 3 / 100
    line = progress.line()
    assert "100 of 1,000 objects" in line and "10 objects/s" in line and "3 resent (3.0%)" in line
    both = combine([progress, progress])
    assert (both.objects_done, both.objects_total, both.resends) == (200, 2000, 6)
    unknown = combine([progress, Progress(0, None, 0, 0, 1.0, 0, 0, ())])
    assert unknown.objects_total is None and "objects" not in unknown.line().split("MiB")[0]


def test_completion_keeps_only_the_objects_in_flight_and_tallies_the_rest() -> None:
    """Each object's outcome is counted as it ends: nothing of a finished object is held (its
    receipts, its future), so the controller's memory does not grow with the objects done."""
    from airflow_skyplane.exceptions import TransferError
    from airflow_skyplane.transfer.completion import Completion
    from airflow_skyplane.transfer.summary import Unverified

    def finish_object(key: str, receipts: list) -> str | None:
        return "the store reports no checksum" if key.endswith("7") else None

    def cleanup(key: str, err: TransferError) -> TransferError:
        return err

    completion = Completion(finish_object, cleanup)
    keys = [f"k{i:05d}" for i in range(3000)]
    for key in keys:
        completion.expect(key, 1)
    receipt = {"part_number": 0, "offset": 0, "length": 1, "md5": "", "crc32c": "", "token": ""}
    completion.add([{**receipt, "key": key} for key in keys])  # type: ignore[typeddict-item]
    completion.add([{**receipt, "key": keys[0]}])  # a chunk written twice, after its object finished
    unverified = Unverified()
    verified = completion.finish(keys, unverified)
    assert verified == 2700 and unverified.count == 300 and completion.in_flight() == 0
    assert completion._written == {} and completion._expected == {}
