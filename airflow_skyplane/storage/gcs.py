"""Google Cloud Storage (``gs://bucket/prefix``) on a ``google.cloud.storage.Client``.

In a task the client comes from ``GCSHook(gcp_conn_id).get_conn()``. GCS has no multipart upload
that accepts parts in any order from many writers, but it composes objects: each part is written as
an object under ``.skyplane-uploads/<upload id>/`` (hidden from listings), and ``complete`` composes
them into the target, 32 sources per compose call (GCS's limit) in a tree, then deletes the parts.
The target appears in one step, when the last compose succeeds. ``head`` reports the CRC32C that GCS
computes for every object, composed ones included.
"""

from __future__ import annotations

import builtins
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_skyplane.exceptions import (
    BucketNotFoundError,
    CredentialsError,
    InvalidInputError,
    ObjectNotFoundError,
    StorageError,
)
from airflow_skyplane.storage.base import (
    CAP_COMPOSE,
    CAP_SERVER_CHECKSUM,
    UPLOADS_PREFIX,
    Checksum,
    MultipartUpload,
    ObjectInfo,
    ObjectStore,
    PartInfo,
    validate_key,
    validate_part_number,
)
from airflow_skyplane.storage.checksums import b64_to_hex
from airflow_skyplane.storage.grants import Grant, Issued
from airflow_skyplane.storage.kinds import ConnectionKind, StoreKind, StoreSpec, need, text
from airflow_skyplane.storage.uri import StorageURI

if TYPE_CHECKING:
    from airflow_skyplane.storage.placement import Placement

COMPOSE_LIMIT = 32  # sources per compose request


def _info(blob: Any, key: str | None = None) -> ObjectInfo:
    checksum = Checksum("crc32c", b64_to_hex(blob.crc32c)) if blob.crc32c else None
    if checksum is None and blob.md5_hash:
        checksum = Checksum("md5", b64_to_hex(blob.md5_hash))
    return ObjectInfo(key or blob.name, int(blob.size or 0), checksum, blob.updated)


