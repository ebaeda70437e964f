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


_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected


def _gf2_apply(matrix: Sequence[int], vector: int) -> int:
    out, row = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[row]
        vector >>= 1
        row += 1
    return out


def _gf2_square(matrix: Sequence[int]) -> list[int]:
    return [_gf2_apply(matrix, matrix[n]) for n in range(32)]


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC32C of ``A + B`` from ``crc1 = CRC32C(A)``, ``crc2 = CRC32C(B)`` and ``len(B)``.

    GCS reports the CRC32C of a composed object; the writing gateway knows each part's CRC32C and
    length, so the controller can tell what the composed object must report without its bytes. The
    method is the one of zlib's ``crc32_combine``: appending ``len2`` zero bytes to ``A`` is a linear
    map over GF(2), applied by repeated squaring of the one-zero-bit operator.
    """
    if len2 <= 0:
        return crc1
    odd = [_CRC32C_POLY] + [1 << n for n in range(31)]  # one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:
        even = _gf2_square(odd)  # first pass: one zero byte
        if len2 & 1:
            crc1 = _gf2_apply(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_apply(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def from_part_crc32cs(parts: Sequence[tuple[int, int]]) -> Checksum:
    """The CRC32C GCS reports for an object composed of parts given as ``(crc32c, length)``."""
    crc = 0
    for part_crc, length in parts:
        crc = crc32c_combine(crc, part_crc, length)
    return Checksum("crc32c", f"{crc:08x}")


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
