"""Fleet progress from the gateways' status endpoints: done %, Gbps, ETA.

The reading gateways know how many chunks there are and how many the destination has acknowledged
(an ACK reaches a source only once the chunk is written), so their counters are the progress of the
transfer; the other gateways' counters add the resends and rejected chunks or peers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Progress:
    chunks_done: int
    chunks_total: int | None
    bytes_done: int
    bytes_total: int
    seconds: float
    resends: int
    rejected: int
    errors: tuple[str, ...]

    @property
    def fraction(self) -> float | None:
        if self.bytes_total:
            return min(1.0, self.bytes_done / self.bytes_total)
        if self.chunks_total:
            return min(1.0, self.chunks_done / self.chunks_total)
        return None

    @property
    def gbps(self) -> float:
        return self.bytes_done * 8 / self.seconds / 1e9 if self.seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if not self.bytes_done or not self.bytes_total or self.seconds <= 0:
            return None
        return max(0.0, (self.bytes_total - self.bytes_done) * self.seconds / self.bytes_done)

    def line(self) -> str:
        """One human line for task logs."""
        pct = f"{self.fraction * 100:5.1f}%" if self.fraction is not None else "  ?  "
        eta = f"ETA {self.eta_seconds:.0f} s" if self.eta_seconds is not None else "ETA ?"
        total = f"/{self.chunks_total}" if self.chunks_total is not None else ""
        extra = f", {self.resends} resent" if self.resends else ""
        return (
            f"{pct} {self.bytes_done / 2**20:,.1f} of {self.bytes_total / 2**20:,.1f} MiB, "
            f"chunks {self.chunks_done}{total}, {self.gbps:.3f} Gbps, {eta}{extra}"
        )


def aggregate(statuses: Mapping[str, Mapping[str, Any]], readers: list[str], bytes_total: int) -> Progress:
    """Fleet progress from each gateway's ``/status`` (``readers``: the source gateways)."""
    done = sum(statuses[g]["chunks_sent"] for g in readers if g in statuses)
    totals = [statuses[g].get("total_chunks") for g in readers if g in statuses]
    total = sum(t for t in totals if t is not None) if totals and all(t is not None for t in totals) else None
    return Progress(
        chunks_done=done,
        chunks_total=total,
        bytes_done=sum(statuses[g]["raw_bytes"] for g in readers if g in statuses),
        bytes_total=bytes_total,
        seconds=max((statuses[g]["seconds"] for g in readers if g in statuses), default=0.0),
        resends=sum(s.get("resends", 0) for s in statuses.values()),
        rejected=sum(s.get("rejected_chunks", 0) + s.get("rejected_peers", 0) for s in statuses.values()),
        errors=tuple(e for s in statuses.values() for e in s.get("errors", ())),
    )
