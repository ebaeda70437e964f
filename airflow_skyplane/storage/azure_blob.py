"""Azure Blob Storage (``az://container/prefix``) on an ``azure.storage.blob.BlobServiceClient``.

In a task the client comes from ``WasbHook(wasb_conn_id).get_conn()``. Multipart writes are block
blobs: each part is staged as a block (ids ``<upload id>:<part>``, all the same length as Azure
requires) and ``complete`` commits the block list, which makes the blob appear in one step. Uncommitted
blocks are invisible to readers; ``abort`` deletes them.

Azure computes ``Content-MD5`` only for blobs uploaded in a single request, so the adapter sets it
itself: from the data in ``put``, and in ``complete`` when the parts were written in order by this
process (the MD5 is then computed as they pass). ``head`` reports it when it is set.
"""

from __future__ import annotations

import base64
import hashlib
import threading
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


def _block_id(upload_id: str, number: int) -> str:
    return base64.b64encode(f"{upload_id}:{number:05d}".encode("ascii")).decode("ascii")


def _info(props: Any, key: str | None = None) -> ObjectInfo:
    md5 = getattr(props.content_settings, "content_md5", None)
    checksum = Checksum("md5", bytes(md5).hex()) if md5 else None
    return ObjectInfo(key or props.name, int(props.size or 0), checksum, props.last_modified)


