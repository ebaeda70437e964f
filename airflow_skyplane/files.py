"""Files written whole or not at all (standard library only)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from airflow_skyplane.exceptions import InvalidInputError


@contextlib.contextmanager
def replaced_whole(path: str | os.PathLike[str], *, what: str, mode: int | None = None) -> Iterator[Path]:
    """A temporary file beside ``path`` for the block to write; when the block ends it replaces
    ``path`` in one step, so a reader never sees half a file. ``mode`` (e.g. ``0o600``) is set when
    the temporary file is created, before anything is written to it. If writing fails, the temporary
    file is removed and :class:`InvalidInputError` names ``what`` and ``path``."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        if mode is not None:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode))
        yield tmp
        os.replace(tmp, target)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise InvalidInputError(
            f"cannot write {what} {str(path)!r}: {err.strerror or err}; pick a writable path"
        ) from None
