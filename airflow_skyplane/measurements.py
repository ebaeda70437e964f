"""Measurement history: what finished transfers measured on their hops, for the planner to prefer.

After a transfer the controller calls :func:`record` with the Gbps each hop carried (the gateways
count the bytes they send per hop) and the connections it used; the operator and the CLI call
:func:`load` and hand the result to the planner (``NetworkModel.with_history``), which takes a fresh
measurement as it is and lets it fade towards the grid or model value as it ages (see
``planner/network.py``). The planner itself reads no file.

Where: the directory ``$AIRFLOW__SKYPLANE__MEASUREMENTS_PATH`` (the ``[skyplane] measurements_path``
option in Airflow's environment form), else ``$AIRFLOW_HOME/skyplane/measurements`` (``~/airflow``
when AIRFLOW_HOME is unset). It holds ``hops.jsonl``, one JSON object a line::

    {"src": "aws:us-east-1", "dst": "gcp:europe-west4-a", "gbps": 3.1, "connections": 32, "at": 1733212800.0}

Appends take an exclusive ``flock`` on ``hops.lock``, so transfers finishing together do not interleave
lines; when the file grows past :data:`COMPACT_AFTER_LINES` it is rewritten (a temporary file renamed
over it) with the newest :data:`KEEP_PER_HOP` samples of each hop younger than
:data:`MAX_AGE_DAYS`. A line cut short by a crash is skipped when loading, never fatal.

A hop's measurement is what it carried: when something else limited the transfer (a slow store, a
slower hop) it understates what the hop could carry. Pass the hops whose senders had data waiting, or
accept that the planner will be cautious about them. Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_skyplane.exceptions import InvalidInputError, SkyplaneError
from airflow_skyplane.planner.grid import CONNECTIONS_PER_MEASUREMENT
from airflow_skyplane.planner.network import Observation
from airflow_skyplane.planner.regions import resolve_region

if TYPE_CHECKING:
    from airflow_skyplane.planner.network import NetworkModel
    from airflow_skyplane.transfer.summary import TransferResult

log = logging.getLogger(__name__)

PATH_VARIABLE = "AIRFLOW__SKYPLANE__MEASUREMENTS_PATH"
FILE_NAME = "hops.jsonl"
LOCK_NAME = "hops.lock"
MAX_AGE_DAYS = 180.0
"""Samples older than this are ignored when loading and dropped when compacting."""
KEEP_PER_HOP = 20
COMPACT_AFTER_LINES = 5000
RECENT_SAMPLES = 5
"""A hop's rate is the median of its newest samples (one stalled transfer does not decide it)."""


@dataclass(frozen=True)
class HopMeasurement:
    """Gbps one hop of a finished transfer carried over ``connections`` TCP connections (all VMs of
    the sending region together: ``connections`` is their sum)."""

    src: str
    dst: str
    gbps: float
    connections: int


def default_path() -> Path:
    """The history directory: ``$AIRFLOW__SKYPLANE__MEASUREMENTS_PATH``, else
    ``$AIRFLOW_HOME/skyplane/measurements``."""
    configured = os.environ.get(PATH_VARIABLE)
    if configured:
        return Path(configured)
    home = os.environ.get("AIRFLOW_HOME") or os.path.join(os.path.expanduser("~"), "airflow")
    return Path(home) / "skyplane" / "measurements"


def record(
    hops: Iterable[HopMeasurement], *, path: str | Path | None = None, now: float | None = None
) -> int:
    """Append the hops of one finished transfer to the history; returns how many were written.

    Every hop is checked before anything is written: a bad one raises :class:`InvalidInputError`
    naming it and the fix, and the history is left as it was.
    """
    at = time.time() if now is None else float(now)
    lines = [json.dumps({**_checked(h), "at": round(at, 3)}, sort_keys=True) for h in hops]
    if not lines:
        return 0
    directory = _directory(path)
    with _locked(directory):
        target = directory / FILE_NAME
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, ("\n".join(lines) + "\n").encode())
        finally:
            os.close(fd)
        if _line_count(target) > COMPACT_AFTER_LINES:
            _compact(directory, at)
    return len(lines)


def load(
    path: str | Path | None = None, *, now: float | None = None, max_age_days: float = MAX_AGE_DAYS
) -> dict[tuple[str, str], Observation]:
    """Each hop's rate scaled to 64 connections (the median of its newest samples), with the age of
    its newest sample; hops without a sample younger than ``max_age_days`` are left out. A missing
    history is an empty one."""
    at = time.time() if now is None else float(now)
    by_hop: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for sample in _samples(_directory(path, create=False) / FILE_NAME):
        age = at - sample["at"]
        if age > max_age_days * 86400:
            continue
        per_64 = sample["gbps"] * CONNECTIONS_PER_MEASUREMENT / sample["connections"]
        by_hop.setdefault((sample["src"], sample["dst"]), []).append((max(0.0, age), per_64))
    out = {}
    for hop, samples in by_hop.items():
        recent = sorted(samples)[:RECENT_SAMPLES]
        out[hop] = Observation(
            gbps=statistics.median(g for _, g in recent), age_s=recent[0][0], samples=len(recent)
        )
    return out


def configured_path(setting: str | None = None) -> Path | None:
    """The history directory when the deployment turned the history on (the ``[skyplane]
    measurements_path`` setting the operator passes, else its ``$AIRFLOW__SKYPLANE__MEASUREMENTS_PATH``
    form), else None: the operator records and loads only then."""
    configured = setting or os.environ.get(PATH_VARIABLE)
    return Path(configured) if configured else None


