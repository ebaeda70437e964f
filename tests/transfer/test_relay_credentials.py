"""The gateways' store credentials: minted from the task's connection for the transfer's prefixes
only, renewed before they expire while the transfer runs, and never shown.

* S3: a moto of the test's own with IAM enforced, the task's role holding exactly the policy of
  docs/connections.md, behind a front that makes the relays' STS sessions expire after a few seconds
  and refuses requests signed with an expired one (moto accepts them);
* GCS: the emulator behind a token check that refuses requests without a token its fake Google token
  service issued, or outside the token's access boundary;
* Azure: Azurite, which checks SAS signatures and their container.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_skyplane.compute.local import LocalRelayBackend
from airflow_skyplane.exceptions import CredentialsError
from airflow_skyplane.hooks.storage import open_store
from airflow_skyplane.storage.grants import Grant, Issued, due, write_credential_file
from airflow_skyplane.testing.aws_front import AWSFront
from airflow_skyplane.testing.iam_account import IAMAccount, documented_policy, enforce_iam
from airflow_skyplane.testing.sky import EmulatedSky, patched_environ
from airflow_skyplane.transfer.job import TransferJob

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


def test_credentials_are_renewed_within_their_margin_and_never_past_the_fleet() -> None:
    issued, expires = 1000.0, 1000.0 + 3600
    assert not due(expires, issued, until=1e9, now=expires - 1201)  # 20 minutes before, not sooner
    assert due(expires, issued, until=1e9, now=expires - 1199)
    assert due(1010.0, 1000.0, until=1e9, now=1005.0) and not due(1010.0, 1000.0, until=1e9, now=1004.9)
    assert not due(expires, issued, until=expires, now=expires)  # they outlive the fleet: never
    assert not due(None, issued, until=1e9, now=1e8)  # a shared key does not expire


# -- S3 ------------------------------------------------------------------------------------------------
@pytest.fixture
def iam_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[IAMAccount, AWSFront]]:
    """A moto with IAM enforced, the task's role under the documented policy, behind a front whose
    relay sessions last 5 seconds; the connection ``aws_iam`` goes through the front."""
    with EmulatedSky(tmp_path / "iam", services=("s3",)) as sky:
        policy = documented_policy((ROOT / "docs" / "connections.md").read_text(), "aws-transfer")
        account = enforce_iam(sky.endpoint("s3"), policy)
        with AWSFront(sky.endpoint("s3"), session_lifetime_s=5.0) as front:
            monkeypatch.setenv("AIRFLOW_CONN_AWS_IAM", json.dumps(account.connection(front.url)))
            yield account, front


def test_s3_relay_sessions_expire_in_seconds_and_are_renewed_while_the_transfer_runs(
    iam_s3: tuple[IAMAccount, AWSFront], tmp_path: Path
) -> None:
    account, front = iam_s3
    s3 = account.admin_client("s3")
    for bucket in ("src-bucket", "dst-bucket"):
        s3.create_bucket(Bucket=bucket)
    rng = random.Random(20)
    data = {f"in/obj-{n:02d}.bin": rng.randbytes(rng.randrange(100_000, 600_000)) for n in range(20)}
    for key, body in data.items():
        s3.put_object(Bucket="src-bucket", Key=key, Body=body)
    src = open_store("s3://src-bucket/in/", aws_conn_id="aws_iam")
    dst = open_store("s3://dst-bucket/out/", aws_conn_id="aws_iam")
    job = TransferJob(
        src.store, src.prefix, dst.store, dst.prefix, backend=LocalRelayBackend(tmp_path / "fleet"),
        workdir=tmp_path / "job", connections_per_hop=1, expires_at=time.time() + 600,
        test_faults={"destination": {"delay_per_chunk_s": 2.0}},  # a slow writer: the transfer spans expiries
    )  # fmt: skip
    started = time.monotonic()
    result = job.run()
    took = time.monotonic() - started
    for key, body in data.items():
        assert s3.get_object(Bucket="dst-bucket", Key="out/" + key[3:])["Body"].read() == body
    assert result.objects == len(data)

    sessions = front.sessions("skyplane-")
    reading = [s for s in sessions if s.name.endswith("-src")]
    writing = [s for s in sessions if s.name.endswith("-dst")]
    # each lasted 5 s; the transfer spanned several, and every one was renewed before it ended
    assert took > 15 and len(writing) >= 4 and len(reading) >= 2, (took, [s.name for s in sessions])
    assert front.front.refused_expired == []  # no gateway request was signed with an expired session
    # the gateways signed with the relays' sessions only: the source's to read, the destination's to write
    src_keys = {s.access_key_id for s in reading}
    dst_keys = {s.access_key_id for s in writing}
    signed = [(k, m, p) for k, calls in front.front.signed.items() for m, p in calls]
    reads = {k for k, m, p in signed if m == "GET" and "/src-bucket/in/" in p}
    writes = {k for k, m, p in signed if m == "PUT" and "/dst-bucket/out/" in p}
    assert reads and reads <= src_keys and writes and writes <= dst_keys and not src_keys & dst_keys
    # each session was asked for with a policy of its prefix and its one action
    policy = json.loads(writing[0].policy)
    objects = next(s for s in policy["Statement"] if s["Sid"] == "TransferObjects")
    assert objects["Action"] == ["s3:PutObject"] and objects["Resource"] == ["arn:aws:s3:::dst-bucket/out/*"]
    policy = json.loads(reading[0].policy)
    objects = next(s for s in policy["Statement"] if s["Sid"] == "TransferObjects")
    assert objects["Action"] == ["s3:GetObject"] and objects["Resource"] == ["arn:aws:s3:::src-bucket/in/*"]
    # IAM is enforced: the connection's user itself may do nothing with S3
    import boto3
    from botocore.exceptions import ClientError

    user = boto3.client(
        "s3", endpoint_url=account.endpoint, region_name="us-east-1",
        aws_access_key_id=account.user_keys[0], aws_secret_access_key=account.user_keys[1],
    )  # fmt: skip
    with pytest.raises(ClientError, match="AccessDenied"):
        user.list_objects_v2(Bucket="src-bucket")
    assert not list((tmp_path / "job").glob("*.credentials"))  # deleted at teardown


def test_s3_relay_credentials_are_a_federation_token_for_an_iam_user_connection(
    emulated_sky: EmulatedSky, tmp_path: Path
) -> None:
    """An IAM user's keys (the emulated sky's connection, no role): GetFederationToken, narrowed."""
    from airflow_skyplane.storage.kinds import store_kind

    with AWSFront(emulated_sky.endpoint("s3")) as front:
        conn = {"conn_type": "aws", "login": "emulated-access-key", "password": "emulated-secret-key",
                "extra": {"endpoint_url": front.url, "region_name": "us-east-1"}}  # fmt: skip
        with patched_environ({"AIRFLOW_CONN_AWS_USER": json.dumps(conn)}):
            bucket = emulated_sky.make_bucket("s3")
            store = open_store(bucket + "/x/", aws_conn_id="aws_user").store
            grant = Grant(store.bucket, ("x/",), True, time.time() + 7200, "skyplane-test-dst")
            issued = store_kind("s3").issue(store, grant)
    assert issued is not None and issued.scoped and "federation token" in issued.what
    [session] = front.sessions()
    assert session.action == "GetFederationToken"
    assert json.loads(session.policy)["Statement"][0]["Resource"] == [f"arn:aws:s3:::{store.bucket}/x/*"]
    assert 7200 < (issued.expires_at or 0) - time.time() < 7200 + 400  # the fleet's life, and the slack
    shown = repr(issued)
    assert "emulated-secret-key" not in shown and issued.fields["secret_access_key"] not in shown


def test_a_credential_file_is_replaced_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "source.credentials"
    write_credential_file(path, Issued({"sas": "sv=1&sig=first"}, time.time() + 60, "a SAS"))
    assert path.stat().st_mode & 0o777 == 0o600
    from airflow_skyplane.storage.azure_credentials import FileSas

    sas = FileSas(str(path))
    assert sas.signature == "sv=1&sig=first"
    write_credential_file(path, Issued({"sas": "sv=1&sig=second"}, time.time() + 60, "a SAS"))
    assert sas.signature == "sv=1&sig=second"  # the Azure SDK asks on every request: it gets the new one
    assert "sig=" not in repr(sas)
    path.write_text("{not json")
    with pytest.raises(CredentialsError) as err:
        FileSas(str(path))
    assert str(path) in str(err.value) and "{not" not in str(err.value)
