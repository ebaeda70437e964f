"""The ``ObjectStore`` interface every adapter implements, and the records it returns.

The interface is deliberately small, in the spirit of rclone's backend interface: list, head, read a
range, write (whole or multipart), delete. What a store cannot do natively is flagged in
``capabilities`` instead of being faked.

Adapters import no Airflow: they wrap an SDK client (boto3, google-cloud-storage, azure-storage-blob)
that the caller builds. Inside a task, :func:`airflow_skyplane.hooks.storage.open_store` builds the
client from the Airflow hooks and their connections; on a relay, the gateway builds it from the
credentials in its program (the task connection's own).

Keys are relative to the store's bucket (or container, or root directory). Listings stream: an
adapter asks the store for one page at a time and never holds the whole listing in memory; keys come
in ascending order of their UTF-8 bytes, which lets the transfer diff two listings by merging them.
"""

from __future__ import annotations

import abc
import builtins
import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from airflow_skyplane.exceptions import InvalidInputError

#: Hidden key prefix under which adapters that emulate multipart uploads with plain objects keep
#: their parts (GCS, local files). Listings never show it.
UPLOADS_PREFIX = ".skyplane-uploads/"

#: Capability flags (see :attr:`ObjectStore.capabilities`).
CAP_NATIVE_MULTIPART = "native-multipart"  # the store has a multipart API (S3, Azure block lists)
CAP_COMPOSE = "compose"  # parts are objects composed at the end (GCS)
CAP_SERVER_CHECKSUM = "server-checksum"  # head reports a checksum the store computed itself


@dataclass(frozen=True)
class Checksum:
    """A checksum as a store reports it.

    ``algorithm`` is one of ``md5`` (hex), ``crc32c`` (hex, big-endian), or ``s3-etag`` (the
    ``<hex>-<parts>`` ETag of an S3 multipart object, the MD5 of the parts' MD5s, which only
    matches when the parts are cut the same way). :mod:`airflow_skyplane.storage.checksums`
    computes each of them locally.
    """

    algorithm: str
    value: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.value}"


@dataclass(frozen=True)
class ObjectInfo:
    """One object: its key relative to the store, size in bytes, checksum and modification time."""

    key: str
    size: int
    checksum: Checksum | None = None
    mtime: datetime | None = None


@dataclass(frozen=True)
class PartInfo:
    """A part written by :meth:`ObjectStore.write_part`; pass them all back to ``complete``."""

    number: int
    size: int
    token: str = ""  # the store's receipt for the part (S3 ETag, Azure block id, GCS object name)


@dataclass
class MultipartUpload:
    """An upload in progress. ``state`` holds what the adapter needs (upload id, block ids...)."""

    key: str
    upload_id: str
    state: dict[str, Any] = field(default_factory=dict)


def validate_key(key: str) -> str:
    """Reject keys no store can hold the same way: empty, NUL, or over 1024 UTF-8 bytes."""
    if not isinstance(key, str) or key == "":
        raise InvalidInputError(f"object key {key!r} is empty: give a non-empty key relative to the bucket")
    if "\x00" in key:
        raise InvalidInputError(f"object key {key!r} contains a NUL character: remove it")
    if len(key.encode("utf-8")) > 1024:
        raise InvalidInputError(
            f"object key {key[:60]!r}... is {len(key.encode('utf-8'))} bytes long: stores allow 1024"
        )
    if key.startswith(UPLOADS_PREFIX):
        raise InvalidInputError(f"object key {key!r} is under {UPLOADS_PREFIX!r}, which is reserved")
    return key


def validate_part_number(number: int) -> int:
    if not isinstance(number, int) or not 1 <= number <= 10_000:
        raise InvalidInputError(f"part number {number!r} is out of range: parts are numbered 1 to 10000")
    return number


