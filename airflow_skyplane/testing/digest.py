"""Byte-for-byte comparison of local trees, for tests and benchmarks that check a replica."""

from __future__ import annotations

import hashlib
from pathlib import Path

_BLOCK = 8 * 1024 * 1024


def md5_file(path: Path) -> str:
    """The MD5 of a file, read in blocks (large objects never sit whole in memory)."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> MD5 of every file under ``root``: two trees hold the same bytes under the
    same names exactly when their digests are equal."""
    return {str(p.relative_to(root)): md5_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
