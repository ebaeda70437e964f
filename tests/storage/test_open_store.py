"""Opening stores from URIs through the Airflow hooks and their connections, and every bad input.

The connections are the ones the ``emulated_sky`` fixture puts in the environment
(``AIRFLOW_CONN_AWS_DEFAULT`` and friends), so ``S3Hook``, ``GCSHook`` and ``WasbHook`` build their
clients exactly as in a task, and talk HTTP to moto, gcp-storage-emulator and Azurite.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_skyplane.exceptions import (
    BucketNotFoundError,
    ConnectionNotFoundError,
    CredentialsError,
    InvalidInputError,
    InvalidURIError,
)
from airflow_skyplane.hooks.storage import open_store
from airflow_skyplane.testing.sky import AZURITE_KEY, EmulatedSky, patched_environ

CLOUDS = ["s3", "gs", "az"]


@pytest.mark.parametrize("scheme", CLOUDS)
def test_open_store_uses_the_airflow_hook_and_connection(
    scheme: str, sky_bucket: Callable[[str], str], emulated_sky: EmulatedSky
) -> None:
    uri = sky_bucket(scheme)
    location = open_store(uri + "/dataset/")
    assert location.prefix == "dataset/"
    assert location.store.scheme == scheme
    client = location.store.client  # type: ignore[attr-defined]
    if scheme == "s3":
        assert client.meta.endpoint_url == emulated_sky.endpoint("s3")  # from the connection's extra
    elif scheme == "gs":
        assert client.project == "skyplane-emulated"
    else:
        assert client.account_name == "devstoreaccount1"
    location.store.put("dataset/a b.txt", b"through the hook")
    # what the hook wrote, a plain SDK client reads back from the emulator
    assert emulated_sky.open(uri).read("dataset/a b.txt") == b"through the hook"


def test_round_trip_across_all_clouds(sky_bucket: Callable[[str], str], tmp_path: Path) -> None:
    data = bytes(range(256)) * 4096
    source = open_store(sky_bucket("file")).store
    source.put("x/data.bin", data)
    hops = [source] + [open_store(sky_bucket(s)).store for s in CLOUDS]
    for here, there in zip(hops, hops[1:], strict=False):
        there.put("x/data.bin", here.read("x/data.bin"))
    assert hops[-1].read("x/data.bin") == data


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://no-such-bucket-here/x", "bucket 's3://no-such-bucket-here' does not exist"),
        ("gs://no-such-bucket-here/x", "bucket 'gs://no-such-bucket-here' does not exist"),
        ("az://no-such-container/x", "container 'az://no-such-container' does not exist"),
    ],
)
def test_missing_bucket(uri: str, message: str, emulated_sky: EmulatedSky) -> None:
    with pytest.raises(BucketNotFoundError) as err:
        open_store(uri)
    assert message in str(err.value)
    assert "create it, or fix the" in str(err.value)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BucketNotFoundError, match=r"does not exist: create it \(mkdir -p"):
        open_store(f"file://{tmp_path}/absent")


@pytest.mark.parametrize(
    ("uri", "kwarg", "conn_type"),
    [
        ("s3://bucket/x", "aws_conn_id", "aws"),
        ("gs://bucket/x", "gcp_conn_id", "google_cloud_platform"),
        ("az://container/x", "wasb_conn_id", "wasb"),
    ],
)
def test_missing_connection(uri: str, kwarg: str, conn_type: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_CONN", raising=False)
    with pytest.raises(ConnectionNotFoundError) as err:
        open_store(uri, **{kwarg: "no_such_conn"})
    text = str(err.value)
    assert "'no_such_conn'" in text and uri in text
    assert f"airflow connections add no_such_conn --conn-type {conn_type}" in text
    assert "AIRFLOW_CONN_NO_SUCH_CONN" in text


def test_missing_default_wasb_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_WASB_DEFAULT", raising=False)
    with pytest.raises(ConnectionNotFoundError, match="'wasb_default'"):
        open_store("az://container/x")


def test_bad_uri_and_unknown_scheme() -> None:
    with pytest.raises(InvalidURIError, match="unknown scheme 'hdfs'"):
        open_store("hdfs://namenode/x")
    with pytest.raises(InvalidURIError, match="not a valid s3 bucket name"):
        open_store("s3://Bad_Bucket/x")


def test_refused_azure_key_is_named_without_leaking_it(
    sky_bucket: Callable[[str], str], emulated_sky: EmulatedSky, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = sky_bucket("az")
    wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
    good = emulated_sky.azure_connection_string()
    conn = {"conn_type": "wasb", "extra": {"connection_string": good.replace(AZURITE_KEY, wrong_key)}}
    monkeypatch.setenv("AIRFLOW_CONN_WASB_WRONG", json.dumps(conn))
    with pytest.raises(CredentialsError) as err:
        open_store(uri, wasb_conn_id="wasb_wrong")
    text = str(err.value)
    assert "'wasb_wrong'" in text and "check the connection's account key" in text
    assert wrong_key not in text and AZURITE_KEY not in text


def test_refused_aws_keys_are_named_without_leaking_them(tmp_path: Path) -> None:
    with EmulatedSky(tmp_path / "locked", services=("s3",), moto_auth=True) as locked:
        env = locked.env(conn_ids={"aws_default": "aws_locked"})
        with patched_environ(env):
            with pytest.raises(CredentialsError) as err:
                open_store("s3://some-bucket/x", aws_conn_id="aws_locked")
    text = str(err.value)
    assert "'aws_locked'" in text and "check the access key and secret" in text
    assert "emulated-secret-key" not in text and "emulated-access-key" not in text


def test_unusable_gcp_key_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conn = {"conn_type": "google_cloud_platform", "extra": {"key_path": str(tmp_path / "absent.json")}}
    monkeypatch.setenv("AIRFLOW_CONN_GCP_BROKEN", json.dumps(conn))
    with pytest.raises(CredentialsError) as err:
        open_store("gs://some-bucket/x", gcp_conn_id="gcp_broken")
    assert "'gcp_broken'" in str(err.value) and "credentials" in str(err.value)


def test_azure_account_in_uri_must_match_the_connection(emulated_sky: EmulatedSky) -> None:
    with pytest.raises(InvalidInputError) as err:
        open_store("https://otheraccount.blob.core.windows.net/container/x")
    assert "'otheraccount'" in str(err.value) and "'devstoreaccount1'" in str(err.value)
