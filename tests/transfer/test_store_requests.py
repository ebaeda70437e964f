"""Requests per small object, counted at the store: one read at the source, one write at the
destination, and no HEAD after the write where the write's response carries the checksum the store
computed (S3's ETag, a GCS upload's crc32c, Azure's Content-MD5 of a Put Blob).

Each store's emulator sits behind a recording fault proxy; the controller and both gateways reach it
only through the proxy, and every request naming one of the transferred objects is counted.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_skyplane.compute.local import LocalRelayBackend
from airflow_skyplane.storage.azure_blob import AzureBlobStore
from airflow_skyplane.storage.base import ObjectStore
from airflow_skyplane.storage.gcs import GCSStore
from airflow_skyplane.storage.kinds import StoreSpec, store_kind
from airflow_skyplane.storage.s3 import S3Store
from airflow_skyplane.testing.faultproxy import FaultProxy, ProxyRequest, ProxyResponse, object_named
from airflow_skyplane.testing.sky import AWS_REGION, GCP_PROJECT, EmulatedSky, azure_connection_string
from airflow_skyplane.transfer.job import Overlay, TransferJob

OBJECTS = 24
SIZE = 3 * 1024
#: how each store says "slow down"
THROTTLED = {"s3": (503,), "gs": (429, 503), "az": (503,)}


@pytest.fixture(scope="module")
def sky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedSky]:
    with EmulatedSky(tmp_path_factory.mktemp("requests-sky")) as sky:
        yield sky


def _through(sky: EmulatedSky, scheme: str, bucket: str, url: str) -> tuple[ObjectStore, StoreSpec]:
    """The store and the gateways' spec of ``bucket``, both reaching the store at ``url`` (the proxy)."""
    if scheme == "s3":
        import boto3

        keys = {"aws_access_key_id": "emulated-access-key", "aws_secret_access_key": "emulated-secret-key"}
        client = boto3.client("s3", endpoint_url=url, region_name=AWS_REGION, **keys)
        spec: StoreSpec = {
            "scheme": "s3", "bucket": bucket, "region": AWS_REGION, "endpoint_url": url,
            "access_key_id": keys["aws_access_key_id"], "secret_access_key": keys["aws_secret_access_key"],
        }  # fmt: skip
        return S3Store(client, bucket), spec
    if scheme == "gs":
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
        client = storage.Client(
            project=GCP_PROJECT, credentials=anonymous, client_options={"api_endpoint": url}
        )
        spec = {"scheme": "gs", "bucket": bucket, "project": GCP_PROJECT, "emulator_host": url}
        return GCSStore(client, bucket), spec
    from azure.storage.blob import BlobServiceClient

    connection = azure_connection_string(url)
    service = BlobServiceClient.from_connection_string(connection)
    return AzureBlobStore(service, bucket), {
        "scheme": "az",
        "container": bucket,
        "connection_string": connection,
    }


@pytest.mark.parametrize("scheme", ["s3", "gs", pytest.param("az", marks=pytest.mark.requires("azurite"))])
def test_a_small_object_costs_one_read_and_one_write(sky: EmulatedSky, tmp_path: Path, scheme: str) -> None:
    if scheme not in sky.services:
        pytest.skip(sky.missing.get(scheme, f"no {scheme} emulator"))
    source_bucket = sky.make_bucket(scheme).split("://", 1)[1]
    destination_bucket = sky.make_bucket(scheme).split("://", 1)[1]
    names = {f"tiny-{i:04d}.bin" for i in range(OBJECTS)}
    seeding = sky.open(f"{scheme}://{source_bucket}")
    for i, name in enumerate(sorted(names)):
        seeding.put(f"in/{name}", bytes([i % 251]) * SIZE)

    with FaultProxy(sky.endpoint(scheme), record=True) as proxy:
        source, source_spec = _through(sky, scheme, source_bucket, proxy.url)
        destination, destination_spec = _through(sky, scheme, destination_bucket, proxy.url)
        backend = LocalRelayBackend(tmp_path / "fleet")
        job = TransferJob(
            source, "in/", destination, "out/", backend=backend, workdir=tmp_path / "job",
            overlay=Overlay.direct(2), source_spec=source_spec, destination_spec=destination_spec,
            timeout=120,
        )  # fmt: skip
        result = job.run()
        requests = list(proxy.requests)

    assert result.objects == OBJECTS and result.checksums_verified == OBJECTS
    per_object: dict[str, list[str]] = {name: [] for name in names}
    for request in requests:
        name = object_named(request, names)
        if name is not None:
            per_object[name].append(request.method)
    counts = Counter(len(methods) for methods in per_object.values())
    assert counts == {2: OBJECTS}, {
        name: methods for name, methods in per_object.items() if len(methods) != 2
    }
    for methods in per_object.values():  # one read at the source, one write at the destination
        assert methods[0] == "GET" and methods[1] in ("PUT", "POST"), methods
    written = sky.open(f"{scheme}://{destination_bucket}")
    assert {info.key for info in written.list("out/")} == {f"out/{name}" for name in names}
    assert written.read("out/tiny-0003.bin") == bytes([3]) * SIZE