class AzureBlobStore(ObjectStore):
    scheme = "az"
    min_part_size = 1
    max_part_size = 4000 * 1024 * 1024
    capabilities = frozenset({CAP_NATIVE_MULTIPART, CAP_SERVER_CHECKSUM})
    #: requests per second a standard storage account takes (its documented target)
    write_rate = 20000.0

    def __init__(self, client: Any, container: str, *, conn_id: str | None = None) -> None:
        super().__init__(container)
        self.client = client
        self.conn_id = conn_id
        self.container = client.get_container_client(container)
        self.account = getattr(client, "account_name", None)

    def _raise(self, err: Exception, key: str | None = None, action: str = "access") -> NoReturn:
        from azure.core import exceptions as aexc

        where = self.describe(key or "")
        via = f" with connection {self.conn_id!r}" if self.conn_id else ""
        code = str(getattr(err, "error_code", "") or "")
        status = getattr(err, "status_code", None)
        if isinstance(err, aexc.ClientAuthenticationError) or status == 403 or "Authorization" in code:
            raise CredentialsError(
                f"Azure refused to {action} {where}{via} ({code or type(err).__name__}): check the "
                "connection's account key, SAS token or connection string and its permissions"
            ) from None
        if isinstance(err, aexc.ResourceNotFoundError) or status == 404:
            if code == "ContainerNotFound" or key is None or action != "read":
                raise BucketNotFoundError(
                    f"container 'az://{self.bucket}' does not exist in account {self.account!r}{via}: "
                    "create it, or fix the container name in the URI"
                ) from None
            raise ObjectNotFoundError(f"object {where} does not exist") from None
        raise StorageError(f"Azure Blob failed to {action} {where}: {err}") from err

    def check_bucket(self) -> None:
        try:
            self.container.get_container_properties()
        except Exception as err:  # noqa: BLE001
            self._raise(err, None, "open")

    # -- reading ---------------------------------------------------------------------------------
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        try:
            pages = self.container.list_blobs(
                name_starts_with=prefix or None, results_per_page=self.list_page_size
            )
            for page in pages.by_page():
                for props in page:
                    yield _info(props)
        except Exception as err:  # noqa: BLE001
            self._raise(err, None, "list")

    def head(self, key: str) -> ObjectInfo:
        validate_key(key)
        try:
            props = self.container.get_blob_client(key).get_blob_properties()
        except Exception as err:  # noqa: BLE001
            self._raise(err, key, "read")
        return _info(props, key)

    def read(self, key: str) -> bytes:
        validate_key(key)
        try:
            data: bytes = self.container.get_blob_client(key).download_blob().readall()
            return data
        except Exception as err:  # noqa: BLE001
            self._raise(err, key, "read")

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if not self._wants_range(key, offset, length):
            return b""
        from azure.core import exceptions as aexc

        try:
            data: bytes = (
                self.container.get_blob_client(key).download_blob(offset=offset, length=length).readall()
            )
            return data
        except aexc.HttpResponseError as err:
            if err.status_code == 416:
                return b""
            self._raise(err, key, "read")
        except Exception as err:  # noqa: BLE001
            self._raise(err, key, "read")

    # -- writing ---------------------------------------------------------------------------------
    def put(self, key: str, data: bytes | bytearray, *, crc32c: int | None = None) -> ObjectInfo:
        validate_key(key)
        from azure.storage.blob import ContentSettings

        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        try:
            response = self.container.get_blob_client(key).upload_blob(
                data, overwrite=True, content_settings=ContentSettings(content_md5=bytearray(md5))
            )
        except Exception as err:  # noqa: BLE001
            self._raise(err, key, "write")
        # the Content-MD5 of a Put Blob's response is the one the service computed of the body
        stored = response.get("content_md5") if isinstance(response, dict) else None
        return ObjectInfo(key, len(data), Checksum("md5", bytes(stored).hex()) if stored else None)

    def begin_multipart(self, key: str) -> MultipartUpload:
        validate_key(key)
        return MultipartUpload(
            key,
            uuid.uuid4().hex,
            {"lock": threading.Lock(), "md5": hashlib.md5(usedforsecurity=False), "next": 1},
        )

    def write_part(
        self, upload: MultipartUpload, number: int, data: bytes | bytearray, *, crc32c: int | None = None
    ) -> PartInfo:
        validate_part_number(number)
        block_id = _block_id(upload.upload_id, number)
        try:
            self.container.get_blob_client(upload.key).stage_block(block_id, data, length=len(data))
        except Exception as err:  # noqa: BLE001
            self._raise(err, upload.key, "write")
        # keep a running MD5 while parts arrive in order; give up on it otherwise (and when the upload
        # was begun elsewhere, e.g. by the controller while a gateway writes the parts)
        lock = upload.state.get("lock")
        if lock is None:
            return PartInfo(number, len(data), block_id)
        with lock:
            if upload.state.get("next") == number:
                upload.state["md5"].update(data)
                upload.state["next"] = number + 1
            else:
                upload.state["next"] = None
        return PartInfo(number, len(data), block_id)

    def complete_multipart(self, upload: MultipartUpload, parts: Iterable[PartInfo]) -> ObjectInfo:
        ordered = self._check_parts(upload, parts)
        from azure.storage.blob import BlobBlock, ContentSettings

        settings = None
        if upload.state.get("next") == ordered[-1].number + 1 and len(ordered) == ordered[-1].number:
            settings = ContentSettings(content_md5=bytearray(upload.state["md5"].digest()))
        blob = self.container.get_blob_client(upload.key)
        wanted = [p.token or _block_id(upload.upload_id, p.number) for p in ordered]
        try:
            staged = {b.id for b in blob.get_block_list("uncommitted")[1]}
        except Exception as err:  # noqa: BLE001
            self._raise(err, upload.key, "complete")
        missing = [p.number for p, block in zip(ordered, wanted, strict=True) if block not in staged]
        if missing:
            raise InvalidInputError(
                f"part(s) {missing} of {self.describe(upload.key)} were not written (or were aborted): "
                "write every part before completing"
            )
        try:
            blob.commit_block_list(
                [BlobBlock(block_id=block) for block in wanted],
                content_settings=settings,
            )
        except Exception as err:  # noqa: BLE001
            code = str(getattr(err, "error_code", "") or "")
            if code == "InvalidBlockList":
                raise InvalidInputError(
                    f"a part of {self.describe(upload.key)} was not written (or was aborted): write every "
                    "part before completing"
                ) from None
            self._raise(err, upload.key, "complete")
        return self.head(upload.key)

    def abort_multipart(self, upload: MultipartUpload) -> None:
        """Delete the staged blocks.

        A blob that was never committed holds only uncommitted blocks, and deleting it removes them.
        A blob that already exists keeps its committed content; its uncommitted blocks are dropped by
        Azure at the next commit to that blob or after a week.
        """
        from azure.core import exceptions as aexc

        blob = self.container.get_blob_client(upload.key)
        try:
            blob.get_blob_properties()
            return  # a committed blob exists: leave it untouched
        except aexc.ResourceNotFoundError:
            pass
        try:
            blob.delete_blob()
        except aexc.ResourceNotFoundError:
            return
        except Exception as err:  # noqa: BLE001
            self._raise(err, upload.key, "abort")

    def uploaded_parts(self, upload: MultipartUpload) -> dict[int, PartInfo] | None:
        """The blob's uncommitted blocks of this upload id. Azure keeps them for a week, or until
        anyone commits a block list to that blob; an upload has no record of its own, so one whose
        blocks are gone shows as an upload with no parts, and every part is sent again."""
        from azure.core import exceptions as aexc

        parts: dict[int, PartInfo] = {}
        try:
            blocks = self.container.get_blob_client(upload.key).get_block_list("uncommitted")[1]
        except aexc.ResourceNotFoundError:
            return parts
        except Exception as err:  # noqa: BLE001
            self._raise(err, upload.key, "list the parts of")
        for block in blocks:
            upload_id, _, number = base64.b64decode(block.id).decode("ascii", "replace").partition(":")
            if upload_id == upload.upload_id and number.isdigit():
                parts[int(number)] = PartInfo(int(number), int(block.size), block.id)
        return parts

    def list_multipart_uploads(self, prefix: str = "") -> Iterator[MultipartUpload]:
        """Blobs that have staged blocks and no committed content (an upload begun and not ended)."""
        try:
            committed = {b.name for b in self.container.list_blobs(name_starts_with=prefix or None)}
            listing = self.container.list_blobs(name_starts_with=prefix or None, include=["uncommittedblobs"])
            for props in listing:
                if props.name in committed:
                    continue
                blocks = self.container.get_blob_client(props.name).get_block_list("uncommitted")[1]
                ids = {base64.b64decode(b.id).decode("ascii", "replace").split(":")[0] for b in blocks}
                for upload_id in sorted(ids) or [""]:
                    yield MultipartUpload(props.name, upload_id)
        except Exception as err:  # noqa: BLE001
            self._raise(err, None, "list uploads of")

    def delete(self, key: str) -> None:
        validate_key(key)
        from azure.core import exceptions as aexc

        try:
            self.container.get_blob_client(key).delete_blob()
        except aexc.ResourceNotFoundError:
            return
        except Exception as err:  # noqa: BLE001
            self._raise(err, key, "delete")


