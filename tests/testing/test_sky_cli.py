"""`airflow-skyplane sky up | env | down`: the emulated sky outside pytest, run as a user runs it, with
the real emulators, and checked through Airflow's own hooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_skyplane.processes import alive
from airflow_skyplane.testing.localsky import RECORD, sky_down
from airflow_skyplane.testing.sky import AZURITE_KEY, find_azurite


def sky(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow_skyplane.cli", "sky", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


_HOOKS_PROBE = r"""
import json, sys
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.google.cloud.hooks.gcs import GCSHook
found = {"s3": S3Hook().check_for_bucket("alpha"), "gs": GCSHook().get_conn().bucket("beta").exists()}
if "az" in sys.argv:
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook
    found["az"] = WasbHook().get_conn().get_container_client("gamma").exists()
print(json.dumps(found))
"""


def _sourced(env_file: Path) -> dict[str, str]:
    """The variables a shell gets from `. FILE` (the file must be valid shell)."""
    done = subprocess.run(
        ["bash", "-c", f". {env_file} && env -0"], capture_output=True, timeout=30, check=True, env={}
    )
    pairs = [item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item]
    return {k: v for k, v in pairs if k.startswith(("AIRFLOW_CONN_", "STORAGE_EMULATOR_HOST"))}


def test_up_creates_buckets_airflow_reaches_them_and_down_stops_only_the_sky(tmp_path: Path) -> None:
    azure = find_azurite() is not None
    services = ["s3", "gs", "az"] if azure else ["s3", "gs"]
    folder, env_file = tmp_path / "sky", tmp_path / "sky.env"
    args = ["--dir", str(folder), "--env-file", str(env_file), *[f"--service={s}" for s in services]]
    buckets = ["--bucket", "s3://alpha", "--bucket", "gs://beta"] + (
        ["--bucket", "az://gamma"] if azure else []
    )
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        up = sky("up", *args, *buckets)
        assert up.returncode == 0, up.stderr
        assert up.stdout == ""  # the environment went to the file
        record = json.loads((folder / RECORD).read_text())
        pids = [p["pid"] for p in record["processes"]]
        assert len(pids) == len(services) and all(alive(p) for p in pids)
        assert "sky down" in up.stderr and all(str(p) in up.stderr for p in pids)
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        assert "fixed test values, not secrets" in env_file.read_text()

        exported = _sourced(env_file)
        names = {"AIRFLOW_CONN_AWS_DEFAULT", "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", "STORAGE_EMULATOR_HOST"}
        assert set(exported) == names | ({"AIRFLOW_CONN_WASB_DEFAULT"} if azure else set())
        if azure:
            assert AZURITE_KEY in exported["AIRFLOW_CONN_WASB_DEFAULT"]  # the public development key

        airflow_env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "STORAGE_"))}
        airflow_env.update(exported, AIRFLOW_HOME=str(tmp_path / "airflow-home"))
        probe = subprocess.run(
            [sys.executable, "-c", _HOOKS_PROBE, *services],
            capture_output=True,
            text=True,
            timeout=300,
            env=airflow_env,
        )
        assert probe.returncode == 0, probe.stderr[-3000:]
        assert json.loads(probe.stdout.strip().splitlines()[-1]) == dict.fromkeys(services, True)

        again = sky("up", "--dir", str(folder))
        assert again.returncode == 2 and "is already up" in again.stderr and "sky down" in again.stderr
        reprinted = sky("env", "--dir", str(folder))
        assert reprinted.returncode == 0 and reprinted.stdout == env_file.read_text()

        down = sky("down", "--dir", str(folder))
        assert down.returncode == 0, down.stderr
        assert all(f"(pid {p})" in down.stdout for p in pids)
        assert not any(alive(p) for p in pids)
        assert not (folder / RECORD).exists()
        assert bystander.poll() is None  # untouched

        twice = sky("down", "--dir", str(folder))
        assert twice.returncode == 2 and "no emulated sky is recorded in" in twice.stderr
        gone = sky("env", "--dir", str(folder))
        assert gone.returncode == 2 and "sky up' starts one" in gone.stderr
    finally:
        if (folder / RECORD).exists():
            sky_down(folder)
        bystander.kill()
        bystander.wait()


def test_environment_on_stdout_is_only_shell(tmp_path: Path) -> None:
    """`eval "$(airflow-skyplane sky up)"`: stdout holds the export lines alone."""
    folder = tmp_path / "sky"
    try:
        up = sky("up", "--dir", str(folder), "--service", "s3")
        assert up.returncode == 0, up.stderr
        lines = up.stdout.splitlines()
        assert all(line.startswith(("# ", "export ")) for line in lines)
        assert [line.split("=")[0] for line in lines if line.startswith("export")] == [
            "export AIRFLOW_CONN_AWS_DEFAULT"
        ]
        shown = subprocess.run(
            ["bash", "-c", 'eval "$0" && echo "$AIRFLOW_CONN_AWS_DEFAULT"', up.stdout],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert json.loads(shown.stdout)["extra"]["endpoint_url"].startswith("http://127.0.0.1:")
    finally:
        sky("down", "--dir", str(folder))


def test_a_missing_emulator_is_named_with_its_install_command_and_nothing_starts(tmp_path: Path) -> None:
    folder = tmp_path / "sky"
    env = {**os.environ, "SKYPLANE_AZURITE_BIN": str(tmp_path / "no-azurite")}
    done = sky("up", "--dir", str(folder), env=env)
    assert done.returncode == 2 and done.stdout == ""
    message = done.stderr.strip()
    assert message.startswith("airflow-skyplane: error: Azurite not found (the Azure Blob emulator)")
    assert "npm install -g azurite" in message and "make install" in message
    assert message.endswith("or start the sky without it: airflow-skyplane sky up --service s3 --service gs")
    assert not (folder / RECORD).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--bucket", "s3://alpha/data/"],
            "names a path inside the bucket: give the bucket alone, s3://alpha",
        ),
        (["--bucket", "file:///tmp/x"], "the emulated sky serves s3://, gs:// and az:// buckets"),
        (["--bucket", "az://gamma", "--service", "s3"], "needs the az emulator, which --service leaves out"),
        (["--bucket", "s3://A"], "storage URI 's3://A'"),
        (["--service", "dynamodb"], "invalid choice: 'dynamodb'"),
    ],
)
def test_bad_input_fails_before_anything_starts(tmp_path: Path, args: list[str], message: str) -> None:
    folder = tmp_path / "sky"
    done = sky("up", "--dir", str(folder), *args)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not folder.exists()


def test_down_never_signals_a_recycled_pid(tmp_path: Path) -> None:
    """A record whose pid now names another process (another start time) stops nothing."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        (tmp_path / RECORD).write_text(
            json.dumps({"processes": [{"service": "s3", "name": "moto", "pid": other.pid, "start_ticks": 1}]})
        )
        assert sky_down(tmp_path) == []
        assert other.poll() is None and not (tmp_path / RECORD).exists()
    finally:
        other.kill()
        other.wait()
