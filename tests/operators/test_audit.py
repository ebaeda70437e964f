"""Syncs a person can audit: a dry run lists the first keys it would send and delete, a real run
logs what it deleted, warnings for an empty source and a source prefix without a trailing '/'."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from airflow_skyplane.operators.transfer import SkyplaneTransferOperator
from airflow_skyplane.testing.sky import EmulatedSky


def _sync(src: str, dst: str, **kwargs: object) -> SkyplaneTransferOperator:
    return SkyplaneTransferOperator(
        task_id="audit", source=src, destination=dst, mode="sync", delete_extraneous=True, **kwargs
    )


def test_a_dry_run_lists_the_first_keys_it_would_send_and_delete_and_a_run_logs_its_deletes(
    emulated_sky: EmulatedSky, sky_bucket: Callable[..., str], capfd: pytest.CaptureFixture[str]
) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("gs")
    source, replica = emulated_sky.open(src), emulated_sky.open(dst)
    for n in range(6):
        source.put(f"t/new-{n}.csv", b"new %d" % n)
    for n in range(4):
        replica.put(f"gone-{n}.csv", b"only at the destination")

    planned = _sync(f"{src}/t/", dst, dry_run=True, preview_keys=3).execute(context={})
    logged = "".join(capfd.readouterr())
    assert planned["objects_to_send"] == 6 and len(list(replica.list())) == 4  # nothing moved
    assert f"dry run: would send 6 object(s) to {dst}: new-0.csv, new-1.csv, new-2.csv (and 3 more)" in logged
    assert (
        f"dry run: would delete 4 object(s) under {dst}: gone-0.csv, gone-1.csv, gone-2.csv (and 1 more)"
    ) in logged

    done = _sync(f"{src}/t/", dst).execute(context={})
    logged = "".join(capfd.readouterr())
    assert [e["sync"]["deleted"] for e in done["destinations"].values()] == [4]
    [line] = re.findall(r"sync deleted 4 object\(s\) from \S+, found only there: .*", logged)
    assert all(f"gone-{n}.csv" in line for n in range(4))
    assert sorted(i.key for i in replica.list()) == [f"new-{n}.csv" for n in range(6)]


def test_an_empty_source_and_a_prefix_without_a_slash_are_warned_about(
    emulated_sky: EmulatedSky, sky_bucket: Callable[..., str], capfd: pytest.CaptureFixture[str]
) -> None:
    src, dst = sky_bucket("s3"), sky_bucket("gs")
    emulated_sky.open(dst).put("kept.csv", b"x")
    summary = _sync(f"{src}/nothing/", dst, dry_run=True).execute(context={})
    logged = "".join(capfd.readouterr())
    assert summary["objects_to_send"] == 0
    assert (
        f"source {src}/nothing/ holds no object: nothing will be sent; with delete_extraneous, every "
        "object at the destinations would be deleted (max_delete bounds how many)"
    ) in logged

    emulated_sky.open(src).put("data/part-0", b"0")
    emulated_sky.open(src).put("data-old/part-0", b"old")
    summary = SkyplaneTransferOperator(
        task_id="slash", source=f"{src}/data", destination=f"{dst}/copy/", dry_run=True
    ).execute(context={})
    logged = "".join(capfd.readouterr())
    assert summary["objects_to_send"] == 2  # data/part-0 and data-old/part-0
    assert f"source='{src}/data' does not end with '/': its prefix 'data' also selects keys like" in logged
    assert "include/exclude patterns see '/part-0'" in logged and "end source with '/'" in logged
