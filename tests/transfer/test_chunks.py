"""Chunk planning: every byte covered once, parts within store limits, small objects batched."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.transfer.chunks import MAX_PARTS, MiB, batch_small, part_size_for, plan_chunks


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    sizes=st.lists(st.integers(0, 300 * MiB), max_size=20),
    chunk_size=st.integers(1 * MiB, 64 * MiB),
    min_part=st.sampled_from([1, 5 * MiB]),
)
def test_chunks_cover_every_byte_once(sizes: list[int], chunk_size: int, min_part: int) -> None:
    objects = [(f"k{i}", s) for i, s in enumerate(sizes)]
    chunks = list(plan_chunks(objects, chunk_size, min_part_size=min_part))
    assert [c.chunk_id for c in chunks] == list(range(len(chunks)))
    for key, size in objects:
        mine = [c for c in chunks if c.key == key]
        assert sum(c.length for c in mine) == size
        assert [c.offset for c in mine] == sorted(c.offset for c in mine)
        assert all(a.offset + a.length == b.offset for a, b in zip(mine, mine[1:], strict=False))
        if size <= chunk_size:
            assert len(mine) == 1 and mine[0].part_number == 0
        else:
            assert [c.part_number for c in mine] == list(range(1, len(mine) + 1))
            assert all(c.parts == len(mine) <= MAX_PARTS for c in mine)
            assert all(c.length >= min_part for c in mine[:-1])


def test_huge_object_part_size_grows_to_fit_the_part_limit() -> None:
    size = 5 * 1024**4  # 5 TiB, the S3 object limit
    part = part_size_for(size, 32 * MiB, 5 * MiB)
    assert part % MiB == 0 and size / part <= MAX_PARTS
    chunks = plan_chunks([("huge", size)], 32 * MiB)
    first = next(iter(chunks))
    assert first.parts <= MAX_PARTS and first.length == part


def test_small_objects_are_batched() -> None:
    objects = [(f"small/{i:05d}", 16 * 1024) for i in range(10_000)] + [("big", 100 * MiB)]
    batches = list(batch_small(plan_chunks(objects, 32 * MiB), max_bytes=4 * MiB, max_count=256))
    small = [b for b in batches if b[0].key.startswith("small/")]
    assert sum(len(b) for b in small) == 10_000
    assert len(small) == 40  # 10,000 / 256 per batch, rounded up
    assert all(sum(c.length for c in b) <= 4 * MiB for b in small)
    assert [len(b) for b in batches if b[0].key == "big"] == [1, 1, 1, 1]


def test_bad_inputs() -> None:
    with pytest.raises(InvalidInputError, match="chunk size 0 is not positive"):
        list(plan_chunks([("a", 1)], 0))
    with pytest.raises(InvalidInputError, match="negative size"):
        list(plan_chunks([("a", -1)]))
