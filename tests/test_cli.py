"""The airflow-skyplane CLI's own behaviour, run as a separate process the way a user runs it: the
version, output cut short by its reader, and the local fleet commands. (Planning is covered in
tests/planner/test_cli.py, the emulated sky in tests/testing/test_sky_cli.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airflow_skyplane import __version__
from airflow_skyplane.compute.fleets import FleetRecord, fleet_ids


def run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow_skyplane.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,  # type: ignore[call-overload]
    )


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"airflow-skyplane {__version__}"


@pytest.mark.parametrize(
    "args",
    [
        ["regions"],
        ["regions", "--json"],
        ["plan", "aws:us-east-1", "gcp:europe-west4-a", "--json"],
        ["--help"],
        ["fleets", "list"],
    ],
)
def test_a_reader_that_goes_away_ends_the_command_quietly(args: list[str], tmp_path: Path) -> None:
    """`airflow-skyplane regions | head -5`: the reader is gone before the output is; no traceback."""
    reader, writer = os.pipe()
    os.close(reader)  # every write to the pipe now fails with EPIPE, as after `head` has exited
    try:
        done = subprocess.run(
            [sys.executable, "-m", "airflow_skyplane.cli", *args],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env={**os.environ, "AIRFLOW__SKYPLANE__STATE_DIR": str(tmp_path)},
        )
    finally:
        os.close(writer)
    assert done.stderr == ""
    # 128 + SIGPIPE, what a shell reports for a writer cut short (argparse's own help ignores the
    # failed write and exits 0)
    assert done.returncode == (0 if args == ["--help"] else 141)


def _record(state_dir: Path, fleet_id: str) -> None:
    now = time.time()
    FleetRecord(
        fleet_id, "local", now - 600, now + 3000, owner={"dag_id": "nightly", "task_id": "sync"}
    ).write(state_dir / fleet_id)


def test_fleets_list_prints_a_header_or_says_there_is_none(tmp_path: Path) -> None:
    empty = run("fleets", "list", "--state-dir", str(tmp_path))
    assert empty.returncode == 0
    assert empty.stdout.strip() == f"no fleets recorded in {tmp_path}"
    _record(tmp_path, "f-0a1b2c3d")
    listed = run("fleets", "list", "--state-dir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.strip().splitlines()
    assert header.split() == ["FLEET", "BACKEND", "AGE", "EXPIRES", "IN", "GATEWAYS", "OWNER"]
    assert row.split()[:2] == ["f-0a1b2c3d", "local"] and row.endswith("nightly.sync")
    assert "10.0 min" in row  # its age


def test_fleets_teardown_of_an_unknown_fleet_fails_and_suggests_the_recorded_one(tmp_path: Path) -> None:
    _record(tmp_path, "f-0a1b2c3d")
    done = run("fleets", "teardown", "f-0a1b2c3e", "--state-dir", str(tmp_path))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip() == (
        f"airflow-skyplane: error: no fleet 'f-0a1b2c3e' is recorded in {tmp_path}: did you mean "
        "f-0a1b2c3d? ('airflow-skyplane fleets list' shows the fleets there; --state-dir names another "
        "folder)"
    )
    assert fleet_ids(tmp_path) == ["f-0a1b2c3d"]  # nothing else was touched

    gone = run("fleets", "teardown", "nosuchfleet", "--state-dir", str(tmp_path / "elsewhere"))
    assert gone.returncode == 2 and "no fleet 'nosuchfleet' is recorded in" in gone.stderr
    assert "did you mean" not in gone.stderr


def test_fleets_teardown_of_a_recorded_fleet_removes_it(tmp_path: Path) -> None:
    _record(tmp_path, "f-0a1b2c3d")
    done = run("fleets", "teardown", "f-0a1b2c3d", "--state-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "fleet f-0a1b2c3d: stopped 0 gateway(s), removed its record"
    assert fleet_ids(tmp_path) == []


def test_fleets_teardown_on_aws_of_an_unknown_fleet_fails(
    emulated_sky: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The AWS path: fleets are found by their tags (here in moto), with boto3's own credentials."""
    import json

    from airflow_skyplane.cli import main

    conn = json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", conn["extra"]["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", conn["login"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", conn["password"])
    assert main(["fleets", "teardown", "nosuchfleet", "--cloud", "aws", "--region", "aws:us-east-1"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.strip() == (
        "airflow-skyplane: error: no fleet 'nosuchfleet' has resources in aws:us-east-1 ('airflow-skyplane "
        "fleets list --cloud aws' shows the fleets there; add the --region it runs in)"
    )
    assert main(["fleets", "list", "--cloud", "aws", "--region", "aws:us-east-1"]) == 0
    assert capsys.readouterr().out.strip() == "no fleets found in aws:us-east-1"
