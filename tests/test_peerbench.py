"""The peers benchmark's own rules: one size of a workload for every contender of a destination,
rclone's flags chosen from the workload, and a check of what arrived that compares bytes (on the
real emulators), not counts and sizes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from airflow_skyplane.testing.sky import EmulatedSky

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from peerbench.contenders import rclone_tuned  # noqa: E402
from peerbench.testbed import client, compare, digests  # noqa: E402
from peerbench.workloads import MiB, fraction_for, workloads  # noqa: E402

A, B, C = workloads(1.0)
CHUNK = 8 * MiB


def test_the_slowest_prediction_sizes_the_workload_and_every_cut_keeps_whole_objects() -> None:
    # a destination whose slowest contender needs 4.5x the budget on all of (a): a quarter would
    # still take longer than the budget, an eighth fits
    assert fraction_for(4.5 * 36, 36, A) == 1 / 8
    part = A.sized(1 / 8)
    assert len(part.sizes) == 25 and set(part.sizes) <= set(A.sizes)
    assert fraction_for(10, 36, A) == 1 and A.sized(1) is A
    # the one object of (b) is cut in size, not below 1/1024 of it
    assert fraction_for(1e9, 36, B) == 1 / 1024
    assert B.sized(1 / 4).sizes == [B.sizes[0] // 4]


def test_rclone_gets_as_many_flows_or_requests_as_ours_by_the_workload() -> None:
    assert rclone_tuned(A, CHUNK)[1] == ["--transfers", "16", "--checkers", "16"]
    assert rclone_tuned(B, CHUNK)[1] == [
        "--transfers", "1", "--checkers", "1", "--s3-upload-concurrency", "16",
        "--s3-chunk-size", "8M", "--s3-upload-cutoff", "8M",
    ]  # fmt: skip
    few = A.sized(1 / 64)  # 4 objects of up to 50 MiB: 4 transfers of 4 parts at a time
    assert rclone_tuned(few, CHUNK)[0] == {"transfers": 4, "concurrency": 4, "cutoff": CHUNK}
    assert rclone_tuned(C, CHUNK)[1] == ["--transfers", "32", "--checkers", "32"]


@pytest.mark.parametrize("kind", ["s3", "gs", "az"])
def test_the_check_finds_an_object_of_the_right_size_with_other_bytes(
    emulated_sky: EmulatedSky, kind: str
) -> None:
    if kind in emulated_sky.missing:
        pytest.skip(emulated_sky.missing[kind])
    bucket = emulated_sky.make_bucket(kind).split("://", 1)[1]
    cli = client(kind, emulated_sky.endpoint(kind))

    def put(name: str, data: bytes) -> None:
        if kind == "s3":
            cli.put_object(Bucket=bucket, Key=name, Body=data)
        elif kind == "gs":
            cli.bucket(bucket).blob(name).upload_from_string(data)
        else:
            cli.get_blob_client(bucket, name).upload_blob(data, overwrite=True)

    put("a/f1/00000-text.bin", b"x" * 1000)
    put("a/f1/00001-random.bin", b"y" * 2000)
    source = digests(kind, cli, bucket, "a/f1/")
    assert sorted(source) == ["00000-text.bin", "00001-random.bin"]
    compare(source, digests(kind, cli, bucket))
    put("a/f1/00001-random.bin", b"y" * 1999 + b"z")  # same name, same size, one byte differs
    with pytest.raises(RuntimeError, match="1 with other bytes"):
        compare(source, digests(kind, cli, bucket))
    put("a/f1/00002-random.bin", b"w")
    with pytest.raises(RuntimeError, match="1 not in the source"):
        compare(source, digests(kind, cli, bucket))
