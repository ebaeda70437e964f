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
import logging
import os
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
from airflow_skyplane.testing.fake_google_auth import FakeGoogleAuth, GCSTokenCheck
from airflow_skyplane.testing.iam_account import IAMAccount, documented_account
from airflow_skyplane.testing.sky import EmulatedSky, patched_environ
from airflow_skyplane.transfer.credentials import RETRY_S, RelayCredentials, _Entry, retry_wait
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


def test_a_role_that_falls_due_while_the_stores_open_waits_for_the_next_poll(tmp_path: Path) -> None:
    """The sensor opens the stores of the roles due when it looks; a role that falls due while they
    open is renewed at its next poke, not marked failed for want of a store (a failed renewal waits
    before it is tried again, which a session of seconds does not survive)."""
    creds = RelayCredentials(tmp_path, transfer_id="t" * 16, expires_at=1e9)
    for role, issued in (("source", 1000.0), ("destination", 1000.1)):
        grant = Grant(
            bucket="b", prefixes=("p/",), write=role == "destination", expires_at=1e9, session_name="s"
        )
        creds.entries[role] = _Entry(
            role, "s3", "s3://b/p/", tmp_path / role, grant, issued, issued + 5.0, ""
        )
    assert creds.due(now=1002.55) == ["source"]
    assert creds.renew({}, (), now=1002.7, roles=[]) == []
    assert creds.entries["destination"].retry_at == 0.0 and creds.due(now=1002.7) == ["source", "destination"]
    # a renewal that fails is tried again within a quarter of the time the credentials still hold
    assert retry_wait(1010.0, now=1002.0) == 2.0 and retry_wait(1e9, now=0.0) == RETRY_S
    assert retry_wait(1000.5, now=1000.0) == 1.0 and retry_wait(None, now=0.0) == RETRY_S


# -- S3 ------------------------------------------------------------------------------------------------
@pytest.fixture
def iam_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[IAMAccount, AWSFront]]:
    """A moto with IAM enforced, the task's role under the documented policy, behind a front whose
    relay sessions last 5 seconds; the connection ``aws_iam`` goes through the front."""
    docs = (ROOT / "docs" / "connections.md").read_text()
    with documented_account(tmp_path / "iam", docs, session_lifetime_s=5.0) as (account, front):
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
        test_faults={"destination": {"delay_per_chunk_s": 3.0}},  # a slow writer: the transfer spans expiries
    )  # fmt: skip
    result = job.run()
    for key, body in data.items():
        assert s3.get_object(Bucket="dst-bucket", Key="out/" + key[3:])["Body"].read() == body
    assert result.objects == len(data)

    sessions = front.sessions("skyplane-")
    reading = [s for s in sessions if s.name.endswith("-src")]
    writing = [s for s in sessions if s.name.endswith("-dst")]
    assert front.front.refused_expired == []  # no gateway request was signed with an expired session
    # the gateways signed with the relays' sessions only: the source's to read, the destination's to write
    src_keys = {s.access_key_id for s in reading}
    dst_keys = {s.access_key_id for s in writing}
    signed = [(k, m, p) for k, calls in front.front.signed.items() for m, p in calls]
    reads = {k for k, m, p in signed if m == "GET" and "/src-bucket/in/" in p}
    writes = {k for k, m, p in signed if m == "PUT" and "/dst-bucket/out/" in p}
    assert reads and reads <= src_keys and writes and writes <= dst_keys and not src_keys & dst_keys
    # each session lasted 5 s: the writing gateway went on through several, each renewed before it
    # ended and taken up without a restart (its writes are signed by three sessions or more)
    assert len(writes) >= 3, (len(writes), [s.name for s in sessions])
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
    from airflow_skyplane.storage.relay_credentials import FileSas

    sas = FileSas(str(path))
    assert sas.signature == "sv=1&sig=first"
    write_credential_file(path, Issued({"sas": "sv=1&sig=second"}, time.time() + 60, "a SAS"))
    assert sas.signature == "sv=1&sig=second"  # the Azure SDK asks on every request: it gets the new one
    assert "sig=" not in repr(sas)
    path.write_text("{not json")
    with pytest.raises(CredentialsError) as err:
        FileSas(str(path))
    assert str(path) in str(err.value) and "{not" not in str(err.value)


