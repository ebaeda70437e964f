"""One contract, run identically against every store: local files and the three emulated clouds.

The cloud stores run on real servers (moto, gcp-storage-emulator, Azurite) started by the
``emulated_sky`` fixture; the adapters are built on plain SDK clients here (the Airflow path is
covered in ``test_resolve.py``), so this file checks the adapters themselves.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from airflow_skyplane.exceptions import InvalidInputError, ObjectNotFoundError
from airflow_skyplane.storage.base import ObjectStore
from airflow_skyplane.storage.checksums import compute
from airflow_skyplane.storage.local import LocalStore
from airflow_skyplane.storage.uri import parse_uri
from airflow_skyplane.testing.plugin import require
from airflow_skyplane.testing.sky import EmulatedSky

STORES = ["file", "s3", "gs", "az"]
MiB = 1024 * 1024
AWKWARD_KEYS = [
    "plain.txt",
    "with space/and more spaces.csv",
    "date=2024-01-01/part+0001.parquet",
    "données/été ☃.bin",
    "日本語/キー.json",
    "percent%20literal",
    "a-b",
    "a/b",
    "a.b",
    "trailing~tilde",
    "deep/" * 10 + "leaf",
]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, sky_bucket: Callable[[str], str]) -> ObjectStore:
    uri = sky_bucket(request.param)
    if request.param == "file":
        return LocalStore(parse_uri(uri).bucket)
    sky: EmulatedSky = request.getfixturevalue("emulated_sky")
    opened: ObjectStore = sky.open(uri)
    return opened


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def expected_checksum(store: ObjectStore, data: bytes, part_sizes: list[int] | None = None):
    """What ``head`` must report for ``data``, computed here from the bytes."""
    info_algorithm = {"file": "md5", "s3": "md5", "gs": "crc32c", "az": "md5"}[store.scheme]
    if store.scheme == "s3" and part_sizes and len(part_sizes) > 1:
        return compute("s3-etag", [data], part_sizes)
    return compute(info_algorithm, [data])


def utf8_sorted(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda k: k.encode("utf-8"))


# -- listing ---------------------------------------------------------------------------------------
def test_listing_2500_objects_across_pages(store: ObjectStore) -> None:
    keys = [f"many/{i:05d}-{'x' * (i % 7)}" for i in range(2500)] + ["other/outside-the-prefix"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, k.encode()), keys))
    store.list_page_size = 300  # at least nine pages for 2,500 keys
    listed = store.list("many/")
    assert isinstance(listed, Iterator)  # a stream, not a materialized list
    infos = list(listed)
    assert [i.key for i in infos] == utf8_sorted(keys[:-1])
    assert all(i.size == len(i.key) for i in infos)
    assert sum(1 for _ in store.list()) == 2501
    assert [i.key for i in store.list("many/0249")] == [k for k in keys if k.startswith("many/0249")]


def test_awkward_keys_and_zero_byte_objects(store: ObjectStore) -> None:
    for n, key in enumerate(AWKWARD_KEYS):
        store.put(key, b"" if n % 3 == 0 else key.encode() * 3)
    listed = list(store.list())
    assert [i.key for i in listed] == utf8_sorted(AWKWARD_KEYS)
    for n, key in enumerate(AWKWARD_KEYS):
        data = b"" if n % 3 == 0 else key.encode() * 3
        info = store.head(key)
        assert info.key == key and info.size == len(data)
        assert info.checksum == expected_checksum(store, data), key
        assert info.mtime is not None
        assert store.read(key) == data
    assert [i.key for i in store.list("données/")] == ["données/été ☃.bin"]
    assert [i.key for i in store.list("date=2024-01-01/")] == ["date=2024-01-01/part+0001.parquet"]


# -- reading ranges --------------------------------------------------------------------------------
@pytest.mark.slow
def test_64mib_object_read_back_in_random_ranges(store: ObjectStore) -> None:
    data = payload(64 * MiB, seed=64)
    key = "big/64mib.bin"
    store.put(key, data)
    info = store.head(key)
    assert info.size == len(data)
    assert info.checksum == expected_checksum(store, data)
    rng = random.Random(7)
    ranges = [(0, 1), (len(data) - 1, 1), (len(data) - 10, 100), (0, len(data))]
    ranges += [(rng.randrange(len(data)), rng.randrange(1, 8 * MiB)) for _ in range(24)]
    for offset, length in ranges:
        assert store.read_range(key, offset, length) == data[offset : offset + length], (offset, length)
    assert store.read_range(key, 123, 0) == b""


# -- multipart -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_200mib_multipart_write_completed(store: ObjectStore) -> None:
    part_size = 8 * MiB
    data = payload(200 * MiB, seed=200)
    key = "multi/200mib.bin"
    upload = store.begin_multipart(key)
    assert not store.exists(key)  # nothing is visible before complete
    parts = [
        store.write_part(upload, n + 1, data[o : o + part_size])
        for n, o in enumerate(range(0, len(data), part_size))
    ]
    assert not store.exists(key)
    assert [u.key for u in store.list_multipart_uploads()] == [key]
    info = store.complete_multipart(upload, reversed(parts))  # order of the list does not matter
    assert info.size == len(data)
    assert info.checksum == expected_checksum(store, data, [p.size for p in parts])
    assert store.head(key).checksum == info.checksum
    assert [i.key for i in store.list()] == [key]
    assert list(store.list_multipart_uploads()) == []
    with ThreadPoolExecutor(4) as pool:
        offsets = range(0, len(data), 32 * MiB)
        chunks = list(pool.map(lambda o: store.read_range(key, o, 32 * MiB), offsets))
    assert b"".join(chunks) == data


@pytest.mark.slow
def test_200mib_multipart_write_aborted_leaves_nothing(store: ObjectStore) -> None:
    part_size = 8 * MiB
    data = payload(200 * MiB, seed=201)
    key = "multi/aborted.bin"
    upload = store.begin_multipart(key)
    numbers = list(range(1, len(data) // part_size + 1))
    random.Random(3).shuffle(numbers)  # parts arrive in any order, in parallel
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda n: store.write_part(upload, n, data[(n - 1) * part_size : n * part_size]), numbers
            )
        )
    assert [u.key for u in store.list_multipart_uploads()] == [key]
    store.abort_multipart(upload)
    store.abort_multipart(upload)  # idempotent
    assert not store.exists(key)
    assert list(store.list()) == []
    assert list(store.list_multipart_uploads()) == []


def test_multipart_out_of_order_parts_assemble_in_number_order(store: ObjectStore) -> None:
    size = max(store.min_part_size, 64 * 1024)
    blocks = [payload(size, seed=n) for n in range(3)] + [b"tail"]
    upload = store.begin_multipart("ordered.bin")
    parts = [store.write_part(upload, n, blocks[n - 1]) for n in (4, 2, 1, 3)]
    info = store.complete_multipart(upload, parts)
    assert store.read("ordered.bin") == b"".join(blocks)
    assert info.size == sum(map(len, blocks))
    if info.checksum is not None:  # Azure knows no MD5 for parts written out of order
        assert info.checksum == expected_checksum(store, b"".join(blocks), [len(b) for b in blocks])


def test_complete_with_a_missing_part_fails_and_abort_cleans_up(store: ObjectStore) -> None:
    size = max(store.min_part_size, 1024)
    upload = store.begin_multipart("holes.bin")
    part1 = store.write_part(upload, 1, payload(size, 1))
    ghost = type(part1)(2, size, "")  # a part never written
    with pytest.raises(InvalidInputError, match="not written"):
        store.complete_multipart(upload, [part1, ghost])
    assert not store.exists("holes.bin")
    store.abort_multipart(upload)
    assert not store.exists("holes.bin")
    assert list(store.list_multipart_uploads()) == []


def test_multipart_rejects_bad_parts(store: ObjectStore) -> None:
    upload = store.begin_multipart("bad.bin")
    with pytest.raises(InvalidInputError, match="part number 0 is out of range"):
        store.write_part(upload, 0, b"x")
    with pytest.raises(InvalidInputError, match="has no parts"):
        store.complete_multipart(upload, [])
    if store.min_part_size > 1:
        small = [store.write_part(upload, 1, b"x"), store.write_part(upload, 2, b"y")]
        with pytest.raises(InvalidInputError, match="only the last part may be smaller"):
            store.complete_multipart(upload, small)
    store.abort_multipart(upload)
    assert list(store.list_multipart_uploads()) == []


# -- overwrite, delete, missing --------------------------------------------------------------------
def test_put_overwrites_and_delete_is_idempotent(store: ObjectStore) -> None:
    store.put("k", b"one")
    store.put("k", b"two!")
    assert store.read("k") == b"two!" and store.head("k").size == 4
    store.delete("k")
    store.delete("k")
    assert not store.exists("k")
    assert list(store.list()) == []


def test_missing_object_is_named(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError) as err:
        store.head("no/such key")
    assert "no/such key" in str(err.value) and "does not exist" in str(err.value)
    with pytest.raises(ObjectNotFoundError):
        store.read_range("no/such key", 0, 10)
    with pytest.raises(ObjectNotFoundError):
        store.read("no/such key")


def test_a_read_racing_overwrites_sees_one_whole_version(store: ObjectStore) -> None:
    """A checkpoint is rewritten while others read it: every read is one version, whole, never the
    old version's length of the new version's bytes."""
    versions = [payload(1000 + 3000 * (n % 2), n) for n in range(40)]
    store.put("state.json", versions[0])

    def overwrite() -> None:
        for body in versions[1:]:
            store.put("state.json", body)

    with ThreadPoolExecutor(1) as pool:
        writing = pool.submit(overwrite)
        seen = []
        while not writing.done():
            seen.append(store.read("state.json"))
        writing.result()
    assert seen and all(body in versions for body in seen)


def test_negative_ranges_are_rejected(store: ObjectStore) -> None:
    store.put("r", b"0123456789")
    with pytest.raises(InvalidInputError, match="is negative"):
        store.read_range("r", -1, 5)
    with pytest.raises(InvalidInputError, match="is negative"):
        store.read_range("r", 0, -5)
    assert store.read_range("r", 8, 100) == b"89"  # a range past the end is cut at the end


def test_invalid_keys_are_rejected_before_any_write(store: ObjectStore) -> None:
    for key, message in [("", "is empty"), ("a\x00b", "NUL"), ("x" * 1100, "1024")]:
        with pytest.raises(InvalidInputError, match=message):
            store.put(key, b"data")
    with pytest.raises(InvalidInputError, match="reserved"):
        store.put(".skyplane-uploads/x", b"data")
    assert list(store.list()) == []


def test_crc32c_of_parts_combines_to_the_crc32c_of_the_whole() -> None:
    import random

    require("google_crc32c")
    import google_crc32c

    from airflow_skyplane.storage.checksums import compute, from_part_crc32cs

    rng = random.Random(7)
    for _ in range(50):
        parts = [rng.randbytes(rng.randrange(0, 70_000)) for _ in range(rng.randrange(1, 7))]
        combined = from_part_crc32cs([(google_crc32c.value(p), len(p)) for p in parts])
        assert combined == compute("crc32c", [b"".join(parts)])


@pytest.mark.parametrize("scheme", STORES)
def test_a_store_kind_opens_through_airflow_and_again_on_a_relay_from_its_spec(
    scheme: str, sky_bucket: Callable[[str], str], tmp_path: Path
) -> None:
    """The registry's jobs for each kind: open through the Airflow hook, the gateway's spec (no
    secret), credentials minted for a relay's role, the store opened again from the spec and its
    credential file as a relay does (no Airflow), its region."""
    from airflow_skyplane.hooks.storage import open_store
    from airflow_skyplane.storage.kinds import store_kind
    from airflow_skyplane.testing.sky import AWS_REGION
    from airflow_skyplane.transfer.credentials import RelayCredentials

    location = open_store(sky_bucket(scheme))
    kind = store_kind(scheme)
    assert kind.scheme == location.store.scheme == scheme
    location.store.put("kind/from-the-task.txt", b"written in the task")
    credentials = RelayCredentials(tmp_path, transfer_id="contract", expires_at=time.time() + 900)
    reader = kind.open_spec(credentials.spec("source", location.store, "kind/"))
    assert reader.read("kind/from-the-task.txt") == b"written in the task"
    writer = kind.open_spec(credentials.spec("destination", location.store, "kind/"))
    writer.put("kind/from-the-relay.txt", b"written on the relay")
    assert location.store.read("kind/from-the-relay.txt") == b"written on the relay"
    credentials.close()
    placement = kind.region(location.store)
    assert (placement.region if placement else None) == (f"aws:{AWS_REGION}" if scheme == "s3" else None)
