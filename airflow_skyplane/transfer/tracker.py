"""Fleet progress from the gateways' status endpoints: done %, objects and bytes, rates, ETA, resends.

The reading gateways know how many chunks there are; the writing gateways count the chunks they
have written (an ACK between gateways means the next hop holds the chunk, so what is written is
known only at the writer, from its receipts); the other gateways' counters add the resends and
rejected chunks or peers. A transfer is complete when its reader has sent everything and its writer
has written every chunk (:func:`complete`); when gateways report errors, the one whose first error
came first is the cause (:func:`first_failure`): the others fail because it did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # control reads the statuses and asks this module for the first failure
    from airflow_skyplane.transfer.control import GatewayStatus


@dataclass(frozen=True)
class Progress:
    """Where a transfer stands: chunks, bytes and objects done of the totals, in ``seconds``.

    ``objects_done`` counts the objects all of whose chunks the writing gateway stored (the objects a
    resumed try sends only in part are in neither count); ``resends`` the frames sent again after a
    NACK (a batch of small objects is one frame)."""

    chunks_done: int
    chunks_total: int | None
    bytes_done: int
    bytes_total: int
    seconds: float
    resends: int
    rejected: int
    errors: tuple[str, ...]
    objects_done: int = 0
    objects_total: int | None = None

    @property
    def fraction(self) -> float | None:
        if self.bytes_total:
            return min(1.0, self.bytes_done / self.bytes_total)
        if self.objects_total:
            return min(1.0, self.objects_done / self.objects_total)
        if self.chunks_total:
            return min(1.0, self.chunks_done / self.chunks_total)
        return None

    @property
    def gbps(self) -> float:
        return self.bytes_done * 8 / self.seconds / 1e9 if self.seconds > 0 else 0.0

    @property
    def objects_per_s(self) -> float:
        return self.objects_done / self.seconds if self.seconds > 0 else 0.0

    @property
    def resent_share(self) -> float:
        """Frames sent again, per chunk stored (0.01: one in a hundred)."""
        return self.resends / max(1, self.chunks_done)

    @property
    def eta_seconds(self) -> float | None:
        """The time left at the rate so far, by bytes or by objects, whichever is further behind
        (many small objects cost their requests, not their bytes)."""
        if self.seconds <= 0:
            return None
        left = []
        if self.bytes_done and self.bytes_total:
            left.append((self.bytes_total - self.bytes_done) * self.seconds / self.bytes_done)
        if self.objects_done and self.objects_total:
            left.append((self.objects_total - self.objects_done) * self.seconds / self.objects_done)
        return max(0.0, max(left)) if left else None

    def line(self) -> str:
        """One human line for task logs: done %, objects, bytes, rates, ETA, what was sent again."""
        pct = f"{self.fraction * 100:5.1f}%" if self.fraction is not None else "  ?  "
        eta = f"ETA {_duration(self.eta_seconds)}" if self.eta_seconds is not None else "ETA ?"
        parts = [pct]
        if self.objects_total:
            parts.append(f"{self.objects_done:,} of {self.objects_total:,} objects")
        parts.append(f"{self.bytes_done / 2**20:,.1f} of {self.bytes_total / 2**20:,.1f} MiB")
        total = f"/{self.chunks_total}" if self.chunks_total is not None else ""
        parts.append(f"chunks {self.chunks_done}{total}")
        rate = f"{self.bytes_done / 2**20 / self.seconds if self.seconds > 0 else 0.0:,.1f} MiB/s"
        if self.objects_total:
            rate += f", {self.objects_per_s:,.0f} objects/s"
        parts.append(f"{rate} ({self.gbps:.3f} Gbps)")
        parts.append(eta)
        line = ", ".join(parts)
        if self.resends:
            line += f", {self.resends} resent ({self.resent_share:.1%})"
        return line

    def fields(self) -> dict[str, object]:
        """The same figures, for a machine (the sensor's XCom, logs in JSON)."""
        return {
            "fraction": self.fraction,
            "objects_done": self.objects_done,
            "objects_total": self.objects_total,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "chunks_done": self.chunks_done,
            "chunks_total": self.chunks_total,
            "seconds": round(self.seconds, 3),
            "mib_per_s": round(self.bytes_done / 2**20 / self.seconds, 3) if self.seconds > 0 else 0.0,
            "objects_per_s": round(self.objects_per_s, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "resends": self.resends,
            "resent_share": round(self.resent_share, 4),
        }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def complete(reader: GatewayStatus, writer: GatewayStatus, chunks: int) -> bool:
    """True once the reader has sent everything and the writer has written ``chunks`` chunks."""
    return bool(reader.get("done")) and int(writer.get("chunks_stored", 0)) >= chunks


def first_failure(statuses: Mapping[str, GatewayStatus]) -> tuple[str, list[str]] | None:
    """(gateway id, its distinct errors) of the gateway that failed first, or None."""
    failed = [(s.get("first_error_at") or 0.0, gid) for gid, s in statuses.items() if s.get("errors")]
    if not failed:
        return None
    gid = min(failed)[1]
    return gid, list(dict.fromkeys(statuses[gid]["errors"]))


def transfer_progress(
    statuses: Mapping[str, GatewayStatus],
    reader: str,
    writer: str,
    bytes_total: int,
    objects_total: int | None = None,
) -> Progress:
    """One transfer's progress: what its ``writer`` wrote once its status is in, else what its
    ``reader`` sent (``bytes_total``, ``objects_total``: what this try sends)."""
    if not statuses:
        return Progress(0, 0, 0, 0, 0.0, 0, 0, (), 0, objects_total)
    return aggregate(statuses, [reader], bytes_total, [writer] if writer in statuses else None, objects_total)


def aggregate(
    statuses: Mapping[str, GatewayStatus],
    readers: list[str],
    bytes_total: int,
    writers: list[str] | None = None,
    objects_total: int | None = None,
) -> Progress:
    """Fleet progress from each gateway's ``/status`` (``readers``: the source gateways; ``writers``:
    the destination gateways, whose written chunks and bytes are the progress when given)."""
    counted = [g for g in (writers or readers) if g in statuses]
    if writers:
        done = sum(statuses[g].get("chunks_stored", 0) for g in counted)
    else:
        done = sum(statuses[g].get("chunks_sent", 0) for g in counted)
    totals = [statuses[g].get("total_chunks") for g in readers if g in statuses]
    total = sum(t for t in totals if t is not None) if totals and all(t is not None for t in totals) else None
    if writers:  # each chunk once, however often it was written
        written = sum(statuses[g].get("bytes_stored", statuses[g].get("raw_bytes", 0)) for g in counted)
    else:
        written = sum(statuses[g].get("raw_bytes", 0) for g in counted)
    objects = sum(statuses[g].get("objects_stored", 0) for g in counted) if writers else 0
    return Progress(
        chunks_done=done,
        chunks_total=total,
        bytes_done=min(written, bytes_total) if writers else written,
        bytes_total=bytes_total,
        seconds=max((statuses[g]["seconds"] for g in readers if g in statuses), default=0.0),
        resends=sum(s.get("resends", 0) for s in statuses.values()),
        rejected=sum(s.get("rejected_chunks", 0) + s.get("rejected_peers", 0) for s in statuses.values()),
        errors=tuple(e for s in statuses.values() for e in s.get("errors", ())),
        objects_done=min(objects, objects_total) if objects_total is not None else objects,
        objects_total=objects_total,
    )


@dataclass(frozen=True)
class FleetStatus:
    """Where a fleet's transfers stand, read from its records and its gateways' status endpoints."""

    state: str  # "running", "done" (every chunk written at every destination) or "failed"
    progress: Progress
    message: str = ""


def poll_fleet(folder: str | Path) -> FleetStatus:
    """Poll every transfer of the fleet recorded in ``folder`` once (blocking; no Airflow needed).

    Used by the trigger (in a thread) and the sensor. A gateway that died, reported an error or
    whose status endpoint does not answer makes the fleet ``failed``; finishing (completing the
    uploads, verifying) is left to whoever resumes the task.
    """
    import json
    import urllib.request

    from airflow_skyplane.compute import fleets

    root = Path(folder)
    if not (root / fleets.FLEET_FILE).exists():
        return FleetStatus("failed", _EMPTY, f"no fleet is recorded in {root}: it was torn down")
    parts, done = [], True
    for sub in fleets.transfer_dirs(root):
        try:
            job = json.loads((sub / "job.json").read_text())
        except FileNotFoundError:
            return FleetStatus("failed", _EMPTY, f"transfer {sub.name} of the fleet has no job record")
        statuses: dict[str, GatewayStatus] = {}
        for gid, gw in fleets.read_gateways(sub).items():
            url = f"http://{gw.get('control_host', '127.0.0.1')}:{gw['control_port']}/status"
            try:
                with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - the gateway's endpoint
                    statuses[gid] = json.loads(r.read())
            except OSError as err:
                state = "running" if fleets.runs_gateway(gw["pid"]) else "not running"
                return FleetStatus("failed", _EMPTY, f"gateway {gid} does not answer ({err}); it is {state}")
        reader, writer = job["overlay"]["source"], job["overlay"]["destination"]
        if reader in statuses:
            writers = [writer] if writer in statuses else None
            progress = aggregate(
                statuses, [reader], job["bytes_total"] - job.get("resumed_bytes", 0), writers,
                job.get("objects_to_send"),
            )  # fmt: skip
            failure = first_failure(statuses)
            if failure is not None:
                return FleetStatus("failed", progress, f"gateway {failure[0]} failed: {failure[1][:3]}")
            parts.append(progress)
            chunks = job.get("chunks_to_send", 0)
            done = done and complete(statuses[reader], statuses.get(writer, {}), chunks)
    total = combine(parts)
    return FleetStatus("done" if done else "running", total)


_EMPTY = Progress(0, 0, 0, 0, 0.0, 0, 0, ())


def combine(parts: list[Progress]) -> Progress:
    if not parts:
        return _EMPTY
    return Progress(
        chunks_done=sum(p.chunks_done for p in parts),
        chunks_total=(
            sum(p.chunks_total for p in parts if p.chunks_total is not None)
            if all(p.chunks_total is not None for p in parts)
            else None
        ),
        bytes_done=sum(p.bytes_done for p in parts),
        bytes_total=sum(p.bytes_total for p in parts),
        seconds=max(p.seconds for p in parts),
        resends=sum(p.resends for p in parts),
        rejected=sum(p.rejected for p in parts),
        errors=tuple(e for p in parts for e in p.errors),
        objects_done=sum(p.objects_done for p in parts),
        objects_total=(
            sum(p.objects_total for p in parts if p.objects_total is not None)
            if all(p.objects_total is not None for p in parts)
            else None
        ),
    )