# -- GCS ------------------------------------------------------------------------------------------------
@pytest.fixture
def gcs_checked(
    emulated_sky: EmulatedSky, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FakeGoogleAuth, GCSTokenCheck]]:
    """The GCS emulator behind a token check; the connection ``gcp_sa`` is a service account key of
    the fake token service, whose tokens last 8 seconds."""
    with (
        FakeGoogleAuth(token_lifetime_s=8.0) as auth,
        GCSTokenCheck(emulated_sky.endpoint("gs"), auth) as check,
    ):
        key = auth.service_account()
        conn = {"conn_type": "google_cloud_platform",
                "extra": {"keyfile_dict": json.dumps(key), "project": "skyplane-emulated"}}  # fmt: skip
        monkeypatch.setenv("AIRFLOW_CONN_GCP_SA", json.dumps(conn))
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", check.url)
        yield auth, check


def test_gcs_gateways_send_tokens_downscoped_from_the_connection_and_renewed(
    emulated_sky: EmulatedSky,
    gcs_checked: tuple[FakeGoogleAuth, GCSTokenCheck],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    auth, check = gcs_checked
    src_uri, dst_uri = emulated_sky.make_bucket("gs"), emulated_sky.make_bucket("gs")
    seed = emulated_sky.open(src_uri)  # straight to the emulator
    rng = random.Random(21)
    data = {f"in/obj-{n:02d}.bin": rng.randbytes(rng.randrange(300_000, 600_000)) for n in range(16)}
    for key, body in data.items():
        seed.put(key, body)
    src = open_store(src_uri + "/in/", gcp_conn_id="gcp_sa")
    dst = open_store(dst_uri + "/out/", gcp_conn_id="gcp_sa")
    job = TransferJob(
        src.store, src.prefix, dst.store, dst.prefix, backend=LocalRelayBackend(tmp_path / "fleet"),
        workdir=tmp_path / "job", connections_per_hop=1, expires_at=time.time() + 600,
        gcp_sts_endpoint=auth.sts_endpoint, test_faults={"destination": {"delay_per_chunk_s": 3.5}},
    )  # fmt: skip
    result = job.run()
    out = emulated_sky.open(dst_uri)
    assert {k: out.read("out/" + k[3:]) for k in data} == data and result.objects == len(data)

    sa = json.loads(json.loads(os.environ["AIRFLOW_CONN_GCP_SA"])["extra"]["keyfile_dict"])
    gateway_reads = [c for c in check.seen if c.permission == "get" and c.name and c.name.startswith("in/")]
    gateway_writes = [
        c for c in check.seen if c.permission == "create" and c.name and c.name.startswith("out/")
    ]
    # every object read at the source and written at the destination went with a token downscoped
    # from the connection's own service account, and none was refused
    assert gateway_reads and {(c.kind, c.subject, c.status) for c in gateway_reads} == {
        ("downscoped", sa["client_email"], 0)
    }
    assert gateway_writes and {(c.kind, c.subject, c.status) for c in gateway_writes} == {
        ("downscoped", sa["client_email"], 0)
    }
    # nothing refused, no token expired in use; but the bucket's metadata, which the storage client
    # fetches in the background for its metrics and does without on a 403, as it would from GCS
    assert [c for c in check.seen if c.status and c.name is not None] == []
    assert {c.kind for c in check.seen if c.status} <= {"downscoped"}
    # the tokens lasted 8 s and were renewed at half their life: the writing gateway took up new
    # ones as it wrote, without a restart (and, above, the check refused no write, so none expired
    # in use). How many depends on how the writes fall in time, which the machine's load decides.
    span = max(c.at for c in gateway_writes) - min(c.at for c in gateway_writes)
    serials = {c.serial for c in gateway_writes}
    assert len(serials) >= 2, (span, sorted(serials))
    # each boundary: the bucket, one role, the transfer's prefix (and the uploads' folder for writing)
    # no token is left anywhere: not in the logs, nor in any file of the job or its gateways
    assert not list((tmp_path / "job").glob("*.credentials"))
    written = caplog.text + "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())
    assert not [t for t in auth.tokens if t in written]
    writer = next(b for b in auth.exchanges if "objectAdmin" in json.dumps(b))
    [rule] = writer["accessBoundaryRules"]
    assert rule["availableResource"].endswith(f"/buckets/{dst.store.bucket}")
    assert rule["availabilityCondition"]["expression"] == (
        f"resource.name.startsWith('projects/_/buckets/{dst.store.bucket}/objects/out/') || "
        f"resource.name.startsWith('projects/_/buckets/{dst.store.bucket}/objects/.skyplane-uploads/')"
    )


def test_a_downscoped_gcs_token_is_refused_outside_its_prefix_and_its_role(
    emulated_sky: EmulatedSky, gcs_checked: tuple[FakeGoogleAuth, GCSTokenCheck], tmp_path: Path
) -> None:
    from google.api_core.exceptions import Forbidden
    from google.cloud import storage

    from airflow_skyplane.storage.kinds import store_kind
    from airflow_skyplane.storage.relay_credentials import FileToken

    auth, check = gcs_checked
    bucket = emulated_sky.make_bucket("gs")
    store = open_store(bucket + "/out/", gcp_conn_id="gcp_sa").store

    def client_of(write: bool) -> storage.Bucket:
        grant = Grant(store.bucket, ("out/",), write, time.time() + 600, "skyplane-test",
                      gcp_sts_endpoint=auth.sts_endpoint)  # fmt: skip
        issued = store_kind("gs").issue(store, grant)
        assert issued is not None and issued.scoped and "downscoped" in issued.what
        path = write_credential_file(tmp_path / f"{write}.credentials", issued)
        client = storage.Client(
            project="p", credentials=FileToken(str(path)), client_options={"api_endpoint": check.url}
        )
        return client.bucket(store.bucket)

    writer, reader = client_of(True), client_of(False)
    writer.blob("out/fine.txt").upload_from_string(b"inside the prefix")
    with pytest.raises(Forbidden):
        writer.blob("elsewhere/no.txt").upload_from_string(b"outside")
    assert reader.blob("out/fine.txt").download_as_bytes() == b"inside the prefix"
    with pytest.raises(Forbidden):
        reader.blob("out/other.txt").upload_from_string(b"a reader's token may not write")
    with pytest.raises(Forbidden):
        reader.blob("elsewhere/no.txt").download_as_bytes()
    assert [c.status for c in check.seen if c.kind == "downscoped" and c.name] == [0, 403, 0, 403, 403]


# -- Azure ---------------------------------------------------------------------------------------------
@pytest.mark.requires("azurite")
def test_azure_gateways_write_with_a_sas_of_their_container_only(
    emulated_sky: EmulatedSky, tmp_path: Path
) -> None:
    """Azurite checks a SAS's signature, permissions and container: the writing gateway's SAS, minted
    from the connection's shared key, writes its container and nothing else, and cannot read."""
    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import BlobServiceClient

    from airflow_skyplane.storage.kinds import store_kind
    from airflow_skyplane.storage.relay_credentials import FileSas

    src_uri, dst_uri, other_uri = (emulated_sky.make_bucket(s) for s in ("s3", "az", "az"))
    seed = emulated_sky.open(src_uri)
    rng = random.Random(22)
    data = {f"in/obj-{n:02d}.bin": rng.randbytes(rng.randrange(50_000, 300_000)) for n in range(6)}
    for key, body in data.items():
        seed.put(key, body)
    src, dst = open_store(src_uri + "/in/"), open_store(dst_uri + "/out/")
    job = TransferJob(
        src.store, src.prefix, dst.store, dst.prefix, backend=LocalRelayBackend(tmp_path / "fleet"),
        workdir=tmp_path / "job", connections_per_hop=1, expires_at=time.time() + 600,
    )  # fmt: skip
    assert job.run().objects == len(data)
    out = emulated_sky.open(dst_uri)
    assert {k: out.read("out/" + k[3:]) for k in data} == data
    assert job.credentials is not None

    # what the writing gateway was given: a service SAS of its container, create and write only
    grant = Grant(dst.store.bucket, ("out/",), True, time.time() + 600, "skyplane-test-dst")
    issued = store_kind("az").issue(dst.store, grant)
    assert issued is not None and issued.scoped and "SAS" in issued.what
    path = write_credential_file(tmp_path / "dst.credentials", issued)
    account = f"{emulated_sky.endpoint('az')}/devstoreaccount1"
    service = BlobServiceClient(account_url=account, credential=FileSas(str(path)))
    mine = service.get_container_client(dst.store.bucket)
    mine.upload_blob("out/fine.bin", b"inside its container")
    with pytest.raises(HttpResponseError) as refused:
        service.get_container_client(other_uri.split("://", 1)[1]).upload_blob("out/no.bin", b"x")
    assert refused.value.status_code == 403
    with pytest.raises(HttpResponseError) as refused:
        mine.download_blob("out/fine.bin").readall()  # a writer's SAS may not read
    assert refused.value.status_code == 403
    # no SAS in a repr, nor in any file the job and its gateways left (logs included)
    left = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file() and p != path)
    assert "sig=" not in repr(issued) and "sig=" not in left
