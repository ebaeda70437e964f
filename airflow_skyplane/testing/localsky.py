"""The emulated sky outside pytest: ``airflow-skyplane sky up``, ``sky env`` and ``sky down``.

``sky up`` starts the emulators of :class:`~airflow_skyplane.testing.sky.EmulatedSky` (moto, the GCS
emulator, Azurite) on loopback and leaves them running after the command ends, creates the buckets
asked for, and returns the environment that points Airflow at them (the ``AIRFLOW_CONN_*``
connections and ``STORAGE_EMULATOR_HOST``). What it started is recorded in ``<folder>/sky.json``:
each emulator's process id and start time, its address and log, and the environment. ``sky down``
reads that record and stops each emulator's process group by its id, and only while that id still
names the process that was started (same start time): a recycled id is never signalled.

The emulators keep everything in memory: ``sky down`` discards the buckets and their objects. The
credentials in the environment are the emulators' fixed test values (moto accepts any key; Azurite's
account key is its public development key), never a cloud's.

The default folder is ``$AIRFLOW_HOME/skyplane/sky`` (``~/airflow`` when AIRFLOW_HOME is unset), beside
the local fleet records. No Airflow here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.files import replaced_whole
from airflow_skyplane.processes import alive, start_ticks
from airflow_skyplane.testing.sky import SERVICES, EmulatedSky, missing_emulator

RECORD = "sky.json"
SERVICE_NAMES = {"s3": "S3 (moto)", "gs": "GCS (gcp-storage-emulator)", "az": "Azure Blob (Azurite)"}


def default_sky_dir() -> Path:
    home = os.environ.get("AIRFLOW_HOME") or os.path.join(os.path.expanduser("~"), "airflow")
    return Path(home) / "skyplane" / "sky"


def read_record(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((Path(folder) / RECORD).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise InvalidInputError(
            f"the sky record {Path(folder) / RECORD} cannot be read ({err}); stop its emulators by the "
            "pids in their logs' folder, then delete the record"
        ) from None
    return data


def running(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The recorded emulators that still run (same pid, same start time)."""
    return [p for p in record.get("processes", []) if _is_it(p)]


def _is_it(process: Mapping[str, Any]) -> bool:
    pid = process.get("pid")
    return isinstance(pid, int) and alive(pid) and start_ticks(pid) == process.get("start_ticks")


def _bucket_names(uris: Iterable[str], services: tuple[str, ...]) -> list[tuple[str, str]]:
    """(service, bucket) for each ``--bucket`` URI, checked before anything starts."""
    from airflow_skyplane.storage.uri import parse_uri

    wanted: list[tuple[str, str]] = []
    for uri in uris:
        parsed = parse_uri(uri)
        if parsed.scheme not in SERVICES or parsed.account:
            raise InvalidInputError(
                f"--bucket {uri!r}: the emulated sky serves s3://, gs:// and az:// buckets; "
                "write it as s3://name, gs://name or az://name"
            )
        if parsed.prefix.strip("/"):
            raise InvalidInputError(
                f"--bucket {uri!r} names a path inside the bucket: give the bucket alone, "
                f"{parsed.scheme}://{parsed.bucket}"
            )
        if parsed.scheme not in services:
            raise InvalidInputError(
                f"--bucket {uri!r} needs the {parsed.scheme} emulator, which --service leaves out: "
                f"add --service {parsed.scheme}"
            )
        if (parsed.scheme, parsed.bucket) not in wanted:
            wanted.append((parsed.scheme, parsed.bucket))
    return wanted