class GCSStore(ObjectStore):
    scheme = "gs"
    min_part_size = 1
    capabilities = frozenset({CAP_COMPOSE, CAP_SERVER_CHECKSUM})
    #: object writes per second a bucket takes at first (GCS raises it as the load lasts)
    write_rate = 1000.0

    def __init__(self, client: Any, bucket: str, *, conn_id: str | None = None) -> None:
        super().__init__(bucket)
        self.client = client
        self.conn_id = conn_id
        self._bucket = client.bucket(bucket)

    def _raise(self, err: Exception, key: str | None = None, action: str = "access") -> NoReturn:
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc

        where = self.describe(key or "")
        via = f" with connection {self.conn_id!r}" if self.conn_id else ""
        if isinstance(err, auth_exc.GoogleAuthError):
            raise CredentialsError(
                f"cannot {action} {where}: Google credentials failed{via} ({type(err).__name__}); set a key "
                "file, keyfile_dict or credential configuration in the google_cloud_platform connection"
            ) from None
        if isinstance(err, gexc.NotFound):
            if key is None or action != "read":  # a missing object only matters when reading it
                raise BucketNotFoundError(
                    f"bucket 'gs://{self.bucket}' does not exist or is not visible{via}: create it, or fix "
                    "the bucket name in the URI"
                ) from None
            raise ObjectNotFoundError(f"object {where} does not exist") from None
        if isinstance(err, (gexc.Forbidden, gexc.Unauthorized)):
            raise CredentialsError(
                f"GCS refused to {action} {where}{via} ({type(err).__name__}): check the connection's "
                "service account and that it may read and write this bucket"
            ) from None
        raise StorageError(f"GCS failed to {action} {where}: {err}") from err

    def check_bucket(self) -> None:
        try:
            self.client.get_bucket(self.bucket)
        except Exception as err:  # noqa: BLE001
            self._raise(err, None, "open")

    # -- reading ---------------------------------------------------------------------------------
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        try:
            pages = self.client.list_blobs(
                self.bucket, prefix=prefix or None, page_size=self.list_page_size
            ).pages
            for page in pages:
                for blob in page:
                    if not blob.name.startswith(UPLOADS_PREFIX):
                        yield _info(blob)
        except Exception as err:  # noqa: BLE001
            self._raise(err, None, "list")

    def _get(self, key: str) -> Any:
        validate_key(key)
        try:
            blob = self._bucket.get_blob(key)
        except Exception as err:  # noqa: BLE001
            self._raise(err, key, "read")
        if blob is None:
            raise ObjectNotFoundError(f"object {self.describe(key)} does not exist")
        return blob

    def head(self, key: str) -> ObjectInfo:
        return _info(self._get(key), key)

    def read(self, key: str) -> bytes:
        validate_key(key)
        try:
            data: bytes = self._bucket.blob(key).download_as_bytes(checksum=None)
            return data
        except Exception as err:  # noqa: BLE001
            self._raise(err, key, "read")

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if not self._wants_range(key, offset, length):
            return b""
        from google.api_core import exceptions as gexc

        try:
            data: bytes = self._bucket.blob(key).download_as_bytes(
                start=offset, end=offset + length - 1, checksum=None
            )
            return data
        except gexc.RequestRangeNotSatisfiable:
            return b""
        except Exception as err:  # noqa: BLE001
            self._raise(err, key, "read")

    # -- writing ---------------------------------------------------------------------------------
    def _upload(self, name: str, data: bytes | bytearray, key: str) -> Any:
        blob = self._bucket.blob(name)
        data = bytes(data) if isinstance(data, bytearray) else data  # upload_from_string takes bytes or str
        from google.cloud.storage.retry import DEFAULT_RETRY

        try:
            # the upload's response carries the new object's metadata (size, crc32c, updated). Writing
            # the same bytes again is harmless, so a 429 or 503 (GCS slowing a client down) is retried
            # with the SDK's exponential backoff, which the SDK does not do for an unconditional upload
            blob.upload_from_string(
                data, content_type="application/octet-stream", checksum="crc32c", retry=DEFAULT_RETRY
            )
        except Exception as err:  # noqa: BLE001
            self._raise(err, key, "write")
        return blob

    def put(self, key: str, data: bytes | bytearray, *, crc32c: int | None = None) -> ObjectInfo:
        validate_key(key)
        return _info(self._upload(key, data, key), key)

    def _folder(self, upload_id: str) -> str:
        return f"{UPLOADS_PREFIX}{upload_id}/"

    def begin_multipart(self, key: str) -> MultipartUpload:
        validate_key(key)
        upload_id = uuid.uuid4().hex
        # a marker object records the target key, so dangling uploads can be listed and cleaned
        self._upload(self._folder(upload_id) + "key", key.encode("utf-8"), key)
        return MultipartUpload(key, upload_id)

    def write_part(
        self, upload: MultipartUpload, number: int, data: bytes | bytearray, *, crc32c: int | None = None
    ) -> PartInfo:
        validate_part_number(number)
        name = f"{self._folder(upload.upload_id)}part-{number:05d}"
        self._upload(name, data, upload.key)
        return PartInfo(number, len(data), name)

    def _compose(self, target: str, sources: builtins.list[str], key: str) -> None:
        from google.api_core import exceptions as gexc

        try:
            self._bucket.blob(target).compose([self._bucket.blob(s) for s in sources])
        except gexc.NotFound:
            raise InvalidInputError(
                f"a part of {self.describe(key)} was not written (or was aborted): write every part before "
                "completing"
            ) from None
        except Exception as err:  # noqa: BLE001
            self._raise(err, key, "compose")

    def complete_multipart(self, upload: MultipartUpload, parts: Iterable[PartInfo]) -> ObjectInfo:
        ordered = self._check_parts(upload, parts)
        folder = self._folder(upload.upload_id)
        if not self._bucket.blob(folder + "key").exists():
            raise InvalidInputError(
                f"multipart upload {upload.upload_id} of {self.describe(upload.key)} does not exist "
                "(completed or aborted already): begin a new one"
            )
        sources = [p.token or f"{folder}part-{p.number:05d}" for p in ordered]
        level = 0
        while len(sources) > COMPOSE_LIMIT:
            grouped: builtins.list[str] = []
            for i in range(0, len(sources), COMPOSE_LIMIT):
                name = f"{folder}compose-{level}-{i // COMPOSE_LIMIT:05d}"
                self._compose(name, sources[i : i + COMPOSE_LIMIT], upload.key)
                grouped.append(name)
            sources, level = grouped, level + 1
        self._compose(upload.key, sources, upload.key)
        self.abort_multipart(upload)  # the parts are now garbage
        return self.head(upload.key)

    def abort_multipart(self, upload: MultipartUpload) -> None:
        folder = self._folder(upload.upload_id)
        try:
            for blob in self.client.list_blobs(self.bucket, prefix=folder):
                blob.delete()
        except Exception as err:  # noqa: BLE001
            from google.api_core import exceptions as gexc

            if not isinstance(err, gexc.NotFound):
                self._raise(err, upload.key, "abort")

    def uploaded_parts(self, upload: MultipartUpload) -> dict[int, PartInfo] | None:
        """The part objects under the upload's hidden folder (their names are the tokens); ``None``
        once the marker is gone (completed or aborted)."""
        folder = self._folder(upload.upload_id)
        parts: dict[int, PartInfo] = {}
        marker = False
        try:
            for blob in self.client.list_blobs(self.bucket, prefix=folder):
                leaf = blob.name[len(folder) :]
                if leaf == "key":
                    marker = True
                elif leaf.startswith("part-") and leaf[5:].isdigit():
                    parts[int(leaf[5:])] = PartInfo(int(leaf[5:]), int(blob.size or 0), blob.name)
        except Exception as err:  # noqa: BLE001
            self._raise(err, upload.key, "list the parts of")
        return parts if marker else None

    def list_multipart_uploads(self, prefix: str = "") -> Iterator[MultipartUpload]:
        try:
            for blob in self.client.list_blobs(self.bucket, prefix=UPLOADS_PREFIX):
                rest = blob.name[len(UPLOADS_PREFIX) :]
                upload_id, _, leaf = rest.partition("/")
                if leaf == "key":
                    key = blob.download_as_bytes().decode("utf-8")
                    if key.startswith(prefix):
                        yield MultipartUpload(key, upload_id)
        except Exception as err:  # noqa: BLE001
            self._raise(err, None, "list uploads of")

    def delete(self, key: str) -> None:
        validate_key(key)
        from google.api_core import exceptions as gexc

        try:
            self._bucket.blob(key).delete()
        except gexc.NotFound:
            return
        except Exception as err:  # noqa: BLE001
            self._raise(err, key, "delete")


