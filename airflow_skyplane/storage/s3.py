"""Amazon S3 (``s3://bucket/prefix``) on a boto3 S3 client.

In a task the client comes from ``S3Hook(aws_conn_id).get_conn()``, so the connection's credentials,
region, endpoint and retry settings apply exactly as in Airflow's own S3 operators. Multipart writes
use S3's multipart upload API; ``head`` reports the ETag, which is the MD5 of a single-part object
and ``<md5 of part md5s>-<parts>`` of a multipart one.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_skyplane.exceptions import (
    BucketNotFoundError,
    CredentialsError,
    InvalidInputError,
    ObjectNotFoundError,
    StorageError,
)
from airflow_skyplane.storage.base import (
    CAP_NATIVE_MULTIPART,
    CAP_SERVER_CHECKSUM,
    Checksum,
    MultipartUpload,
    ObjectInfo,
    ObjectStore,
    PartInfo,
    validate_key,
    validate_part_number,
)
from airflow_skyplane.storage.grants import Grant, Issued
from airflow_skyplane.storage.kinds import ConnectionKind, StoreKind, StoreSpec, need, text
from airflow_skyplane.storage.uri import StorageURI

if TYPE_CHECKING:
    from airflow_skyplane.storage.placement import Placement

_CREDENTIAL_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "403",
}
_MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}


def etag_checksum(etag: str | None) -> Checksum | None:
    if not etag:
        return None
    value = etag.strip('"')
    if "-" in value:
        return Checksum("s3-etag", value)
    if len(value) == 32:
        return Checksum("md5", value.lower())
    return None  # SSE-KMS / SSE-C objects have ETags that are not MD5s


def _written_checksum(response: Mapping[str, Any]) -> Checksum | None:
    """The checksum S3 computed of the bytes a ``PutObject`` stored, from its response: the ETag
    (the MD5 of the body) unless the object is encrypted with KMS or a customer key (its ETag is then
    no MD5), else the CRC-32C S3 checked the body against, when one was sent."""
    encrypted = str(response.get("ServerSideEncryption", "")).startswith("aws:kms") or response.get(
        "SSECustomerAlgorithm"
    )
    if not encrypted:
        checksum = etag_checksum(response.get("ETag"))
        if checksum is not None and checksum.algorithm == "md5":
            return checksum
    crc = response.get("ChecksumCRC32C")
    return Checksum("crc32c", base64.b64decode(crc).hex()) if crc else None


def _checksum(crc32c: int | None) -> dict[str, str]:
    """The checksum S3 verifies the body against: the caller's CRC-32C when it has one, so that the SDK
    does not compute a checksum of its own over the body (it does by default, CRC-32, in Python)."""
    if crc32c is None:
        return {}
    return {"ChecksumCRC32C": base64.b64encode(crc32c.to_bytes(4, "big")).decode("ascii")}


class S3Store(ObjectStore):
    scheme = "s3"
    min_part_size = 5 * 1024 * 1024
    max_part_size = 5 * 1024**3
    capabilities = frozenset({CAP_NATIVE_MULTIPART, CAP_SERVER_CHECKSUM})
    #: PUT, COPY, POST and DELETE requests per second per prefix (S3's documented rate)
    write_rate = 3500.0

    def __init__(self, client: Any, bucket: str, *, conn_id: str | None = None) -> None:
        super().__init__(bucket)
        self.client = client
        self.conn_id = conn_id

    # -- errors ----------------------------------------------------------------------------------
    def _raise(self, err: Exception, key: str | None = None, action: str = "access") -> NoReturn:
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        where = self.describe(key or "")
        via = f" with connection {self.conn_id!r}" if self.conn_id else ""
        if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
            raise CredentialsError(
                f"cannot {action} {where}: no AWS credentials found{via}; set login/password (access key) "
                "or a role in the aws connection"
            ) from None
        if isinstance(err, ClientError):
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket" or (code in _MISSING_KEY_CODES and key is None):
                raise BucketNotFoundError(
                    f"bucket 's3://{self.bucket}' does not exist or is not visible{via}: create it, "
                    "or fix the bucket name in the URI"
                ) from None
            if code in _MISSING_KEY_CODES:
                raise ObjectNotFoundError(f"object {where} does not exist") from None
            if code in _CREDENTIAL_CODES:
                raise CredentialsError(
                    f"S3 refused to {action} {where}{via} ({code}): check the access key and secret of the "
                    "connection and that its identity may read and write this bucket"
                ) from None
            if code == "NoSuchUpload":
                raise InvalidInputError(
                    f"multipart upload of {where} does not exist (completed or aborted already): begin a "
                    "new one"
                ) from None
            raise StorageError(f"S3 failed to {action} {where} ({code}): {err}") from err
        raise StorageError(f"S3 failed to {action} {where}: {err}") from err

    def check_bucket(self) -> None:
        """Raise :class:`BucketNotFoundError` or :class:`CredentialsError` unless the bucket is usable."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as err:  # noqa: BLE001 - translated into the package's errors
            self._raise(err, None, "open")

    # -- reading ---------------------------------------------------------------------------------
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(
                Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": self.list_page_size}
            ):
                for item in page.get("Contents", ()):
                    yield ObjectInfo(
                        item["Key"],
                        int(item["Size"]),
                        etag_checksum(item.get("ETag")),
                        item.get("LastModified"),
                    )
        except Exception as err:  # noqa: BLE001
            self._raise(err, None, "list")

    def head(self, key: str) -> ObjectInfo:
        validate_key(key)
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as err:  # noqa: BLE001
            self._raise(err, key, "read")
        return ObjectInfo(key, int(r["ContentLength"]), etag_checksum(r.get("ETag")), r.get("LastModified"))

    def read(self, key: str) -> bytes:
        validate_key(key)
        try:
            data: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return data
        except Exception as err:  # noqa: BLE001
            self._raise(err, key, "read")

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if not self._wants_range(key, offset, length):
            return b""
        try:
            r = self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
            )
            return r["Body"].read()
        except Exception as err:  # noqa: BLE001
            from botocore.exceptions import ClientError

            if isinstance(err, ClientError) and err.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # offset at or past the end
            self._raise(err, key, "read")

    # -- writing ---------------------------------------------------------------------------------
    def put(self, key: str, data: bytes | bytearray, *, crc32c: int | None = None) -> ObjectInfo:
        validate_key(key)
        try:
            r = self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **_checksum(crc32c))
        except Exception as err:  # noqa: BLE001
            self._raise(err, key, "write")
        return ObjectInfo(key, len(data), _written_checksum(r))

    def begin_multipart(self, key: str) -> MultipartUpload:
        validate_key(key)
        try:
            r = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)
        except Exception as err:  # noqa: BLE001
            self._raise(err, key, "write")
        return MultipartUpload(key, r["UploadId"])

    def write_part(
        self, upload: MultipartUpload, number: int, data: bytes | bytearray, *, crc32c: int | None = None
    ) -> PartInfo:
        validate_part_number(number)
        try:
            r = self.client.upload_part(
                Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id, PartNumber=number, Body=data,
                **_checksum(crc32c),
            )  # fmt: skip
        except Exception as err:  # noqa: BLE001
            self._raise(err, upload.key, "write")
        return PartInfo(number, len(data), r["ETag"])

    def complete_multipart(self, upload: MultipartUpload, parts: Iterable[PartInfo]) -> ObjectInfo:
        ordered = self._check_parts(upload, parts)
        unwritten = [p.number for p in ordered if not p.token]
        if unwritten:
            raise InvalidInputError(
                f"part(s) {unwritten} of {self.describe(upload.key)} have no ETag, so they were not written: "
                "write every part (and keep the PartInfo write_part returns) before completing"
            )
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=upload.key,
                UploadId=upload.upload_id,
                MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.token} for p in ordered]},
            )
        except Exception as err:  # noqa: BLE001
            code = getattr(err, "response", {}).get("Error", {}).get("Code")
            if code in ("InvalidPart", "InvalidPartOrder"):
                raise InvalidInputError(
                    f"a part of {self.describe(upload.key)} was not written (or was aborted): write every "
                    "part before completing"
                ) from None
            self._raise(err, upload.key, "complete")
        return self.head(upload.key)

    def abort_multipart(self, upload: MultipartUpload) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") != "NoSuchUpload":
                self._raise(err, upload.key, "abort")

    def uploaded_parts(self, upload: MultipartUpload) -> dict[int, PartInfo] | None:
        """S3 keeps a multipart upload until it is completed or aborted: its parts (and their ETags,
        the tokens ``complete`` needs) are listed by upload id from any process."""
        from botocore.exceptions import ClientError

        parts: dict[int, PartInfo] = {}
        try:
            paginator = self.client.get_paginator("list_parts")
            for page in paginator.paginate(Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id):
                for item in page.get("Parts", ()):
                    number = int(item["PartNumber"])
                    parts[number] = PartInfo(number, int(item["Size"]), item["ETag"])
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchUpload", "404", "NotFound"):
                return None
            self._raise(err, upload.key, "list the parts of")
        return parts

    def list_multipart_uploads(self, prefix: str = "") -> Iterator[MultipartUpload]:
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Uploads", ()):
                    yield MultipartUpload(item["Key"], item["UploadId"])
        except Exception as err:  # noqa: BLE001
            self._raise(err, None, "list uploads of")

    def delete(self, key: str) -> None:
        validate_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as err:  # noqa: BLE001
            self._raise(err, key, "delete")