def sky_up(
    folder: str | os.PathLike[str],
    *,
    services: Iterable[str] = SERVICES,
    buckets: Iterable[str] = (),
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Start the emulators, record them, create ``buckets``; returns the record (see the module doc).

    Refuses while a sky recorded in ``folder`` still runs. If anything fails after the start, the
    emulators are stopped and the record removed: nothing is left running.
    """
    chosen = tuple(s for s in SERVICES if s in set(services))
    wanted = _bucket_names(buckets, chosen)
    root = Path(folder)
    old = read_record(root)
    if old and running(old):
        pids = ", ".join(str(p["pid"]) for p in running(old))
        raise InvalidInputError(
            f"an emulated sky recorded in {root} is already up (pids {pids}): 'airflow-skyplane sky env' "
            "prints its environment, 'airflow-skyplane sky down' stops it"
        )
    missing = {s: why for s in chosen if (why := missing_emulator(s))}
    if missing:
        others = [s for s in chosen if s not in missing]
        without = " ".join(f"--service {s}" for s in others)
        raise InvalidInputError(
            "; ".join(missing.values())
            + (f"; or start the sky without it: airflow-skyplane sky up {without}" if others else "")
        )
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    sky = EmulatedSky(root, services=chosen)
    sky.start(timeout=timeout_s)
    try:
        record: dict[str, Any] = {
            "started_at": time.time(),
            "folder": str(root),
            "processes": [
                {
                    "service": service,
                    "name": server.name,
                    "pid": server.process.pid,
                    "start_ticks": start_ticks(server.process.pid),
                    "url": server.url,
                    "log": str(server.log),
                }
                for service, server in sky.servers.items()
                if server.process is not None
            ],
            "env": sky.env(),
            "buckets": [],
        }
        _write_record(root, record)  # findable from here on, whatever happens next
        for service, bucket in wanted:
            record["buckets"].append(sky.make_bucket(service, bucket))
        _write_record(root, record)
    except BaseException:
        sky.stop()
        with contextlib.suppress(FileNotFoundError):
            (root / RECORD).unlink()
        raise
    return record


def _write_record(root: Path, record: Mapping[str, Any]) -> None:
    with replaced_whole(root / RECORD, what="the sky record", mode=0o600) as tmp:
        tmp.write_text(json.dumps(record, indent=1))


def sky_down(folder: str | os.PathLike[str], grace_s: float = 10.0) -> list[dict[str, Any]]:
    """Stop the emulators recorded in ``folder`` and delete the record and logs; returns those that
    were still running. Raises :class:`InvalidInputError` when no sky is recorded there."""
    root = Path(folder)
    record = read_record(root)
    if record is None:
        raise InvalidInputError(
            f"no emulated sky is recorded in {root}: 'airflow-skyplane sky up' starts one "
            "(--dir names the folder it was started with)"
        )
    stopped = [p for p in record.get("processes", []) if _stop_group(p, grace_s)]
    (root / RECORD).unlink()
    for process in record.get("processes", []):
        log = Path(str(process.get("log", "")))
        if log.parent == root:
            with contextlib.suppress(OSError):
                log.unlink()
    return stopped


def _stop_group(process: Mapping[str, Any], grace_s: float) -> bool:
    """SIGTERM the emulator's process group (it was started as a group leader), SIGKILL after
    ``grace_s``; True if it was running."""
    if not _is_it(process):
        return False
    pid = int(process["pid"])
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _is_it(process) and time.monotonic() < deadline:
        time.sleep(0.05)
    # what is left of the group (a stubborn leader, or children of one that exited): the group id
    # stays reserved while any member lives, so it still names this emulator's processes
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while _is_it(process) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def env_text(record: Mapping[str, Any]) -> str:
    """The record's environment as ``export`` lines a shell can ``eval`` or source, with a header
    that says what the credentials in it are."""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("started_at", 0))))
    lines = [
        f"# The emulated sky of airflow-skyplane, started {started}; 'airflow-skyplane sky down' stops it.",
        "# The credentials below are the emulators' fixed test values, not secrets: moto accepts any",
        "# key, and the Azure account key is Azurite's public development key.",
    ]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(record.get("env", {}).items())]
    return "\n".join(lines) + "\n"


def write_env_file(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Write :func:`env_text` to ``path`` (owner-only, atomically)."""
    with replaced_whole(path, what="--env-file", mode=0o600) as tmp:
        tmp.write_text(env_text(record))


def summary(record: Mapping[str, Any]) -> str:
    """What runs where, for people (no credential in it)."""
    lines = [
        f"{SERVICE_NAMES.get(p['service'], p['service'])} at {p['url']} (pid {p['pid']}, log {p['log']})"
        for p in record.get("processes", [])
    ]
    lines += [f"bucket {b}" for b in record.get("buckets", [])]
    return "\n".join(lines)