def with_recorded(model: NetworkModel, setting: str | None = None) -> NetworkModel:
    """``model`` preferring the history's measurements, when the history is on (the operator's
    planning step); ``model`` itself otherwise."""
    path = configured_path(setting)
    return model if path is None else model.with_history(load(path))


def hops_of(result: TransferResult) -> list[HopMeasurement]:
    """What each hop of a finished transfer carried: the sending gateway's wire bytes over its
    seconds, split over its hops by their weights (gateways dispatch chunks to next hops in proportion
    to them), with the hop's connections. Hops whose gateways have no known region (plain loopback
    runs, transfers finished by another process) are left out."""
    overlay = result.overlay
    if overlay is None:
        return []
    out = []
    for hop in overlay.hops:
        src, dst = overlay.region(hop.src), overlay.region(hop.dst)
        status = result.gateways.get(hop.src, {})
        seconds, sent = status.get("seconds") or 0.0, status.get("wire_bytes") or 0
        weights = sum(h.weight for h in overlay.hops_from(hop.src))
        if not src or not dst or src == dst or seconds <= 0 or sent <= 0 or weights <= 0:
            continue
        gbps = sent * 8 / seconds / 1e9 * hop.weight / weights
        out.append(HopMeasurement(src, dst, gbps, hop.connections))
    return out


def record_finished(results: Iterable[TransferResult], setting: str | None = None) -> int:
    """Record the hops of finished transfers when the history is on (the controller's summary step);
    how many were written. A history that cannot be written is logged, never fatal: the data is
    already where it belongs."""
    path = configured_path(setting)
    if path is None:
        return 0
    hops = []
    for hop in (h for r in results for h in hops_of(r)):
        try:
            _checked(hop)
        except InvalidInputError:  # a region the catalog does not know: nothing to plan with
            continue
        hops.append(hop)
    try:
        return record(hops, path=path)
    except (SkyplaneError, OSError) as exc:
        log.warning("could not record the transfer's hop measurements in %s: %s", path, exc)
        return 0


# -- internals ------------------------------------------------------------------------------------


def _checked(hop: HopMeasurement) -> dict[str, object]:
    if not isinstance(hop, HopMeasurement):
        raise InvalidInputError(
            f"measurement {hop!r} is not a HopMeasurement: pass HopMeasurement(src, dst, gbps, connections)"
        )
    try:
        src, dst = resolve_region(hop.src), resolve_region(hop.dst)
    except InvalidInputError as exc:
        raise InvalidInputError(f"measurement {hop.src} -> {hop.dst}: {exc}") from None
    if src == dst:
        raise InvalidInputError(
            f"measurement {hop.src} -> {hop.dst} is within one region: record only hops between regions"
        )
    gbps = hop.gbps
    if isinstance(gbps, bool) or not isinstance(gbps, (int, float)) or not math.isfinite(gbps) or gbps <= 0:
        raise InvalidInputError(
            f"measurement {src} -> {dst}: gbps={gbps!r} must be a positive number (leave out hops that "
            f"carried nothing)"
        )
    conns = hop.connections
    if isinstance(conns, bool) or not isinstance(conns, int) or conns < 1:
        raise InvalidInputError(
            f"measurement {src} -> {dst}: connections={conns!r} must be a whole number >= 1 (the TCP "
            f"connections the hop used)"
        )
    return {"src": src, "dst": dst, "gbps": round(float(gbps), 6), "connections": conns}


def _directory(path: str | Path | None, create: bool = True) -> Path:
    directory = Path(path) if path is not None else default_path()
    if create:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInputError(
                f"cannot create the measurement history {str(directory)!r}: {exc.strerror or exc}; set "
                f"{PATH_VARIABLE} (or [skyplane] measurements_path) to a writable directory"
            ) from None
    return directory


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _samples(target: Path) -> Iterator[dict]:  # type: ignore[type-arg]
    try:
        handle = target.open(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InvalidInputError(
            f"cannot read the measurement history {str(target)!r}: {exc.strerror or exc}; fix its "
            f"permissions or point {PATH_VARIABLE} elsewhere"
        ) from None
    skipped = 0
    with handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
                sample["src"], sample["dst"] = resolve_region(sample["src"]), resolve_region(sample["dst"])
                ok = (
                    all(isinstance(sample[k], (int, float)) for k in ("gbps", "connections", "at"))
                    and sample["gbps"] > 0
                    and sample["connections"] >= 1
                    and math.isfinite(sample["at"])
                )
            except (ValueError, KeyError, TypeError, InvalidInputError):
                ok = False
            if ok:
                yield sample
            else:
                skipped += 1
    if skipped:
        log.warning("measurement history %s: skipped %d unreadable line(s)", target, skipped)


def _line_count(target: Path) -> int:
    with target.open("rb") as handle:
        return sum(1 for _ in handle)


def _compact(directory: Path, now: float) -> None:
    """Keep the newest samples of each hop younger than the age limit (caller holds the lock)."""
    target = directory / FILE_NAME
    by_hop: dict[tuple[str, str], list[dict]] = {}  # type: ignore[type-arg]
    for sample in _samples(target):
        if now - sample["at"] <= MAX_AGE_DAYS * 86400:
            by_hop.setdefault((sample["src"], sample["dst"]), []).append(sample)
    kept = [s for samples in by_hop.values() for s in sorted(samples, key=lambda s: -s["at"])[:KEEP_PER_HOP]]
    kept.sort(key=lambda s: s["at"])
    fd, tmp = tempfile.mkstemp(prefix=".hops-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for s in kept:
                out.write(json.dumps(s, sort_keys=True) + "\n")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


__all__ = [
    "HopMeasurement",
    "configured_path",
    "default_path",
    "hops_of",
    "load",
    "record",
    "record_finished",
    "with_recorded",
]