class S3Kind(StoreKind):
    """``s3://``: ``S3Hook`` in the task; a plain boto3 client from the spec on a relay.

    Spec: ``bucket``, ``region``, ``endpoint_url``, and ``credentials_file``: the relay's credentials
    (an STS session limited to the transfer's prefixes, :mod:`.aws_credentials`), read again as the
    controller renews them. Inline ``access_key_id``, ``secret_access_key``, ``session_token`` are
    taken as they are; with neither, the relay's default credential chain.
    """

    scheme = "s3"
    connection = ConnectionKind("aws_conn_id", "aws_default", "aws", "amazon", default_optional=True)

    def open(self, location: StorageURI, conn_id: str | None, *, exists: bool, uri: str) -> ObjectStore:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        client = S3Hook(aws_conn_id=conn_id if exists else None).get_conn()
        return S3Store(client, location.bucket, conn_id=conn_id)

    def spec(self, store: ObjectStore) -> StoreSpec:
        assert isinstance(store, S3Store)
        return {
            "scheme": "s3",
            "bucket": store.bucket,
            "region": store.client.meta.region_name,
            "endpoint_url": store.client.meta.endpoint_url,
        }

    def issue(self, store: ObjectStore, grant: Grant) -> Issued | None:
        from airflow_skyplane.storage import aws_credentials

        assert isinstance(store, S3Store)
        return aws_credentials.issue(store.conn_id, store.client, grant)

    def open_spec(self, spec: Mapping[str, object]) -> ObjectStore:
        import boto3
        from botocore.config import Config

        # one pooled connection per gateway thread, and the SDK's adaptive retries
        config = Config(max_pool_connections=64, retries={"mode": "adaptive", "max_attempts": 8})
        path = text(spec, "credentials_file")
        if path:
            from airflow_skyplane.storage.relay_credentials import file_session

            client = file_session(path).client(
                "s3", region_name=text(spec, "region"), endpoint_url=text(spec, "endpoint_url"), config=config
            )
        else:
            client = boto3.client(
                "s3",
                region_name=text(spec, "region"),
                endpoint_url=text(spec, "endpoint_url"),
                aws_access_key_id=text(spec, "access_key_id"),
                aws_secret_access_key=text(spec, "secret_access_key"),
                aws_session_token=text(spec, "session_token"),
                config=config,
            )
        return S3Store(client, need(spec, "bucket"))

    def region(self, store: ObjectStore) -> Placement:
        """The bucket's own region (``GetBucketLocation`` through the hook's client); where that is
        refused, the connection's region (``region_name`` in its extra, or the SDK's) as fallback."""
        from botocore.exceptions import BotoCoreError, ClientError

        from airflow_skyplane.storage.placement import aws_placement, unknown

        assert isinstance(store, S3Store)
        connection = store.client.meta.region_name
        fallback = f"aws:{connection}" if connection else None
        try:
            constraint = store.client.get_bucket_location(Bucket=store.bucket).get("LocationConstraint")
        except (BotoCoreError, ClientError) as err:
            return unknown(f"GetBucketLocation failed ({str(err)[:200]})", fallback)
        return replace(aws_placement(constraint), fallback=fallback)


KIND = S3Kind()
