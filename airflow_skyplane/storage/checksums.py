"""Compute locally the checksums stores report, to verify what was written.

* ``md5``: S3 single-part ETags, Azure ``Content-MD5``, GCS ``md5Hash`` and local files.
* ``crc32c``: GCS reports it for every object, composed ones included. ``google-crc32c`` (installed
  with google-cloud-storage) computes it in C; it is imported only when a GCS checksum is checked.
* ``s3-etag``: the ETag of an S3 multipart object, MD5 of the concatenated binary MD5s of the parts,
  then ``-<number of parts>``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.storage.base import Checksum

ALGORITHMS = ("md5", "crc32c", "s3-etag")


def _crc32c() -> Any:
    try:
        import google_crc32c
    except ImportError as err:  # pragma: no cover - present wherever the google extra is installed
        raise InvalidInputError(
            "checking a crc32c checksum needs the google-crc32c package: install airflow-skyplane[google]"
        ) from err
    return google_crc32c.Checksum()


class Hasher:
    """Incremental computation of one algorithm; feed it with :meth:`update`."""

    def __init__(self, algorithm: str, part_sizes: Sequence[int] | None = None) -> None:
        if algorithm not in ALGORITHMS:
            raise InvalidInputError(f"unknown checksum algorithm {algorithm!r}: use one of {ALGORITHMS}")
        self.algorithm = algorithm
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._crc = _crc32c() if algorithm == "crc32c" else None
        # s3-etag: MD5 per part, cut at the given part sizes
        self._parts = list(part_sizes or ())
        self._part_digests: list[bytes] = []
        self._in_part = 0

    def update(self, data: bytes | memoryview) -> None:
        if self.algorithm == "md5":
            self._md5.update(data)
        elif self._crc is not None:
            self._crc.update(bytes(data))
        else:
            view = memoryview(data)
            while view:
                index = len(self._part_digests)
                limit = self._parts[index] if index < len(self._parts) else len(view) + self._in_part
                take = min(len(view), limit - self._in_part)
                self._md5.update(view[:take])
                self._in_part += take
                view = view[take:]
                if self._in_part == limit:
                    self._part_digests.append(self._md5.digest())
                    self._md5 = hashlib.md5(usedforsecurity=False)
                    self._in_part = 0

    def result(self) -> Checksum:
        if self.algorithm == "md5":
            return Checksum("md5", self._md5.hexdigest())
        if self._crc is not None:
            return Checksum("crc32c", self._crc.digest().hex())
        digests = list(self._part_digests)
        if self._in_part or not digests:
            digests.append(self._md5.digest())
        return from_part_md5s(digests)


def from_part_md5s(digests: Sequence[bytes]) -> Checksum:
    """What S3 reports for an object written in parts with these MD5s: the MD5 of one part, or the
    multipart ETag ``<md5 of the concatenated part md5s>-<parts>``."""
    if len(digests) == 1:
        return Checksum("md5", digests[0].hex())
    combined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
    return Checksum("s3-etag", f"{combined}-{len(digests)}")


def compute(algorithm: str, chunks: Iterable[bytes], part_sizes: Sequence[int] | None = None) -> Checksum:
    """Checksum of the concatenation of ``chunks`` with ``algorithm``."""
    hasher = Hasher(algorithm, part_sizes)
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.result()


def b64_to_hex(value: str) -> str:
    """Stores report MD5 and CRC32C base64-encoded on the wire; we keep hex everywhere."""
    return base64.b64decode(value).hex()


def hex_to_b64(value: str) -> str:
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")
