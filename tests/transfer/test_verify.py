"""Verification says why an object was checked by size only, and which: an Azure blob whose blocks
were written out of order carries no Content-MD5; in order, the same blob is verified by MD5."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

from airflow_skyplane.hooks.storage import open_store
from airflow_skyplane.storage.base import MultipartUpload, ObjectInfo
from airflow_skyplane.testing.sky import EmulatedSky
from airflow_skyplane.transfer.control import Receipt
from airflow_skyplane.transfer.summary import Unverified
from airflow_skyplane.transfer.verify import Sides, complete_and_verify

MiB = 1024 * 1024


def _written(
    emulated_sky: EmulatedSky, uri: str, key: str, parts: list[bytes], order: list[int]
) -> tuple[Any, MultipartUpload, list[Receipt]]:
    """Parts of ``key`` written in ``order``, and the receipts a writing gateway would return."""
    store = emulated_sky.open(uri)
    upload = store.begin_multipart(key)
    receipts: list[Receipt] = []
    offset = {n: sum(len(p) for p in parts[: n - 1]) for n in range(1, len(parts) + 1)}
    for number in order:
        data = parts[number - 1]
        info = store.write_part(upload, number, data)
        receipts.append(
            Receipt(key=key, part_number=number, offset=offset[number], length=len(data),
                    md5=hashlib.md5(data, usedforsecurity=False).hexdigest(), crc32c="", token=info.token)
        )  # fmt: skip
    return store, upload, receipts


def test_an_azure_blob_written_out_of_order_is_checked_by_size_and_the_reason_said(
    emulated_sky: EmulatedSky, sky_bucket: Callable[..., str]
) -> None:
    src_uri, dst_uri = sky_bucket("s3"), sky_bucket("az")
    rng = random.Random(11)
    parts = [rng.randbytes(MiB) for _ in range(3)]
    src = open_store(src_uri).store
    body = b"".join(parts)
    src.put("in/a.bin", body)
    src.put("in/b.bin", body)
    objects = {k: next(iter(src.list(f"in/{k}"))) for k in ("a.bin", "b.bin")}
    dst, up_a, rec_a = _written(emulated_sky, dst_uri, "out/a.bin", parts, [3, 1, 2])  # out of order
    _, up_b, rec_b = _written(emulated_sky, dst_uri, "out/b.bin", parts, [1, 2, 3])  # in order
    uploads = {"a.bin": up_a, "b.bin": up_b}
    receipts = [{**r, "key": r["key"][len("out/") :]} for r in rec_a + rec_b]
    unverified = Unverified()
    verified = complete_and_verify(
        Sides(src, "in/", dst, "out/"),
        objects,
        uploads,
        receipts,
        unverified,  # type: ignore[arg-type]
    )
    assert (verified, unverified.count, unverified.keys) == (1, 1, ["a.bin"])
    assert unverified.reasons == {
        "written in parts: Azure keeps no Content-MD5 for a blob whose blocks did not arrive in order": 1
    }
    assert dst.read("out/a.bin") == body  # checked by size, and there whole
    assert isinstance(objects["a.bin"], ObjectInfo)
