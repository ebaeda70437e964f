"""Parsing the storage URIs users write, and the messages for the ones that cannot work."""

from __future__ import annotations

import pytest

from airflow_skyplane.exceptions import InvalidURIError
from airflow_skyplane.storage.uri import StorageURI, parse_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://my-bucket", StorageURI("s3", "my-bucket", "")),
        ("s3://my-bucket/", StorageURI("s3", "my-bucket", "")),
        ("s3://my.bucket/logs/2024-", StorageURI("s3", "my.bucket", "logs/2024-")),
        ("gs://my_bucket/a b/c", StorageURI("gs", "my_bucket", "a b/c")),
        ("gs://bkt/with%20space/=+", StorageURI("gs", "bkt", "with space/=+")),
        ("az://container/prefix/", StorageURI("az", "container", "prefix/")),
        (
            "https://myaccount.blob.core.windows.net/container/pre/fix",
            StorageURI("az", "container", "pre/fix", account="myaccount"),
        ),
        ("file:///tmp/data", StorageURI("file", "/tmp/data")),
        ("file://localhost/tmp/data/", StorageURI("file", "/tmp/data")),
        ("S3://bucket/x", StorageURI("s3", "bucket", "x")),
    ],
)
def test_valid_uris(uri: str, expected: StorageURI) -> None:
    assert parse_uri(uri) == expected


def test_join_and_str_round_trip() -> None:
    assert parse_uri("s3://bkt/p/").join("p/k 1") == "s3://bkt/p/k 1"
    assert str(parse_uri("gs://bkt/p")) == "gs://bkt/p"
    assert str(parse_uri("file:///srv/x")) == "file:///srv/x"
    az = parse_uri("https://acct.blob.core.windows.net/ctr/p")
    assert parse_uri(str(az)) == az


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "is empty: write it as s3://bucket/prefix"),
        ("bucket/prefix", "has no scheme"),
        ("ftp://host/x", "unknown scheme 'ftp'"),
        ("wasbs://c@acct.blob.core.windows.net/x", "Azure Blob URIs are az://container/prefix"),
        ("s3:///prefix", "names no bucket"),
        ("az:///prefix", "names no container"),
        ("s3://My_Bucket/x", "'My_Bucket' is not a valid s3 bucket name"),
        ("s3://ab/x", "'ab' is not a valid s3 bucket name"),
        ("az://a--b/x", "'a--b' is not a valid az container name"),
        ("s3://bucket/x?versionId=3", "query or fragment"),
        ("file://relative/path", "names host 'relative'"),
        ("file:///tmp/../etc", "file:///etc"),
        (" s3://bucket/x", "leading or trailing spaces"),
    ],
)
def test_bad_uris_name_the_input_and_the_fix(uri: str, message: str) -> None:
    with pytest.raises(InvalidURIError) as err:
        parse_uri(uri)
    assert message in str(err.value)
    if uri.strip():
        assert repr(uri) in str(err.value)  # the message quotes the input
