"""Start gcp-storage-emulator in memory, without its per-write metadata dump.

The emulator serialises its whole object table to a ``.meta`` file after every write, so that an
on-disk store survives a restart; each write then costs time in proportion to the objects already
stored (2,500 small uploads took a minute). An in-memory emulator never reads that file back
(it is read once, at start), so this launcher turns the dump off and otherwise runs the emulator's own
``main`` unchanged. Used by :class:`airflow_skyplane.testing.sky.EmulatedSky`.
"""

from __future__ import annotations

import sys


def main() -> None:
    from gcp_storage_emulator import __main__ as emulator
    from gcp_storage_emulator.storage import Storage

    if "--in-memory" in sys.argv or "-M" in sys.argv:
        Storage._write_config_to_file = lambda self: None  # type: ignore[method-assign]
    emulator.main(sys.argv[1:])


if __name__ == "__main__":
    main()