class ObjectStore(abc.ABC):
    """One bucket (or container, or directory) of one store."""

    #: URI scheme of the store (``s3``, ``gs``, ``az``, ``file``).
    scheme: str = ""
    #: Smallest part ``write_part`` accepts, except for the last part of an upload.
    min_part_size: int = 1
    #: Largest part ``write_part`` accepts.
    max_part_size: int = 5 * 1024**3
    #: Optional abilities, as ``CAP_*`` flags.
    capabilities: frozenset[str] = frozenset()
    #: Keys asked per listing request (stores cap it at 1000 or 5000).
    list_page_size: int = 1000
    #: Object writes per second the store takes on one prefix before it throttles (answers 503
    #: SlowDown or 429), as the store documents it; None: no known limit. Sizes the batches of small
    #: objects (:func:`airflow_skyplane.transfer.tuning.batch_objects_for`).
    write_rate: float | None = None

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket

    @property
    def uri(self) -> str:
        """The URI of the bucket root, e.g. ``s3://bucket/``."""
        return f"{self.scheme}://{self.bucket}/"

    def describe(self, key: str = "") -> str:
        """The URI of ``key`` for messages."""
        return self.uri + key

    def check_bucket(self) -> None:  # noqa: B027 - optional: stores that can probe override it
        """Probe the bucket once: raise BucketNotFoundError or CredentialsError unless it is usable."""

    # -- reading ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, page by page, in UTF-8 byte order of the key."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size, checksum and mtime of one object; :class:`ObjectNotFoundError` if it is absent."""

    @abc.abstractmethod
    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer only at the end of the object)."""

    @abc.abstractmethod
    def read(self, key: str) -> bytes:
        """The whole object, in one request, so a concurrent ``put`` shows the old object or the new
        one, never the old length of the new bytes (for small objects; stream large ones with
        :meth:`read_range`)."""

    def exists(self, key: str) -> bool:
        from airflow_skyplane.exceptions import ObjectNotFoundError

        try:
            self.head(key)
        except ObjectNotFoundError:
            return False
        return True

    # -- writing ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def put(self, key: str, data: bytes | bytearray, *, crc32c: int | None = None) -> ObjectInfo:
        """Write a whole object at once. Readers see the old object or the new one, never a part.

        The returned checksum is the one the store computed over the bytes it received and stored, as
        the write's own response reports it (S3's ETag of a single PUT, the ``md5Hash``/``crc32c`` of
        a GCS upload, the ``Content-MD5`` Azure returns for a Put Blob, the local file read back), or
        None when the response carries no such checksum: the writer then checks the object with a
        HEAD. A writer that compares it with its own checksum of ``data`` needs no HEAD after it.

        ``crc32c``: the CRC-32C of ``data`` when the caller has it (a writing gateway checked it): a
        store that verifies writes by a checksum (S3) is handed it instead of computing its own."""

    @abc.abstractmethod
    def begin_multipart(self, key: str) -> MultipartUpload:
        """Start a multipart write; nothing is visible under ``key`` until :meth:`complete_multipart`."""

    @abc.abstractmethod
    def write_part(
        self, upload: MultipartUpload, number: int, data: bytes | bytearray, *, crc32c: int | None = None
    ) -> PartInfo:
        """Write part ``number`` (1-based); parts may be written in any order and in parallel.
        ``crc32c`` as for :meth:`put`."""

    @abc.abstractmethod
    def complete_multipart(self, upload: MultipartUpload, parts: Iterable[PartInfo]) -> ObjectInfo:
        """Make the object visible, made of ``parts`` in order of their numbers; the object as the
        store now holds it (its size and the checksum the store reports, as :meth:`head` gives them)."""

    @abc.abstractmethod
    def abort_multipart(self, upload: MultipartUpload) -> None:
        """Discard the upload and every part written; idempotent."""

    def uploaded_parts(self, upload: MultipartUpload) -> dict[int, PartInfo] | None:
        """The parts an upload begun earlier (possibly by another process) holds, by number, so that
        a resumed transfer can continue it; ``None`` when the upload is gone or the store cannot tell,
        and then the object is sent again under a new upload. Stores that can continue an upload
        override this; the default cannot."""
        return None

    @abc.abstractmethod
    def list_multipart_uploads(self, prefix: str = "") -> Iterator[MultipartUpload]:
        """Uploads begun and neither completed nor aborted (to find and clean dangling ones)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; deleting an absent object is not an error."""

    def tidy(self) -> None:  # noqa: B027 - optional: stores that leave local traces override it
        """Remove what writers killed on this machine left behind; called once no write runs."""

    # -- helpers ---------------------------------------------------------------------------------
    def _wants_range(self, key: str, offset: int, length: int) -> bool:
        """Check a ``read_range`` call; False when it asks for no bytes at all."""
        validate_key(key)
        if offset < 0 or length < 0:
            raise InvalidInputError(
                f"range offset={offset} length={length} of {self.describe(key)} is negative"
            )
        return length > 0

    def _check_parts(self, upload: MultipartUpload, parts: Iterable[PartInfo]) -> builtins.list[PartInfo]:
        ordered = sorted(parts, key=lambda p: p.number)
        if not ordered:
            raise InvalidInputError(
                f"multipart write of {self.describe(upload.key)} has no parts: write at least one part, "
                "or use put() for an empty object"
            )
        numbers = [p.number for p in ordered]
        if len(set(numbers)) != len(numbers):
            raise InvalidInputError(
                f"multipart write of {self.describe(upload.key)} lists a part number twice: {numbers}"
            )
        for p in ordered[:-1]:
            if p.size < self.min_part_size:
                raise InvalidInputError(
                    f"part {p.number} of {self.describe(upload.key)} is {p.size} bytes, below the "
                    f"{self.min_part_size}-byte minimum of {self.scheme}: only the last part may be smaller"
                )
        return ordered

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def replace_checksum(info: ObjectInfo, checksum: Checksum | None) -> ObjectInfo:
    return dataclasses.replace(info, checksum=checksum)