class AzureBlobKind(StoreKind):
    """``az://``: ``WasbHook`` in the task; a plain ``BlobServiceClient`` from the spec on a relay.

    Spec: ``container``, ``account_url`` (no SAS in it), and ``credentials_file``: the relay's SAS of
    the container (:mod:`.azure_credentials`), read again whenever the controller replaces it. Inline
    ``connection_string``, or ``credential`` (a SAS token), are taken as they are; with neither, anonymous.
    """

    scheme = "az"
    connection = ConnectionKind("wasb_conn_id", "wasb_default", "wasb", "azure")

    def open(self, location: StorageURI, conn_id: str | None, *, exists: bool, uri: str) -> ObjectStore:
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        assert conn_id is not None  # a kind with a connection is always given one (the default)
        client = WasbHook(wasb_conn_id=conn_id).get_conn()
        if location.account and client.account_name != location.account:
            raise InvalidInputError(
                f"{uri} names storage account {location.account!r} but connection {conn_id!r} is for "
                f"account {client.account_name!r}: use a connection for {location.account!r}, or write "
                "the URI as az://container/prefix"
            )
        return AzureBlobStore(client, location.bucket, conn_id=conn_id)

    def spec(self, store: ObjectStore) -> StoreSpec:
        from airflow_skyplane.storage.azure_credentials import account_url

        assert isinstance(store, AzureBlobStore)
        return {"scheme": "az", "container": store.bucket, "account_url": account_url(store.client)}

    def issue(self, store: ObjectStore, grant: Grant) -> Issued | None:
        from airflow_skyplane.storage import azure_credentials

        assert isinstance(store, AzureBlobStore)
        return azure_credentials.issue(store.client, store.bucket, grant, store.conn_id)

    def open_spec(self, spec: Mapping[str, object]) -> ObjectStore:
        from azure.storage.blob import BlobServiceClient, ExponentialRetry

        # a relay's writes, throttled (503 ServerBusy, 500): the SDK's exponential retry, from 1 s
        # (its default waits 15 s first, which stalls a batch of small objects on one busy answer)
        throttled = ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=6)
        path = text(spec, "credentials_file")
        connection_string = text(spec, "connection_string")
        if path:
            from airflow_skyplane.storage.grants import CredentialFile

            fields = CredentialFile(path).fields()
            if fields.get("connection_string"):  # the connection's shared key (relay_credentials)
                service = BlobServiceClient.from_connection_string(
                    fields["connection_string"], retry_policy=throttled
                )
            else:
                from airflow_skyplane.storage.relay_credentials import FileSas

                service = BlobServiceClient(
                    account_url=need(spec, "account_url"), credential=FileSas(path), retry_policy=throttled
                )
        elif connection_string:
            service = BlobServiceClient.from_connection_string(connection_string, retry_policy=throttled)
        else:
            service = BlobServiceClient(
                account_url=need(spec, "account_url"),
                credential=text(spec, "credential"),
                retry_policy=throttled,
            )
        return AzureBlobStore(service, need(spec, "container"))

    def region(self, store: ObjectStore) -> Placement:
        """The storage account's location, through the management API with the connection's Azure
        AD identity and the ``subscription_id`` of its extra; a shared key, SAS or connection string
        cannot ask it."""
        from airflow_skyplane.storage.azure_account import azure_account_placement

        assert isinstance(store, AzureBlobStore)
        return azure_account_placement(store.client, store.conn_id)


KIND = AzureBlobKind()