class GCSKind(StoreKind):
    """``gs://``: ``GCSHook`` in the task; a plain ``storage.Client`` from the spec on a relay.

    Spec: ``bucket``, ``project``, ``emulator_host`` (the API endpoint of an emulator), and
    ``credentials_file``: the relay's access token (downscoped to the transfer's prefixes,
    :mod:`.gcs_credentials`), read again as the controller renews it. Without a credential file: an
    emulator anonymously, else the relay's own identity.
    """

    scheme = "gs"
    connection = ConnectionKind(
        "gcp_conn_id", "google_cloud_default", "google_cloud_platform", "google", default_optional=True
    )

    def open(self, location: StorageURI, conn_id: str | None, *, exists: bool, uri: str) -> ObjectStore:
        from airflow.providers.google.cloud.hooks.gcs import GCSHook

        assert conn_id is not None  # a kind with a connection is always given one (the default)
        return GCSStore(GCSHook(gcp_conn_id=conn_id).get_conn(), location.bucket, conn_id=conn_id)

    def spec(self, store: ObjectStore) -> StoreSpec:
        assert isinstance(store, GCSStore)
        spec: StoreSpec = {"scheme": "gs", "bucket": store.bucket, "project": store.client.project}
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            spec["emulator_host"] = os.environ["STORAGE_EMULATOR_HOST"]
        return spec

    def issue(self, store: ObjectStore, grant: Grant) -> Issued | None:
        from airflow_skyplane.storage import gcs_credentials

        assert isinstance(store, GCSStore) and store.conn_id is not None
        return gcs_credentials.issue(store.conn_id, grant)

    def open_spec(self, spec: Mapping[str, object]) -> ObjectStore:
        from google.cloud import storage

        project, emulator, path = (
            text(spec, "project"),
            text(spec, "emulator_host"),
            text(spec, "credentials_file"),
        )
        options = {"api_endpoint": emulator} if emulator else None
        if path:
            from airflow_skyplane.storage.relay_credentials import FileToken

            client = storage.Client(project=project, credentials=FileToken(path), client_options=options)
        elif emulator:
            from google.auth.credentials import AnonymousCredentials

            client = storage.Client(
                project=project or "anonymous",
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options=options,
            )
        else:
            client = storage.Client(project=project)
        return GCSStore(client, need(spec, "bucket"))

    def region(self, store: ObjectStore) -> Placement:
        """The bucket's ``location`` (a region, dual- or multi-region), in the catalog's names."""
        from google.api_core.exceptions import GoogleAPIError

        from airflow_skyplane.storage.placement import gcs_placement, unknown

        assert isinstance(store, GCSStore)
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            return unknown("the GCS emulator reports every bucket in 'US', whatever it was created in")
        try:
            return gcs_placement(store.client.get_bucket(store.bucket).location)
        except GoogleAPIError as err:
            return unknown(f"reading the bucket's location failed ({str(err)[:200]})")


KIND = GCSKind()
