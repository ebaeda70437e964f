"""The workloads, one size of each for every contender of a destination, and seeding the source."""

from __future__ import annotations

import io
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB
BUCKET = "skyplane-peers-source"


@dataclass
class Workload:
    name: str
    label: str
    sizes: list[int]  # bytes per object
    text: list[bool]  # compressible text (True) or random (False)

    @property
    def bytes(self) -> int:
        return sum(self.sizes)

    def sized(self, fraction: float) -> Workload:
        """The same workload made smaller: every ``1 / fraction``-th object, or the one object cut
        to ``fraction`` of its size. Every contender of a destination gets the one result."""
        if fraction >= 1:
            return self
        if len(self.sizes) == 1:
            return Workload(self.name, self.label, [max(1, int(self.sizes[0] * fraction))], self.text)
        step = round(1 / fraction)
        return Workload(self.name, self.label, self.sizes[::step], self.text[::step])


def workloads(scale: float) -> list[Workload]:
    rng = random.Random(8)
    n_a = max(2, round(200 * scale))
    total_a = int(3 * GiB * n_a / 200)
    # sizes 1 + 49 u^p MiB with u spread evenly over (0, 1): p = 2.41 gives a mean of 15.36 MiB, so
    # that 200 objects make 3 GiB; the last object absorbs the rounding
    raw = [1 + 49 * ((i + 0.5) / n_a) ** 2.41 for i in range(n_a)]
    factor = total_a / (sum(raw) * MiB)
    sizes = [min(50 * MiB, max(MiB, int(s * factor * MiB))) for s in raw]
    sizes[-1] = max(MiB, min(50 * MiB, sizes[-1] + total_a - sum(sizes)))
    rng.shuffle(sizes)
    n_c = max(10, round(20_000 * scale))
    return [
        Workload("a", "200 objects of 1-50 MiB, half text", sizes, [i % 2 == 0 for i in range(n_a)]),
        Workload("b", "one 4 GiB object", [max(MiB, int(4 * GiB * scale))], [False]),
        Workload("c", "20,000 objects of 16 KiB", [16 * 1024] * n_c, [False] * n_c),
    ]


def fraction_for(predicted_s: float, budget_s: float, w: Workload) -> float:
    """The largest 1/2^k of ``w`` a run predicted to need ``predicted_s`` on all of it does within
    ``budget_s`` (at least one object, and at least 1/1024 of a single object)."""
    fraction = 1.0
    if len(w.sizes) > 1:
        while predicted_s * fraction > budget_s and fraction * len(w.sizes) > 1:
            fraction /= 2
    else:
        while predicted_s * fraction > budget_s and fraction > 1 / 1024:
            fraction /= 2
    return fraction


_TEXT_BLOCK: bytes = b""


def text_block() -> bytes:
    global _TEXT_BLOCK
    if not _TEXT_BLOCK:
        rng = random.Random(1)
        words = ["view", "click", "buy", "search", "cart", "share"]
        rows = (
            f"{n},2026-11-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:00Z,user{rng.randrange(10**6)},"
            f"{rng.choice(words)},/p/{rng.randrange(10**4)},{rng.random():.6f}\n"
            for n in range(200_000)
        )
        _TEXT_BLOCK = "".join(rows).encode()[: 4 * MiB]
    return _TEXT_BLOCK


class Body(io.RawIOBase):
    """``size`` bytes made on the fly: random, or CSV rows (compressible about 3:1 by lz4)."""

    def __init__(self, size: int, text: bool, seed: int) -> None:
        self.left, self.text, self.seed = size, text, seed
        self.offset = seed * 7919

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left, 8 * MiB)
        if n <= 0:
            return 0
        if self.text:
            block = text_block()
            start = self.offset % len(block)
            data = (block[start:] + block)[:n] if start + n > len(block) else block[start : start + n]
            self.offset += n
        else:
            data = os.urandom(n)
        buffer[:n] = data
        self.left -= n
        return n


def seed(s3: Any, prefix: str, workload: Workload) -> None:
    """Write ``workload`` under ``prefix`` of the source bucket (the bytes are checked against the
    source afterwards, so random content need not be reproducible)."""
    from boto3.s3.transfer import TransferConfig

    text_block()  # built once, before the threads: eight threads building it at once crashed CPython 3.11

    config = TransferConfig(multipart_chunksize=16 * MiB, max_concurrency=4)

    def put(i: int) -> None:
        key = f"{prefix}{i:05d}-{'text' if workload.text[i] else 'random'}.bin"
        if workload.sizes[i] <= 8 * MiB:
            body = Body(workload.sizes[i], workload.text[i], i).read()
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        else:
            s3.upload_fileobj(Body(workload.sizes[i], workload.text[i], i), BUCKET, key, Config=config)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(len(workload.sizes))))