def test_a_write_whose_stored_checksum_differs_is_deleted_and_sent_again(
    sky: EmulatedSky, tmp_path: Path
) -> None:
    """The checksum a write's response reports is checked, not taken on trust: the first upload of
    one object to GCS answers with the CRC-32C of other bytes (as if the body had changed on the
    way), and the writer refuses it, deletes the object and has it sent again."""
    source_bucket = sky.make_bucket("gs").split("://", 1)[1]
    destination_bucket = sky.make_bucket("gs").split("://", 1)[1]
    seeding = sky.open(f"gs://{source_bucket}")
    for i in range(4):
        seeding.put(f"in/tiny-{i:04d}.bin", bytes([i]) * SIZE)
    tampered: list[str] = []

    def wrong_crc32c(request: ProxyRequest, response: ProxyResponse) -> ProxyResponse:
        if object_named(request, {"tiny-0001.bin"}) and request.method == "POST" and not tampered:
            body, n = re.subn(rb'"crc32c": *"[^"]*"', b'"crc32c": "AAAAAA=="', response.body)
            if n:
                tampered.append(request.path)
                return ProxyResponse(response.status, response.headers, body, response.reason)
        return response

    with FaultProxy(sky.endpoint("gs")) as proxy:
        proxy.rewrite(wrong_crc32c)
        source, source_spec = _through(sky, "gs", source_bucket, proxy.url)
        destination, destination_spec = _through(sky, "gs", destination_bucket, proxy.url)
        job = TransferJob(
            source, "in/", destination, "out/", backend=LocalRelayBackend(tmp_path / "fleet"),
            workdir=tmp_path / "job", overlay=Overlay.direct(2), source_spec=source_spec,
            destination_spec=destination_spec, timeout=120,
        )  # fmt: skip
        result = job.run()
    assert tampered, "the rewrite never applied"
    assert result.objects == 4 and result.checksums_verified == 4 and result.resends >= 1
    assert sky.open(f"gs://{destination_bucket}").read("out/tiny-0001.bin") == bytes([1]) * SIZE


@pytest.mark.parametrize("scheme", ["s3", "gs", pytest.param("az", marks=pytest.mark.requires("azurite"))])
def test_a_relay_store_retries_a_throttled_write(sky: EmulatedSky, scheme: str) -> None:
    """A store slowing a relay down (S3's 503 SlowDown, GCS's 429 or 503, Azure's 503 ServerBusy)
    costs a retry by the SDK, with backoff, not a failed write: a relay opens its store as
    :meth:`StoreKind.open_spec` does."""
    if scheme not in sky.services:
        pytest.skip(sky.missing.get(scheme, f"no {scheme} emulator"))
    bucket = sky.make_bucket(scheme).split("://", 1)[1]
    with FaultProxy(sky.endpoint(scheme)) as proxy:
        store = store_kind(scheme).open_spec(_through(sky, scheme, bucket, proxy.url)[1])
        proxy.fail(requests=2, statuses=THROTTLED[scheme], methods=("PUT", "POST"))
        info = store.put("throttled.bin", b"x" * SIZE)
        assert proxy.counters.injected == 2 and set(proxy.counters.by_status) == set(THROTTLED[scheme])
    assert info.checksum is not None and info.size == SIZE
    assert sky.open(f"{scheme}://{bucket}").read("throttled.bin") == b"x" * SIZE
